"""Racklet BMC firmware core (MicroPython and CPython)."""

VERSION = "0.1.0"

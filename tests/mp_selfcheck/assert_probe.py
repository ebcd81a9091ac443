"""Fails on purpose when asked: proves the MicroPython harness keeps `assert`."""

import sys

if sys.argv[-1] == "fail":
    assert 1 == 2, "assert ran"
print("PASS probe")

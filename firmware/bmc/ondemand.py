"""Rarely used code, imported for one request and dropped after.

On the RP2040 a module loaded from flash lives in the heap; validation code that
runs once in a while (key parsing, uploads, most commands) costs RAM only while
it runs.

    kp = ondemand.load("keyparse")
    try:
        kp.parse_key(text)
    finally:
        ondemand.drop("keyparse")

or, the same in one call: `ondemand.call("keyparse", "parse_key", text)`.
"""

import sys


def load(name):
    full = "bmc." + name
    __import__(full)
    return sys.modules[full]


def drop(name):
    sys.modules.pop("bmc." + name, None)
    import bmc

    try:
        delattr(bmc, name)
    except AttributeError:
        pass


def call(name, function, *args):
    """`bmc.<name>.<function>(*args)` with the module loaded only for the call."""
    m = load(name)
    try:
        return getattr(m, function)(*args)
    finally:
        m = None
        drop(name)

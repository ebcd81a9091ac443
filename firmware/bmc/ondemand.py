"""Rarely used code, imported for one request and dropped after.

On the RP2040 a module loaded from flash lives in the heap; validation code that
runs once in a while (key parsing, uploads) costs RAM only while it runs.

    kp = ondemand.load("keyparse")
    try:
        kp.parse_key(text)
    finally:
        ondemand.drop("keyparse")
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

"""Maintenance mode: the REPL on the USB bus for one boot, on request.

An authenticated admin command calls `request(root)`; boot.py calls
`consume(root)` at the next start, which removes the flag, so maintenance
lasts until the reset after that. (Holding BOOTSEL at reset also enters it.)
"""

import os

FLAG = "/data/maintenance.flag"


def request(root):
    """Set the flag; OSError when the flash takes no flag (none is left behind, so a
    refused request never turns into maintenance at some later start)."""
    try:
        f = open(root + FLAG, "w")
        try:
            f.write("1")
        finally:
            f.close()
    except OSError:
        consume(root)
        raise


def consume(root):
    """True (and the flag removed) when maintenance was requested."""
    try:
        os.remove(root + FLAG)
        return True
    except OSError:
        return False

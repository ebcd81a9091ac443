"""Start-up of the simulated board (firmware/sim_main.py): arguments, flash, the Board.

Loaded by sim_main for the start and dropped before the firmware runs, so the
firmware gets the heap an RP2040 would give it.
"""

import sys

_OPTIONS = (
    "slot",
    "wires",
    "image",
    "board-file",
    "firmware",
    "reset-cause",
    "uid",
    "chip-fd",
)
_REQUIRED = ("slot", "wires", "image")
_CAUSES = ("power_on", "watchdog", "soft", "unknown")
EXIT_USAGE = 2


def _err(msg):
    sys.stderr.write("sim_main: %s\n" % msg)


def parse_args(argv):
    opts = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--") or a[2:] not in _OPTIONS:
            raise ValueError("unknown argument %s (options: --%s)" % (a, ", --".join(_OPTIONS)))
        if i + 1 >= len(argv):
            raise ValueError("%s needs a value" % a)
        opts[a[2:]] = argv[i + 1]
        i += 2
    for name in _REQUIRED:
        if name not in opts:
            raise ValueError("--%s is required" % name)
    opts["slot"] = int(opts["slot"])
    if opts.get("chip-fd") is not None:
        opts["chip-fd"] = int(opts["chip-fd"])
    cause = opts.get("reset-cause", "power_on")
    if cause not in _CAUSES:
        raise ValueError("--reset-cause must be one of %s" % ", ".join(_CAUSES))
    opts["reset-cause"] = cause
    return opts


def _exists(path):
    import os

    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _copy(src, dest):
    with open(src, "rb") as f:
        data = f.read()
    tmp = dest + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    import os

    os.rename(tmp, dest)


def setup(argv):
    """Mount the flash, put the board file in place, connect the wires: the Board."""
    try:
        opts = parse_args(argv)
    except ValueError as e:
        _err(str(e))
        sys.exit(EXIT_USAGE)
    import binascii

    from bmc.board import sim, simflash

    simflash.mount(opts["image"], "/flash", _err)
    board_file = opts.get("board-file")
    if board_file and not _exists("/flash/board.json"):
        _copy(board_file, "/flash/board.json")
    uid = opts.get("uid")
    return sim.Board(
        None,
        opts["wires"],
        slot=opts["slot"],
        reset_cause=opts["reset-cause"],
        uid=binascii.unhexlify(uid) if uid else None,
        chip_fd=opts.get("chip-fd"),
    )

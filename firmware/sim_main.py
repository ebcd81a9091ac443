# Racklet BMC under the MicroPython unix port: the firmware of one simulated board.
#
# bmc-sim runs: micropython -X heapsize=192K sim_main.py --slot N --wires PATH
#   --image PATH [--board-file PATH] [--firmware DIR] [--reset-cause CAUSE] [--uid HEX]
#   [--chip-fd FD]
# with stdin/stdout the master of this board's PTY (its USB CDC link). The flash is the
# littlefs image at --image, mounted at /flash (formatted when blank); on a blank image the
# board file is copied in as /flash/board.json, as `make deploy` puts /board.json on a
# real board. --firmware puts the compiled firmware (.mpy) first on the import path.
# stdout is the link: errors and tracebacks go to stderr only.
import sys


def _firmware_first(argv):
    """Put the --firmware folder (compiled modules) first on the import path."""
    for i in range(len(argv) - 1):
        if argv[i] == "--firmware":
            sys.path.insert(0, argv[i + 1])
            return


def run(argv):
    _firmware_first(argv)
    from bmc.board import simstart

    board = simstart.setup(argv)
    # The start-up code goes, so the firmware gets the heap an RP2040 would give it.
    del simstart
    sys.modules.pop("bmc.board.simstart", None)
    delattr(sys.modules["bmc.board"], "simstart")
    import gc

    gc.collect()
    import bmc.app

    bmc.app.main(board)


try:
    run(sys.argv[1:])
except SystemExit:
    raise
except BaseException as e:  # noqa: BLE001 - report on stderr, never on the link
    sys.print_exception(e, sys.stderr)
    sys.exit(1)

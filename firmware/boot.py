# Racklet BMC, runs first at every reset: bring up USB in production or maintenance mode.
#
# Production (the default): only the firmware's own CDC interface is on the USB bus, no
# REPL, so nobody on the hub can run code. Maintenance (the REPL stays, for mpremote):
# only when BOOTSEL is held at reset (physical presence) or when an admin asked for it
# with an authenticated command, which left a one-shot flag that is consumed here, so
# maintenance lasts until the next reset.
from bmc import maintenance
from bmc.board import rp2 as board_rp2

_held = board_rp2.bootsel_held()
_flagged = maintenance.consume(board_rp2.Board.root)
board_rp2.start_usb(_held or _flagged)
del _held, _flagged

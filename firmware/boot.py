# Racklet BMC, runs first at every start (hard and soft reset): bring up USB for the mode.
#
# Production (the default): only the firmware's own CDC interface is on the USB bus, no
# REPL, so nobody on the hub can run code. Maintenance (MicroPython's REPL only, for
# mpremote; the firmware does not run): when an admin asked for it with an authenticated
# command, which left a one-shot flag consumed here, or when BOOTSEL is pressed within
# 1.5 s after a reset (physical presence; held *during* the reset, the boot ROM's own USB
# bootloader starts instead). Maintenance lasts across soft resets (mpremote makes one
# each time it connects) and ends at the next hard reset.
from bmc import maintenance
from bmc.board import rp2 as board_rp2

board_rp2.start_usb(board_rp2.maintenance_at_boot(maintenance.consume(board_rp2.Board.root)))

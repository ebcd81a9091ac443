# Racklet BMC on an RP2040: run the firmware on the real board (boot.py brought up USB).
import sys
import time

from bmc.board import rp2 as board_rp2


def _run():
    if board_rp2.usb_mode() != "production":
        # Maintenance mode, or the firmware's link could not be brought up: boot.py left
        # the REPL on USB so an admin can work on the board; the firmware stays off.
        print("racklet-bmc not started:", board_rp2.usb_error or "maintenance mode")
        return
    board = board_rp2.Board()
    try:
        import bmc.app

        bmc.app.main(board)
    except BaseException as e:  # noqa: BLE001 - last resort: report, then restart clean
        sys.print_exception(e)
    # Production has no REPL to fall back to: restart (the SBC keeps running).
    time.sleep_ms(1000)
    board.reboot()


_run()

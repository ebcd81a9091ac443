# Racklet BMC on an RP2040: run the firmware on the real board (boot.py brought up USB).
import sys
import time

from bmc.board import rp2 as board_rp2


def _run():
    if board_rp2.usb_error is not None:
        # No firmware link: stay at the REPL (boot.py kept it) so an admin can repair.
        print("racklet-bmc not started:", board_rp2.usb_error)
        return
    board = board_rp2.Board()
    try:
        import bmc.app

        bmc.app.main(board)
    except KeyboardInterrupt:
        # Ctrl-C from mpremote: only reachable in maintenance mode, where the REPL is on USB.
        if board_rp2.usb_mode() != "maintenance":
            board.reboot()
        raise
    except Exception as e:  # noqa: BLE001 - last resort: report, then restart clean
        sys.print_exception(e)
        if board_rp2.usb_mode() != "maintenance":
            time.sleep_ms(1000)
            board.reboot()


_run()

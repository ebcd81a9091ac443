"""The real board: an RP2040 running MicroPython (see `bmc.board` for the interface).

USB: `start_usb(maintenance)` (called once from boot.py) brings up the firmware's own CDC
interface with micropython-lib `usb-device-cdc`. In production mode the built-in
USB-CDC (the REPL) is removed from the bus (`builtin_driver=False`); in maintenance mode it
stays beside the firmware's interface. `Board().link` is that CDC interface.
"""

import binascii
import select

import machine
import rp2

from bmc import usbid
from bmc.board import LINK_WRITE_TIMEOUT_MS, clamp_wdt
from bmc.clock import Clock
from bmc.compat import const, ticks_diff, ticks_ms

# RP2040 watchdog scratch register 0: survives a watchdog reset, cleared at power-on.
# `reboot()` leaves a mark there so the next boot can tell a requested reset
# (machine.reset() is itself a watchdog reset on the rp2 port) from a starved watchdog.
_SCRATCH0 = const(0x40058000 + 0x0C)
_SOFT_MARK = const(0x52424D43)  # "RBMC"

_CDC_BUF = const(1024)

_cdc = None  # the runtime CDC interface, set by start_usb()
_mode = None  # "production", "maintenance", or None before start_usb()
usb_error = None  # why the runtime CDC could not be brought up


def start_usb(maintenance):
    """Bring up the firmware's CDC interface; keep the REPL only in maintenance mode.

    Returns the mode. When usb-device-cdc is missing (a board deployed without
    `make deploy`) the built-in REPL stays so an admin can repair it, `usb_error`
    says why, and main.py does not start the firmware.
    """
    global _cdc, _mode, usb_error
    try:
        import usb.device
        from usb.device.cdc import CDCInterface
    except ImportError as e:
        usb_error = "usb-device-cdc not installed (%s)" % e
        _mode = "maintenance"
        return _mode
    cdc = CDCInterface(timeout=0, txbuf=_CDC_BUF, rxbuf=_CDC_BUF)
    usb.device.get().init(
        cdc,
        builtin_driver=bool(maintenance),
        manufacturer_str=usbid.MANUFACTURER,
        product_str=usbid.PRODUCT,
        serial_str=serial(),
        id_vendor=usbid.VID,
        id_product=usbid.PID,
    )
    _cdc = cdc
    _mode = "maintenance" if maintenance else "production"
    return _mode


def usb_mode():
    return _mode


def serial():
    return binascii.hexlify(machine.unique_id()).decode().upper()


def bootsel_held():
    return rp2.bootsel_button() == 1


class _Link:
    """The CDC interface as the core's link: non-blocking reads, writes that never hang."""

    def __init__(self, cdc):
        self._cdc = cdc

    def readinto(self, buf):
        return self._cdc.readinto(buf)

    def write(self, buf):
        cdc = self._cdc
        n = len(buf)
        k = cdc.write(buf)
        if k == n:
            return n
        mv = memoryview(buf)
        done = k or 0
        start = ticks_ms()
        while done < n:
            if not cdc.is_open() or ticks_diff(ticks_ms(), start) > LINK_WRITE_TIMEOUT_MS:
                break  # nobody reads: give up with a short count
            machine.idle()
            k = cdc.write(mv[done:])
            if k:
                done += k
        return done


def _pull(pull):
    if pull == "up":
        return machine.Pin.PULL_UP
    if pull == "down":
        return machine.Pin.PULL_DOWN
    return None


class Board:
    root = ""

    def __init__(self, board_def=None):
        self.board_def = board_def
        self.clock = Clock()
        self.link = _Link(_cdc) if _cdc is not None else None
        self._wdt = None
        self._poll = select.poll()
        self._cdc_registered = False
        if _cdc is not None:
            self._poll.register(_cdc, select.POLLIN)
            self._cdc_registered = True
        self._cause = self._read_reset_cause()

    # -- pins ---------------------------------------------------------------
    def input(self, pin, pull):
        return machine.Pin(pin, machine.Pin.IN, _pull(pull))

    def output(self, pin, value, open_drain):
        # The level is given in the constructor: the pad never shows another one.
        mode = machine.Pin.OPEN_DRAIN if open_drain else machine.Pin.OUT
        return machine.Pin(pin, mode, value=1 if value else 0)

    def adc(self, channel):
        return machine.ADC(channel)

    def uart(self, uart_id, tx, rx, baud):
        u = machine.UART(
            uart_id,
            baudrate=baud,
            tx=machine.Pin(tx),
            rx=machine.Pin(rx),
            timeout=0,
            rxbuf=1024,
        )
        self._poll.register(u, select.POLLIN)
        return u

    def i2c(self, bus, sda, scl, freq):
        return machine.I2C(bus, sda=machine.Pin(sda), scl=machine.Pin(scl), freq=freq)

    # -- waiting ---------------------------------------------------------------
    def wait(self, timeout_ms):
        if timeout_ms <= 0:
            return
        ready = self._poll.poll(timeout_ms)
        if not ready:
            return
        for entry in ready:
            if entry[0] is _cdc and entry[1] & (select.POLLHUP | select.POLLERR):
                if not entry[1] & select.POLLIN:
                    # No host on the bus: the CDC reports hang-up at once. Wait on the
                    # rest for a while instead of spinning, then look at USB again.
                    self._poll.unregister(_cdc)
                    try:
                        self._poll.poll(min(timeout_ms, 50))
                    finally:
                        self._poll.register(_cdc, select.POLLIN)
                    return

    # -- identity, presence, resets -----------------------------------------
    def bootsel(self):
        return bootsel_held()

    def unique_id(self):
        return machine.unique_id()

    def _read_reset_cause(self):
        c = machine.reset_cause()
        marked = machine.mem32[_SCRATCH0] == _SOFT_MARK
        machine.mem32[_SCRATCH0] = 0
        if c == machine.WDT_RESET:
            return "soft" if marked else "watchdog"
        if c == machine.PWRON_RESET:
            return "power_on"
        return "unknown"

    def reset_cause(self):
        return self._cause

    def wdt_start(self, ms):
        if self._wdt is None:
            self._wdt = machine.WDT(timeout=clamp_wdt(ms))

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def reboot(self):
        machine.mem32[_SCRATCH0] = _SOFT_MARK
        machine.reset()

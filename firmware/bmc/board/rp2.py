"""The real board: an RP2040 running MicroPython (see `bmc.board` for the interface).

Needs MicroPython 1.23 or newer (`machine.USBDevice`) and micropython-lib
`usb-device-cdc` (`mpremote mip install usb-device-cdc`; `make deploy` installs it).

Start-up (boot.py): `maintenance_at_boot(flagged)` picks the mode, `start_usb(maintenance)`
brings up USB for it:

- production: the firmware's own CDC interface only (`usb.device.get().init(cdc,
  builtin_driver=False, ...)`), so the built-in USB-CDC with the REPL is not on the bus.
  `Board().link` is that interface; main.py runs the firmware.
- maintenance: no runtime USB device at all, only MicroPython's built-in USB-CDC with the
  REPL, for mpremote; main.py does not start the firmware. A runtime device would be torn
  down (the port drops off the bus) by every soft reset, and mpremote soft-resets the board
  each time it connects, so maintenance leaves USB alone. It lasts across soft resets and
  ends at the next hard reset (power, RUN, `machine.reset()`): the session is kept in
  watchdog scratch registers, which survive both, and a soft reset is told from a hard
  one by the microsecond timer, which only a hard reset restarts.

BOOTSEL is read by boot.py during `BOOTSEL_WINDOW_MS` after start-up: press it just
after the reset, not during it (held while the RP2040 comes out of reset, the boot ROM
starts its own USB bootloader and MicroPython does not run).
"""

import binascii
import select

import machine
import rp2

from bmc import usbid
from bmc.board import LINK_WRITE_TIMEOUT_MS, clamp_wdt
from bmc.clock import Clock
from bmc.compat import const, ticks_diff, ticks_ms

# RP2040 watchdog scratch registers (WATCHDOG_BASE 0x40058000, SCRATCH0 at +0x0C): they
# survive a watchdog reset (machine.reset() is one on the rp2 port) and soft resets, and
# are cleared at power-on and by the RUN pin. SCRATCH4..7 belong to the SDK/boot ROM.
# SCRATCH0: `reboot()` leaves a mark there so the next boot can tell a requested reset
# from a starved watchdog (machine.reset_cause() on rp2 knows only PWRON and WDT).
_SCRATCH0 = const(0x40058000 + 0x0C)
_SOFT_MARK = const(0x52424D43)  # "RBMC"
# SCRATCH1: a maintenance session is open (survives soft resets, cleared at a hard one).
_SCRATCH1 = const(0x40058000 + 0x10)
_MAINT_MARK = const(0x524D4E54)  # "RMNT"
# SCRATCH2: boot.py reset the board for a soft reset outside a session (no reset loop).
_SCRATCH2 = const(0x40058000 + 0x14)
_RESET_MARK = const(0x52535431)  # "RST1"
# The RP2040's timer restarts at every hard reset (power, RUN, watchdog, machine.reset)
# and counts on across a soft reset (mpremote's Ctrl-D). boot.py runs well within this
# many ms of a hard reset; a soft reset comes later (see maintenance_at_boot).
_SOFT_RESET_MIN_MS = const(1000)

BOOTSEL_WINDOW_MS = 1500  # how long boot.py watches BOOTSEL after a hard reset

_CDC_BUF = const(1024)
# A console-write (at most 256 characters, up to 4 UTF-8 bytes each) fits whole in the
# UART's transmit buffer: rp2's default of 256 bytes, with timeout=0, cut it short.
_UART_TXBUF = const(1024)
# Console bytes wait here while a pass runs: 4 KB is 356 ms at 115200 baud, longer than
# a pass that streams a boot file or writes flash (1 KB, 89 ms, lost bytes in those).
_UART_RXBUF = const(4096)
_HUP_ERR = select.POLLHUP | select.POLLERR
_REBOOT_DRAIN_MS = const(50)  # time the USB stack gets to send the last reply

_cdc = None  # the runtime CDC interface, set by start_usb()
_mode = None  # "production", "maintenance", or None before start_usb()
usb_error = None  # why the runtime CDC could not be brought up


def bootsel_pressed_within(window_ms):
    """True as soon as BOOTSEL is pressed, False when `window_ms` passed without."""
    clock = Clock()
    start = ticks_ms()
    while True:
        if rp2.bootsel_button() == 1:
            return True
        if ticks_diff(ticks_ms(), start) >= window_ms:
            return False
        clock.sleep_ms(10)


def maintenance_at_boot(flagged):
    """Whether this start runs in maintenance mode (called once, by boot.py).

    A start whose timer reads at least `_SOFT_RESET_MIN_MS` is a soft reset (the timer
    kept counting): inside a maintenance session it stays in it; anywhere else no REPL
    made it, and the board resets for a clean start (after a soft reset from mpremote's
    raw REPL MicroPython runs boot.py but not main.py). The timer wraps every 2**30 ms:
    a soft reset in the first second after a wrap (once in 12.4 days) is taken for a
    hard one and ends the session; a start that reads late twice in a row is taken for
    a slow hard one. After a hard reset the session is over (a watchdog reset that ends
    one was `machine.reset()` at the REPL, so it is reported as a requested reset); a new
    one starts when an admin left the one-shot flag (`flagged`) or BOOTSEL is pressed
    within `BOOTSEL_WINDOW_MS`, and its REPL comes up only once the timer has passed
    `_SOFT_RESET_MIN_MS`, so mpremote's first soft reset reads as one.
    """
    mem = machine.mem32
    if ticks_ms() >= _SOFT_RESET_MIN_MS:
        if mem[_SCRATCH1] == _MAINT_MARK:
            return True
        if mem[_SCRATCH2] != _RESET_MARK:
            mem[_SCRATCH2] = _RESET_MARK
            machine.reset()
            return False  # not reached on the board
        # Reset for that already and still late: a slow start after a hard reset
        # (never a loop of resets), taken as one.
    mem[_SCRATCH2] = 0
    if mem[_SCRATCH1] == _MAINT_MARK:
        mem[_SCRATCH1] = 0
        if machine.reset_cause() == machine.WDT_RESET:
            mem[_SCRATCH0] = _SOFT_MARK
    if flagged or bootsel_pressed_within(BOOTSEL_WINDOW_MS):
        mem[_SCRATCH1] = _MAINT_MARK
        Clock().sleep_ms(_SOFT_RESET_MIN_MS - ticks_ms())
        return True
    return False


def start_usb(maintenance):
    """Bring up USB for the mode: the firmware's CDC only, or the built-in REPL only.

    Returns the mode. When the firmware's interface cannot be brought up
    (usb-device-cdc missing, MicroPython older than 1.23) the built-in REPL stays so
    an admin can repair the board, `usb_error` says why, and main.py does not start
    the firmware. That REPL is a maintenance session (mpremote's soft resets keep it);
    after a failed `init()` the runtime device may be half up, and it would drop the
    port at each soft reset, so the board restarts into a plain maintenance boot.
    """
    global _cdc, _mode, usb_error
    if maintenance:
        _mode = "maintenance"
        return _mode
    try:
        import usb.device
        from usb.device.cdc import CDCInterface
    except ImportError as e:
        usb_error = "usb-device-cdc not installed (%s)" % e
        machine.mem32[_SCRATCH1] = _MAINT_MARK
        _mode = "maintenance"
        return _mode
    dev = None
    try:
        cdc = CDCInterface(timeout=0, txbuf=_CDC_BUF, rxbuf=_CDC_BUF)
        dev = usb.device.get()
        dev.init(
            cdc,
            builtin_driver=False,
            manufacturer_str=usbid.MANUFACTURER,
            product_str=usbid.PRODUCT,
            serial_str=serial(),
            id_vendor=usbid.VID,
            id_product=usbid.PID,
        )
    except Exception as e:  # noqa: BLE001 - any failure: keep the REPL for repair
        usb_error = "runtime USB failed (%r); MicroPython 1.23+ needed" % (e,)
        _mode = "maintenance"
        if dev is not None:
            from bmc import maintenance

            print("racklet-bmc:", usb_error, "- restarting in maintenance mode")
            maintenance.request(Board.root)  # the one-shot flag boot.py consumes
            machine.reset()
        machine.mem32[_SCRATCH1] = _MAINT_MARK
        return _mode
    _cdc = cdc
    _mode = "production"
    return _mode


def usb_mode():
    return _mode


def serial():
    return binascii.hexlify(machine.unique_id()).decode().upper()


class _Link:
    """The CDC interface as the core's link: non-blocking reads, writes that never hang."""

    def __init__(self, cdc, feed):
        self._cdc = cdc
        self._feed = feed  # the watchdog's feed: a long answer that moves is alive

    def readinto(self, buf):
        return self._cdc.readinto(buf)

    def write(self, buf):
        # Called once per frame of a stream: kept small, so that MicroPython keeps its
        # frame on the C stack (a larger one is allocated on the heap at every call).
        k = self._cdc.write(buf)
        if k == len(buf):
            return k
        return self._rest(buf, k or 0)

    def _rest(self, buf, done):
        """Finish a write the CDC took only part of (its buffer is full)."""
        cdc = self._cdc
        n = len(buf)
        mv = memoryview(buf)
        start = ticks_ms()
        while done < n:
            if not cdc.is_open() or ticks_diff(ticks_ms(), start) > LINK_WRITE_TIMEOUT_MS:
                break  # nobody reads: give up with a short count
            machine.idle()
            k = cdc.write(mv[done:])
            if k:
                done += k
                # A stream to a slow reader (a large boot file, one frame after another)
                # may take longer than the watchdog allows one pass: it is alive while
                # the host takes bytes (each write still ends by LINK_WRITE_TIMEOUT_MS).
                self._feed()
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
        self.link = _Link(_cdc, self.wdt_feed) if _cdc is not None else None
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
            rxbuf=_UART_RXBUF,
            txbuf=_UART_TXBUF,
        )
        self._poll.register(u, select.POLLIN)
        return u

    def i2c(self, bus, sda, scl, freq):
        return machine.I2C(bus, sda=machine.Pin(sda), scl=machine.Pin(scl), freq=freq)

    # -- waiting ---------------------------------------------------------------
    def wait(self, timeout_ms):
        # Run every pass: ipoll (no list) and a small frame, which MicroPython keeps on
        # the C stack (one of more than 11 words is allocated on the heap every call).
        if timeout_ms <= 0:
            return
        for entry in self._poll.ipoll(timeout_ms):
            if entry[0] is _cdc and entry[1] & _HUP_ERR and not entry[1] & select.POLLIN:
                self._no_host(timeout_ms)
                return

    def _no_host(self, timeout_ms):
        # No host on the bus: the CDC reports hang-up at once. Wait on the rest for a
        # while instead of spinning, then look at USB again.
        self._poll.unregister(_cdc)
        try:
            self._poll.poll(min(timeout_ms, 50))
        finally:
            self._poll.register(_cdc, select.POLLIN)

    # -- identity, presence, resets -----------------------------------------
    def bootsel(self):
        return rp2.bootsel_button() == 1

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
        # The reply that asked for this (bmc-reboot, maintenance) may still be in the
        # CDC's buffer: the USB stack sends it while we sleep (the host polls within a
        # frame or two); a reset now would drop it.
        self.clock.sleep_ms(_REBOOT_DRAIN_MS)
        machine.reset()

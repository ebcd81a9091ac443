"""The RP2040 board layer and boot.py, against stand-ins for machine, rp2 and usb.device.

No RP2040 here: these check what the code asks of MicroPython's hardware API
(pins created with their level, watchdog limit, reset causes, which USB interfaces
go on the bus in production and in maintenance mode).
"""

from __future__ import annotations

import collections
import importlib
import pathlib
import sys
import types
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


# The stand-ins take exactly the arguments the real API takes (MicroPython's rp2 port and
# micropython-lib usb-device / usb-device-cdc), so a wrong name or a positional argument
# where the real one is keyword-only fails here as it would on a board.


class FakePin:
    # ports/rp2/machine_pin.c: Pin(id, mode=None, pull=None, *, value=None, alt=SIO);
    # OPEN_DRAIN is emulated (0 drives low, 1 releases); pull None means no pull.
    IN, OUT, OPEN_DRAIN, ALT = 0, 1, 2, 3
    PULL_UP, PULL_DOWN = 1, 2
    made: List[Tuple[Any, ...]] = []

    def __init__(
        self, id: Any, mode: Any = None, pull: Any = None, *, value: Any = None, alt: int = -1
    ) -> None:
        if not (isinstance(id, int) and 0 <= id <= 29):
            raise ValueError("invalid pin")
        FakePin.made.append((id, mode, pull, value))
        self.id = id
        self.level = value
        self.sets: List[int] = []

    def value(self, v: Optional[int] = None) -> Optional[int]:
        if v is None:
            return self.level
        self.sets.append(v)
        self.level = v
        return None


def _pin_id(p: Any) -> int:
    if isinstance(p, FakePin):
        return p.id
    if isinstance(p, int):
        return p
    raise TypeError("pin expected")


class FakeWDT:
    # WDT(id=0, timeout=5000), keyword-only; rp2 refuses more than 8388 ms.
    def __init__(self, *, id: int = 0, timeout: int = 5000) -> None:
        if timeout > 8388:
            raise ValueError("timeout exceeds 8388")
        self.timeout = timeout
        self.feeds = 0

    def feed(self) -> None:
        self.feeds += 1


class FakeADC:
    # ADC(id): 0-3 (GP26-29) or 4 (temperature sensor), or a Pin 26-29.
    def __init__(self, id: Any) -> None:
        ch = _pin_id(id)
        if not (0 <= ch <= 4 or 26 <= ch <= 29):
            raise ValueError("invalid ADC channel")
        self.channel = ch

    def read_u16(self) -> int:
        return 0x3000


class FakeUART:
    made: List[FakeUART] = []

    # machine.UART on rp2: UART(id, baudrate=..., bits, parity, stop, tx=, rx=, cts=, rts=,
    # timeout=, timeout_char=, invert=, flow=, txbuf=, rxbuf=)
    def __init__(
        self,
        id: int,
        baudrate: int = 115200,
        bits: int = 8,
        parity: Any = None,
        stop: int = 1,
        *,
        tx: Any = None,
        rx: Any = None,
        cts: Any = None,
        rts: Any = None,
        timeout: int = 0,
        timeout_char: int = 0,
        invert: int = 0,
        flow: int = 0,
        txbuf: int = 256,
        rxbuf: int = 256,
    ) -> None:
        if id not in (0, 1):
            raise ValueError(f"UART({id}) doesn't exist")
        self.id, self.baudrate, self.timeout, self.rxbuf = id, baudrate, timeout, rxbuf
        self.txbuf = txbuf
        self.tx, self.rx = _pin_id(tx), _pin_id(rx)
        self.streaming = 0  # bytes the SBC keeps printing (always this many waiting)
        self.asked: List[int] = []  # what each readinto asked for
        self.queued = 0  # bytes in the transmit buffer, not yet on the wire
        FakeUART.made.append(self)

    def any(self) -> int:
        return self.streaming

    def read(self, n: int = -1) -> Optional[bytes]:
        return None

    def readinto(self, buf: Any, nbytes: Optional[int] = None) -> Optional[int]:
        # ports/rp2/machine_uart.c: after the first byte it waits timeout_char for the
        # next, and readinto reads until the buffer is full: with the SBC printing on,
        # a read without nbytes takes all the room it is given.
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        self.asked.append(n)
        if len(self.asked) > 1000:
            raise AssertionError("the console poll does not stop")
        if not self.streaming:
            return None
        buf[:n] = b"x" * n
        return n

    def write(self, b: Any) -> Optional[int]:
        # timeout=0: what fits in the transmit buffer, None (EAGAIN) when nothing does
        k = min(len(b), self.txbuf - self.queued)
        self.queued += k
        return k or None

    def ioctl(self, req: int, arg: int) -> int:
        return 0


class FakeI2C:
    # machine.I2C(id, *, scl, sda, freq=400000, timeout=50000)
    def __init__(self, id: int, *, scl: Any, sda: Any, freq: int = 400000, timeout: int = 50000):
        if id not in (0, 1):
            raise ValueError(f"I2C({id}) doesn't exist")
        self.id, self.scl, self.sda, self.freq = id, _pin_id(scl), _pin_id(sda), freq


class FakeCDC:
    # usb/device/cdc.py: CDCInterface(**kwargs) passes them to
    # init(baudrate=9600, bits=8, parity="N", stop=1, timeout=1000, txbuf=256, rxbuf=256,
    # flow=0); write() returns how many bytes fitted in the buffer within `timeout`;
    # readinto() returns None when nothing came; poll works through ioctl().
    def __init__(self, **kwargs: Any) -> None:
        self.open = True
        self.accept = 10**9  # bytes the host takes
        self.per_write = 10**9  # bytes one write gets into the USB buffer (a slow host)
        self.sent = b""
        self.init(**kwargs)

    def init(
        self,
        baudrate: int = 9600,
        bits: int = 8,
        parity: str = "N",
        stop: int = 1,
        timeout: int = 1000,
        txbuf: int = 256,
        rxbuf: int = 256,
        flow: int = 0,
    ) -> None:
        if flow != 0:
            raise NotImplementedError
        if not (txbuf and rxbuf >= 64):
            raise ValueError
        self.timeout, self.txbuf, self.rxbuf = timeout, txbuf, rxbuf

    def write(self, buf: Any) -> int:
        k = min(len(buf), self.accept, self.per_write)
        self.sent += bytes(buf[:k])
        self.accept -= k
        return k

    def readinto(self, buf: Any) -> Optional[int]:
        return None

    def is_open(self) -> bool:
        return self.open

    def ioctl(self, req: int, arg: int) -> int:
        return 0


class FakeUsbDevice:
    # usb/device/core.py: get().init(*itfs, **kwargs) -> active(False); config(...);
    # active(True), with config()'s keyword arguments.
    def __init__(self) -> None:
        self.inits: List[Tuple[Tuple[Any, ...], Dict[str, Any]]] = []
        self.fail: Optional[Exception] = None

    def init(self, *itfs: Any, **kwargs: Any) -> None:
        self.config(*itfs, **kwargs)
        self.inits.append((itfs, kwargs))

    def config(
        self,
        *itfs: Any,
        builtin_driver: Any = False,
        manufacturer_str: Optional[str] = None,
        product_str: Optional[str] = None,
        serial_str: Optional[str] = None,
        configuration_str: Optional[str] = None,
        id_vendor: Optional[int] = None,
        id_product: Optional[int] = None,
        bcd_device: Optional[int] = None,
        device_class: int = 0,
        device_subclass: int = 0,
        device_protocol: int = 0,
        config_str: Optional[str] = None,
        max_power_ma: Optional[int] = None,
        remote_wakeup: bool = False,
    ) -> None:
        if self.fail is not None and itfs:
            raise self.fail


class FakePoll:
    registered: List[Any] = []
    events: List[Any] = []  # what the next ipoll() reports: (object, event) pairs
    waits: List[Any] = []  # ("ipoll" | "poll", timeout, objects registered then)

    def register(self, obj: Any, eventmask: int = 5) -> None:
        if not hasattr(obj, "ioctl"):
            raise TypeError("object with stream.ioctl required")
        FakePoll.registered.append(obj)

    def unregister(self, obj: Any) -> None:
        FakePoll.registered.remove(obj)

    def poll(self, timeout: int = -1) -> List[Any]:
        FakePoll.waits.append(("poll", timeout, list(FakePoll.registered)))
        return []

    def ipoll(self, timeout: int = -1) -> Iterator[Any]:
        FakePoll.waits.append(("ipoll", timeout, list(FakePoll.registered)))
        events, FakePoll.events = FakePoll.events, []
        return iter(events)


@pytest.fixture
def hw(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dict[str, Any]]:
    """Stand-in modules; yields them and a fresh `bmc.board.rp2`."""
    FakePin.made = []
    FakeUART.made = []
    FakePoll.registered = []
    FakePoll.events = []
    FakePoll.waits = []
    mem: Dict[int, int] = collections.defaultdict(int)  # RAM registers read 0 at power-on
    state: Dict[str, Any] = {"cause": 1, "bootsel": [0], "resets": 0, "ticks": 300, "slept": 0}
    machine = types.ModuleType("machine")
    machine.Pin = FakePin  # type: ignore[attr-defined]
    machine.WDT = FakeWDT  # type: ignore[attr-defined]
    machine.ADC = FakeADC  # type: ignore[attr-defined]
    machine.UART = FakeUART  # type: ignore[attr-defined]
    machine.I2C = FakeI2C  # type: ignore[attr-defined]
    # ports/rp2/modmachine.c: only these two causes exist on rp2.
    machine.PWRON_RESET, machine.WDT_RESET = 1, 3  # type: ignore[attr-defined]
    machine.mem32 = mem  # type: ignore[attr-defined]
    machine.unique_id = lambda: bytes.fromhex("e66118604b3a2c21")  # type: ignore[attr-defined]
    machine.reset_cause = lambda: state["cause"]  # type: ignore[attr-defined]
    machine.idle = lambda: None  # type: ignore[attr-defined]

    def reset() -> None:
        state["resets"] += 1

    machine.reset = reset  # type: ignore[attr-defined]

    def bootsel_button() -> int:
        seq = state["bootsel"]  # one reading per call; the last one repeats
        return int(seq.pop(0) if len(seq) > 1 else seq[0])

    rp2 = types.ModuleType("rp2")
    rp2.bootsel_button = bootsel_button  # type: ignore[attr-defined]
    usb_dev = FakeUsbDevice()
    usb = types.ModuleType("usb")
    usb_device = types.ModuleType("usb.device")
    usb_device.get = lambda: usb_dev  # type: ignore[attr-defined]
    usb_cdc = types.ModuleType("usb.device.cdc")
    usb_cdc.CDCInterface = FakeCDC  # type: ignore[attr-defined]
    usb.device = usb_device  # type: ignore[attr-defined]
    usb_device.cdc = usb_cdc  # type: ignore[attr-defined]
    select = types.ModuleType("select")
    select.poll = FakePoll  # type: ignore[attr-defined]
    select.POLLIN, select.POLLHUP, select.POLLERR = 1, 16, 8  # type: ignore[attr-defined]
    for name, mod in (
        ("machine", machine),
        ("rp2", rp2),
        ("usb", usb),
        ("usb.device", usb_device),
        ("usb.device.cdc", usb_cdc),
        ("select", select),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "bmc.board.rp2", raising=False)
    board_rp2 = importlib.import_module("bmc.board.rp2")
    # The timer: ticks_ms() as boot.py sees it; the BOOTSEL window is short in tests.
    monkeypatch.setattr(board_rp2, "ticks_ms", lambda: state["ticks"])
    monkeypatch.setattr(board_rp2, "BOOTSEL_WINDOW_MS", 0)

    class Clock:  # boot.py's sleeps move the timer on
        def sleep_ms(self, ms: int) -> None:
            if ms > 0:
                state["slept"] += ms
                state["ticks"] += ms

    monkeypatch.setattr(board_rp2, "Clock", Clock)
    yield {"rp2": board_rp2, "mem": mem, "state": state, "usb": usb_dev}
    sys.modules.pop("bmc.board.rp2", None)
    import bmc.board

    bmc.board.__dict__.pop("rp2", None)


def test_outputs_get_their_level_when_created(hw: Dict[str, Any]) -> None:
    board = hw["rp2"].Board()
    pin = board.output(6, 1, True)
    assert FakePin.made[-1] == (6, FakePin.OPEN_DRAIN, None, 1)  # released, in one call
    assert pin.sets == []
    board.output(2, 0, False)
    assert FakePin.made[-1] == (2, FakePin.OUT, None, 0)
    board.input(3, "up")
    assert FakePin.made[-1][:3] == (3, FakePin.IN, FakePin.PULL_UP)
    board.input(5, None)
    assert FakePin.made[-1][:3] == (5, FakePin.IN, None)  # None: no pull on rp2


def test_adc_uart_and_i2c_are_made_as_the_rp2_port_takes_them(hw: Dict[str, Any]) -> None:
    hw["rp2"].start_usb(False)
    board = hw["rp2"].Board()
    assert board.adc(4).read_u16() == 0x3000  # the die sensor
    u = board.uart(0, 0, 1, 115200)
    assert (u.id, u.tx, u.rx, u.baudrate, u.timeout) == (0, 0, 1, 115200, 0)  # non-blocking
    assert u.readinto(bytearray(8)) is None and u.any() == 0
    assert u in FakePoll.registered  # the console wakes board.wait()
    i2c = board.i2c(0, 20, 21, 100000)
    assert (i2c.id, i2c.sda, i2c.scl, i2c.freq) == (0, 20, 21, 100000)


def test_watchdog_is_clamped_to_the_rp2040_limit(hw: Dict[str, Any]) -> None:
    board = hw["rp2"].Board()
    board.wdt_start(20000)
    board.wdt_feed()
    assert board._wdt.timeout == 8388 and board._wdt.feeds == 1


def test_reset_causes(hw: Dict[str, Any]) -> None:
    rp2, state = hw["rp2"], hw["state"]
    state["cause"] = 1
    assert rp2.Board().reset_cause() == "power_on"
    state["cause"] = 3  # a watchdog reset that nobody asked for
    assert rp2.Board().reset_cause() == "watchdog"
    board = rp2.Board()
    board.reboot()  # machine.reset() is a watchdog reset on the rp2 port
    assert state["resets"] == 1
    assert state["slept"] >= 50  # the USB stack had time to send the last reply
    assert rp2.Board().reset_cause() == "soft"
    assert rp2.Board().reset_cause() == "watchdog"  # the mark is used up


def test_production_mode_has_only_the_firmware_interface(hw: Dict[str, Any]) -> None:
    rp2 = hw["rp2"]
    assert rp2.start_usb(False) == "production"
    (itfs, kw) = hw["usb"].inits[-1]
    assert len(itfs) == 1 and isinstance(itfs[0], FakeCDC)
    assert itfs[0].timeout == 0  # reads and writes never block the main loop
    assert kw["builtin_driver"] is False
    assert kw["serial_str"] == "E66118604B3A2C21"
    assert kw["manufacturer_str"] == "Racklet" and "Racklet" in kw["product_str"]
    assert (kw["id_vendor"], kw["id_product"]) == (0x2E8A, 0x0005)
    board = rp2.Board()
    assert board.link is not None and itfs[0] in FakePoll.registered


def test_wait_sleeps_on_usb_and_the_console_and_backs_off_without_a_host(
    hw: Dict[str, Any],
) -> None:
    rp2 = hw["rp2"]
    rp2.start_usb(False)
    board = rp2.Board()
    cdc = hw["usb"].inits[-1][0][0]
    board.wait(0)
    assert FakePoll.waits == []  # nothing to wait for: no poll at all
    FakePoll.events = [(cdc, 1)]  # a request came
    board.wait(100)
    assert FakePoll.waits == [("ipoll", 100, [cdc])]
    # No host on the bus: the CDC hangs up at once; the pass waits on the rest (not
    # on the CDC) for a bounded time instead of spinning, then watches USB again.
    FakePoll.waits = []
    FakePoll.events = [(cdc, 16)]
    board.wait(100)
    assert FakePoll.waits == [("ipoll", 100, [cdc]), ("poll", 50, [])]
    assert FakePoll.registered == [cdc]


def test_maintenance_mode_leaves_usb_to_the_repl(hw: Dict[str, Any]) -> None:
    # No runtime device: a soft reset (mpremote) would tear it down and drop the port.
    assert hw["rp2"].start_usb(True) == "maintenance"
    assert hw["usb"].inits == []
    assert hw["rp2"].Board().link is None


def test_link_write_gives_up_on_a_host_that_does_not_read(hw: Dict[str, Any]) -> None:
    rp2 = hw["rp2"]
    rp2.start_usb(False)
    link = rp2.Board().link
    cdc = hw["usb"].inits[-1][0][0]
    cdc.accept = 5
    cdc.open = False  # nobody on the bus
    assert link.write(b"0123456789") == 5  # a short count, at once
    cdc.accept = 100
    assert link.write(b"abc") == 3
    assert link.readinto(bytearray(4)) is None  # nothing came: no wait


def test_a_long_answer_to_a_slow_host_feeds_the_watchdog(hw: Dict[str, Any]) -> None:
    # One pass that streams a large boot file to a host reading slowly may outlast the
    # watchdog: while the host takes bytes, the BMC is alive.
    rp2 = hw["rp2"]
    rp2.start_usb(False)
    board = rp2.Board()
    board.wdt_start(5000)
    cdc = hw["usb"].inits[-1][0][0]
    cdc.per_write = 3
    assert board.link.write(b"0123456789") == 10
    assert cdc.sent.endswith(b"0123456789")
    assert board._wdt.feeds == 3  # once for each write that moved after the first


def run_boot_py(hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, flag: bool) -> List[str]:
    from bmc import maintenance

    consumed: List[str] = []

    def consume(root: str) -> bool:
        consumed.append(root)
        return flag

    monkeypatch.setattr(maintenance, "consume", consume)
    hw["rp2"]._mode = None
    hw["usb"].inits.clear()
    exec(compile((ROOT / "firmware" / "boot.py").read_text(), "boot.py", "exec"), {})
    return consumed


@pytest.mark.parametrize(
    ("bootsel", "flag", "mode"),
    [(0, False, "production"), (1, False, "maintenance"), (0, True, "maintenance")],
)
def test_boot_py_chooses_the_mode(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, bootsel: int, flag: bool, mode: str
) -> None:
    hw["state"]["bootsel"] = [bootsel]
    consumed = run_boot_py(hw, monkeypatch, flag)
    assert hw["rp2"].usb_mode() == mode
    assert consumed == [""]  # the one-shot flag is always consumed at boot
    assert bool(hw["usb"].inits) is (mode == "production")


def test_bootsel_pressed_just_after_the_reset_counts(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Held during the reset, the boot ROM would have started its USB bootloader; the
    # press comes after boot.py started, within the window.
    rp2, state = hw["rp2"], hw["state"]
    clock = iter(range(300, 10**6, 10))
    monkeypatch.setattr(rp2, "ticks_ms", lambda: next(clock))
    monkeypatch.setattr(rp2, "BOOTSEL_WINDOW_MS", 100)
    state["bootsel"] = [0, 0, 0, 1]
    run_boot_py(hw, monkeypatch, False)
    assert rp2.usb_mode() == "maintenance"
    clock = iter(range(300, 10**6, 10))
    state["bootsel"] = [0] * 30 + [1]  # too late: after the window
    hw["mem"].clear()
    run_boot_py(hw, monkeypatch, False)
    assert rp2.usb_mode() == "production"


def test_maintenance_lasts_across_soft_resets_until_a_hard_reset(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    rp2, state = hw["rp2"], hw["state"]
    state["ticks"] = 300  # boot.py after a hard reset
    run_boot_py(hw, monkeypatch, True)  # `bmcctl maintenance` left the flag
    assert rp2.usb_mode() == "maintenance"
    for t in (4000, 9000):  # mpremote connects: a soft reset each time, timer running on
        state["ticks"] = t
        run_boot_py(hw, monkeypatch, False)
        assert rp2.usb_mode() == "maintenance" and hw["usb"].inits == []
    # `mpremote reset` (machine.reset(), a watchdog reset): the timer starts again.
    state["ticks"], state["cause"] = 310, 3
    run_boot_py(hw, monkeypatch, False)
    assert rp2.usb_mode() == "production"
    assert rp2.Board().reset_cause() == "soft"  # asked for, not a hung firmware
    # A soft reset outside a session (no REPL made it): a clean hard reset instead, as
    # after one from mpremote's raw REPL MicroPython would run boot.py but not main.py.
    state["ticks"] = 20000
    run_boot_py(hw, monkeypatch, False)
    assert state["resets"] == 1


def test_a_slow_start_is_not_a_reset_loop(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hard start that reaches boot.py late reads like a soft reset outside a session:
    # one reset, and the next start that reads late again is taken for a hard one.
    rp2, state = hw["rp2"], hw["state"]
    state["ticks"] = 1500
    run_boot_py(hw, monkeypatch, False)
    assert state["resets"] == 1
    run_boot_py(hw, monkeypatch, False)
    assert state["resets"] == 1 and rp2.usb_mode() == "production"
    state["ticks"] = 1500  # later soft resets outside a session reset the board again
    run_boot_py(hw, monkeypatch, False)
    assert state["resets"] == 2


def test_a_session_survives_the_timer_passing_half_its_wrap(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ticks_diff of two rp2 ticks_ms() turns negative after 2**29 ms (6.2 days): a soft
    # reset that late must still read as one.
    rp2, state = hw["rp2"], hw["state"]
    run_boot_py(hw, monkeypatch, True)
    assert rp2.usb_mode() == "maintenance"
    state["ticks"] = 300 + 2**29 + 5000
    run_boot_py(hw, monkeypatch, False)
    assert rp2.usb_mode() == "maintenance" and state["resets"] == 0


def test_a_new_session_opens_its_repl_only_after_the_soft_reset_threshold(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # mpremote's first soft reset must come when the timer already says "soft".
    rp2, state = hw["rp2"], hw["state"]
    state["ticks"] = 250
    run_boot_py(hw, monkeypatch, True)
    assert rp2.usb_mode() == "maintenance"
    assert state["ticks"] >= 1000 and state["slept"] == 750
    state["ticks"] = 1000  # the earliest soft reset mpremote can make
    run_boot_py(hw, monkeypatch, False)
    assert rp2.usb_mode() == "maintenance" and state["resets"] == 0


def test_without_usb_device_cdc_the_repl_stays_and_says_why(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "usb.device.cdc", None)
    rp2, state = hw["rp2"], hw["state"]
    run_boot_py(hw, monkeypatch, False)
    assert rp2.usb_mode() == "maintenance"
    assert "usb-device-cdc" in rp2.usb_error
    assert hw["usb"].inits == []
    # The REPL left for repair is a session: mpremote's soft reset on connect keeps it.
    state["ticks"] = 5000
    run_boot_py(hw, monkeypatch, False)
    assert rp2.usb_mode() == "maintenance" and state["resets"] == 0


def test_micropython_without_runtime_usb_restarts_into_maintenance(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed init() may leave a runtime device half up, which would drop the port at
    # every soft reset: the board restarts once, into a plain maintenance boot.
    from bmc import maintenance

    requested: List[str] = []
    monkeypatch.setattr(maintenance, "request", requested.append)
    hw["usb"].fail = AttributeError("'module' object has no attribute 'USBDevice'")
    rp2, state = hw["rp2"], hw["state"]
    assert rp2.start_usb(False) == "maintenance"
    assert "1.23" in rp2.usb_error
    assert requested == [rp2.Board.root] and state["resets"] == 1


def test_without_a_usb_device_at_all_the_repl_is_a_session(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> None:
        raise AttributeError("'module' object has no attribute 'USBDevice'")

    monkeypatch.setattr(sys.modules["usb.device"], "get", missing)
    rp2, state = hw["rp2"], hw["state"]
    run_boot_py(hw, monkeypatch, False)
    assert rp2.usb_mode() == "maintenance" and state["resets"] == 0
    state["ticks"] = 5000
    run_boot_py(hw, monkeypatch, False)
    assert rp2.usb_mode() == "maintenance" and state["resets"] == 0


def run_main_py(monkeypatch: pytest.MonkeyPatch, app_main: Any) -> None:
    app = types.ModuleType("bmc.app")
    app.main = app_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bmc.app", app)
    import bmc

    monkeypatch.setattr(bmc, "app", app, raising=False)
    monkeypatch.setattr(sys, "print_exception", lambda e: None, raising=False)
    import time

    monkeypatch.setattr(time, "sleep_ms", lambda ms: None, raising=False)
    exec(compile((ROOT / "firmware" / "main.py").read_text(), "main.py", "exec"), {})


def test_main_py_runs_the_firmware_only_in_production(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rp2, state = hw["rp2"], hw["state"]
    runs: List[Any] = []
    rp2.start_usb(True)
    run_main_py(monkeypatch, runs.append)
    assert runs == [] and "maintenance mode" in capsys.readouterr().out
    assert state["resets"] == 0  # the REPL stays for mpremote

    def crash(board: Any) -> None:
        runs.append(board)
        raise RuntimeError("boom")

    rp2.start_usb(False)
    run_main_py(monkeypatch, crash)
    assert len(runs) == 1 and runs[0].link is not None
    assert state["resets"] == 1  # no REPL in production: a crash restarts the BMC


def test_console_poll_takes_only_what_the_uart_holds(hw: Dict[str, Any]) -> None:
    # The SBC prints without a pause: the poll must still return (the main loop answers
    # requests and feeds the watchdog), after at most one ring's worth.
    from bmc.console import Console

    uart = hw["rp2"].Board().uart(0, 0, 1, 115200)
    uart.streaming = 64
    console = Console(uart, size=4096)
    assert console.poll() == 4096
    assert max(uart.asked) <= 64  # never more than any() said was there
    assert console.end == 4096


def test_console_write_refuses_what_the_transmit_buffer_cannot_take(hw: Dict[str, Any]) -> None:
    from bmc import errors
    from bmc.cmd_ops import console_write
    from bmc.console import Console
    from bmc.dispatch import Request

    uart = hw["rp2"].Board().uart(0, 0, 1, 115200)
    assert uart.txbuf == 1024  # a whole console-write (256 characters of UTF-8) fits
    assert uart.rxbuf == 4096  # console bytes outlast a long pass (356 ms at 115200)
    app = types.SimpleNamespace(console=Console(uart))

    def write(text: str) -> Any:
        return console_write(
            app, Request(None, 1, "console-write", {"data": text}, "operator", None)
        )

    assert write("é" * 256) == {"written": 256}  # 512 bytes
    with pytest.raises(errors.CmdError) as e:
        write("€" * 256)  # 768 bytes, 512 free
    assert e.value.code == errors.BUSY and e.value.data == {"written_bytes": 512}
    uart.queued = 1024
    with pytest.raises(errors.CmdError) as e:
        write("a")
    assert e.value.data == {"written_bytes": 0}

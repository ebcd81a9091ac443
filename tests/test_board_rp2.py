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


class FakePin:
    IN, OUT, OPEN_DRAIN = 0, 1, 2
    PULL_UP, PULL_DOWN = 1, 2
    made: List[Tuple[Any, ...]] = []

    def __init__(self, pin: int, mode: int = -1, pull: Any = None, value: Any = None) -> None:
        FakePin.made.append((pin, mode, pull, value))
        self.level = value
        self.sets: List[int] = []

    def value(self, v: Optional[int] = None) -> Optional[int]:
        if v is None:
            return self.level
        self.sets.append(v)
        self.level = v
        return None


class FakeWDT:
    def __init__(self, timeout: int) -> None:
        self.timeout = timeout
        self.feeds = 0

    def feed(self) -> None:
        self.feeds += 1


class FakeCDC:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.open = True
        self.accept = 10**9  # bytes the host takes
        self.sent = b""

    def write(self, buf: Any) -> int:
        k = min(len(buf), self.accept)
        self.sent += bytes(buf[:k])
        self.accept -= k
        return k

    def readinto(self, buf: Any) -> None:
        return None

    def is_open(self) -> bool:
        return self.open


class FakeUsbDevice:
    def __init__(self) -> None:
        self.inits: List[Tuple[Tuple[Any, ...], Dict[str, Any]]] = []

    def init(self, *itfs: Any, **kw: Any) -> None:
        self.inits.append((itfs, kw))


class FakePoll:
    def register(self, obj: Any, mask: int = 0) -> None:
        pass

    def unregister(self, obj: Any) -> None:
        pass

    def poll(self, timeout: int = -1) -> List[Any]:
        return []


@pytest.fixture
def hw(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dict[str, Any]]:
    """Stand-in modules; yields them and a fresh `bmc.board.rp2`."""
    FakePin.made = []
    mem: Dict[int, int] = collections.defaultdict(int)  # RAM registers read 0 at power-on
    state: Dict[str, Any] = {"cause": 1, "bootsel": 0, "resets": 0}
    machine = types.ModuleType("machine")
    machine.Pin = FakePin  # type: ignore[attr-defined]
    machine.WDT = FakeWDT  # type: ignore[attr-defined]
    machine.PWRON_RESET, machine.WDT_RESET = 1, 3  # type: ignore[attr-defined]
    machine.mem32 = mem  # type: ignore[attr-defined]
    machine.unique_id = lambda: bytes.fromhex("e66118604b3a2c21")  # type: ignore[attr-defined]
    machine.reset_cause = lambda: state["cause"]  # type: ignore[attr-defined]
    machine.idle = lambda: None  # type: ignore[attr-defined]

    def reset() -> None:
        state["resets"] += 1

    machine.reset = reset  # type: ignore[attr-defined]
    rp2 = types.ModuleType("rp2")
    rp2.bootsel_button = lambda: state["bootsel"]  # type: ignore[attr-defined]
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
    assert rp2.Board().reset_cause() == "soft"
    assert rp2.Board().reset_cause() == "watchdog"  # the mark is used up


def test_production_mode_has_only_the_firmware_interface(hw: Dict[str, Any]) -> None:
    rp2 = hw["rp2"]
    assert rp2.start_usb(False) == "production"
    (itfs, kw) = hw["usb"].inits[-1]
    assert len(itfs) == 1 and isinstance(itfs[0], FakeCDC)
    assert kw["builtin_driver"] is False
    assert kw["serial_str"] == "E66118604B3A2C21"
    assert kw["manufacturer_str"] == "Racklet" and "Racklet" in kw["product_str"]
    assert rp2.Board().link is not None


def test_maintenance_mode_keeps_the_repl(hw: Dict[str, Any]) -> None:
    assert hw["rp2"].start_usb(True) == "maintenance"
    assert hw["usb"].inits[-1][1]["builtin_driver"] is True


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


@pytest.mark.parametrize(
    ("bootsel", "flag", "mode"),
    [(0, False, "production"), (1, False, "maintenance"), (0, True, "maintenance")],
)
def test_boot_py_chooses_the_mode(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, bootsel: int, flag: bool, mode: str
) -> None:
    from bmc import maintenance

    consumed: List[str] = []

    def consume(root: str) -> bool:
        consumed.append(root)
        return flag

    monkeypatch.setattr(maintenance, "consume", consume)
    hw["state"]["bootsel"] = bootsel
    exec(compile((ROOT / "firmware" / "boot.py").read_text(), "boot.py", "exec"), {})
    assert hw["rp2"].usb_mode() == mode
    assert consumed == [""]  # the one-shot flag is always consumed at boot
    assert hw["usb"].inits[-1][1]["builtin_driver"] is (mode == "maintenance")


def test_without_usb_device_cdc_the_repl_stays_and_says_why(
    hw: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "usb.device.cdc", None)
    rp2 = hw["rp2"]
    assert rp2.start_usb(False) == "maintenance"
    assert "usb-device-cdc" in rp2.usb_error
    assert hw["usb"].inits == []

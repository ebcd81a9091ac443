"""The usbboot relay against the simulated boot ROM, with an in-memory BMC side.

The BMC side here is a stand-in holding a manifest (the firmware side has its own
tests in test_boot_fw.py); the ROM is the real simulated device over its socket bus.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import time
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import pytest
import usb.core
import usb.util
from racklet_host.errors import LinkGone
from racklet_host.usbboot import pyusb_bus
from racklet_host.usbboot.relay import BmcSource, BootFailed, Cache, Entry, Relay
from racklet_host.usbboot.simbus import SimBus
from racklet_host.usbboot.simrom import SimBootRom
from racklet_host.usbboot.transport import UsbAbsent, UsbError


class StandInBmc(BmcSource):
    def __init__(self, files: Dict[str, Tuple[bytes, str]], cache: Cache) -> None:
        super().__init__(None, None, cache)  # type: ignore[arg-type]
        self.files = files
        self.reports: List[Tuple[str, str, str]] = []
        self.refuse_from: Optional[str] = None  # vouching fails from this name on
        self.gone_at: Optional[str] = None

    def load_manifest(self) -> None:
        self.gen = 1
        self.entries = {
            n: Entry(n, len(d), hashlib.sha256(d).hexdigest(), src)
            for n, (d, src) in self.files.items()
        }

    def vouch(self, e: Entry, event: str = "check") -> None:
        if self.gone_at == e.name:
            raise LinkGone("slot0 went away (device closed)")
        if self.refuse_from == e.name:
            raise BootFailed(f"the BMC no longer vouches for {e.name}: manifest changed")
        self.reports.append((event, e.name, ""))

    def fetch(self, e: Entry) -> Tuple[Optional[bytes], str]:
        if e.src == "host":
            return super().fetch(e)
        return self.files[e.name][0], ""

    def report(self, event: str, name: str = "", detail: str = "") -> Optional[str]:
        self.reports.append((event, name, detail))
        return None


@pytest.fixture
def rig(tmp_path: pathlib.Path) -> Any:
    made: List[SimBootRom] = []

    def make(
        files: Dict[str, Tuple[bytes, str]], asks: List[str], **rom_kw: Any
    ) -> Tuple[StandInBmc, Any]:
        cache = Cache(str(tmp_path / "cache"))
        for name, (data, src) in files.items():
            if src == "host":
                p = tmp_path / ("src-" + name)
                p.write_bytes(data)
                cache.add(str(p))
        rom = SimBootRom(str(tmp_path / "usb.sock"), 0x2711, files=asks, **rom_kw)
        made.append(rom)
        rom.power_on()
        bmc = StandInBmc(files, cache)
        return bmc, rom

    yield make
    for r in made:
        r.close()


def files() -> Dict[str, Tuple[bytes, str]]:
    return {
        "bootcode4.bin": (os.urandom(3000), "bmc"),
        "config.txt": (b"arm_64bit=1\nkernel=kernel8.img\n", "bmc"),
        "start4.elf": (os.urandom(20000), "bmc"),
        "kernel8.img": (os.urandom(70000), "host"),
    }


ASKS = ["config.txt", "start4.elf", "kernel8.img"]


def test_boots_byte_for_byte(rig: Any) -> None:
    fs = files()
    bmc, rom = rig(fs, ASKS + ["../../etc/shadow", "bootcfg.txt"])
    summary = Relay(bmc, SimBus(rom.path), wait_timeout=5).run()
    assert rom.wait(5) and not rom.failures, rom.log
    assert rom.bootcode == fs["bootcode4.bin"][0]
    assert rom.received == {n: fs[n][0] for n in ASKS}
    assert rom.sizes["../../etc/shadow"] == 0 and rom.sizes["bootcfg.txt"] == 0
    assert rom.enumerations == [(0x2711, 3), (0x2711, 1)]  # ROM, then the file server
    assert summary["refused"] == ["../../etc/shadow"] and summary["missing"] == ["bootcfg.txt"]
    assert ("refused", "../../etc/shadow", "name with ..") in bmc.reports
    assert ("serve", "kernel8.img", "") in bmc.reports and bmc.reports[-1][0] == "done"


def test_endless_unknown_names_are_reported_once_each_and_at_most_reported_max(
    rig: Any,
) -> None:
    """A device asking for names without end must not fill the BMC's log: each name
    is reported once, REPORTED_MAX of them; the rest are counted in the summary."""
    from racklet_host.usbboot.relay import REPORTED_MAX

    unknown = [f"opt{i}.dtbo" for i in range(REPORTED_MAX + 36)]
    asks = ASKS + unknown[:10] + ["../x"] * 3 + unknown + ["../y"]
    bmc, rom = rig(files(), asks)
    summary = Relay(bmc, SimBus(rom.path), wait_timeout=5, grace=0.5).run()
    assert rom.wait(5) and not rom.failures, rom.log
    told = [(e, n) for e, n, _ in bmc.reports if e in ("missing", "refused")]
    assert len(told) == REPORTED_MAX and len(set(told)) == REPORTED_MAX
    assert ("refused", "../x") in told and ("refused", "../y") not in told
    assert summary["refused"] == ["../x"]
    assert summary["missing"] == unknown[: REPORTED_MAX - 1]
    assert summary["unreported"] == len(unknown) - (REPORTED_MAX - 1) + 1  # + "../y"
    assert all(rom.sizes[n] == 0 for n in unknown + ["../x", "../y"])
    assert rom.received == {n: bmc.files[n][0] for n in ASKS}
    assert bmc.reports[-1] == ("done", "", "4 served, 38 requests for names not reported")


def test_absent_files_are_answered_before_the_bmc_is_told(rig: Any) -> None:
    """The SBC's answer for a file it may not have does not wait on the BMC's log."""
    bmc, rom = rig(files(), ASKS + ["../../etc/shadow", "bootcfg.txt"])
    answered_first: Dict[str, bool] = {}
    report = bmc.report

    def told(event: str, name: str = "", detail: str = "") -> Optional[str]:
        if event in ("missing", "refused"):
            deadline = time.monotonic() + 2  # the ROM thread records what it was told
            while name not in rom.sizes and time.monotonic() < deadline:
                time.sleep(0.01)
            answered_first[name] = name in rom.sizes
        return report(event, name, detail)

    bmc.report = told
    Relay(bmc, SimBus(rom.path), wait_timeout=5).run()
    assert rom.wait(5) and not rom.failures, rom.log
    assert answered_first == {"../../etc/shadow": True, "bootcfg.txt": True}


def test_a_bmc_that_stops_answering_reports_costs_one_try_each() -> None:
    calls: List[str] = []

    class Gone:
        def call(self, cmd: str, args: Dict[str, Any], key: Any, timeout: float) -> None:
            calls.append(args["event"])
            raise LinkGone("slot1 went away")

    src = BmcSource(Gone(), None, None)  # type: ignore[arg-type]
    assert src.report("missing", "a.bin") == "slot1 went away"
    assert calls == ["missing"] * 3  # three tries, with pauses, while it may come back
    assert src.report("missing", "b.bin") == "slot1 went away"
    assert calls == ["missing"] * 4  # then one: the boot does not wait on it


def test_tampered_cache_file_is_refused(rig: Any) -> None:
    fs = files()
    bmc, rom = rig(fs, ASKS)
    cached = bmc.cache.path(hashlib.sha256(fs["kernel8.img"][0]).hexdigest())
    data = bytearray(open(cached, "rb").read())
    data[100] ^= 1
    open(cached, "wb").write(bytes(data))
    with pytest.raises(BootFailed, match="kernel8.img refused: digest mismatch"):
        Relay(bmc, SimBus(rom.path), wait_timeout=5).run()
    assert "kernel8.img" not in rom.received and rom.sizes.get("kernel8.img") is None
    events = [r[0] for r in bmc.reports]
    assert "mismatch" in events and events[-1] == "failed" and "done" not in events
    assert ("serve", "kernel8.img", "") not in bmc.reports


def test_missing_cache_file_fails(rig: Any) -> None:
    fs = files()
    bmc, rom = rig(fs, ASKS)
    os.unlink(bmc.cache.path(hashlib.sha256(fs["kernel8.img"][0]).hexdigest()))
    with pytest.raises(BootFailed, match="not in the host cache"):
        Relay(bmc, SimBus(rom.path), wait_timeout=5).run()
    assert "kernel8.img" not in rom.received


@pytest.mark.parametrize("digest", ["/etc/hostname", "../../../../etc/hostname", "AB" * 32])
def test_a_host_file_digest_that_is_no_digest_names_no_path(rig: Any, digest: str) -> None:
    """A manifest's digests come from the BMC: one that is a path is not opened."""
    fs = files()
    bmc, rom = rig(fs, ASKS)
    bmc.load_manifest()
    bmc.load_manifest = lambda: None  # type: ignore[method-assign]
    bmc.entries["kernel8.img"].sha256 = digest
    with pytest.raises(BootFailed, match="kernel8.img refused: not a SHA-256 digest"):
        Relay(bmc, SimBus(rom.path), wait_timeout=5).run()
    assert "kernel8.img" not in rom.received
    assert ("mismatch", "kernel8.img") in [r[:2] for r in bmc.reports]


def test_manifest_changed_mid_boot(rig: Any) -> None:
    bmc, rom = rig(files(), ASKS)
    bmc.refuse_from = "start4.elf"
    with pytest.raises(BootFailed, match="no longer vouches for start4.elf"):
        Relay(bmc, SimBus(rom.path), wait_timeout=5).run()
    assert list(rom.received) == ["config.txt"]
    assert bmc.reports[-1][0] == "failed"


def test_bmc_gone_mid_boot(rig: Any) -> None:
    bmc, rom = rig(files(), ASKS)
    bmc.gone_at = "kernel8.img"
    with pytest.raises(BootFailed, match="BMC link lost mid-boot"):
        Relay(bmc, SimBus(rom.path), wait_timeout=5).run()
    assert "kernel8.img" not in rom.received


def test_bootcode_not_in_manifest(rig: Any) -> None:
    fs = files()
    del fs["bootcode4.bin"]
    bmc, rom = rig(fs, ASKS)
    with pytest.raises(BootFailed, match="bootcode4.bin is not in the boot manifest"):
        Relay(bmc, SimBus(rom.path), wait_timeout=5).run()
    assert rom.bootcode is None


def test_no_device(tmp_path: pathlib.Path) -> None:
    bmc = StandInBmc(files(), Cache(str(tmp_path)))
    with pytest.raises(BootFailed, match="no Raspberry Pi in USB boot mode"):
        Relay(bmc, SimBus(str(tmp_path / "none.sock")), wait_timeout=0.3).run()


# -- what a real SBC does that a plain simulated ROM did not -------------------------

PI4_FILES = {"fixup4.dat": (os.urandom(3000), "bmc"), "cmdline.txt": (b"console=ttyS0\n", "bmc")}
BOOTCODE_SESSION = ["config.txt", "start4.elf", "fixup4.dat"]  # bootcode4.bin's file server
START4_SESSION = ["config.txt", "kernel8.img", "cmdline.txt"]  # start4.elf's file server


@pytest.mark.parametrize("handoff", ["disconnect", "done"])
def test_pi4_boot_has_two_file_server_sessions(rig: Any, handoff: str) -> None:
    """bootcode4.bin's file server hands over (leaving the bus, or with Done) and
    start4.elf's enumerates anew for the kernel: both are served, then done."""
    fs = dict(files(), **PI4_FILES)
    sessions = [(BOOTCODE_SESSION, handoff), (START4_SESSION, "done")]
    bmc, rom = rig(fs, [], sessions=sessions)
    summary = Relay(bmc, SimBus(rom.path), wait_timeout=5, grace=1).run()
    assert rom.wait(5) and not rom.failures, rom.log
    assert rom.reads == BOOTCODE_SESSION + START4_SESSION
    assert rom.received["kernel8.img"] == fs["kernel8.img"][0]
    assert summary["served"] == ["bootcode4.bin"] + BOOTCODE_SESSION + START4_SESSION
    assert summary["sessions"] == 2
    assert rom.enumerations == [(0x2711, 3), (0x2711, 1), (0x2711, 1)]
    assert rom.done_acks == (2 if handoff == "done" else 1)  # empty-name Done acked
    assert bmc.reports[-1] == ("done", "", "7 served")


def test_stale_rom_listed_after_the_bootcode(rig: Any) -> None:
    """The ROM stays listed for a moment after stage 1: skipped, not a failure."""
    bmc, rom = rig(files(), ASKS, stale_for=0.5)
    summary = Relay(bmc, SimBus(rom.path), wait_timeout=5, grace=1).run()
    assert rom.wait(5) and not rom.failures, rom.log
    assert rom.bootcodes == 1 and list(rom.received) == ASKS
    assert summary["served"][0] == "bootcode4.bin" and bmc.reports[-1][0] == "done"


def test_bootcode_sent_again_to_a_new_rom(rig: Any) -> None:
    """A ROM that enumerates anew did not take the bootcode: it gets it again."""
    bmc, rom = rig(files(), ASKS, reject_bootcodes=1)
    summary = Relay(bmc, SimBus(rom.path), wait_timeout=5, grace=1).run()
    assert rom.wait(5) and not rom.failures, rom.log
    assert rom.bootcodes == 2 and list(rom.received) == ASKS
    assert summary["served"][:2] == ["bootcode4.bin", "bootcode4.bin"]


def test_bootcode_that_never_takes_fails_clearly(rig: Any) -> None:
    bmc, rom = rig(files(), ASKS, reject_bootcodes=99)
    with pytest.raises(BootFailed, match="ROM came back after 3 sends of the bootcode"):
        Relay(bmc, SimBus(rom.path), wait_timeout=5, grace=1).run()
    assert rom.bootcodes == 3 and not rom.received
    assert bmc.reports[-1][0] == "failed" and "3 sends" in bmc.reports[-1][2]


def test_missing_return_code_is_tolerated(rig: Any) -> None:
    """No return code after the bootcode (the ROM already left): the file server decides."""
    bmc, rom = rig(files(), ASKS, return_code=False)
    Relay(bmc, SimBus(rom.path), wait_timeout=5, grace=1).run()
    assert rom.wait(5) and not rom.failures, rom.log
    assert list(rom.received) == ASKS


def test_open_denied_once_is_retried(rig: Any) -> None:
    bmc, rom = rig(files(), ASKS, deny_opens=1)
    Relay(bmc, SimBus(rom.path), wait_timeout=5, grace=1).run()
    assert rom.wait(5) and not rom.failures, rom.log
    assert rom.denied == 1 and list(rom.received) == ASKS


def test_open_always_denied_says_what_to_install(rig: Any) -> None:
    bmc, rom = rig(files(), ASKS, deny_opens=10**6)
    with pytest.raises(BootFailed, match="access denied: install the udev rule"):
        Relay(bmc, SimBus(rom.path), wait_timeout=0.5).run()
    assert bmc.reports[-1][0] == "failed" and "access denied" in bmc.reports[-1][2]


def test_device_gone_mid_file_fails(rig: Any) -> None:
    """Leaving the bus between requests ends a session; in the middle of ReadFile it
    is an error."""
    bmc, rom = rig(files(), ASKS, vanish_in="start4.elf")
    with pytest.raises(BootFailed, match="USB: .*left the bus"):
        Relay(bmc, SimBus(rom.path), wait_timeout=5, grace=1).run()
    assert list(rom.received) == ["config.txt"] and bmc.reports[-1][0] == "failed"


# -- pyusb: every libusb error is the relay's UsbError ----------------------------------


class FakeConfig:
    bNumInterfaces = 1

    def __init__(self, intf: Any) -> None:
        self.intf = intf

    def __getitem__(self, key: Tuple[int, int]) -> Any:  # cfg[(0, 0)], as pyusb's
        return self.intf


class FakeUsbDev:
    """A pyusb Device for the Pi 4 ROM whose opens are denied `denied` times."""

    def __init__(self, address: int = 5, denied: int = 0) -> None:
        self.idProduct = 0x2711
        self.iSerialNumber = 3
        self.bus = 1
        self.address = address
        self.port_numbers = (1, 3)
        self.denied = denied
        self.claimed: List[int] = []
        self.set_configuration_calls = 0

    def is_kernel_driver_active(self, intf: int) -> bool:
        return False

    def get_active_configuration(self) -> Any:
        if self.denied:
            self.denied -= 1
            raise usb.core.USBError("Access denied (insufficient permissions)", 13, errno.EACCES)
        eps = [SimpleNamespace(bEndpointAddress=0x01), SimpleNamespace(bEndpointAddress=0x82)]
        intf = SimpleNamespace(bInterfaceNumber=0, eps=eps)
        return FakeConfig(intf)

    def set_configuration(self) -> None:
        self.set_configuration_calls += 1


def fake_usb(devs: List[FakeUsbDev]) -> Any:
    def claim(dev: FakeUsbDev, n: int) -> None:
        dev.claimed.append(n)

    def find_descriptor(intf: Any, custom_match: Any) -> Any:
        return next((e for e in intf.eps if custom_match(e)), None)

    core = SimpleNamespace(
        find=lambda find_all=False, idVendor=0: list(devs),
        USBError=usb.core.USBError,
        NoBackendError=usb.core.NoBackendError,
    )
    util = SimpleNamespace(
        claim_interface=claim,
        dispose_resources=lambda dev: None,
        find_descriptor=find_descriptor,
        endpoint_direction=usb.util.endpoint_direction,
        ENDPOINT_OUT=usb.util.ENDPOINT_OUT,
        ENDPOINT_IN=usb.util.ENDPOINT_IN,
    )
    return SimpleNamespace(core=core, util=util)


@pytest.fixture
def pyusb(monkeypatch: pytest.MonkeyPatch) -> Any:
    def make(*devs: FakeUsbDev) -> pyusb_bus.PyUsbBus:
        monkeypatch.setattr(pyusb_bus, "_import_usb", lambda: fake_usb(list(devs)))
        return pyusb_bus.PyUsbBus()

    return make


def test_pyusb_open_denied_right_after_enumeration_is_retried(pyusb: Any) -> None:
    dev = FakeUsbDev(denied=1)
    got = pyusb(dev).wait_device(2)
    assert got.ident == "1:5" and got.location == "1-1.3" and dev.claimed == [0]
    assert dev.set_configuration_calls == 0  # the ROM is configured: usbboot never sets it


def test_pyusb_open_denied_is_reported_to_the_bmc(pyusb: Any, tmp_path: pathlib.Path) -> None:
    bus = pyusb(FakeUsbDev(denied=10**6))
    bmc = StandInBmc(files(), Cache(str(tmp_path)))
    with pytest.raises(BootFailed, match="USB: opening at 1-1.3: access denied: install the udev"):
        Relay(bmc, bus, wait_timeout=0.5).run()
    assert bmc.reports[-1][0] == "failed" and "racklet group" in bmc.reports[-1][2]


def test_pyusb_skips_the_enumeration_just_used(pyusb: Any) -> None:
    with pytest.raises(UsbAbsent):
        pyusb(FakeUsbDev(address=5)).wait_device(0.3, skip="1:5")
    assert pyusb(FakeUsbDev(address=5), FakeUsbDev(address=6)).wait_device(1, "1:5").ident == "1:6"
    assert issubclass(UsbAbsent, UsbError)


def test_a_request_may_take_as_long_as_usbboot_waits() -> None:
    # A stage may think for seconds before its next file request (a Pi 5's bootmain:
    # 1-2.5 s before config.txt); usbboot's ep_read waits 20 s for it.
    from racklet_host.usbboot.transport import ep_read

    asked: List[Tuple[int, int, int, float]] = []

    class Device:
        def control_in(self, value: int, index: int, length: int, timeout: float = 0.0) -> bytes:
            asked.append((value, index, length, timeout))
            return bytes(length)

    assert ep_read(Device(), 260) == bytes(260)  # type: ignore[arg-type]
    assert asked == [(260, 0, 260, 20.0)]

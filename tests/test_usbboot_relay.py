"""The usbboot relay against the simulated boot ROM, with an in-memory BMC side.

The BMC side here is a stand-in holding a manifest (the firmware side has its own
tests in test_boot_fw.py); the ROM is the real simulated device over its socket bus.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any, Dict, List, Optional, Tuple

import pytest
from racklet_host.errors import LinkGone
from racklet_host.usbboot.relay import BmcSource, BootFailed, Cache, Entry, Relay
from racklet_host.usbboot.simbus import SimBus
from racklet_host.usbboot.simrom import SimBootRom


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

    def make(files: Dict[str, Tuple[bytes, str]], asks: List[str]) -> Tuple[StandInBmc, Any]:
        cache = Cache(str(tmp_path / "cache"))
        for name, (data, src) in files.items():
            if src == "host":
                p = tmp_path / ("src-" + name)
                p.write_bytes(data)
                cache.add(str(p))
        rom = SimBootRom(str(tmp_path / "usb.sock"), 0x2711, files=asks)
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

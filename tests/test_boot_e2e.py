"""End to end: inventory and USB boot through the relay, from the real firmware under
MicroPython on bmc-sim, to a simulated Raspberry Pi boot ROM.

One rack of CM4 carriers (boot-select = nRPIBOOT). The ROM (`simrom.SimBootRom`)
follows the virtual SBC: it is on the bus while the SBC runs in USB boot mode, which
only happens when the BMC held boot-select at power-on. Slot 1 takes the boot that
succeeds and the failures the relay detects (tampered and missing cache files, a
traversal name); slot 2 the failures that break the boot under the relay's feet
(manifest changed, BMC unplugged, relay killed). The stand-in BMC tests in
test_usbboot_relay.py cover the relay's own logic; here every check is the firmware's:
what it vouches for, streams, logs and counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from bmc import boardfile
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from racklet_host import cli
from racklet_host.cli_boot import manifest_set
from racklet_host.client import BmcClient
from racklet_host.errors import Invalid
from racklet_host.keys import load_key, write_new_key
from racklet_host.usbboot.relay import BmcSource, BootFailed, Cache, Relay
from racklet_host.usbboot.simbus import SimBus
from racklet_host.usbboot.simrom import SimBootRom
from racklet_sim.rack import Rack, board_path

BOARD = "pico-cm4"
URL = "https://inventory.example.net/rack-7"
CM4 = 0x2711


# -- fixtures and helpers ------------------------------------------------------


@pytest.fixture(scope="module")
def rack() -> Iterator[Rack]:
    with Rack(boards=2, board=BOARD) as r:
        yield r


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("boot")
    os.chmod(d, 0o700)
    return d


def provision_admins(rack: Rack, path: Path) -> None:
    """Every slot given a new admin key, written to `path` (BOOTSEL held via the sim),
    and no minimum off time, so the boots of a test can follow each other."""
    key = write_new_key(str(path))
    for slot in range(1, rack.boards + 1):
        rack.bootsel(slot, seconds=2)
        with BmcClient.open(rack.port(slot)) as c:
            c.keys_provision("admin", key)
        with BmcClient.open(rack.port(slot), key=key) as c:
            c.config_set("min_off_ms", 0)


@pytest.fixture(scope="module")
def trust(work: Path) -> Dict[str, Any]:
    """Two real public keys as PEM files, with their raw bytes."""
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    out: Dict[str, Any] = {"files": [], "raw": []}
    for name, pub, raw in (
        ("ed25519.pub", ed, ed.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)),
        (
            "p256.pub",
            p256,
            p256.public_bytes(ser.Encoding.X962, ser.PublicFormat.UncompressedPoint),
        ),
    ):
        path = work / name
        path.write_bytes(pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
        out["files"].append(str(path))
        out["raw"].append(raw)
    return out


@pytest.fixture(scope="module")
def admin(rack: Rack, work: Path, trust: Dict[str, Any]) -> Path:
    """Every slot provisioned with one admin key (BOOTSEL held via the sim), its inventory
    pushed with bmcctl, and no minimum off time (so the boots here follow each other)."""
    path = work / "admin.key"
    provision_admins(rack, path)
    argv = ["--rack", str(rack.path), "--key-file", str(path), "inventory", "set", "--all"]
    argv += ["--url", URL]
    for f in trust["files"]:
        argv += ["--key", f]
    assert cli.main(argv) == 0
    return path


def boot_files(work: Path, tag: str) -> Dict[str, bytes]:
    """A set of boot files: small ones go to the BMC's flash, kernel8.img to the host cache."""
    files = {
        "bootcode4.bin": os.urandom(6000),
        "start4.elf": os.urandom(40000),
        "fixup4.dat": os.urandom(3000),
        "config.txt": b"arm_64bit=1\nenable_uart=1\ndtoverlay=gpio-shutdown\n",
        "cmdline.txt": b"console=serial0,115200 root=/dev/ram0\n",
        "kernel8.img": os.urandom(200_000),
    }
    d = work / tag
    d.mkdir(exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return files


# what the SBC asks for, in order, after the bootcode
ASKS = ["config.txt", "start4.elf", "fixup4.dat", "cmdline.txt", "racklet-inventory.json"]
ASKS += ["kernel8.img"]
# a real Pi 4: bootcode4.bin's file server hands over by leaving the bus, then
# start4.elf's enumerates anew and asks for config.txt again and the kernel
PI4_SESSIONS = [
    (["config.txt", "start4.elf", "fixup4.dat"], "disconnect"),
    (["config.txt", "cmdline.txt", "racklet-inventory.json", "kernel8.img"], "done"),
]


def push_manifest(rack: Rack, slot: int, admin: Path, work: Path, tag: str, cache: Path) -> None:
    argv = ["--rack", str(rack.path), "--key-file", str(admin), "boot", "manifest", "set"]
    argv += [f"slot{slot}", "--cache", str(cache)]
    for name in boot_files_names():
        argv += ["--file", str(work / tag / name)]
    assert cli.main(argv) == 0


def boot_files_names() -> List[str]:
    return ["bootcode4.bin", "start4.elf", "fixup4.dat", "config.txt", "cmdline.txt"] + [
        "kernel8.img"
    ]


def client(rack: Rack, slot: int, admin: Path) -> BmcClient:
    return BmcClient.open(rack.port(slot), key=load_key(str(admin)), timeout=10)


def metrics(rack: Rack, slot: int) -> Dict[str, float]:
    """`name{labels}` -> value of the BMC's OpenMetrics samples."""
    with BmcClient.open(rack.port(slot)) as c:
        text = c.metrics()
    out: Dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def events(rack: Rack, slot: int, admin: Path, since: int = 0) -> List[Dict[str, Any]]:
    with client(rack, slot, admin) as c:
        evs, _ = c.events(since)
    return evs


def last_seq(rack: Rack, slot: int, admin: Path) -> int:
    with client(rack, slot, admin) as c:
        _, data = c.events(0)
    return int(data["next"])


def causes(evs: List[Dict[str, Any]]) -> List[str]:
    return [str(e.get("cause")) for e in evs]


def detail_of(evs: List[Dict[str, Any]], cause: str) -> str:
    found = [str(e.get("detail")) for e in evs if e.get("cause") == cause]
    assert found, f"no {cause} event in {causes(evs)}"
    return found[-1]


def sbc_off(rack: Rack, slot: int, admin: Path) -> None:
    """The SBC powered off, so the next power-on is the BMC's USB boot."""
    with client(rack, slot, admin) as c:
        if c.status()["state"] != "Off":
            c.power("ForceOff")
    deadline = time.monotonic() + 10
    while rack.sbc(slot)["os"] != "off":
        assert time.monotonic() < deadline, "the SBC did not power off"
        time.sleep(0.05)


def in_usb_boot(rack: Rack, slot: int) -> Callable[[], bool]:
    def pred() -> bool:
        s = rack.sbc(slot)
        return bool(s["os"] == "running" and s["boot_mode"] == "usb")

    return pred


@pytest.fixture
def rom(rack: Rack, tmp_path: Path) -> Iterator[Callable[..., SimBootRom]]:
    made: List[SimBootRom] = []

    def make(slot: int, asks: Optional[List[str]] = None, **kw: Any) -> SimBootRom:
        r = SimBootRom(str(tmp_path / f"usb{slot}.sock"), CM4, files=asks or ASKS, **kw)
        r.follow(in_usb_boot(rack, slot))
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def bmcctl(rack: Rack, admin: Path, *argv: str) -> int:
    return cli.main(["--rack", str(rack.path), "--key-file", str(admin)] + list(argv))


def boot_usb(rack: Rack, admin: Path, slot: int, cache: Path, sock: str, *extra: str) -> int:
    return bmcctl(
        rack,
        admin,
        "boot",
        "usb",
        f"slot{slot}",
        "--cache",
        str(cache),
        "--usb-sim",
        sock,
        "--wait",
        "20",
        *extra,
    )


def boot_status(rack: Rack, slot: int) -> Dict[str, Any]:
    with BmcClient.open(rack.port(slot)) as c:
        st: Dict[str, Any] = c.call("boot-status", auth=False)
    return st


BOOT_SELECT = boardfile.load(str(board_path(BOARD)))["signals"]["boot_select"]


def boot_select_released(rack: Rack, slot: int) -> bool:
    """The SBC sees boot-select (CM4 nRPIBOOT: active low, pulled up on the module) at its
    inactive level; `levels` is keyed by pin number."""
    level = rack.sbc(slot)["levels"].get(str(BOOT_SELECT["pin"]))
    return level == (0 if BOOT_SELECT["active_high"] else 1)


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- the boot that works ---------------------------------------------------------


def test_inventory_pushed_and_shown(rack: Rack, admin: Path, trust: Dict[str, Any]) -> None:
    fps = [hashlib.sha256(raw).hexdigest() for raw in trust["raw"]]
    with BmcClient.open(rack.port(1)) as c:
        inv = c.call("inventory-get", auth=False)
    assert inv["url"] == URL and inv["generation"] >= 1
    assert [k["fp"] for k in inv["keys"]] == fps
    assert [k["type"] for k in inv["keys"]] == ["ed25519", "ecdsa-p256"]
    # and in its metrics, where a BMC that missed a push stands out
    m = metrics(rack, 1)
    assert m["bmc_inventory_generation"] == inv["generation"]
    assert m["bmc_inventory_keys"] == 2


def test_usb_boot_end_to_end(
    rack: Rack,
    admin: Path,
    work: Path,
    trust: Dict[str, Any],
    rom: Callable[..., SimBootRom],
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = boot_files(work, "good")
    cache = work / "cache-good"
    push_manifest(rack, 1, admin, work, "good", cache)
    capsys.readouterr()
    assert bmcctl(rack, admin, "--json", "boot", "manifest", "get", "slot1") == 0
    listed = {f["name"]: f for f in json.loads(capsys.readouterr().out)[0]["data"]["files"]}
    assert listed["kernel8.img"]["src"] == "host" and listed["start4.elf"]["src"] == "bmc"
    assert listed["cmdline.txt"]["src"] == "gen"
    for name, data in files.items():
        if name != "cmdline.txt":
            assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest()
            assert listed[name]["size"] == len(data)
    assert bmcctl(rack, admin, "boot", "manifest", "get", "slot1") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["TARGET", "FILE", "SRC", "SIZE", "SHA256"], table
    assert table[1].split()[:2] == ["slot1", "generation"], table
    rows = {ln.split()[1]: ln.split()[2:] for ln in table[2:]}
    assert rows.keys() == listed.keys(), table  # a line per file
    k = listed["kernel8.img"]
    assert rows["kernel8.img"] == ["host", str(k["size"]), k["sha256"][:16]], table
    with BmcClient.open(rack.port(1)) as c:
        gen = c.boot_manifest()["gen"]
    m = metrics(rack, 1)
    assert m["bmc_boot_manifest_generation"] == gen >= 1
    assert m["bmc_boot_manifest_files"] == len(files)  # cmdline.txt given: counted

    sbc_off(rack, 1, admin)
    since = last_seq(rack, 1, admin)
    before = metrics(rack, 1)
    r = rom(1, sessions=PI4_SESSIONS)
    t0 = time.monotonic()
    assert boot_usb(rack, admin, 1, cache, r.path) == 0
    took = time.monotonic() - t0
    out = capsys.readouterr()
    assert "booted, served bootcode4.bin" in out.out, out.err
    assert r.wait(10) and not r.failures, r.log

    # byte for byte what the manifest lists
    assert r.bootcode == files["bootcode4.bin"]
    assert r.reads == PI4_SESSIONS[0][0] + PI4_SESSIONS[1][0]  # both sessions, in order
    for name in ("config.txt", "start4.elf", "fixup4.dat", "kernel8.img"):
        assert r.received[name] == files[name], name
    # the generated files carry the pushed URL and keys
    fps = [hashlib.sha256(raw).hexdigest() for raw in trust["raw"]]
    cmdline = r.received["cmdline.txt"].decode()
    assert cmdline.startswith("console=serial0,115200 root=/dev/ram0 ")
    assert f"racklet.inventory={URL}" in cmdline.split()
    assert f"racklet.keys={','.join(fps)}" in cmdline.split()
    inv = json.loads(r.received["racklet-inventory.json"])
    assert inv["url"] == URL and inv["version"] == 1
    assert [(k["type"], k["fingerprint"], k["public"]) for k in inv["keys"]] == [
        ("ed25519", fps[0], trust["raw"][0].hex()),
        ("ecdsa-p256", fps[1], trust["raw"][1].hex()),
    ]
    assert hashlib.sha256(r.received["cmdline.txt"]).hexdigest() == listed["cmdline.txt"]["sha256"]

    # the SBC came up in USB boot mode; the BMC let go of boot-select afterwards
    assert rack.sbc(1)["boot_mode"] == "usb"
    wait_for(lambda: boot_select_released(rack, 1), 5, "boot-select still asserted")
    st = boot_status(rack, 1)
    assert st["state"] == "done" and st["detail"] == "8 served"  # config.txt twice
    capsys.readouterr()
    assert bmcctl(rack, admin, "boot", "status", "slot1") == 0
    head, row = capsys.readouterr().out.splitlines()
    assert head.split()[:4] == ["TARGET", "STATE", "GEN", "COUNTERS"], head
    assert row.split()[1] == "done" and row.endswith("8 served"), row
    assert f"{st['counters']['boots_done']} done, " in row and " 0 mismatch, " in row, row
    evs = events(rack, 1, admin, since)
    got = causes(evs)
    for cause in ("usb_boot_select", "usb_boot_power_cycle", "usb_boot_done", "usb_boot_release"):
        assert cause in got, got
    assert got.index("usb_boot_select") < got.index("usb_boot_done") < got.index("usb_boot_release")
    assert detail_of(evs, "usb_boot_done") == "8 served, 0 unlisted asked"
    after = metrics(rack, 1)

    def delta(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert delta('bmc_usb_boots_total{outcome="started"}') == 1
    assert delta('bmc_usb_boots_total{outcome="done"}') == 1
    assert delta("bmc_boot_files_served_total") == 8
    streamed = sum(len(files[n]) for n in ("bootcode4.bin", "config.txt", "start4.elf"))
    streamed += len(files["fixup4.dat"]) + len(r.received["cmdline.txt"])
    streamed += len(r.received["racklet-inventory.json"]) + len(files["config.txt"])
    assert delta("bmc_boot_streamed_bytes_total") == streamed
    # the streams' own time on the BMC: some, and less than the whole boot took
    assert 0 < delta("bmc_boot_stream_seconds_total") < took
    assert after['bmc_usb_boot_state{bmc_usb_boot_state="done"}'] == 1


# -- failures the relay detects: the BMC logs and counts them ----------------------


def test_tampered_cache_file(
    rack: Rack, admin: Path, work: Path, rom: Callable[..., SimBootRom], tmp_path: Path
) -> None:
    files = boot_files(work, "tamper")
    cache = tmp_path / "cache"
    push_manifest(rack, 1, admin, work, "tamper", cache)
    cached = Cache(str(cache)).path(hashlib.sha256(files["kernel8.img"]).hexdigest())
    data = bytearray(Path(cached).read_bytes())
    data[12345] ^= 0x40
    Path(cached).write_bytes(bytes(data))
    sbc_off(rack, 1, admin)
    since = last_seq(rack, 1, admin)
    before = metrics(rack, 1)
    r = rom(1)
    assert boot_usb(rack, admin, 1, cache, r.path) == 1
    assert "kernel8.img" not in r.received and "kernel8.img" not in r.sizes
    assert r.received["config.txt"] == files["config.txt"]  # served before the bad one
    evs = events(rack, 1, admin, since)
    assert "digest mismatch in the host cache" in detail_of(evs, "boot_digest_mismatch")
    assert "kernel8.img refused" in detail_of(evs, "usb_boot_failed")
    assert "usb_boot_done" not in causes(evs)
    after = metrics(rack, 1)
    key = 'bmc_boot_refusals_total{reason="digest_mismatch"}'
    assert after[key] - before[key] == 1
    key = 'bmc_usb_boots_total{outcome="failed"}'
    assert after[key] - before[key] == 1
    assert boot_status(rack, 1)["state"] == "failed"
    wait_for(lambda: boot_select_released(rack, 1), 5, "boot-select still asserted")


def test_file_changed_on_the_bmc_flash(
    rack: Rack, admin: Path, work: Path, rom: Callable[..., SimBootRom], tmp_path: Path
) -> None:
    """A byte of start4.elf changes on the BMC's flash after its upload (littlefs keeps no
    checksum of file data): the chunk goes out with the CRC stored at upload, arrives as a
    bad-CRC frame, and the relay refuses the file; the SBC never gets it."""
    files = boot_files(work, "flash")
    cache = tmp_path / "cache"
    push_manifest(rack, 1, admin, work, "flash", cache)
    image = rack.path / "slot1.img"
    piece = files["start4.elf"][8192 : 8192 + 512]
    flash = image.read_bytes()
    found = []  # the live copy, and any stale ones the upload's appends left in free blocks
    at = flash.find(piece)
    while at >= 0:
        found.append(at + 10)
        at = flash.find(piece, at + 1)
    assert found
    with open(image, "r+b") as f:
        for at in found:
            f.seek(at)
            f.write(bytes([flash[at] ^ 0x04]))
    try:
        sbc_off(rack, 1, admin)
        since = last_seq(rack, 1, admin)
        before = metrics(rack, 1)
        r = rom(1)
        assert boot_usb(rack, admin, 1, cache, r.path) == 1
        assert "start4.elf" not in r.received and r.received["config.txt"] == files["config.txt"]
        evs = events(rack, 1, admin, since)
        detail = detail_of(evs, "boot_digest_mismatch")
        assert "start4.elf" in detail and "corrupt stream from the BMC" in detail, detail
        assert "start4.elf refused" in detail_of(evs, "usb_boot_failed")
        after = metrics(rack, 1)
        key = 'bmc_boot_refusals_total{reason="digest_mismatch"}'
        assert after[key] - before[key] == 1
    finally:
        with open(image, "r+b") as f:
            for at in found:
                f.seek(at)
                f.write(flash[at : at + 1])


def test_missing_cache_file_and_unlisted_names(
    rack: Rack, admin: Path, work: Path, rom: Callable[..., SimBootRom], tmp_path: Path
) -> None:
    """The ROM probes a traversal name and an unlisted file (size 0, counted); then the
    kernel's cache file is gone: the boot fails, logged."""
    files = boot_files(work, "missing")
    cache = tmp_path / "cache"
    push_manifest(rack, 1, admin, work, "missing", cache)
    os.unlink(Cache(str(cache)).path(hashlib.sha256(files["kernel8.img"]).hexdigest()))
    sbc_off(rack, 1, admin)
    since = last_seq(rack, 1, admin)
    before = metrics(rack, 1)
    asks = ["config.txt", "../../flash/data/keys", "boot/../../keys", "bootcfg.txt"]
    r = rom(1, asks + ["kernel8.img"])
    assert boot_usb(rack, admin, 1, cache, r.path) == 1
    assert r.sizes["../../flash/data/keys"] == 0 and r.sizes["boot/../../keys"] == 0
    assert r.sizes["bootcfg.txt"] == 0
    assert list(r.received) == ["config.txt"]
    evs = events(rack, 1, admin, since)
    refused = [str(e.get("detail")) for e in evs if e.get("cause") == "boot_file_refused"]
    assert refused == ["../../flash/data/keys name with ..", "boot/../../keys name with .."]
    assert "not in the host cache" in detail_of(evs, "usb_boot_failed")
    after = metrics(rack, 1)
    for reason, n in (("refused", 2), ("missing", 1)):
        key = f'bmc_boot_refusals_total{{reason="{reason}"}}'
        assert after[key] - before[key] == n, key
    key = 'bmc_usb_boots_total{outcome="failed"}'
    assert after[key] - before[key] == 1


def test_traversal_names_refused_by_the_firmware(
    rack: Rack, admin: Path, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither the manifest nor a file read takes a name with '..': clear errors, nothing
    stored, nothing streamed. The firmware is asked directly (bmcctl refuses such a name
    before it sends anything, checked last)."""
    files = boot_files(work, "trav")
    with BmcClient.open(rack.port(1)) as c:
        gen = c.call("boot-manifest-get", auth=False)["gen"]
    data = files["config.txt"]
    entry = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "src": "bmc"}
    with client(rack, 1, admin) as c:
        for name in ("../x", "boot/../../keys", "/flash/data/keys"):
            with pytest.raises(Invalid, match=r"refused: no '\.\.' and no leading '/'"):
                c.call("boot-manifest-set", {"files": [dict(entry, name=name)]})
        assert c.call("boot-manifest-get", auth=False)["gen"] == gen
        chunks: List[bytes] = []
        with pytest.raises(Invalid, match=r"no '\.\.'"):
            c.call("boot-file-read", {"name": "../boot_manifest"}, on_chunk=chunks.append)
        assert chunks == []
    # bmcctl: a usage error, before any upload or manifest change
    capsys.readouterr()
    path = str(work / "trav" / "config.txt")
    assert bmcctl(rack, admin, "boot", "manifest", "set", "slot1", "--file", f"../x={path}") == 2
    out = capsys.readouterr()
    assert "refused: no '..'" in out.out + out.err
    with BmcClient.open(rack.port(1)) as c:
        assert c.call("boot-manifest-get", auth=False)["gen"] == gen


# -- failures under the relay's feet ----------------------------------------------------


def serve_in_process(
    rack: Rack, slot: int, admin: Path, cache: Path, sock: str, on_log: Callable[[str], None]
) -> Tuple[BmcClient, Relay]:
    key = load_key(str(admin))
    c = BmcClient.open(rack.port(slot), key=key, timeout=10)
    c.call("boot-usb", {"timeout_ms": 30000})
    relay = Relay(BmcSource(c, key, Cache(str(cache))), SimBus(sock), log=on_log, wait_timeout=20)
    return c, relay


def test_manifest_changed_mid_boot(
    rack: Rack, admin: Path, work: Path, rom: Callable[..., SimBootRom], tmp_path: Path
) -> None:
    files = boot_files(work, "change")
    cache = tmp_path / "cache"
    push_manifest(rack, 2, admin, work, "change", cache)
    sbc_off(rack, 2, admin)
    since = last_seq(rack, 2, admin)
    before = metrics(rack, 2)
    r = rom(2)
    newer = work / "change" / "start4.elf"
    newer.write_bytes(os.urandom(1000))  # the admin's new start4.elf
    holder: Dict[str, BmcClient] = {}

    def on_log(line: str) -> None:
        if line.startswith("served config.txt"):  # between two files: change the manifest
            c = holder["c"]
            manifest_set(c, [("config.txt", str(work / "change" / "config.txt"))], 0, str(cache))

    c, relay = serve_in_process(rack, 2, admin, cache, r.path, on_log)
    holder["c"] = c
    with c, pytest.raises(BootFailed, match="no longer vouches for start4.elf"):
        relay.run()
    assert list(r.received) == ["config.txt"] and r.bootcode == files["bootcode4.bin"]
    evs = events(rack, 2, admin, since)
    assert "during a USB boot" in detail_of(evs, "boot_manifest_changed")
    assert "boot manifest changed" in detail_of(evs, "boot_refused")
    assert "no longer vouches for start4.elf" in detail_of(evs, "usb_boot_failed")
    after = metrics(rack, 2)
    key = 'bmc_boot_refusals_total{reason="conflict"}'
    assert after[key] - before[key] >= 1
    assert boot_status(rack, 2)["state"] == "failed"


def test_bmc_unplugged_mid_boot(
    rack: Rack, admin: Path, work: Path, rom: Callable[..., SimBootRom], tmp_path: Path
) -> None:
    """The BMC pulled between two files and left out while the relay gives up: the boot
    fails, saying the link went away and that the BMC could not be told (its log will
    not have it). Plugged in again, it starts with boot-select released."""
    boot_files(work, "unplug")
    cache = tmp_path / "cache"
    push_manifest(rack, 2, admin, work, "unplug", cache)
    sbc_off(rack, 2, admin)
    r = rom(2)
    starts = rack.slot_info(2)["starts"]

    def on_log(line: str) -> None:
        if line.startswith("served config.txt"):
            rack.kill(2, restart=False)  # pulled: SIGKILL, the PTY goes away

    c, relay = serve_in_process(rack, 2, admin, cache, r.path, on_log)
    with c, pytest.raises(BootFailed, match="BMC link lost mid-boot: .* went away") as failed:
        relay.run()
    assert "(and the BMC could not be told: " in str(failed.value)
    assert list(r.received) == ["config.txt"]  # nothing after the BMC went away
    # the SBC side: a BMC that is gone leaves every pad released; nRPIBOOT is pulled up
    wait_for(lambda: boot_select_released(rack, 2), 5, "boot-select still asserted")
    rack.start(2)  # plugged in again
    rack.wait_restarted(2, starts)
    # the BMC is back on the same slot; it starts with boot-select released and logs why
    with client(rack, 2, admin) as c2:
        assert c2.status()["boot_mode"] == "normal"
        evs, _ = c2.events(0)
    starts_ev = [i for i, e in enumerate(evs) if e.get("cause") == "start"]
    assert starts_ev and "reset power_on" in str(evs[starts_ev[-1]].get("detail"))
    assert "usb_boot_failed" not in causes(evs[starts_ev[-1] :])  # it was never told
    assert boot_status(rack, 2)["state"] == "idle"
    wait_for(lambda: boot_select_released(rack, 2), 5, "boot-select still asserted")


def test_relay_killed_mid_file(
    rack: Rack, admin: Path, work: Path, rom: Callable[..., SimBootRom], tmp_path: Path
) -> None:
    """bmcctl boot usb as a process, SIGKILLed while the BMC streams it a file: the BMC
    keeps answering and its boot session times out, logged and counted."""
    files = boot_files(work, "kill")
    (work / "kill" / "start4.elf").write_bytes(os.urandom(60000))  # a long stream
    files["start4.elf"] = (work / "kill" / "start4.elf").read_bytes()
    cache = tmp_path / "cache"
    push_manifest(rack, 2, admin, work, "kill", cache)
    sbc_off(rack, 2, admin)
    since = last_seq(rack, 2, admin)
    before = metrics(rack, 2)
    r = rom(2)
    starts = rack.slot_info(2)["starts"]
    argv = [sys.executable, "-m", "racklet_host.cli", "--rack", str(rack.path)]
    argv += ["--key-file", str(admin), "boot", "usb", "slot2", "--cache", str(cache)]
    argv += ["--usb-sim", r.path, "--wait", "20", "--boot-timeout", "3"]
    relay = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        assert relay.stderr is not None
        seen = []
        for line in relay.stderr:
            seen.append(line)
            if "served config.txt" in line:  # next: start4.elf, streamed by the BMC
                relay.send_signal(signal.SIGKILL)
                break
        relay.wait(10)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
    assert relay.returncode == -signal.SIGKILL, seen
    assert "start4.elf" not in r.received
    wait_for(lambda: bool(r.failures), 10, "the ROM did not notice the host going away")
    assert "host went away" in r.failures[0] or "closed" in r.failures[0]
    # the BMC answers, and gives the session up once no relay reports for the timeout
    wait_for(lambda: boot_status(rack, 2)["state"] == "timeout", 15, "no boot timeout")
    evs = events(rack, 2, admin, since)
    assert "no relay activity for 3000 ms" in detail_of(evs, "usb_boot_timeout")
    assert "usb_boot_release" in causes(evs) and "usb_boot_done" not in causes(evs)
    after = metrics(rack, 2)
    key = 'bmc_usb_boots_total{outcome="timeout"}'
    assert after[key] - before[key] == 1
    wait_for(lambda: boot_select_released(rack, 2), 5, "boot-select still asserted")
    assert rack.slot_info(2)["starts"] == starts  # the BMC never went down


# -- sharing the BMC's port --------------------------------------------------------


def test_the_bmc_is_free_between_the_relays_requests(
    rack: Rack, admin: Path, tmp_path: Path
) -> None:
    """A USB boot takes a minute or more; meanwhile the bridge must still scrape the
    BMC and an admin reach it. The relay holds its port only for each request."""
    from racklet_host.transport import Link

    argv = [sys.executable, "-m", "racklet_host.cli", "--rack", str(rack.path)]
    argv += ["--key-file", str(admin), "boot", "serve", "slot1", "--cache", str(tmp_path)]
    argv += ["--usb-sim", str(tmp_path / "no-sbc.sock"), "--wait", "4"]
    relay = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        assert relay.stderr is not None
        line = relay.stderr.readline()
        assert "manifest generation" in line, line  # the relay waits for the SBC now
        Link(rack.port(1)).close()  # PortBusy if the relay still held the port
        with BmcClient.open(rack.port(1), busy_wait=0) as c:
            assert c.status()["state"]
        assert relay.poll() is None  # still waiting for the SBC
        assert relay.wait(15) == 1
        assert "no Raspberry Pi in USB boot mode" in relay.stderr.read()
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()


def test_key_file_read_is_bounded(tmp_path: Path) -> None:
    """A key file is read up to KEY_FILE_MAX: a huge one (or /dev/zero) is a usage
    error naming it, not read whole into memory and sent as an oversized request."""
    from racklet_host.cli import UsageError
    from racklet_host.cli_boot import KEY_FILE_MAX, read_key_files

    big = tmp_path / "big.pem"
    big.write_text("a" * (KEY_FILE_MAX + 1))
    with pytest.raises(UsageError, match="big.pem is too large"):
        read_key_files([str(big)])
    with pytest.raises(UsageError, match="/dev/zero is too large"):
        read_key_files(["/dev/zero"])


def test_tuf_root_with_a_key_twice_is_refused_not_compacted_away(tmp_path: Path) -> None:
    """bmcctl compacts a TUF root before sending it; a key given twice (which the BMC
    refuses) must be refused here too, not resolved to the last one in passing."""
    from racklet_host.cli import UsageError
    from racklet_host.cli_boot import read_key_files

    root = tmp_path / "root.json"
    root.write_text('{"signed": {"_type": "targets", "_type": "root"}, "signatures": []}')
    with pytest.raises(UsageError, match="root.json is not valid JSON: key '_type' given twice"):
        read_key_files([str(root)])
    root.write_text('{"signed": {"_type": "root", "version": 1},\n "signatures": []}\n')
    want = '{"signed":{"_type":"root","version":1},"signatures":[]}'
    assert read_key_files([str(root)]) == [want]

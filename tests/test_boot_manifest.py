"""Boot manifests as large as a Pi 5 / CM5 needs (32 files), end to end: bmcctl and
BmcClient against the real firmware under MicroPython on bmc-sim (a Pi 5 carrier,
boot-select = the power button), and a USB boot of a simulated BCM2712 ROM.

32 entries do not fit one request frame: the client uploads the files list and sets it
by its digest, and the BMC streams the listing back an entry a line. The firmware-level
checks of the same paths (each refusal, the space the upload does not take) are in
tests/mpy/scenarios_boot_files.py; the heap they take in tests/mpy/manifest_units.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from bmc import codec
from racklet_host import cli
from racklet_host.client import Args, BmcClient
from racklet_host.errors import Conflict, Invalid
from racklet_host.keys import load_key
from racklet_host.usbboot.relay import BmcSource, Cache
from racklet_host.usbboot.simrom import SimBootRom
from racklet_sim.rack import Rack

from tests.test_boot_e2e import provision_admins

BOARD = "pico-rpi5"
PI5 = 0x2712
ON_BMC_MAX = 1024  # the small files go to the BMC's flash, the others to the host cache

# What bootcode5.bin's file server asks for, in order (docs/boot.md, "Pi 5 / CM5 over USB").
PI5_ASKS = ["mcb.bin"] + [f"memsys{i:02d}.bin" for i in range(9)]
PI5_ASKS += ["bootmain", "rp1c0fw1.bin", "config.txt", "boot.img"]
# A manifest of 32: the boot firmware, boot.img, and loose files and overlays beside it.
PI5_FILES = ["bootcode5.bin"] + PI5_ASKS + ["cmdline.txt", "kernel_2712.img", "initramfs8"]
PI5_FILES += [
    "bcm2712-rpi-5-b.dtb",
    "bcm2712d0-rpi-5-b.dtb",
    "bcm2712-rpi-500.dtb",
    "bcm2712-rpi-cm5-cm5io.dtb",
    "bcm2712-rpi-cm5l-cm5io.dtb",
]
PI5_FILES += [
    f"overlays/{n}"
    for n in (
        "overlay_map.dtb",
        "gpio-shutdown.dtbo",
        "gpio-poweroff.dtbo",
        "disable-bt.dtbo",
        "disable-wifi.dtbo",
        "uart0-pi5.dtbo",
        "i2c-rtc.dtbo",
        "dwc2.dtbo",
        "vc4-kms-v3d-pi5.dtbo",
    )
]


@pytest.fixture(scope="module")
def rack() -> Iterator[Rack]:
    with Rack(boards=1, board=BOARD) as r:
        yield r


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pi5")
    os.chmod(d, 0o700)
    return d


@pytest.fixture(scope="module")
def admin(rack: Rack, work: Path) -> Path:
    """Slot 1 provisioned with an admin key (BOOTSEL held via the sim); no minimum off time."""
    path = work / "admin.key"
    provision_admins(rack, path)
    return path


def pi5_files(work: Path, names: List[str]) -> Dict[str, bytes]:
    """Small fake boot files under work/pi5/ (overlays/ included), the same bytes each
    time; boot.img, the kernel, the initramfs and bootcode5.bin larger than ON_BMC_MAX."""
    out: Dict[str, bytes] = {}
    for i, name in enumerate(names):
        if name == "config.txt":
            data = b"arm_64bit=1\nenable_uart=1\ndtoverlay=gpio-shutdown\n"
        elif name == "cmdline.txt":
            data = b"console=serial0,115200 root=/dev/ram0\n"
        elif name in ("boot.img", "kernel_2712.img", "initramfs8", "bootcode5.bin"):
            data = random.Random(name).randbytes(4000 + 1000 * i)
        else:
            data = random.Random(name).randbytes(200 + 37 * i)
        path = work / "pi5" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[name] = data
    return out


def bmcctl(rack: Rack, admin: Path, *argv: str) -> int:
    return cli.main(["--rack", str(rack.path), "--key-file", str(admin)] + list(argv))


def manifest_set_argv(work: Path, names: List[str], cache: Path) -> List[str]:
    argv = ["boot", "manifest", "set", "slot1", "--cache", str(cache)]
    argv += ["--on-bmc-max", str(ON_BMC_MAX)]
    for name in names:
        argv += ["--file", f"{name}={work / 'pi5' / name}"]
    return argv


def client(rack: Rack, admin: Path) -> BmcClient:
    return BmcClient.open(rack.port(1), key=load_key(str(admin)), timeout=10)


def expected(files: Dict[str, bytes], names: List[str]) -> List[Tuple[str, int, str, str]]:
    """The listing a manifest of `names` gives: cmdline.txt generated (no inventory here)."""
    out = []
    for n in names:
        if n == "cmdline.txt":
            continue
        src = "bmc" if len(files[n]) <= ON_BMC_MAX else "host"
        out.append((n, len(files[n]), hashlib.sha256(files[n]).hexdigest(), src))
    return out


def entries(listing: List[Args]) -> List[Tuple[str, int, str, str]]:
    return [(f["name"], f["size"], f["sha256"], f["src"]) for f in listing if f["src"] != "gen"]


@pytest.fixture(scope="module")
def pushed(rack: Rack, admin: Path, work: Path) -> Dict[str, Any]:
    """The 32-file Pi 5 manifest, pushed with bmcctl (small files to the BMC's flash)."""
    files = pi5_files(work, PI5_FILES)
    cache = work / "cache"
    assert bmcctl(rack, admin, *manifest_set_argv(work, PI5_FILES, cache)) == 0
    return {"files": files, "cache": cache}


# -- set and get ----------------------------------------------------------------------


def test_pi5_manifest_of_32_set_and_listed(
    rack: Rack, admin: Path, work: Path, pushed: Dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    files = pushed["files"]
    assert len(PI5_FILES) == len(set(PI5_FILES)) == 32
    entries32 = [
        {"name": n, "size": len(files[n]), "sha256": "0" * 64, "src": "host"} for n in PI5_FILES
    ]
    inline = codec.dumps({"cmd": "boot-manifest-set", "args": {"files": entries32}})
    assert len(inline) > codec.MAX_PAYLOAD  # a request frame cannot carry it
    capsys.readouterr()
    assert bmcctl(rack, admin, "--json", "boot", "manifest", "get", "slot1") == 0
    got = json.loads(capsys.readouterr().out)[0]["data"]
    assert sorted(got) == ["bmc_bytes", "bmc_limit", "files", "gen"]
    assert entries(got["files"]) == expected(files, PI5_FILES)
    gen_files = [f["name"] for f in got["files"] if f["src"] == "gen"]
    assert gen_files == ["cmdline.txt"]
    on_bmc = [n for n in PI5_FILES if len(files[n]) <= ON_BMC_MAX]
    assert got["bmc_bytes"] == sum(len(files[n]) for n in on_bmc) and len(on_bmc) >= 15
    # the table lists every entry, a line each (after the header and the summary)
    assert bmcctl(rack, admin, "boot", "manifest", "get", "slot1") == 0
    table = capsys.readouterr().out.splitlines()[2:]
    assert [ln.split()[1] for ln in table] == [f["name"] for f in got["files"]], table
    assert set(PI5_FILES) <= {ln.split()[1] for ln in table}
    # BmcClient and the relay's view: the same 32, the count checked
    with client(rack, admin) as c:
        m = c.boot_manifest()
        assert m == got
        source = BmcSource(c, None, Cache(str(pushed["cache"])))
        source.load_manifest()
    assert source.gen == got["gen"]
    assert sorted(source.entries) == sorted(PI5_FILES)
    for n, size, sha, src in expected(files, PI5_FILES):
        e = source.entries[n]
        assert (e.size, e.sha256, e.src) == (size, sha, src), n


def test_set_answers_a_summary(
    rack: Rack, admin: Path, work: Path, pushed: Dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with client(rack, admin) as c:
        gen = c.boot_manifest()["gen"]
    capsys.readouterr()
    argv = manifest_set_argv(work, PI5_FILES, pushed["cache"])
    assert bmcctl(rack, admin, "--json", *argv) == 0
    data = json.loads(capsys.readouterr().out)[0]["data"]
    with client(rack, admin) as c:
        m = c.boot_manifest()
    assert data == {
        "gen": gen + 1,
        "count": 32,
        "bmc_bytes": m["bmc_bytes"],
        "bmc_limit": m["bmc_limit"],
    }


def test_33_files_refused(
    rack: Rack, admin: Path, work: Path, pushed: Dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    names = PI5_FILES + ["overlays/one-more.dtbo"]
    files = pi5_files(work, names)
    with client(rack, admin) as c:
        before = c.boot_manifest()
        used = c.call("boot-status", auth=False)
    capsys.readouterr()
    # bmcctl counts before it uploads anything
    assert bmcctl(rack, admin, *manifest_set_argv(work, names, pushed["cache"])) == 2
    assert "33 files: the BMC's boot manifest holds at most 32" in capsys.readouterr().err
    # the BMC refuses such a list itself
    listed = [
        {"name": n, "size": len(files[n]), "sha256": hashlib.sha256(files[n]).hexdigest()}
        for n in names
    ]
    with client(rack, admin) as c:
        with pytest.raises(Invalid, match="files must be a list of at most 32 entries"):
            c.boot_manifest_set([dict(f, src="host") for f in listed])
        assert c.boot_manifest() == before
        assert c.call("boot-status", auth=False)["gen"] == used["gen"]


def test_a_boot_folder_given_whole(
    rack: Rack, admin: Path, work: Path, pushed: Dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # `--dir`: every file of a boot folder, named by its path there; dotfiles left out
    folder = work / "pi5-folder"
    for name, data in pushed["files"].items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / ".DS_Store").write_bytes(b"finder")
    (folder / "overlays" / "._dwc2.dtbo").write_bytes(b"resource fork")
    (folder / ".git").mkdir(exist_ok=True)
    (folder / ".git" / "HEAD").write_bytes(b"ref")
    argv = ["boot", "manifest", "set", "slot1", "--cache", str(pushed["cache"])]
    argv += ["--on-bmc-max", str(ON_BMC_MAX), "--dir", str(folder)]
    assert bmcctl(rack, admin, *argv) == 0
    with client(rack, admin) as c:
        got = c.boot_manifest()
    assert sorted(entries(got["files"])) == sorted(expected(pushed["files"], PI5_FILES))
    # a name given twice (a folder and a file), or a folder that is not there: usage errors
    capsys.readouterr()
    twice = argv + ["--file", f"config.txt={folder / 'config.txt'}"]
    assert bmcctl(rack, admin, *twice) == 2
    assert "config.txt given twice" in capsys.readouterr().err
    assert bmcctl(rack, admin, *(argv[:-1] + [str(work / "nowhere")])) == 2
    assert "no such folder" in capsys.readouterr().err
    with client(rack, admin) as c:
        assert c.boot_manifest()["gen"] == got["gen"]


def test_a_usbboot_folder_with_bootfiles_bin(
    rack: Rack, admin: Path, work: Path, pushed: Dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # usbboot's folders (mass-storage-gadget64, recovery5) keep the boot firmware in
    # bootfiles.bin, a tar with a folder per SoC; rpiboot serves DIR/2712/<name> first,
    # then 2712/<name> from the tar, then DIR/<name>
    import io
    import tarfile

    folder = work / "usbboot-msg"
    (folder / "2712").mkdir(parents=True, exist_ok=True)
    members = {
        "2711/bootcode4.bin": b"pi4 second stage",
        "2712/bootcode5.bin": b"pi5 second stage " * 100,
        "2712/mcb.bin": b"memory controller",
        "2712/memsys00.bin": b"sdram setup",
        "2712/config.txt": b"from the tar\n",
        "2712/bootmain": b"boot main",
    }
    with tarfile.open(folder / "bootfiles.bin", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (folder / "boot.img").write_bytes(b"FAT image " * 300)
    (folder / "config.txt").write_bytes(b"beside the tar\n")
    (folder / "bootmain").write_bytes(b"beside the tar too\n")
    (folder / "2712" / "config.txt").write_bytes(b"the overlay wins\n")
    want = {
        "bootcode5.bin": members["2712/bootcode5.bin"],
        "mcb.bin": members["2712/mcb.bin"],
        "memsys00.bin": members["2712/memsys00.bin"],
        "bootmain": members["2712/bootmain"],
        "config.txt": b"the overlay wins\n",
        "boot.img": b"FAT image " * 300,
    }
    argv = ["boot", "manifest", "set", "slot1", "--cache", str(pushed["cache"])]
    argv += ["--on-bmc-max", str(ON_BMC_MAX), "--dir", str(folder)]
    with client(rack, admin) as c:
        before = c.boot_manifest()
    capsys.readouterr()
    assert bmcctl(rack, admin, *argv) == 2  # which SoC's files: not guessed
    assert "name the SBC's with --chip 2711 or 2712" in capsys.readouterr().err
    assert bmcctl(rack, admin, *argv, "--chip", "2712") == 0
    with client(rack, admin) as c:
        got = c.boot_manifest()
    listed = {f["name"]: (f["size"], f["sha256"]) for f in got["files"] if f["src"] != "gen"}
    assert listed == {n: (len(d), hashlib.sha256(d).hexdigest()) for n, d in want.items()}
    assert got["gen"] == before["gen"] + 1
    # a bootfiles.bin that is not a tar: a usage error, nothing changed
    (folder / "bootfiles.bin").write_bytes(b"not a tar archive")
    assert bmcctl(rack, admin, *argv, "--chip", "2712") == 2
    assert "is not a readable tar archive" in capsys.readouterr().err
    with client(rack, admin) as c:
        assert c.boot_manifest()["gen"] == got["gen"]
    # the module's other tests go on from the 32-file manifest
    assert bmcctl(rack, admin, *manifest_set_argv(work, PI5_FILES, pushed["cache"])) == 0


def test_stale_expect_refused(rack: Rack, admin: Path, pushed: Dict[str, Any]) -> None:
    with client(rack, admin) as c:
        before = c.boot_manifest()
        files = [{k: f[k] for k in ("name", "size", "sha256", "src")} for f in before["files"]]
        files = [f for f in files if f["src"] != "gen"]
        files.append({"name": "cmdline.txt", **_cmdline_entry(pushed)})
        for listed in (files, files[:3]):  # uploaded as a files list, and inline
            with pytest.raises(Conflict, match=f"generation {before['gen']}"):
                c.boot_manifest_set(listed, expect=before["gen"] - 1)
            assert c.boot_manifest() == before
        done = c.boot_manifest_set(files, expect=before["gen"])
        assert done["gen"] == before["gen"] + 1 and done["count"] == 32


def _cmdline_entry(pushed: Dict[str, Any]) -> Dict[str, Any]:
    data = pushed["files"]["cmdline.txt"]
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "src": "bmc"}


def test_bad_files_list_refused(rack: Rack, admin: Path, pushed: Dict[str, Any]) -> None:
    """Not JSON, an upload left unfinished, a list changed on the flash after its upload:
    `invalid`, and the manifest stays as it was."""
    with client(rack, admin) as c:
        before = c.boot_manifest()
        files = [
            {k: f[k] for k in ("name", "size", "sha256", "src")}
            for f in before["files"]
            if f["src"] != "gen"
        ]
        files.append({"name": "cmdline.txt", **_cmdline_entry(pushed)})

        def refused(sha: str, what: str) -> None:
            with pytest.raises(Invalid, match=what):
                c.call("boot-manifest-set", {"files_sha256": sha})
            assert c.boot_manifest() == before

        refused(c.boot_file_put(b"[{]", manifest=True), "is not JSON")
        refused(c.boot_file_put(b'{"files": []}', manifest=True), "not a JSON list")
        # truncated: the first chunk only
        text = codec.canon(files).encode()
        sha = hashlib.sha256(text).hexdigest()
        part = text[:256]
        c.call(
            "boot-file-put",
            {
                "sha256": sha,
                "size": len(text),
                "offset": 0,
                "data": base64.b64encode(part).decode(),
                "chunk_sha256": hashlib.sha256(part).hexdigest(),
                "manifest": True,
            },
        )
        refused(sha, "upload it whole first")
        # changed on the BMC's flash after the upload (littlefs keeps no checksum of data)
        text = codec.canon(files[::-1]).encode()
        sha = c.boot_file_put(text, manifest=True)
        flip_on_flash(rack, text[100:400])
        refused(sha, "changed on the flash")
        # a digest that names nothing uploaded
        refused(hashlib.sha256(b"nothing").hexdigest(), "upload it whole first")


def test_host_side_problems_are_named_not_internal(
    rack: Rack, admin: Path, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host cache that cannot be written and a key file that is not text (a DER
    key) are the user's to fix: a usage error that says what, not `internal`."""
    big = work / "big.img"
    big.write_bytes(os.urandom(ON_BMC_MAX + 1))
    blocker = work / "not-a-folder"
    blocker.write_text("")
    capsys.readouterr()
    argv = ["--json", "boot", "manifest", "set", "slot1", "--cache", str(blocker / "cache")]
    argv += ["--on-bmc-max", str(ON_BMC_MAX), "--file", str(big)]
    assert bmcctl(rack, admin, *argv) == cli.EXIT_USAGE
    (row,) = json.loads(capsys.readouterr().out)
    assert row["error"] == "usage", row
    assert f"cannot copy {big} into the host cache" in row["message"], row
    der = work / "key.der"
    der.write_bytes(bytes.fromhex("302a300506032b6570032100") + os.urandom(32))
    argv = ["inventory", "set", "slot1", "--url", "https://inv.example/r", "--key", str(der)]
    assert bmcctl(rack, admin, *argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "is not text" in err and "openssl pkey -pubin -inform DER" in err, err


def flip_on_flash(rack: Rack, piece: bytes) -> None:
    """Change one byte of every copy of `piece` in slot 1's littlefs image."""
    image = rack.path / "slot1.img"
    flash = image.read_bytes()
    found = []
    at = flash.find(piece)
    while at >= 0:
        found.append(at + 10)
        at = flash.find(piece, at + 1)
    assert found
    with open(image, "r+b") as f:
        for at in found:
            f.seek(at)
            f.write(bytes([flash[at] ^ 0x04]))


# -- a Pi 5 USB boot of all of it --------------------------------------------------------


def in_usb_boot(rack: Rack) -> Callable[[], bool]:
    def pred() -> bool:
        s = rack.sbc(1)
        return bool(s["os"] == "running" and s["boot_mode"] == "usb")

    return pred


def test_pi5_usb_boot_end_to_end(
    rack: Rack,
    admin: Path,
    work: Path,
    pushed: Dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A BCM2712 ROM takes bootcode5.bin; its file server asks for mcb.bin, memsys00..08,
    bootmain, rp1c0fw1.bin, config.txt and boot.img: every one served byte for byte."""
    files = pushed["files"]
    with client(rack, admin) as c:
        if c.status()["state"] != "Off":
            c.power("ForceOff")
    rom = SimBootRom(str(tmp_path / "usb1.sock"), PI5, sessions=[(PI5_ASKS, "done")])
    rom.follow(in_usb_boot(rack))
    try:
        argv = ["boot", "usb", "slot1", "--cache", str(pushed["cache"]), "--usb-sim", rom.path]
        assert bmcctl(rack, admin, *argv, "--wait", "30") == 0, capsys.readouterr().err
        assert rom.wait(10) and not rom.failures, rom.log
        assert rom.bootcode == files["bootcode5.bin"]
        assert rom.reads == PI5_ASKS
        for name in PI5_ASKS:
            assert rom.received[name] == files[name], name
    finally:
        rom.close()
    with BmcClient.open(rack.port(1)) as c:
        st = c.call("boot-status", auth=False)
    assert st["state"] == "done" and st["detail"] == f"{1 + len(PI5_ASKS)} served", st

"""`make deploy` without a board: the dry run lists exactly what would go where."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys
import time
import tty
from typing import Dict, Iterator

import pytest
from racklet_host import deploy

ROOT = pathlib.Path(__file__).resolve().parent.parent


def dry_run(tmp: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "racklet_host.deploy", "--dry-run", "--build-dir", str(tmp), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dry_run_lists_firmware_board_file_and_entry_points(tmp_path: pathlib.Path) -> None:
    out = dry_run(tmp_path / "stage", "--board", "pico-cm4", "--port", "/dev/ttyACM7")
    assert out.returncode == 0, out.stderr
    copies: Dict[str, pathlib.Path] = {}
    for line in out.stdout.splitlines():
        if "  <- " in line:
            remote, local_name = line.strip().split("  <- ")
            copies[remote] = pathlib.Path(local_name)
    modules = {
        "/lib/" + p.relative_to(ROOT / "firmware").with_suffix(".mpy").as_posix()
        for p in (ROOT / "firmware" / "bmc").rglob("*.py")
        if not p.name.startswith("sim")
    }
    assert modules <= set(copies), modules - set(copies)
    assert {"/boot.py", "/main.py", "/board.json"} <= set(copies)
    assert not any("/board/sim" in r for r in copies)  # the simulator stays off the RP2040
    assert all(local.exists() for local in copies.values())
    for remote, local in copies.items():
        if remote.endswith(".mpy"):
            assert local.read_bytes()[:1] == b"M"  # a compiled .mpy, not source
    staged = json.loads(copies["/board.json"].read_text())
    assert staged == json.loads((ROOT / "boards" / "rp2040" / "pico-cm4.json").read_text())
    assert copies["/boot.py"].read_text() == (ROOT / "firmware" / "boot.py").read_text()
    runs = [line.strip() for line in out.stdout.splitlines() if line.startswith("  mpremote")]
    assert len(runs) == 2
    check, install = (shlex.split(r) for r in runs)
    # both without mpremote's soft reset, which would run the old boot.py mid-install
    assert check[:5] == ["mpremote", "connect", "/dev/ttyACM7", "resume", "run"]
    assert pathlib.Path(check[5]).read_text() == deploy.PREFLIGHT
    assert install[:4] == ["mpremote", "connect", "/dev/ttyACM7", "resume"]
    steps = " ".join(install[4:]).split(" + ")
    assert steps[0] == f"mip install usb-device-cdc@{deploy.USB_CDC_VERSION}"  # the tested one
    assert steps[1].startswith("run ")  # the old package goes first
    assert pathlib.Path(steps[1][4:]).read_text() == deploy.REMOVE_OLD
    lib = copies["/lib/bmc/app.mpy"].parent
    assert steps[2] == f"fs cp -r {lib} :/lib"
    # boot.py last, then the hard reset into production mode
    assert steps[-2:] == [f"fs cp {copies['/boot.py']} :/boot.py", "reset"]
    assert not any(":/boot.py" in step for step in steps[:-2])
    latest = dry_run(tmp_path / "s2", "--board", "pico-cm4", "--port", "P", "--usb-cdc", "latest")
    assert " mip install usb-device-cdc + " in latest.stdout


def test_bad_board_or_missing_port_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    out = dry_run(tmp_path, "--board", "no-such-board")
    assert out.returncode == 1 and "unknown board 'no-such-board'" in out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "signals": {"run": {"pin": 31}}}')
    out = dry_run(tmp_path / "s", "--board", str(bad))
    assert out.returncode == 1 and "signals" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "racklet_host.deploy", "--board", "pico-rpi4"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "--port is required" in out.stderr
    missing = str(tmp_path / "ttyACM9")
    out = subprocess.run(
        [sys.executable, "-m", "racklet_host.deploy", "--board", "pico-rpi4", "--port", missing],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and f"no device at {missing}" in out.stderr, out.stderr
    (tmp_path / "a-file").write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "racklet_host.deploy", "--board", "pico-rpi4", "--dry-run"]
        + ["--build-dir", str(tmp_path / "a-file" / "build")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "cannot stage the firmware in" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


# A stand-in board: the MicroPython unix port, its filesystem a RAM littlefs mounted at
# "/" (nothing it writes reaches the host's files), its REPL on a PTY for mpremote.
RAM_ROOT = """\
import os, vfs
class _Ram:
    def __init__(self, n):
        self.b = bytearray(n * 512)
        self.n = n
    def readblocks(self, i, buf, off=0):
        s = i * 512 + off
        buf[:] = self.b[s : s + len(buf)]
    def writeblocks(self, i, buf, off=0):
        s = i * 512 + off
        self.b[s : s + len(buf)] = buf
    def ioctl(self, op, arg):
        return {4: self.n, 5: 512, 6: 0}.get(op)
_bd = _Ram(512)
vfs.VfsLfs2.mkfs(_bd)
vfs.umount("/")
vfs.mount(vfs.VfsLfs2(_bd), "/")
"""


def micropython(tmp: pathlib.Path, code: str) -> str:
    """Run `code` under the MicroPython unix port with RAM_ROOT as its filesystem."""
    script = tmp / "run.py"
    script.write_text(RAM_ROOT + code)
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "micropython"), str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_board_check_reports_what_the_board_is(tmp_path: pathlib.Path) -> None:
    """The preflight runs under MicroPython; its answer names what is wrong, if anything."""
    answer = micropython(tmp_path, deploy.PREFLIGHT)
    with pytest.raises(deploy.DeployError, match="runs on an RP2040") as e:
        deploy.check_board(answer)  # the unix port: not an RP2040
    assert "MicroPython 1." in str(e.value)
    shadowed = micropython(tmp_path, 'os.mkdir("/bmc")\n' + deploy.PREFLIGHT)
    assert shadowed.split()[3] == "1"
    tag = deploy.PREFLIGHT_TAG
    pico = "Raspberry Pi Pico with RP2040"
    assert deploy.check_board(f"{tag} 1.24.1 1 0 {pico}\n") == f"MicroPython 1.24.1 on {pico}"
    for answer, why in (
        (f"{tag} 1.22.2 0 0 {pico}", "flash MicroPython 1.23 or newer"),
        (f"{tag} 1.24.1 0 0 {pico}", "without machine.USBDevice"),
        (f"{tag} 1.24.1 1 1 {pico}", "a /bmc folder"),
        (f"{tag} 1.24.1 1 0 Raspberry Pi Pico2 with RP2350", "runs on an RP2040"),
        ("Traceback (most recent call last):", "does the board show its REPL"),
        (f"{tag} what", "the board's check answered"),
    ):
        with pytest.raises(deploy.DeployError, match=why):
            deploy.check_board(answer + "\n")


def test_the_old_firmware_package_goes_before_the_copy(tmp_path: pathlib.Path) -> None:
    """A module dropped from the firmware or a .py left by hand would be imported."""
    setup = """\
for d in ("/lib", "/lib/bmc", "/lib/bmc/board", "/lib/usb"):
    os.mkdir(d)
for f in ("/lib/bmc/app.mpy", "/lib/bmc/gone.mpy", "/lib/bmc/app.py", "/lib/bmc/board/rp2.mpy",
          "/lib/usb/cdc.mpy", "/board.json"):
    open(f, "w").close()
"""
    listing = 'print(sorted(os.listdir("/")), sorted(os.listdir("/lib")))\n'
    out = micropython(tmp_path, setup + deploy.REMOVE_OLD + listing)
    assert out.strip() == "['board.json', 'lib'] ['usb']"
    out = micropython(tmp_path, deploy.REMOVE_OLD + 'print(os.listdir("/"))\n')  # nothing there
    assert out.strip() == "[]"


@pytest.fixture
def board(tmp_path: pathlib.Path) -> Iterator[str]:
    """A stand-in board's port: the unix port's REPL on a PTY (see RAM_ROOT)."""
    boot = tmp_path / "ramroot.py"
    boot.write_text(RAM_ROOT)
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "micropython"), "-i", str(boot)],
        stdin=master,
        stdout=master,
        stderr=master,
    )
    os.close(master)
    try:
        time.sleep(0.5)  # RAM_ROOT runs before the REPL reads its input
        yield os.ttyname(slave)
    finally:
        proc.kill()
        proc.wait()
        os.close(slave)


def test_deploy_to_a_board_it_cannot_run_on_stops_before_copying(
    board: str, tmp_path: pathlib.Path
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "racklet_host.deploy", "--port", board, "--board", "pico-cm4"]
        + ["--build-dir", str(tmp_path / "stage")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "racklet-bmc runs on an RP2040" in out.stderr and "Traceback" not in out.stderr
    assert "mip install" not in out.stdout  # the install never started
    mpremote = str(ROOT / ".venv" / "bin" / "mpremote")
    left = subprocess.run(
        [mpremote, "connect", board, "resume", "exec", "import os; print(os.listdir('/'))"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert left.stdout.strip() == "[]"  # nothing was written to the board

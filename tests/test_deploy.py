"""`make deploy` without a board: the dry run lists exactly what would go where."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Dict

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
    assert runs[0] == "mpremote connect /dev/ttyACM7 mip install usb-device-cdc"
    lib = copies["/lib/bmc/app.mpy"].parent
    assert runs[1] == f"mpremote connect /dev/ttyACM7 fs cp -r {lib} :/lib"
    # boot.py last, and the hard reset in the same mpremote run: mpremote soft-resets the
    # board when it connects, which would run the new boot.py and drop the REPL first.
    assert runs[-1] == (
        f"mpremote connect /dev/ttyACM7 fs cp {copies['/boot.py']} :/boot.py + reset"
    )
    assert not any(":/boot.py" in r for r in runs[:-1])
    assert all(r.startswith("mpremote connect /dev/ttyACM7 ") for r in runs)


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

"""Install the firmware on a real board: `python -m racklet_host.deploy --port PORT --board NAME`.

What it does (`--dry-run` prints exactly this, without touching a board):

1. compiles `bmc/**.py` (from the installed `bmc` package, see `fwbuild`) to .mpy with
   `mpy-cross -march=armv6m`, and stages `lib/bmc/...mpy`, `boot.py`, `main.py` and the
   validated board file as `board.json` in `build/deploy/<board>/`;
2. with mpremote: `mip install usb-device-cdc` (fetched by mpremote on the host, so the
   host needs network access), copies `/lib/bmc/`, `/board.json`, `/main.py`, and last
   `/boot.py` and `reset` in one mpremote run.

The entry points `boot.py` and `main.py` come from the source checkout's `firmware/`
folder (next to the `bmc` package); deploy runs from a checkout or an editable install.

mpremote needs the REPL: deploy a fresh board (MicroPython 1.23+ on a filesystem without
`/boot.py`: new, or erased with flash_nuke.uf2; flashing MicroPython alone keeps an old
`/boot.py`), or one in maintenance mode (`bmcctl maintenance SLOT`, or press BOOTSEL
within 1.5 s after plugging it in or resetting it). Every mpremote run soft-resets the
board, which re-runs boot.py; a maintenance session lasts across soft resets, but on a
fresh board the new boot.py would switch the REPL off at the next soft reset, so boot.py
is copied and the board reset in the same run (one soft reset, before the copy). After
that hard reset the board runs in production mode: only the firmware's CDC interface,
no REPL.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
from typing import List, Optional, Sequence, Tuple

from bmc import boardfile

from . import fwbuild

MIP_PACKAGES = ("usb-device-cdc",)
SIM_ONLY = ("bmc/board/sim.", "bmc/board/simflash.", "bmc/board/simstart.")
ENTRY_POINTS = ("main.py", "boot.py")  # boot.py last: from then on the board boots production


class DeployError(Exception):
    pass


def repo_dir() -> pathlib.Path:
    return fwbuild.package_dir().parent.parent


def firmware_entry(name: str) -> pathlib.Path:
    p = fwbuild.package_dir().parent / name
    if not p.exists():
        raise DeployError(f"{p} not found: deploy runs from a source checkout (pip install -e .)")
    return p


def board_file(name: str) -> pathlib.Path:
    """A board by name (boards/rp2040/NAME.json) or a path to a board file, validated."""
    p = pathlib.Path(name)
    if not (p.suffix == ".json" and p.exists()):
        p = repo_dir() / "boards" / "rp2040" / f"{name}.json"
    if not p.exists():
        known = sorted(q.stem for q in (repo_dir() / "boards" / "rp2040").glob("*.json"))
        raise DeployError(f"unknown board {name!r} (known: {', '.join(known) or 'none'})")
    try:
        boardfile.load(str(p))
    except (OSError, ValueError) as e:
        raise DeployError(f"board file {p}: {e}") from None
    return p


def stage(board: pathlib.Path, out: pathlib.Path) -> List[Tuple[pathlib.Path, str]]:
    """Build and stage everything; (local file, path on the board) in copy order."""
    if out.exists():
        shutil.rmtree(out)
    lib = out / "lib"
    try:
        built = fwbuild.build(lib)
    except fwbuild.BuildError as e:
        raise DeployError(f"mpy-cross -march={fwbuild.MARCH}: {e}") from None
    except RuntimeError as e:
        raise DeployError(str(e)) from None
    files = []
    for p in sorted(built):
        rel = p.relative_to(lib).as_posix()
        if rel.startswith(SIM_ONLY):
            p.unlink()  # the simulator's board layer has no place on an RP2040
            continue
        files.append((p, "/lib/" + rel))
    shutil.copyfile(board, out / "board.json")
    files.append((out / "board.json", "/board.json"))
    for name in ENTRY_POINTS:
        shutil.copyfile(firmware_entry(name), out / name)
        files.append((out / name, "/" + name))
    return files


def commands(port: str, out: pathlib.Path) -> List[List[str]]:
    """The mpremote runs, in order (`+` chains commands within one run)."""
    base = ["mpremote", "connect", port]
    cmds = [base + ["mip", "install", pkg] for pkg in MIP_PACKAGES]
    # /lib exists (mip installs there), so `cp -r DIR :/lib` lands in /lib/bmc.
    cmds.append(base + ["fs", "cp", "-r", str(out / "lib" / "bmc"), ":/lib"])
    cmds.append(base + ["fs", "cp", str(out / "board.json"), ":/board.json"])
    cmds.append(base + ["fs", "cp", str(out / "main.py"), ":/main.py"])
    # boot.py and the hard reset in one run: mpremote soft-resets only when it first
    # enters the raw REPL, and a soft reset after the new boot.py is in place would
    # switch the REPL off on a fresh board before `reset` could be sent.
    cmds.append(base + ["fs", "cp", str(out / "boot.py"), ":/boot.py", "+", "reset"])
    return cmds


def mpremote() -> str:
    found = fwbuild.find_tool("mpremote")
    if found is None:
        raise DeployError("mpremote not found: pip install 'racklet-bmc[deploy]'")
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m racklet_host.deploy",
        description="Compile the firmware and install it with its board file on a board.",
    )
    ap.add_argument("--port", help="the board's serial device (its REPL), e.g. /dev/ttyACM0")
    ap.add_argument("--board", required=True, help="board name (boards/rp2040) or .json path")
    ap.add_argument("--build-dir", default=None, help="staging directory (default build/deploy)")
    ap.add_argument("--dry-run", action="store_true", help="print what would be copied and run")
    args = ap.parse_args(argv)
    try:
        if not args.port and not args.dry_run:
            raise DeployError("--port is required (or --dry-run)")
        bf = board_file(args.board)
        out = pathlib.Path(args.build_dir or repo_dir() / "build" / "deploy" / bf.stem)
        files = stage(bf, out)
        cmds = commands(args.port or "PORT", out)
        if args.dry_run:
            print(f"board {bf.stem} ({bf}); {len(files)} files, staged in {out}")
            print("would copy:")
            for local, remote in files:
                print(f"  {remote}  <- {local}")
            print("would run:")
            for cmd in cmds:
                print("  " + " ".join(cmd))
            return 0
        tool = mpremote()
        for cmd in cmds:
            print("+ " + " ".join(cmd), flush=True)
            proc = subprocess.run([tool, *cmd[1:]])
            if proc.returncode != 0:
                raise DeployError(
                    f"{' '.join(cmd[:5])} ... failed ({proc.returncode}); does the board "
                    "show its REPL (MicroPython 1.23+ with no /boot.py yet: re-flashing "
                    "keeps an old one, flash_nuke.uf2 erases it; or maintenance mode: "
                    "`bmcctl maintenance`, or BOOTSEL pressed just after a reset)?"
                )
        print(f"deployed {bf.stem} to {args.port}; the board restarts in production mode")
        return 0
    except DeployError as e:
        print(f"deploy: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Install the firmware on a real board: `python -m racklet_host.deploy --port PORT --board NAME`.

What it does (`--dry-run` prints exactly this, without touching a board):

1. compiles `bmc/**.py` (from the installed `bmc` package, see `fwbuild`) to .mpy with
   `mpy-cross -march=armv6m`, and stages `lib/bmc/...mpy`, `boot.py`, `main.py` and the
   validated board file as `board.json` in `build/deploy/<board>/`;
2. checks the board before anything is copied (one mpremote run that changes nothing):
   an RP2040 (the board layer's register addresses are the RP2040's), MicroPython 1.23+
   with `machine.USBDevice` (the firmware's USB CDC needs it), and no `/bmc` folder at
   the filesystem root (it would shadow `/lib/bmc`);
3. installs in one mpremote run: `mip install usb-device-cdc@VERSION` (the tested
   release, fetched by mpremote on the host, so the host needs network access), removes
   the old `/lib/bmc` (a module dropped from the firmware, or a `.py` left by hand,
   which MicroPython would import before the `.mpy`), copies `/lib/bmc/`,
   `/board.json`, `/main.py`, and last `/boot.py`, then `reset`.

The entry points `boot.py` and `main.py` come from the source checkout's `firmware/`
folder (next to the `bmc` package); deploy runs from a checkout or an editable install.

mpremote needs the REPL: deploy a fresh board (MicroPython 1.23+ on a filesystem without
`/boot.py`: new, or erased with flash_nuke.uf2; flashing MicroPython alone keeps an old
`/boot.py`), or one in maintenance mode (`bmcctl maintenance SLOT`, or press BOOTSEL
within 1.5 s after plugging it in or resetting it). Both runs start with `resume`, so
mpremote does not soft-reset the board (before 1.30 it does by default): a soft reset
re-runs the old boot.py, and one between the copies would run it against a half-new
`/lib/bmc`. After the final hard reset the board runs in production mode: only the
firmware's CDC interface, no REPL.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
from typing import List, Optional, Sequence, Tuple

from bmc import boardfile

from . import fwbuild

USB_CDC = "usb-device-cdc"
USB_CDC_VERSION = "0.1.2"  # the release the board layer (bmc/board/rp2.py) is tested with
PREFLIGHT_TAG = "racklet-preflight"
PREFLIGHT_SCRIPT = "preflight.py"  # staged, run on the board with `mpremote run`
REMOVE_OLD_SCRIPT = "remove_old.py"

# Runs on the board, changes nothing: what `check_board` needs to know.
PREFLIGHT = """\
import os, sys
v = sys.implementation.version
try:
    import machine
    usb = int(hasattr(machine, "USBDevice"))
except ImportError:
    usb = 0
try:
    os.stat("/bmc")
    shadow = 1
except OSError:
    shadow = 0
print("%s %d.%d.%d %d %d %s" % (TAG, v[0], v[1], v[2], usb, shadow,
      getattr(sys.implementation, "_machine", "?")))
""".replace("TAG", repr(PREFLIGHT_TAG))

# Runs on the board before the copy: the old firmware package goes, whatever it holds.
REMOVE_OLD = """\
import os
def rm(p):
    for e in os.ilistdir(p):
        q = p + "/" + e[0]
        if e[1] & 0x4000:
            rm(q)
        else:
            os.remove(q)
    os.rmdir(p)
try:
    os.stat("/lib/bmc")
except OSError:
    pass
else:
    rm("/lib/bmc")
"""
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
    (out / PREFLIGHT_SCRIPT).write_text(PREFLIGHT)
    (out / REMOVE_OLD_SCRIPT).write_text(REMOVE_OLD)
    return files


def commands(port: str, out: pathlib.Path, usb_cdc: str = USB_CDC_VERSION) -> List[List[str]]:
    """The mpremote runs, in order: the check, then the install (`+` chains commands
    within one run; `resume`: no soft reset, see the module docstring)."""
    base = ["mpremote", "connect", port, "resume"]
    pkg = USB_CDC if usb_cdc == "latest" else f"{USB_CDC}@{usb_cdc}"
    install = base + ["mip", "install", pkg, "+", "run", str(out / REMOVE_OLD_SCRIPT)]
    # /lib exists (mip installs there), so `cp -r DIR :/lib` lands in /lib/bmc.
    install += ["+", "fs", "cp", "-r", str(out / "lib" / "bmc"), ":/lib"]
    install += ["+", "fs", "cp", str(out / "board.json"), ":/board.json"]
    install += ["+", "fs", "cp", str(out / "main.py"), ":/main.py"]
    # boot.py last: from then on the board boots in production mode
    install += ["+", "fs", "cp", str(out / "boot.py"), ":/boot.py", "+", "reset"]
    return [base + ["run", str(out / PREFLIGHT_SCRIPT)], install]


def check_board(output: str) -> str:
    """The board as the preflight reported it ("MicroPython 1.24.1 on ..."), or DeployError."""
    for line in output.splitlines():
        if line.startswith(PREFLIGHT_TAG + " "):
            break
    else:
        raise DeployError("the board did not answer the check: " + REPL_HINT)
    fields = line.split(" ", 4)
    try:
        version = tuple(int(x) for x in fields[1].split("."))
        usb, shadow = int(fields[2]), int(fields[3])
        chip = fields[4]
    except (IndexError, ValueError):
        raise DeployError(f"the board's check answered {line!r}") from None
    board = f"MicroPython {fields[1]} on {chip}"
    if "RP2040" not in chip:
        raise DeployError(
            f"the board runs {board}: racklet-bmc runs on an RP2040 (its board layer uses "
            "the RP2040's registers; an RP2350 or another chip needs a port of bmc/board/rp2.py)"
        )
    if version < (1, 23) or not usb:
        raise DeployError(
            f"the board runs {board}, without machine.USBDevice: flash MicroPython 1.23 "
            "or newer (the firmware's USB CDC interface needs it), then deploy again"
        )
    if shadow:
        raise DeployError(
            f"the board ({board}) has a /bmc folder at the root of its filesystem, which "
            "MicroPython would import instead of the firmware in /lib/bmc: remove it "
            "with mpremote, or erase the filesystem with flash_nuke.uf2"
        )
    return board


REPL_HINT = (
    "does the board show its REPL (MicroPython 1.23+ with no /boot.py yet: re-flashing "
    "keeps an old one, flash_nuke.uf2 erases it; or maintenance mode: `bmcctl "
    "maintenance`, or BOOTSEL pressed just after a reset)?"
)


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
    ap.add_argument(
        "--usb-cdc",
        default=USB_CDC_VERSION,
        metavar="VERSION",
        help=f"the {USB_CDC} release to install (default {USB_CDC_VERSION}, the tested one; "
        "'latest' for the newest)",
    )
    args = ap.parse_args(argv)
    try:
        if not args.port and not args.dry_run:
            raise DeployError("--port is required (or --dry-run)")
        bf = board_file(args.board)
        out = pathlib.Path(args.build_dir or repo_dir() / "build" / "deploy" / bf.stem)
        try:
            files = stage(bf, out)
        except OSError as e:
            where = e.filename or out
            raise DeployError(f"cannot stage the firmware in {where}: {e.strerror}") from None
        check, install = commands(args.port or "PORT", out, args.usb_cdc)
        if args.dry_run:
            print(f"board {bf.stem} ({bf}); {len(files)} files, staged in {out}")
            print("would copy:")
            for local, remote in files:
                print(f"  {remote}  <- {local}")
            print("would run:")
            for cmd in (check, install):
                print("  " + shlex.join(cmd))
            return 0
        if args.port.startswith("/") and not os.path.exists(args.port):
            # a path (mpremote's shortcuts, a0 or id:SERIAL, are not): say so plainly
            raise DeployError(f"no device at {args.port}: is the board plugged in?")
        tool = mpremote()
        print("+ " + shlex.join(check), flush=True)
        checked = subprocess.run([tool, *check[1:]], capture_output=True, text=True)
        try:
            board = check_board(checked.stdout)
        except DeployError:
            sys.stderr.write(checked.stdout + checked.stderr)
            raise
        print(f"  {board}: fine", flush=True)
        print("+ " + shlex.join(install), flush=True)
        proc = subprocess.run([tool, *install[1:]])
        if proc.returncode != 0:
            raise DeployError(
                f"installing failed (mpremote exit {proc.returncode}; see above). A "
                f"'Package not found' from mip: {USB_CDC} {args.usb_cdc} may be gone from "
                "the index, try --usb-cdc latest. Otherwise: " + REPL_HINT
            )
        print(f"deployed {bf.stem} to {args.port}; the board restarts in production mode")
        return 0
    except DeployError as e:
        print(f"deploy: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

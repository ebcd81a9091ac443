"""Run a script inside the MicroPython unix port with an RP2040-sized heap."""

from __future__ import annotations

import os
import pathlib
import subprocess

from racklet_host import fwbuild
from racklet_sim.rack import micropython_binary

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEAP = "192K"  # the RP2040's GC heap, for the firmware on its own
HARNESS_HEAP = "320K"  # when test fakes and scenarios share the heap with the whole firmware
BUILD = ROOT / "build" / "mpy"


def run_micropython(
    script: pathlib.Path | str,
    *args: str,
    timeout: float = 240,
    extra_path: tuple[str, ...] = (),
    heap: str = HEAP,
) -> subprocess.CompletedProcess[str]:
    """Run `script` as a module, with the firmware and the script's folder compiled to .mpy.

    The firmware runs as .mpy on a board too; compiling the test harness as
    well keeps the compiler's own heap use out of the 192K the firmware gets.
    """
    script = pathlib.Path(script)
    fwbuild.build(BUILD)
    harness = BUILD.parent / ("mpy-O0-" + script.parent.name)
    compiler = fwbuild.mpy_cross()
    for src in script.parent.glob("*.py"):
        dest = harness / src.with_suffix(".mpy").name
        if not dest.exists() or dest.stat().st_mtime_ns < src.stat().st_mtime_ns:
            # -O0: the harness's `assert`s must run (-O1 and up compile them away)
            fwbuild.compile_one(compiler, src, dest, src.name, opt=0)
    path = [".frozen", str(BUILD), str(harness), *extra_path]
    env = dict(os.environ, MICROPYPATH=":".join(path))
    return subprocess.run(
        [micropython_binary(), "-X", f"heapsize={heap}", "-m", script.stem, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )

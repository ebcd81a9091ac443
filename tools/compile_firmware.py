"""Compile every firmware module with mpy-cross for the RP2040 (armv6m).

Exit status 1 and the compiler's message for any module that fails.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

from racklet_host import fwbuild

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory() as out:
        try:
            built = fwbuild.build(pathlib.Path(out))
            # The entry points (boot.py, main.py, sim_main.py) stay source on the board.
            for entry in sorted((ROOT / "firmware").glob("*.py")):
                dest = pathlib.Path(out) / "entry" / entry.with_suffix(".mpy").name
                fwbuild.compile_one(fwbuild.mpy_cross(), entry, dest, entry.name)
                built.append(dest)
        except fwbuild.BuildError as e:
            print(f"mpy-cross -march={fwbuild.MARCH}: {e}")
            return 1
    print(f"mpy-cross -march={fwbuild.MARCH}: {len(built)} modules compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Type-check firmware/ against MicroPython's stubs (micropython-rp2-stubs, -stdlib-stubs).

Reports attribute and name errors (an API MicroPython lacks: `time.monotonic`,
`Pin.valu`, `json.dumps(sort_keys=...)`); errors inside the stubs are ignored.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    typings = ROOT / "typings"
    if not typings.is_dir():
        print("typings/ missing: run `make venv`", file=sys.stderr)
        return 1
    files = sorted(str(p.relative_to(ROOT / "firmware")) for p in (ROOT / "firmware").rglob("*.py"))
    env = dict(os.environ, MYPYPATH=str(typings))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "tools" / "mypy-firmware.ini"),
            "--custom-typeshed-dir",
            str(typings),
            "--no-incremental",
            *files,
        ],
        cwd=ROOT / "firmware",
        env=env,
        capture_output=True,
        text=True,
    )
    ours = [
        line
        for line in proc.stdout.splitlines()
        if ": error:" in line and not line.startswith(("../typings", str(typings)))
    ]
    for line in ours:
        print(line)
    print(
        f"firmware type check against MicroPython stubs: {len(ours)} errors in {len(files)} files"
    )
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main())

"""A seeded, stateful property test of boot file uploads and manifest sets on the whole
firmware under the real MicroPython: tests/mpy/scenarios_boot_props.py."""

from __future__ import annotations

import pathlib
import sys

from tests.mprun import HARNESS_HEAP, run_micropython
from tests.test_boot_fw import make_keys

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE / "mpy"))

import scenarios_boot_props  # noqa: E402  (imported under CPython for the names only)

NAMES = [sc.__name__ for sc in scenarios_boot_props.SCENARIOS]


def test_boot_props_micropython(tmp_path: pathlib.Path) -> None:
    import json

    (tmp_path / "keys.json").write_text(json.dumps(make_keys()))
    proc = run_micropython(
        HERE / "mpy" / "scenarios_boot_props.py", str(tmp_path), heap=HARNESS_HEAP
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("PASS ")] == NAMES

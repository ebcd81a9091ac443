"""A full flash (littlefs: ENOSPC) under the real MicroPython: tests/mpy/scenarios_flash_full.py."""

from __future__ import annotations

import pathlib
import sys

import pytest

from tests.mprun import HARNESS_HEAP, run_micropython

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE / "mpy"))

import scenarios_flash_full  # noqa: E402  (imported under CPython for the names only)

NAMES = [sc.__name__ for sc in scenarios_flash_full.SCENARIOS]


@pytest.mark.parametrize("name", NAMES)
def test_flash_full_micropython(name: str, tmp_path: pathlib.Path) -> None:
    proc = run_micropython(
        HERE / "mpy" / "scenarios_flash_full.py", str(tmp_path), name, heap=HARNESS_HEAP
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("PASS ")] == [name]

"""Hostile arguments and stored state for the operator commands: CPython and MicroPython."""

from __future__ import annotations

import pathlib
import sys

import pytest

from tests.mprun import HARNESS_HEAP, run_micropython

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE / "mpy"))

import scenarios_ops  # noqa: E402


@pytest.mark.parametrize("name", scenarios_ops.names())
def test_scenario_cpython(name: str, tmp_path: pathlib.Path) -> None:
    getattr(scenarios_ops, name)(str(tmp_path))


def test_scenarios_micropython(tmp_path: pathlib.Path) -> None:
    proc = run_micropython(HERE / "mpy" / "scenarios_ops.py", str(tmp_path), heap=HARNESS_HEAP)
    passed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PASS ")]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(passed) == scenarios_ops.names()

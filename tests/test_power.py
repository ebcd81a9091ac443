"""Power state machine scenarios on CPython and inside the MicroPython unix port."""

from __future__ import annotations

import pathlib
import sys
from typing import Callable

import pytest

from tests.mprun import ROOT, run_micropython

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE / "mpy"))

import scenarios_power  # noqa: E402

Scenario = Callable[[str], None]


@pytest.mark.parametrize("scenario", scenarios_power.SCENARIOS, ids=lambda s: s.__name__)
def test_scenario_cpython(scenario: Scenario, tmp_path: pathlib.Path) -> None:
    scenario(str(tmp_path))


def run_in_micropython(module: str, tmp_path: pathlib.Path) -> list[str]:
    proc = run_micropython(HERE / "mpy" / "run_scenarios.py", str(ROOT), str(tmp_path), module)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout
    return [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PASS ")]


def test_scenarios_micropython(tmp_path: pathlib.Path) -> None:
    passed = run_in_micropython("scenarios_power", tmp_path)
    assert passed == [s.__name__ for s in scenarios_power.SCENARIOS]

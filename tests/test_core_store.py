"""Store, event log, persistent state and config: CPython and MicroPython."""

from __future__ import annotations

import pathlib
import sys
from typing import Callable

import pytest

from tests.test_power import HERE, run_in_micropython

sys.path.insert(0, str(HERE / "mpy"))

import scenarios_core  # noqa: E402

Scenario = Callable[[str], None]


@pytest.mark.parametrize("scenario", scenarios_core.SCENARIOS, ids=lambda s: s.__name__)
def test_scenario_cpython(scenario: Scenario, tmp_path: pathlib.Path) -> None:
    scenario(str(tmp_path))


def test_scenarios_micropython(tmp_path: pathlib.Path) -> None:
    passed = run_in_micropython("scenarios_core", tmp_path)
    assert passed == [s.__name__ for s in scenarios_core.SCENARIOS]

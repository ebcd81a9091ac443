"""The whole firmware behind its wire protocol, on a fake board: CPython and MicroPython.

tests/mpy/scenarios_app.py: the protocol, auth, power and the main loop;
tests/mpy/scenarios_ops.py: hostile arguments and stored state for the operator commands.
"""

from __future__ import annotations

import pathlib
import sys
from types import ModuleType

import pytest

from tests.mprun import HARNESS_HEAP, run_micropython

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE / "mpy"))

import scenarios_app  # noqa: E402
import scenarios_ops  # noqa: E402

MODULES = [scenarios_app, scenarios_ops]


@pytest.mark.parametrize(
    "module,name",
    [(m, n) for m in MODULES for n in m.names()],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_scenario_cpython(module: ModuleType, name: str, tmp_path: pathlib.Path) -> None:
    getattr(module, name)(str(tmp_path))


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_scenarios_micropython(module: ModuleType, tmp_path: pathlib.Path) -> None:
    script = HERE / "mpy" / (module.__name__ + ".py")
    proc = run_micropython(script, str(tmp_path), heap=HARNESS_HEAP)
    passed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PASS ")]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(passed) == module.names()

"""The MicroPython test harness itself: its scripts' `assert`s run."""

from __future__ import annotations

import pathlib

from tests.mprun import run_micropython

PROBE = pathlib.Path(__file__).resolve().parent / "mp_selfcheck" / "assert_probe.py"


def test_a_failing_assert_in_a_harness_script_fails_the_run() -> None:
    proc = run_micropython(PROBE, "fail")
    assert proc.returncode != 0
    assert "AssertionError" in proc.stderr and "assert ran" in proc.stderr


def test_a_passing_harness_script_exits_zero() -> None:
    proc = run_micropython(PROBE, "ok")
    assert proc.returncode == 0, proc.stderr
    assert "PASS probe" in proc.stdout

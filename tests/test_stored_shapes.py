"""Corrupt files on flash: each stored file replaced by bytes of every wrong shape.

Valid JSON of the wrong type or layout (as an older or newer firmware might have
left), bytes that are not JSON, and an empty file, in each of the BMC's stored
files in turn: the firmware, under the MicroPython unix port, still starts after
a power cut and after a soft reset, keeps running, and answers status, metrics,
inventory, manifest, keys, settings, events, a boot file read and a power action
without an `internal` error (tests/mpy/stored_shapes.py).
"""

from __future__ import annotations

import pathlib

import pytest

from tests.mprun import HARNESS_HEAP, run_micropython

HERE = pathlib.Path(__file__).parent
STORED = [
    "boot_manifest.json",
    "config.json",
    "events.jsonl",
    "inventory.json",
    "keys.json",
    "state.json",
    "boot-file",
    "boot-file.crc",
]


@pytest.mark.parametrize("name", STORED)
def test_a_stored_file_of_the_wrong_shape_never_stops_the_bmc(
    name: str, tmp_path: pathlib.Path
) -> None:
    proc = run_micropython(
        HERE / "mpy" / "stored_shapes.py", str(tmp_path), name, heap=HARNESS_HEAP, timeout=120
    )
    out = proc.stdout + proc.stderr
    assert "RESULT 0/" in proc.stdout, out
    assert proc.returncode == 0, out

"""The firmware's own cost per request under MicroPython: time and bytes allocated.

Runs bench/mpy_cost/request_cost.py in the MicroPython unix port: the whole firmware
(`bmc.app.App`) on the test rig's fake board, each request handed over on an in-memory
link, so no PTY, process or scheduler is in the measurement. Per request it reports the
time `Dispatcher.poll` took to read, parse, authorize, run and answer it (median and
p90; this shared machine adds noise), and the bytes allocated while doing so
(`micropython.mem_total`, exact from run to run: every allocation, heap frames freed on
return included, as the collection threshold counts them: `gc.threshold` collects
after every 12 KB). Each request starts after a collection. The power action alternates
On and ForceOff, each from a rest state.

For comparison (no goal): what bench/protocol.py's round trips are made of inside the
firmware. The rig's harness shares the heap (320K, as the MicroPython tests run).
"""

from __future__ import annotations

import json
import pathlib
import tempfile
from typing import Any, Dict, List

from tests.mprun import HARNESS_HEAP, run_micropython

HERE = pathlib.Path(__file__).resolve().parent
TESTS_MPY = HERE.parent / "tests" / "mpy"


def measure() -> List[Dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-req-") as root:
        proc = run_micropython(
            HERE / "mpy_cost" / "request_cost.py",
            root + "/bmc",
            extra_path=(str(TESTS_MPY),),
            heap=HARNESS_HEAP,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"request_cost failed:\n{proc.stdout}\n{proc.stderr}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def run() -> None:
    rows = measure()
    print(
        "The firmware's own work per request (MicroPython unix port, App on the test rig,\n"
        "in-memory link): Dispatcher.poll from the frame to the reply written."
    )
    print(f"{'request':<22}{'n':>5}{'median':>10}{'p90':>10}{'allocated':>12}{'reply':>9}")
    for r in rows:
        print(
            f"{r['request']:<22}{r['n']:>5}{r['median_us']:>8d}us{r['p90_us']:>8d}us"
            f"{r['alloc_bytes']:>10d} B{r['reply_bytes']:>7d} B"
        )

"""Resident heap of a simulated BMC: after start, after each of a few requests.

    .venv/bin/python tools/heap_census.py [--board pico-cm4] [--heap 192K]

Runs one `bmc-sim` slot whose MicroPython process starts through a small wrapper
around firmware/sim_main.py. The wrapper hooks `bmc.app.App.run` (before the loop)
and `Dispatcher._handle` (after every request) to write, on stderr (the slot's log;
stdout is the link), the heap after `gc.collect()`: bytes allocated, bytes free and
the largest bytearray that can still be allocated (a measure of fragmentation). The
wrapper's own code (about 1 KB) is included in the figures.

The requests: hello, status, a metrics scrape, status again, inventory-get,
boot-manifest-get, boot-status, and the largest request (a status of exactly
`codec.MAX_PAYLOAD` bytes). Exit status 1 when a request fails or the BMC does not
start.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, List, Tuple

from bmc import codec
from racklet_host.client import BmcClient
from racklet_sim import rack as simrack

WRAPPER = r"""
import gc
import sys

sys.path.insert(0, sys.argv[sys.argv.index("--firmware") + 1])


def _largest():
    lo = 0
    hi = gc.mem_free()
    while lo < hi:
        mid = (lo + hi + 1) // 2
        gc.collect()
        try:
            b = bytearray(mid)
            b = None
            lo = mid
        except MemoryError:
            hi = mid - 1
    return lo


def _census(tag):
    gc.collect()
    a = gc.mem_alloc()
    f = gc.mem_free()
    sys.stderr.write("CENSUS %s alloc=%d free=%d largest=%d\n" % (tag, a, f, _largest()))


import bmc.app as _app
from bmc import dispatch as _dispatch

_run = _app.App.run
_handle = _dispatch.Dispatcher._handle


def _census_run(self):
    _census("start")
    _run(self)


def _census_handle(self, frame):
    _handle(self, frame)
    _census("request")


_app.App.run = _census_run
_dispatch.Dispatcher._handle = _census_handle
sys.path.insert(0, SIM_DIR)
import sim_main  # noqa: E402,F401 - runs the firmware, as `micropython sim_main.py` does
"""

_LINE = re.compile(r"CENSUS (\w+) alloc=(\d+) free=(\d+) largest=(\d+)")


def census_lines(log: pathlib.Path) -> List[Tuple[int, int, int]]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [(int(m[2]), int(m[3]), int(m[4])) for m in _LINE.finditer(text)]


def wait_lines(log: pathlib.Path, n: int, timeout: float = 30) -> List[Tuple[int, int, int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = census_lines(log)
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise SystemExit(f"heap_census: no census line {n} in {log}:\n{tail}")


def run(board: str, heap: str) -> int:
    work = pathlib.Path(tempfile.mkdtemp(prefix="census-", dir="/tmp"))
    rack_dir = work / "rack"
    wrapper = work / "census_main.py"
    wrapper.write_text(WRAPPER.replace("SIM_DIR", repr(str(simrack.sim_main().parent))))
    launcher = (
        "import pathlib, sys\n"
        "from racklet_sim import rack\n"
        f"rack.sim_main = lambda: pathlib.Path({str(wrapper)!r})\n"
        "sys.exit(rack.main(sys.argv[1:]))\n"
    )
    env = dict(os.environ, BMC_SIM_HEAP=heap)
    with open(work / "bmc-sim.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher, "--rack", str(rack_dir), "--board", board],
            stdin=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
    r = simrack.Rack(rack_dir=rack_dir)
    r.proc = proc
    slot_log = rack_dir / "slot1.log"
    failed = False
    try:
        r.wait_ready(1, 60)
        rows: List[Tuple[str, Tuple[int, int, int]]] = [("start", wait_lines(slot_log, 1)[-1])]
        pad = "x" * (codec.MAX_PAYLOAD - 38)
        steps: List[Tuple[str, Callable[[BmcClient], Any]]] = [
            ("hello", lambda c: c.hello()),
            ("status", lambda c: c.status()),
            ("metrics", lambda c: c.metrics()),
            ("status", lambda c: c.status()),
            ("inventory-get", lambda c: c.request({"cmd": "inventory-get"})),
            ("boot-manifest-get", lambda c: c.request({"cmd": "boot-manifest-get"})),
            ("boot-status", lambda c: c.request({"cmd": "boot-status"})),
            ("status", lambda c: c.status()),
            (
                f"status {codec.MAX_PAYLOAD} B",
                lambda c: c.request({"cmd": "status", "args": {"pad": pad}}),
            ),
        ]
        with BmcClient.open(r.port(1)) as c:
            for name, fn in steps:
                n = len(census_lines(slot_log))
                try:
                    fn(c)
                    note = ""
                except Exception as e:  # noqa: BLE001 - reported, the census goes on
                    note = f"  FAILED: {e}"
                    failed = True
                rows.append((name + note, wait_lines(slot_log, n + 1)[n]))
        print(f"heap census: board {board}, heap {heap} (bytes after gc.collect())")
        print(f"{'after':<28} {'allocated':>10} {'free':>10} {'largest':>10}")
        for name, (a, f, big) in rows:
            print(f"{name:<28} {a:>10} {f:>10} {big:>10}")
    finally:
        r.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--board", default="pico-cm4", help="board name (boards/rp2040)")
    p.add_argument("--heap", default="192K", help="MicroPython heap size (-X heapsize=)")
    args = p.parse_args(argv)
    return run(args.board, args.heap)


if __name__ == "__main__":
    sys.exit(main())

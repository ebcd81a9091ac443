"""Resident heap of a simulated BMC: after start, after each of a few requests.

    .venv/bin/python tools/heap_census.py [--board pico-cm4] [--heap 192K] [--manifest 32]

Runs one `bmc-sim` slot whose MicroPython process starts through a small wrapper
around firmware/sim_main.py. The wrapper hooks `bmc.app.App.run` (before the loop)
and `Dispatcher._handle` (after every request) to write, on stderr (the slot's log;
stdout is the link), the heap after `gc.collect()`: bytes allocated, bytes free and
the largest bytearray that can still be allocated (a measure of fragmentation). The
wrapper's own code (about 1 KB) is included in the figures.

The requests: hello, status, a metrics scrape, status again, inventory-get,
boot-manifest-get, boot-status, and the largest request (a status of exactly
`codec.MAX_PAYLOAD` bytes). With `--manifest N` an admin key is provisioned first and
the BMC gets a boot manifest of N entries as a Pi 5 / CM5 asks for them (config.txt
and cmdline.txt stored on the BMC, the others listed from the host cache; set as
`bmcctl boot manifest set` does, through `BmcClient.boot_manifest_set`), then it
restarts, so the census starts with the manifest read from flash, and the requests
end with a set of the same manifest. Exit status 1 when a request fails or the BMC
does not start.
"""

from __future__ import annotations

import argparse
import hashlib
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
from racklet_host.client import Args, BmcClient
from racklet_host.keys import Key
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


def census_lines(log: pathlib.Path, tag: str = "") -> List[Tuple[int, int, int]]:
    """The census lines so far (only those tagged `tag`, when given)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [
        (int(m[2]), int(m[3]), int(m[4])) for m in _LINE.finditer(text) if m[1] == tag or not tag
    ]


def wait_lines(
    log: pathlib.Path, n: int, timeout: float = 30, tag: str = ""
) -> List[Tuple[int, int, int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = census_lines(log, tag)
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise SystemExit(f"heap_census: no census line {n} in {log}:\n{tail}")


def pi5_files(c: BmcClient, n: int) -> List[Args]:
    """`n` manifest entries named as a Pi 5 / CM5 asks for them; config.txt and
    cmdline.txt uploaded to the BMC, the others host-served (no upload)."""
    names = ["bootcode5.bin", "mcb.bin", "bootmain", "rp1c0fw1.bin", "config.txt", "boot.img"]
    names += [f"memsys{i:02d}.bin" for i in range(9)]
    names += ["kernel_2712.img", "initramfs8", "cmdline.txt", "bcm2712-rpi-5-b.dtb"]
    names += ["bcm2712-rpi-cm5-cm5io.dtb", "overlays/overlay_map.dtb"]
    names += [f"overlays/racklet-overlay-{i:02d}.dtbo" for i in range(max(0, n - len(names)))]
    files: List[Args] = []
    for name in names[:n]:
        if name in ("config.txt", "cmdline.txt"):
            data = f"{name}: racklet heap census\n".encode()
            sha = c.boot_file_put(data)
            files.append({"name": name, "size": len(data), "sha256": sha, "src": "bmc"})
        else:
            sha = hashlib.sha256(name.encode()).hexdigest()
            files.append({"name": name, "size": 1 << 20, "sha256": sha, "src": "host"})
    return files


def run(board: str, heap: str, manifest: int = 0) -> int:
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
        key: Key | None = None
        files: List[Args] = []
        if manifest:
            key = Key.generate()
            r.bootsel(1, seconds=3)
            with BmcClient.open(r.port(1), timeout=10) as c:
                c.keys_provision("admin", key)
            with BmcClient.open(r.port(1), key=key, timeout=10) as c:
                files = pi5_files(c, manifest)
                c.boot_manifest_set(files)
                starts = r.slot_info(1)["starts"]
                c.bmc_reboot(wait=False)
            r.wait_restarted(1, starts, 60)
        first = wait_lines(slot_log, 2 if manifest else 1, tag="start")[-1]
        rows: List[Tuple[str, Tuple[int, int, int]]] = [("start", first)]
        pad = "x" * (codec.MAX_PAYLOAD - 38)
        steps: List[Tuple[str, Callable[[BmcClient], Any]]] = [
            ("hello", lambda c: c.hello()),
            ("status", lambda c: c.status()),
            ("metrics", lambda c: c.metrics()),
            ("status", lambda c: c.status()),
            ("inventory-get", lambda c: c.request({"cmd": "inventory-get"})),
            ("boot-manifest-get", lambda c: c.boot_manifest()),
            ("boot-status", lambda c: c.request({"cmd": "boot-status"})),
            ("status", lambda c: c.status()),
            (
                f"status {codec.MAX_PAYLOAD} B",
                lambda c: c.request({"cmd": "status", "args": {"pad": pad}}),
            ),
        ]
        if manifest:
            steps.append(("boot-manifest-set", lambda c: c.boot_manifest_set(files)))
            steps.append(("boot-manifest-get", lambda c: c.boot_manifest()))
            steps.append(("metrics", lambda c: c.metrics()))
        with BmcClient.open(r.port(1), key=key, timeout=10) as c:
            for name, fn in steps:
                n = len(census_lines(slot_log))
                try:
                    fn(c)
                    note = ""
                except Exception as e:  # noqa: BLE001 - reported, the census goes on
                    note = f"  FAILED: {e}"
                    failed = True
                rows.append((name + note, wait_lines(slot_log, n + 1)[n]))
        loaded = f", a manifest of {manifest} entries" if manifest else ""
        print(f"heap census: board {board}, heap {heap}{loaded} (bytes after gc.collect())")
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
    p.add_argument(
        "--manifest", type=int, default=0, metavar="N", help="a boot manifest of N entries first"
    )
    args = p.parse_args(argv)
    return run(args.board, args.heap, args.manifest)


if __name__ == "__main__":
    sys.exit(main())

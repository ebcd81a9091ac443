"""Scrape latency of bmc-bridge's /metrics for 1, 8 and 32 simulated BMCs.

Starts `bmc-sim` with 32 BMCs (the real firmware under MicroPython, 192K heap),
then times HTTP GETs of the bridge's /metrics in front of the first 1, 8 and 32
of them (median, p99), and each BMC alone; prints the ratio of the 32-BMC p99 to
the slowest single-BMC scrape (goal: at most 1.25x: the BMCs are scraped in
parallel) and the bytes a render allocates on a BMC's heap. Prints, never asserts.
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import threading
import time
import urllib.request
from typing import Any, Dict, List

from prometheus_client.openmetrics.parser import text_string_to_metric_families
from racklet_host import discovery
from racklet_host.bridge import expo
from racklet_host.bridge.scrape import Scraper
from racklet_host.bridge.server import serve
from racklet_host.demo import start_sim, wait_for_bmcs

BOARDS = 32
ROUNDS = {1: 30, 8: 30, 32: 20}
SINGLE_ROUNDS = 5
ACCEPT = "application/openmetrics-text;version=1.0.0"


def _p99(xs: List[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]


def _get(url: str) -> str:
    req = urllib.request.Request(url, headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.read().decode())


def _timed(url: str, rounds: int) -> List[float]:
    _get(url)  # warm-up: first render loads the renderer on each BMC
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        _get(url)
        out.append(time.perf_counter() - t0)
    return out


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        rack = os.path.join(tmp, "rack")
        sim = start_sim(rack, BOARDS)
        try:
            t0 = time.monotonic()
            wait_for_bmcs(rack, BOARDS, sim)
            print(f"metrics: {BOARDS} simulated BMCs up in {time.monotonic() - t0:.1f} s")
            ports = discovery.rack_ports(rack)
            chosen: Dict[str, List[discovery.BmcPort]] = {}

            def lister() -> List[discovery.BmcPort]:
                return chosen["now"]

            scraper = Scraper(rack=rack, timeout=10.0, lister=lister)
            server = serve("127.0.0.1", 0, scraper)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
            try:
                results: Dict[int, List[float]] = {}
                for n in (1, 8, 32):
                    chosen["now"] = ports[:n]
                    results[n] = _timed(url, ROUNDS[n])
                    print(
                        f"metrics: /metrics with {n:2d} BMCs: median "
                        f"{statistics.median(results[n]) * 1000:7.1f} ms, "
                        f"p99 {_p99(results[n]) * 1000:7.1f} ms ({ROUNDS[n]} scrapes)"
                    )
                singles = []
                for p in ports:
                    chosen["now"] = [p]
                    singles.append(statistics.median(_timed(url, SINGLE_ROUNDS)))
                slowest = max(singles)
                print(
                    f"metrics: single-BMC scrapes: median of medians "
                    f"{statistics.median(singles) * 1000:.1f} ms, "
                    f"slowest BMC {slowest * 1000:.1f} ms"
                )
                print(
                    f"metrics: ratio p99(32 BMCs) / slowest single BMC = "
                    f"{_p99(results[32]) / slowest:.2f}x (goal <= 1.25x)"
                )
                _report_host_side(scraper, ports)
                chosen["now"] = ports[:1]
                text = _get(url)
                _report_heap(text)
            finally:
                server.shutdown()
                server.server_close()
        finally:
            if sim.poll() is None:
                sim.send_signal(signal.SIGINT)
                try:
                    sim.wait(20)
                except Exception:
                    os.killpg(sim.pid, signal.SIGKILL)
                    sim.wait()


def _report_host_side(scraper: Scraper, ports: List[discovery.BmcPort]) -> None:
    """Where the 32-BMC time goes: the bridge's own parsing and writing, and the CPUs."""
    results = scraper.scrape(ports)
    t0 = time.perf_counter()
    for res in results:
        if res.up:
            res.families = expo.parse(expo_text(res))
    t1 = time.perf_counter()
    expo.render(scraper.merge(results), True)
    t2 = time.perf_counter()
    print(
        f"metrics: bridge host-side work for {len(ports)} BMCs: parse {(t1 - t0) * 1000:.1f} ms, "
        f"merge+write {(t2 - t1) * 1000:.1f} ms; {os.cpu_count()} CPUs run "
        f"{len(ports)} MicroPython BMCs (each real BMC has its own)"
    )


def expo_text(res: Any) -> str:
    """One BMC's exposition again, as the bridge received it (re-rendered)."""
    m = expo.Merger()
    m.add(res.families, {})
    return expo.render(m, True).decode()


def _report_heap(text: str) -> None:
    values = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            values[s.name] = s.value
    alloc = values.get("bmc_metrics_render_allocated_bytes")
    peak = values.get("bmc_metrics_render_heap_peak_bytes")
    size = values.get("bmc_metrics_render_size_bytes")
    heap = (values.get("bmc_heap_free_bytes") or 0) + (values.get("bmc_heap_allocated_bytes") or 0)
    if alloc is not None and size:
        print(
            f"metrics: one render allocates {alloc:.0f} bytes on the BMC heap for "
            f"{size:.0f} bytes of text ({alloc / size:.1f} bytes per byte sent)"
        )
    if peak is not None and heap:
        print(f"metrics: heap high-water during a render {peak:.0f} of {heap:.0f} bytes")


if __name__ == "__main__":
    run()

"""Scrape latency of bmc-bridge's /metrics for 1, 8 and 32 BMCs, simulated and stand-in.

Starts `bmc-sim` with 32 BMCs (the real firmware under MicroPython, 192K heap),
then times HTTP GETs of the bridge's /metrics in front of the first 1, 8 and 32
of them (median, p99), and each BMC alone; prints the ratio of the 32-BMC p99 to
the slowest single-BMC scrape (goal: at most 1.25x: the BMCs are scraped in
parallel). Here the 32 MicroPython processes share the host's few cores, so that
ratio mostly measures the host's CPU count; on a rack every BMC renders on its own
RP2040. The same measurement is then repeated with 32 stand-in BMCs on PTYs
(tests/fake_bmc.py) that replay one recorded firmware render at once (with new
values, at every scrape, wherever two renders of that BMC differed): that ratio
is the bridge's own fan-out cost. Then stand-ins that replay the render in the
chunk frames and at the times a simulated BMC sent them when scraped alone
(recorded in this run), sleeping in between so that their 'rendering' takes no
host CPU (every BMC renders on its own CPU). Last, the rack's real condition: the
same, with no chunk earlier than a USB full-speed link could carry it (every BMC
also answers over its own link, at most ~1.2 MB/s); that ratio is the one the
goal is about. Then the same with each port's open and close as slow as a USB CDC
port's (`CdcLikeLink`: DTR up or down is a control transfer to the device; 1 ms
assumed, as a PTY has none), which the bridge's worker threads are for. Also
prints the bridge's host-side work (check and relabel, merge and write) and the
bytes a render allocates on a BMC's heap.
Prints, never asserts.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import statistics
import tempfile
import threading
import time
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from bmc import codec
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from racklet_host import discovery
from racklet_host.bridge import expo
from racklet_host.bridge.scrape import Scraper
from racklet_host.bridge.server import serve
from racklet_host.client import BmcClient
from racklet_host.demo import start_sim, wait_for_bmcs
from racklet_host.transport import Link

from tests.fake_bmc import SERIAL_TOKEN, Fakes, changing

BOARDS = 32
ROUNDS = {1: 30, 8: 30, 32: 20}
SINGLE_ROUNDS = 5
PACED_ROUNDS = {1: 50, 8: 50, 32: 100}  # stand-ins cost the host little: more rounds, steadier p99
PACE_ROUNDS = 11  # scrapes of one simulated BMC alone; the median one is replayed
ACCEPT = "application/openmetrics-text;version=1.0.0"
GOAL = 1.25
# USB full speed: at most 19 bulk packets of 64 bytes per 1 ms frame, about 1.2 MB/s:
# the physical ceiling of one BMC's CDC link. No BMC on a rack answers faster.
USB_FS_BYTES_PER_S = 1_200_000
FRAME_OVERHEAD = codec.HEADER + codec.TRAILER
# A USB CDC port's open raises DTR and its close lowers it: a control transfer to the
# device each, which the call waits for. Assumed (no hardware here): one USB frame.
CDC_CONTROL_S = 0.001


class CdcLikeLink(Link):
    """A stand-in's PTY opened and closed as slowly as a USB CDC port (CDC_CONTROL_S)."""

    @staticmethod
    def waits_on_device(path: str) -> bool:
        return True

    @classmethod
    def open_port(cls, path: str, busy_wait: float = 0.0) -> int:
        time.sleep(CDC_CONTROL_S)
        return super().open_port(path, busy_wait)

    def close(self) -> None:
        if self.is_open:
            time.sleep(CDC_CONTROL_S)
        super().close()


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


def _measure(
    what: str,
    ports: List[discovery.BmcPort],
    rounds: Optional[Dict[int, int]] = None,
    link_class: type[Link] = Link,
) -> Tuple[float, Scraper]:
    """/metrics latency for 1, 8, 32 of `ports` and each alone; the p99(32)/slowest ratio."""
    rounds = rounds or ROUNDS
    chosen: Dict[str, List[discovery.BmcPort]] = {}

    def lister() -> List[discovery.BmcPort]:
        return chosen["now"]

    scraper = Scraper(timeout=10.0, lister=lister, link_class=link_class)
    server = serve("127.0.0.1", 0, scraper)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        results: Dict[int, List[float]] = {}
        for n in (1, 8, 32):
            chosen["now"] = ports[:n]
            results[n] = _timed(url, rounds[n])
            print(
                f"metrics: {what}: /metrics with {n:2d} BMCs: median "
                f"{statistics.median(results[n]) * 1000:7.1f} ms, "
                f"p99 {_p99(results[n]) * 1000:7.1f} ms ({rounds[n]} scrapes)"
            )
        singles = []
        for p in ports:
            chosen["now"] = [p]
            singles.append(statistics.median(_timed(url, SINGLE_ROUNDS)))
        slowest = max(singles)
        print(
            f"metrics: {what}: single-BMC scrapes: median of medians "
            f"{statistics.median(singles) * 1000:.1f} ms, slowest BMC {slowest * 1000:.1f} ms"
        )
        ratio = _p99(results[32]) / slowest
        print(
            f"metrics: {what}: ratio p99(32 BMCs) / slowest single BMC = {ratio:.2f}x "
            f"(goal <= {GOAL}x)"
        )
        chosen["now"] = ports
        return ratio, scraper
    finally:
        server.shutdown()
        server.server_close()


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        rack = os.path.join(tmp, "rack")
        sim = start_sim(rack, BOARDS)
        try:
            t0 = time.monotonic()
            wait_for_bmcs(rack, BOARDS, sim)
            cpus = os.cpu_count()
            print(f"metrics: {BOARDS} simulated BMCs up in {time.monotonic() - t0:.1f} s")
            print(
                f"metrics: note: here {BOARDS} MicroPython BMC processes share this host's "
                f"{cpus} CPU cores, so 32 renders queue for the CPU; on a rack each BMC "
                "renders on its own RP2040"
            )
            ports = discovery.rack_ports(rack)
            sim_ratio, _ = _measure("simulated", ports)
            with BmcClient.open(ports[0].resolve(), timeout=10) as c:
                serial = c.serial
                recorded = c.stream("metrics").body.decode()
                again = c.stream("metrics").body.decode()  # what changes between scrapes
                pace = _record_pace(c)
            _report_heap(recorded)
        finally:
            if sim.poll() is None:
                sim.send_signal(signal.SIGINT)
                try:
                    sim.wait(20)
                except Exception:
                    os.killpg(sim.pid, signal.SIGKILL)
                    sim.wait()
        template = os.path.join(tmp, "render.txt")
        with open(template, "w", encoding="utf-8") as f:
            f.write(
                changing(recorded, again).replace(f'serial="{serial}"', f'serial="{SERIAL_TOKEN}"')
            )
        fakes = Fakes(pathlib.Path(tmp) / "fakes")
        fakes.rack.mkdir()
        try:
            fakes.start_many(list(range(1, BOARDS + 1)), "--replay", template)
            fports = discovery.rack_ports(str(fakes.rack))
            print(
                f"metrics: {BOARDS} stand-in BMCs on PTYs replay that render "
                f"({len(recorded)} bytes) at once"
            )
            fake_ratio, scraper = _measure("stand-ins", fports)
            _report_host_side(scraper)
        finally:
            fakes.stop_all()
        paced_ratio = _paced(
            pathlib.Path(tmp) / "paced",
            template,
            pace,
            "paced stand-ins",
            f"{BOARDS} paced stand-in BMCs replay that render as the simulated BMC sent it "
            f"when scraped alone (median of {PACE_ROUNDS}); one process sleeps until the next "
            "chunk is due, so each BMC renders as on a CPU of its own, as on a rack",
        )
        usb_ratio = _paced(
            pathlib.Path(tmp) / "usb",
            template,
            at_link_ceiling(pace),
            "paced at USB speed",
            "the same, no faster than a USB full-speed link carries the frames "
            f"({USB_FS_BYTES_PER_S / 1e6:g} MB/s, the brief's ceiling for one CDC link)",
        )
        cdc_ratio = _paced(
            pathlib.Path(tmp) / "cdc",
            template,
            at_link_ceiling(pace),
            "USB speed, CDC opens",
            "the same, each port's open and close taking as long as a USB CDC port's "
            f"(DTR up, then down: a control transfer each, assumed {CDC_CONTROL_S * 1000:g} ms)",
            CdcLikeLink,
        )
        print(
            f"metrics: fan-out ratio p99(32)/slowest single (goal <= {GOAL}x): "
            f"simulated BMCs {sim_ratio:.2f}x ({cpus} cores for {BOARDS} MicroPython BMCs), "
            f"bridge with instant stand-ins {fake_ratio:.2f}x"
        )
        print(
            f"metrics: paced stand-ins (each BMC renders on a CPU of its own, at the "
            f"simulated BMC's speed; its answer faster than a USB link can carry it): "
            f"{paced_ratio:.2f}x"
        )
        verdict = "met" if usb_ratio <= GOAL else "not met"
        print(
            f"metrics: fan-out goal under the rack's condition (every BMC renders on its own "
            f"CPU and answers over its own USB full-speed link; paced stand-ins, real render "
            f"timing, link ceiling): ratio p99(32)/slowest single {usb_ratio:.2f}x "
            f"(goal <= {GOAL}x: {verdict}); with ports that open and close as slowly as "
            f"USB CDC ports (assumed {CDC_CONTROL_S * 1000:g} ms each) {cdc_ratio:.2f}x"
        )


def _paced(
    where: pathlib.Path,
    template: str,
    pace: Dict[str, Any],
    what: str,
    intro: str,
    link_class: type[Link] = Link,
) -> float:
    """The fan-out ratio with 32 paced stand-ins replaying `template` at `pace`."""
    offsets = "/".join(f"{t:.1f}" for t in pace["offsets_ms"])
    intro = (
        f"metrics: {intro}: {len(pace['sizes'])} chunks at {offsets} ms, "
        f"answer complete at {pace['done_ms']:.1f} ms"
    )
    pace_file = f"{where}.json"
    with open(pace_file, "w", encoding="utf-8") as f:
        json.dump(pace, f)
    fakes = Fakes(where)
    fakes.rack.mkdir(parents=True)
    late_file = f"{where}.late"
    try:
        fakes.start_paced(list(range(1, BOARDS + 1)), template, pace_file, late_file)
        print(intro)
        ratio, _ = _measure(what, discovery.rack_ports(str(fakes.rack)), PACED_ROUNDS, link_class)
    finally:
        fakes.stop_all()
    _report_lateness(what, late_file)
    return ratio


def _report_lateness(what: str, late_file: str) -> None:
    """How late the stand-ins' process wrote the last frame due at once for 32 BMCs."""
    lates = []
    with open(late_file, encoding="utf-8") as f:
        for line in f:
            bmcs, _, late = line.split()
            if int(bmcs) == BOARDS:
                lates.append(float(late))
    if lates:
        print(
            f"metrics: {what}: the stand-ins' one process wrote the last of the frames due "
            f"at once to {BOARDS} BMCs {statistics.median(lates):.0f} us late (median, p99 "
            f"{_p99(lates):.0f} us, {len(lates)} runs of writes), in the 32-BMC times above; "
            "on a rack each BMC writes its own"
        )


def at_link_ceiling(pace: Dict[str, Any]) -> Dict[str, Any]:
    """`pace` with no chunk (and not the response) earlier than a USB full-speed link
    could have carried it and every frame before it."""
    sent = 0
    offsets = []
    for size, at in zip(pace["sizes"], pace["offsets_ms"]):
        sent += size + FRAME_OVERHEAD
        offsets.append(max(at, sent * 1000.0 / USB_FS_BYTES_PER_S))
    done = max(pace["done_ms"], (sent + 64) * 1000.0 / USB_FS_BYTES_PER_S)
    return {"sizes": pace["sizes"], "offsets_ms": offsets, "done_ms": done}


def _record_pace(client: BmcClient) -> Dict[str, Any]:
    """When each chunk of one simulated BMC's metrics answer arrived after the request.

    The BMC is scraped alone PACE_ROUNDS times; the round with the median total time
    is returned: chunk sizes, chunk arrival times and the response's, in ms.
    """
    rounds: List[Tuple[float, List[int], List[float]]] = []
    for _ in range(PACE_ROUNDS):
        sizes: List[int] = []
        times: List[float] = []

        def on_chunk(chunk: bytes, sizes: List[int] = sizes, times: List[float] = times) -> None:
            times.append(time.perf_counter())
            sizes.append(len(chunk))

        t0 = time.perf_counter()
        client.call("metrics", on_chunk=on_chunk)
        done = time.perf_counter() - t0
        rounds.append((done * 1000, sizes, [(t - t0) * 1000 for t in times]))
    rounds.sort(key=lambda r: r[0])
    total, sizes, offsets = rounds[len(rounds) // 2]
    return {"sizes": sizes, "offsets_ms": offsets, "done_ms": total}


def _report_host_side(scraper: Scraper) -> None:
    """The bridge's own work for one 32-BMC scrape: all of it in CPU time (what a
    slower rack host multiplies), then checking and relabelling, writing."""
    rounds = 20
    c0 = time.process_time()
    for _ in range(rounds):
        results = scraper.scrape()
        expo.render(scraper.merge(results), True)
    print(
        f"metrics: bridge CPU time for one whole scrape of {len(results)} BMCs (list, open,"
        f" ask, read, check, merge, write OpenMetrics, close): "
        f"{(time.process_time() - c0) / rounds * 1000:.1f} ms"
    )
    cold = scrape = 0.0
    for _ in range(rounds):
        known = (dict(expo._BLOCKS), dict(expo._OLD_BLOCKS))  # as before this scrape
        results = scraper.scrape()  # new values in the families that change
        texts = [r.exposition.text for r in results if r.up and r.exposition is not None]
        expo.forget_checked()
        expo._BLOCKS.update(known[0])
        expo._OLD_BLOCKS.update(known[1])
        t0 = time.perf_counter()
        for t in texts:
            expo.parse(t)
        scrape += time.perf_counter() - t0
        known = (dict(expo._BLOCKS), dict(expo._OLD_BLOCKS))
        expo.forget_checked()  # cold: every family checked anew
        t0 = time.perf_counter()
        for t in texts:
            expo.parse(t)
        cold += time.perf_counter() - t0
        expo.forget_checked()
        expo._BLOCKS.update(known[0])
        expo._OLD_BLOCKS.update(known[1])
    t1 = time.perf_counter()
    for _ in range(rounds):
        expo.render(scraper.merge(results), True)
    t2 = time.perf_counter()
    for _ in range(rounds):
        expo.render(scraper.merge(results), False)
    t3 = time.perf_counter()
    print(
        f"metrics: bridge host-side work for {len(texts)} BMCs "
        f"({sum(len(t) for t in texts)} bytes): check+split {scrape / rounds * 1000:.1f} ms "
        f"at a scrape (the families whose values changed since the last checked anew), "
        f"{cold / rounds * 1000:.1f} ms cold, merge+write OpenMetrics "
        f"{(t2 - t1) / rounds * 1000:.1f} ms, text 0.0.4 {(t3 - t2) / rounds * 1000:.1f} ms"
    )


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

"""Scraping every BMC in parallel, each within its own deadline.

Each scrape rediscovers the BMCs (a listing of the rack directory or of the USB
serial ports: cheap), so BMCs that come and go are picked up and dropped without
a restart. Every BMC is fetched by its own thread; the scrape waits for all of
them until one common deadline and reports whatever did not answer in time as
`bmc_up 0`. A fetch that overran keeps its BMC's link until its client times
out; a scrape that finds the link still taken reports that BMC as busy at once
rather than queueing behind it, so one hung BMC never delays the others.

The link to a BMC is opened for a fetch and closed after it (`LinkManager`), so
`bmcctl` in another process can use the port between scrapes; within the bridge
a per-BMC lock lets one command at a time use a link.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional

from .. import discovery
from ..client import BmcClient
from ..errors import BmcError, LinkGone, NoBmcFound, Timeout
from . import expo

DEFAULT_TIMEOUT = 3.0
_BUSY_MARGIN = 0.1  # seconds before the deadline a wait for a held port gives up


class Busy(BmcError):
    """The bridge's own previous command on this link has not finished."""

    code = "busy"


class LinkManager:
    """One command at a time per BMC link, shared by everything in the bridge."""

    def __init__(self) -> None:
        self._locks: Dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(name)
            if lock is None:
                lock = self._locks[name] = threading.Lock()
            return lock

    def busy(self, name: str) -> bool:
        return self._lock(name).locked()

    @contextlib.contextmanager
    def session(self, port: discovery.BmcPort, deadline: float) -> Iterator[BmcClient]:
        """An open client for `port`, held until the block ends; `Busy` if taken until then.

        Another program holding the port (bmcctl in the middle of a command) is
        waited for until `deadline` (`PortBusy` after that).
        """
        lock = self._lock(port.name)
        if not lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise Busy(f"{port.name}: the previous command on this link is still running")
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"{port.name}: no time left to open the port")
            try:
                path = port.resolve()
                # a port held elsewhere: wait, but answer port_busy before the scrape's deadline
                wait = max(left - _BUSY_MARGIN, 0.0)
                client = BmcClient.open(path, timeout=left, name=port.name, busy_wait=wait)
            except NoBmcFound as e:
                raise LinkGone(e.message) from None
            try:
                yield client
            finally:
                client.close()
        finally:
            lock.release()


class Result:
    """The outcome of scraping one BMC."""

    __slots__ = ("slot", "serial", "up", "duration", "exposition", "error", "message")

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self.serial = ""
        self.up = False
        self.duration = 0.0
        self.exposition: Optional[expo.Exposition] = None
        self.error: Optional[str] = None  # reason label when down
        self.message = ""


def error_reason(e: BaseException) -> str:
    if isinstance(e, expo.ExpositionError):
        return "bad_exposition"
    if isinstance(e, BmcError):
        return e.code
    return "internal"


class Scraper:
    """Finds the BMCs and scrapes them; remembers serials and counts errors."""

    def __init__(
        self,
        rack: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        lister: Optional[Callable[[], List[discovery.BmcPort]]] = None,
        links: Optional[LinkManager] = None,
    ) -> None:
        self.rack = rack
        self.timeout = timeout
        self._lister = lister
        self.links = links or LinkManager()
        self.serials: Dict[str, str] = {}  # slot -> last serial seen
        self.errors: Dict[str, Dict[str, int]] = {}  # slot -> reason -> count
        self.discovery_errors = 0
        self.scrapes = 0
        self._lock = threading.Lock()

    # -- which BMCs -----------------------------------------------------------
    def ports(self) -> List[discovery.BmcPort]:
        if self._lister is not None:
            return self._lister()
        rack = self.rack or os.environ.get(discovery.ENV_RACK) or None
        try:
            if rack:
                return discovery.rack_ports(rack)
            return discovery.usb_ports()
        except NoBmcFound:
            with self._lock:
                self.discovery_errors += 1
            return []

    def find(self, target: str, timeout: Optional[float] = None) -> Optional[discovery.BmcPort]:
        """A BMC by slot (`slot3` or `3`), serial or port path.

        A serial not seen yet is looked for by scraping the BMCs whose serial the
        bridge does not know (that scrape counts like any other).
        """
        ports = self.ports()
        hit = discovery.match(ports, target)
        if hit is not None:
            return hit
        unknown = []
        for p in ports:
            if self.serials.get(p.name) == target:
                return p
            if p.name not in self.serials:
                unknown.append(p)
        if unknown:
            self.scrape(unknown, timeout=timeout)
            for p in unknown:
                if self.serials.get(p.name) == target:
                    return p
        return None

    # -- scraping -------------------------------------------------------------
    def _run(
        self, port: discovery.BmcPort, deadline: float, res: Result, finished: threading.Event
    ) -> None:
        try:
            self._fetch(port, deadline, res)
        finally:
            finished.set()

    def _fetch(self, port: discovery.BmcPort, deadline: float, res: Result) -> None:
        t0 = time.monotonic()
        try:
            with self.links.session(port, deadline) as client:
                body = client.stream("metrics").body
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as e:
                raise expo.ExpositionError(f"not UTF-8 at byte {e.start}") from None
            parsed = expo.parse(text)
            res.exposition = parsed
            serial = parsed.label("bmc", "serial")
            if serial:
                res.serial = serial
            res.up = True
        except Exception as e:  # every failure is this BMC's bmc_up 0, never the scrape's
            res.error = error_reason(e)
            res.message = getattr(e, "message", None) or str(e)
        res.duration = time.monotonic() - t0

    def scrape(
        self, ports: Optional[List[discovery.BmcPort]] = None, timeout: Optional[float] = None
    ) -> List[Result]:
        """Scrape `ports` (default: all found now) in parallel; one Result each, in order."""
        if ports is None:
            ports = self.ports()
        wait = self.timeout if timeout is None else min(timeout, self.timeout)
        t0 = time.monotonic()
        deadline = t0 + wait
        results: List[Result] = []
        done: List[Optional[threading.Event]] = []
        for port in ports:
            res = Result(port.name)
            results.append(res)
            if self.links.busy(port.name):
                res.error = "busy"
                res.message = "the previous scrape of this BMC has not finished"
                done.append(None)
                continue
            finished = threading.Event()
            # _thread: threading.Thread.start() waits until the new thread runs, and
            # with earlier fetches holding the GIL that handshake staggered the starts
            # of 32 fetches over most of the scrape. Daemon-like: never joined.
            _thread.start_new_thread(self._run, (port, deadline, res, finished))
            done.append(finished)
        for event, res in zip(done, results):
            if event is None:
                continue
            if not event.wait(max(deadline - time.monotonic(), 0.0)):
                # The fetch keeps its own result object; this scrape reports a timeout.
                late = Result(res.slot)
                late.error = "timeout"
                late.message = f"no complete answer within {wait:g} s"
                late.duration = time.monotonic() - t0
                results[results.index(res)] = late
        with self._lock:
            self.scrapes += 1
            for res in results:
                if res.up and res.serial:
                    self.serials[res.slot] = res.serial
                else:
                    res.serial = self.serials.get(res.slot, "")
                if res.error is not None:
                    table = self.errors.setdefault(res.slot, {})
                    table[res.error] = table.get(res.error, 0) + 1
        return results

    # -- exposition -----------------------------------------------------------
    def merge(self, results: List[Result]) -> expo.Merger:
        """The bridge's own families, then every BMC's labelled by serial and slot."""
        merger = expo.Merger()
        up = expo.Family("bmc_up", "gauge", "1 if the BMC answered this scrape with valid metrics")
        dur = expo.Family(
            "bmc_scrape_duration_seconds",
            "gauge",
            "Time the bridge spent scraping the BMC",
            "seconds",
        )
        for res in results:
            labels = {"serial": res.serial, "slot": res.slot}
            up.add("bmc_up", labels, 1.0 if res.up else 0.0)
            dur.add("bmc_scrape_duration_seconds", labels, round(res.duration, 6))
        errs = expo.Family("bmc_scrape_errors", "counter", "Failed scrapes of a BMC by reason")
        with self._lock:
            for slot in sorted(self.errors):
                for reason in sorted(self.errors[slot]):
                    errs.add(
                        "bmc_scrape_errors_total",
                        {"reason": reason, "slot": slot},
                        float(self.errors[slot][reason]),
                    )
            scrapes = self.scrapes
            disc = self.discovery_errors
        targets = expo.Family("bmc_bridge_targets", "gauge", "BMCs found by the last scrape")
        targets.add("bmc_bridge_targets", {}, float(len(results)))
        total = expo.Family("bmc_bridge_scrapes", "counter", "Scrapes the bridge has served")
        total.add("bmc_bridge_scrapes_total", {}, float(scrapes))
        derr = expo.Family(
            "bmc_bridge_discovery_errors", "counter", "Scrapes whose BMC discovery failed"
        )
        derr.add("bmc_bridge_discovery_errors_total", {}, float(disc))
        for fam in (up, dur, errs, targets, total, derr):
            merger.add_family(fam)
        for res in results:
            if res.up and res.exposition is not None:
                merger.add(res.exposition, res.serial, res.slot)
        return merger

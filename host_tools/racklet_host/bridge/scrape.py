"""Scraping every BMC in parallel, each within its own deadline.

Each scrape rediscovers the BMCs (a listing of the rack directory, or an
enumeration of the USB serial ports at most once a second: `Scraper.ports`), so
BMCs that come and go are picked up and dropped without a restart. A port is
opened at the path that listing gave; only when nothing is there any more (the
BMC re-enumerated under another tty since) is it looked up again: an
enumeration reads several sysfs files for every serial port on the host, and
one per BMC would hold the last request back by 32 of them.

One event loop (a selector over every BMC link, in the thread that serves the
HTTP request) sends every BMC its request and then takes in whichever
link has data: each chunk is split into frames and its complete families are
checked and labelled as they come (`expo.Reader`), so the work overlaps the BMCs'
own render time and little is left when the last answer arrives. Whatever has
not answered by the scrape's one deadline is reported as `bmc_up 0` (timeout)
and its link closed, so a hung BMC never delays the others and does not hold its
link into the next scrape.

The link to a BMC is opened for a fetch and closed as soon as its answer is in,
so `bmcctl` in another process can use the port between scrapes (a port another
program holds is waited for, retried every few milliseconds until just before the
deadline, then reported as `port_busy`); within the bridge a per-BMC lock
(`LinkManager`) lets one scrape at a time use a link. A request that comes while
a scrape of every BMC runs shares that scrape's answers (`Scraper.scrape`), and
one for a BMC that another request is fetching from (two Prometheus servers
probing it, a /metrics during a /probe) shares that fetch (`_Flight`): one
request reaches the BMC, and neither calls it busy.

Opening a BMC's USB CDC port raises DTR, a control transfer to the device that the
open waits for (a millisecond or more through the hub), and closing it lowers DTR
again: 32 of those one after the other would hold the last BMC's request back, and
the last answer's turn, by tens of milliseconds. Those opens and closes run on
worker threads, all at once (`Link.waits_on_device`), as does an open that has to
wait for a port another program holds; a PTY's (a simulated BMC: a few system
calls) stay in the loop's thread, where handing them over would cost more than
they do.
"""

from __future__ import annotations

import os
import selectors
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Deque, Dict, List, Optional, Tuple, Type, TypeVar

from bmc import codec

from .. import discovery
from ..client import _decode, _response_data
from ..errors import BmcError, LinkGone, NoBmcFound, PortBusy, ProtocolError
from ..transport import Link
from . import expo

DEFAULT_TIMEOUT = 3.0
_BUSY_MARGIN = 0.1  # seconds before the deadline a wait for a held port gives up
WORKERS = 32  # threads for opens and closes that wait on the device (a rack's, at once)
USB_LISTING_AGE = 1.0  # seconds a USB listing serves the scrapes that follow (see ports)
_REQUEST = codec.dumps({"cmd": "metrics", "args": {}})
_T = TypeVar("_T")


class LinkManager:
    """One command at a time per BMC link, shared by everything in the bridge.

    A link whose close runs on a worker thread is handed on at once: the next user
    of the name waits for that close (`closing`) before it opens the port.
    """

    def __init__(self) -> None:
        self._locks: Dict[str, threading.Lock] = {}
        self._closes: Dict[str, Future[None]] = {}
        self._guard = threading.Lock()

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(name)
            if lock is None:
                lock = self._locks[name] = threading.Lock()
            return lock

    def busy(self, name: str) -> bool:
        return self._lock(name).locked()

    def take(self, name: str) -> bool:
        """The link for this caller (True), or False at once if someone in the bridge has it."""
        return self._lock(name).acquire(blocking=False)

    def release(self, name: str, closing: Optional[Future[None]] = None) -> None:
        """Let the next user have the link; `closing`: its close, still running."""
        with self._guard:
            if closing is None:
                self._closes.pop(name, None)
            else:
                self._closes[name] = closing
        self._lock(name).release()

    def closing(self, name: str) -> Optional[Future[None]]:
        """The close of the link's last use, while it runs."""
        with self._guard:
            fut = self._closes.get(name)
            if fut is not None and fut.done():
                del self._closes[name]
                return None
            return fut


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


class _Running:
    """A scrape of every BMC in progress, which requests that come meanwhile share."""

    def __init__(self, names: List[str]) -> None:
        self.names = names
        self.done = threading.Event()
        self.results: Optional[List[Result]] = None

    def share(self, names: Optional[List[str]], deadline: float) -> Optional[List[Result]]:
        """Its results for `names` (None: all of them) once it ends, or None when it
        does not cover them or failed. Past `deadline`, each BMC asked for is a timeout."""
        if names is None:
            names = self.names
        elif not set(names) <= set(self.names):
            return None
        if not self.done.wait(max(0.0, deadline - time.monotonic())):
            late = []
            for name in names:
                res = Result(name)
                res.error = "timeout"
                res.message = "the scrape running when this request came did not end in time"
                late.append(res)
            return late
        if self.results is None:
            return None
        by_name = {r.slot: r for r in self.results}
        return [by_name[n] for n in names]


class _Flight:
    """One BMC's fetch under way, which other requests for that BMC wait for and share."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Optional[Result] = None

    def share(self, res: Result, deadline: float) -> None:
        """Copy its outcome into `res` once it ends; past `deadline`, a timeout."""
        got = self.result if self.done.wait(max(0.0, deadline - time.monotonic())) else None
        if got is None:
            res.error = "timeout"
            res.message = "the fetch of this BMC running when this request came did not end in time"
            return
        for name in Result.__slots__:
            setattr(res, name, getattr(got, name))


class Scraper:
    """Finds the BMCs and scrapes them; remembers serials and counts errors."""

    def __init__(
        self,
        rack: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        lister: Optional[Callable[[], List[discovery.BmcPort]]] = None,
        links: Optional[LinkManager] = None,
        link_class: Type[Link] = Link,
        hub: Optional[str] = None,
        usb_listing_age: float = USB_LISTING_AGE,
    ) -> None:
        self.rack = rack
        self.hub = hub  # the backplane hub's USB path: slots named below it (discovery)
        self.timeout = timeout
        self._lister = lister
        self.links = links or LinkManager()
        self.link_class = link_class
        self.slow: Dict[str, bool] = {}  # port path -> its open and close wait on the device
        self.workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="bmc-link")
        self.serials: Dict[str, str] = {}  # slot -> last serial seen
        self.errors: Dict[str, Dict[str, int]] = {}  # slot -> reason -> count
        self.discovery_errors = 0
        self.scrapes = 0
        self._lock = threading.Lock()
        self._running: Optional[_Running] = None  # the scrape of every BMC under way
        self._flights: Dict[str, _Flight] = {}  # BMC name -> its fetch under way
        self.usb_listing_age = usb_listing_age
        self._usb_listing: Optional[Tuple[float, List[discovery.BmcPort]]] = None
        self._listing_lock = threading.Lock()

    # -- which BMCs -----------------------------------------------------------
    def ports(self) -> List[discovery.BmcPort]:
        """The BMCs there now.

        A rack directory is listed for every scrape. The USB bus is enumerated at most
        once every `usb_listing_age` seconds: an enumeration reads several sysfs files
        for every serial port on the host (milliseconds for a rack of BMCs, more on a
        Raspberry Pi), and Prometheus probing each BMC (`/probe`, one request per BMC,
        all at once) would make one per BMC. A listing that is out of date costs
        nothing: a BMC that left is down at the open, one that came back as another
        tty is looked up again there (`_opened`), and one that is new is found by the
        next enumeration.
        """
        if self._lister is not None:
            return self._lister()
        rack = self.rack or os.environ.get(discovery.ENV_RACK) or None
        try:
            if rack:
                return discovery.rack_ports(rack)
            with self._listing_lock:  # probes that come together wait for one listing
                last = self._usb_listing
                if last is not None and time.monotonic() - last[0] < self.usb_listing_age:
                    return list(last[1])
                ports = discovery.usb_ports(self.hub)
                self._usb_listing = (time.monotonic(), ports)
                return list(ports)
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
            if discovery.same_serial(self.serials.get(p.name), target):
                return p
            if p.name not in self.serials:
                unknown.append(p)
        if unknown:
            self.scrape(unknown, timeout=timeout)
            for p in unknown:
                if discovery.same_serial(self.serials.get(p.name), target):
                    return p
        return None

    # -- scraping -------------------------------------------------------------
    def scrape(
        self, ports: Optional[List[discovery.BmcPort]] = None, timeout: Optional[float] = None
    ) -> List[Result]:
        """Scrape `ports` (default: all found now) in parallel; one Result each, in order.

        A request that comes while a scrape of all BMCs is running (two Prometheus
        servers, a person with curl) shares its answers rather than finding every
        link taken: it waits for that scrape when it covers every BMC asked for.
        """
        wait = self.timeout if timeout is None else min(timeout, self.timeout)
        t0 = time.monotonic()
        with self._lock:
            running = self._running
        if running is not None:
            names = None if ports is None else [p.name for p in ports]
            shared = running.share(names, t0 + wait)
            if shared is not None:
                return shared
        mine: Optional[_Running] = None
        if ports is None:
            ports = self.ports()
            mine = _Running([p.name for p in ports])
            with self._lock:
                if self._running is None:
                    self._running = mine
                else:
                    mine = None  # another began meanwhile; this one runs on its own
        try:
            results = self._scrape(ports, wait, t0)
            if mine is not None:
                mine.results = results
        finally:
            if mine is not None:
                with self._lock:
                    self._running = None
                mine.done.set()
        return results

    def _scrape(self, ports: List[discovery.BmcPort], wait: float, t0: float) -> List[Result]:
        """Fetch from each BMC in `ports` that no other request is fetching from now; a
        BMC another request is fetching from (two Prometheus servers probing it, a
        /metrics during a /probe) shares that fetch's outcome, after this one's own."""
        deadline = t0 + wait
        loop = _Loop(self, deadline)
        results: List[Result] = []
        mine: Dict[str, Tuple[_Flight, Result, discovery.BmcPort]] = {}
        theirs: List[Tuple[Result, _Flight]] = []
        with self._lock:
            for port in ports:
                res = Result(port.name)
                results.append(res)
                flight = self._flights.get(port.name)
                if flight is None:
                    flight = self._flights[port.name] = _Flight()
                    mine[port.name] = (flight, res, port)
                else:  # another request's, or this one's if a name came twice
                    theirs.append((res, flight))
        try:
            for _, res, port in mine.values():
                loop.start(port, res)
            loop.send()
            loop.run()
        finally:
            try:
                for res in loop.close():
                    res.error = "timeout"
                    res.message = f"no complete answer within {wait:g} s"
                    res.duration = time.monotonic() - t0
            finally:  # whatever happened, the next request for these BMCs fetches anew
                with self._lock:
                    for name, (flight, res, _) in mine.items():
                        flight.result = res
                        del self._flights[name]
                for flight, _, _ in mine.values():
                    flight.done.set()
        for res, flight in theirs:
            flight.share(res, deadline)
        shared = {id(res) for res, _ in theirs}
        with self._lock:
            self.scrapes += 1
            for res in results:
                if res.up and res.serial:
                    self.serials[res.slot] = res.serial
                else:
                    res.serial = self.serials.get(res.slot, "")
                if res.error is not None and id(res) not in shared:  # counted once
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


def _opened(port: discovery.BmcPort, open_at: Callable[[str], _T]) -> _T:
    """`open_at(port.path)`, the path this scrape's discovery gave; if nothing is
    there any more, at the path the port's resolver finds now (the BMC rebooted and
    came back as another tty). LinkGone if it is gone."""
    try:
        return open_at(port.path)
    except LinkGone:
        old = port.path
        try:
            path = port.resolve()
        except NoBmcFound as e:
            raise LinkGone(e.message) from None
        if path == old:
            raise
        return open_at(path)


class _Fetch:
    """One BMC's scrape in flight."""

    __slots__ = ("port", "res", "t0", "link", "fd", "rid", "reader", "in_worker", "done")

    def __init__(self, port: discovery.BmcPort, res: Result, rid: int) -> None:
        self.port = port
        self.res = res
        self.t0 = time.monotonic()
        self.link: Optional[Link] = None
        self.fd = -1
        self.rid = rid
        self.reader = expo.Reader(port.name)
        self.in_worker = False  # a worker thread is opening its link
        self.done = False


class _Loop:
    """Every BMC's request out, then each answer in as it arrives, until one deadline."""

    _rid = int.from_bytes(os.urandom(2), "little")
    _rid_lock = threading.Lock()

    def __init__(self, scraper: Scraper, deadline: float) -> None:
        self.links = scraper.links
        self.slow = scraper.slow
        self.workers = scraper.workers
        self.link_class = scraper.link_class
        self.deadline = deadline
        self.fetches: List[_Fetch] = []
        self.unsent: List[_Fetch] = []  # opened in this thread, request not sent yet
        self.active = 0  # links in the selector
        self.in_worker = 0  # links a worker is opening
        self.sel = selectors.DefaultSelector()
        # ports a worker opened (their descriptors, or the error), handed to this thread
        self._opened: Deque[Tuple[_Fetch, int, Optional[BaseException]]] = deque()
        self._handoff = threading.Lock()
        self._ended = False
        self._wake_r = self._wake_w = -1  # the pipe, made when a worker is first used

    @classmethod
    def _next_rid(cls) -> int:
        with cls._rid_lock:
            cls._rid = cls._rid % 0xFFFF + 1
            return cls._rid

    def start(self, port: discovery.BmcPort, res: Result) -> None:
        name = port.name
        if not self.links.take(name):
            res.error = "busy"
            res.message = "the previous scrape of this BMC has not finished"
            return
        f = _Fetch(port, res, self._next_rid())
        self.fetches.append(f)
        try:
            if self._waits(f) or self.links.closing(name) is not None:
                self._to_worker(f)
                return
            try:
                link = _opened(port, self.link_class)
            except PortBusy:
                self._to_worker(f)  # waits there for its turn
                return
            self._add(f, link)
            self.unsent.append(f)
        except Exception as e:
            self._fail(f, e)

    def _waits(self, f: _Fetch) -> bool:
        """Whether the port's open and close wait on the device (known by its path)."""
        path = f.port.path
        slow = self.slow.get(path)
        if slow is None:
            slow = self.slow[path] = self.link_class.waits_on_device(path)
        return slow

    def _add(self, f: _Fetch, link: Link) -> None:
        try:
            fd = link.fileno()
            self.sel.register(fd, selectors.EVENT_READ, f)
        except BaseException:
            link.close()
            raise
        f.link = link
        f.fd = fd
        self.active += 1

    def send(self) -> None:
        """The request to every BMC whose link `start` opened in this thread.

        Links are opened first and the requests sent after, back to back: a request
        wakes its BMC (here a process that may take the CPU from the bridge), and the
        last request goes out as early as it can.
        """
        unsent, self.unsent = self.unsent, []
        for f in unsent:
            if f.link is not None:
                try:
                    # one attempt: a BMC that stopped reading must not hold up the rest
                    f.link.send_frame(codec.KIND_REQUEST, f.rid, _REQUEST, 0.0)
                except Exception as e:
                    self._fail(f, e)

    # -- on worker threads ----------------------------------------------------
    def _to_worker(self, f: _Fetch) -> None:
        if self._wake_r < 0:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        f.in_worker = True
        self.in_worker += 1
        self.workers.submit(self._open_in_worker, f)

    def _open_in_worker(self, f: _Fetch) -> None:
        """Open and lock the port (after the last use's close, and after a program
        holding it), then hand it to the loop, which sets it up and sends the request.
        Only what may wait runs here: a thread holding the interpreter lock between
        system calls would queue the others behind it. The loop's lock on the name is
        this thread's meanwhile: a scrape that ended first leaves it to release."""
        name = f.port.name
        fd = -1
        err: Optional[BaseException] = None
        try:
            closing = self.links.closing(name)
            if closing is not None:
                try:
                    closing.result(max(self.deadline - _BUSY_MARGIN - time.monotonic(), 0.0))
                except Exception:
                    raise PortBusy(f"port {name}: its last close has not finished") from None
            wait = max(self.deadline - _BUSY_MARGIN - time.monotonic(), 0.0)
            # PortBusy says how long it waited
            fd = _opened(f.port, lambda path: self.link_class.open_port(path, wait))
        except BaseException as e:
            err = e
        with self._handoff:
            if not self._ended:
                wake = not self._opened
                self._opened.append((f, fd, err))
                if wake:  # the loop takes every port handed over by then
                    os.write(self._wake_w, b"\0")
                return
        # the scrape is over (reported as a timeout): nobody reads this port
        if fd >= 0:
            os.close(fd)
        self.links.release(name)

    # -- in the loop's thread -------------------------------------------------
    def _take_opened(self) -> None:
        if self._wake_r < 0:
            return
        with self._handoff:
            if not self._opened:
                return
            os.read(self._wake_r, 1)
            opened, self._opened = self._opened, deque()
        for f, fd, err in opened:
            f.in_worker = False
            self.in_worker -= 1
            if err is not None:
                self._fail(f, err)
                continue
            try:
                self._add(f, self.link_class(f.port.path, fd=fd))
                self.unsent.append(f)
            except Exception as e:
                self._fail(f, e)
        self.send()

    def _end(self, f: _Fetch) -> None:
        """Close the link and let the next command have it."""
        f.done = True
        f.res.duration = time.monotonic() - f.t0
        name = f.port.name
        link, f.link = f.link, None
        if link is None:
            self.links.release(name)
            return
        self.sel.unregister(f.fd)  # also when an error closed the link already
        self.active -= 1
        if self._waits(f):
            self.links.release(name, self.workers.submit(link.close))
        else:
            link.close()
            self.links.release(name)

    def _fail(self, f: _Fetch, e: BaseException) -> None:
        f.res.error = error_reason(e)
        f.res.message = getattr(e, "message", None) or str(e)
        self._end(f)

    def _readable(self, f: _Fetch) -> None:
        link = f.link
        assert link is not None
        try:
            for frame in link.poll_frames():
                if frame.req_id != f.rid:
                    continue  # a late answer to an earlier scrape
                if frame.kind == codec.KIND_CHUNK:
                    f.reader.feed(frame.payload)
                    continue
                if frame.kind != codec.KIND_RESPONSE:
                    continue
                _response_data(_decode(frame.payload, f.port.name), f.port.name)
                if link.bad_frames:  # a hole in the stream (the link is new at each scrape)
                    raise ProtocolError(
                        f"{f.port.name}: {link.bad_frames} frame(s) of the metrics arrived"
                        " corrupt (CRC mismatch): the data is incomplete"
                    )
                parsed = f.reader.finish()
                f.res.exposition = parsed
                serial = f.reader.serial  # read from the `bmc` family as it came
                if serial is None:  # the text was checked line by line
                    serial = parsed.label("bmc", "serial")
                if serial:
                    f.res.serial = serial
                f.res.up = True
                self._end(f)
                return
        except Exception as e:  # every failure is this BMC's bmc_up 0, never the scrape's
            self._fail(f, e)

    def run(self) -> None:
        """Until every fetch is done or the deadline passed."""
        while self.active or self.in_worker:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return
            for key, _ in self.sel.select(left):
                f = key.data
                if f is None:
                    self._take_opened()
                elif not f.done:
                    self._readable(f)

    def close(self) -> List[Result]:
        """End the fetches cut off by the deadline (links closed); their Results.

        A port a worker is still opening is that worker's to close and release."""
        with self._handoff:
            self._ended = True
            opened, self._opened = self._opened, deque()
        late = []
        for f, fd, err in opened:  # handed over too late
            f.in_worker = False
            self.in_worker -= 1
            if err is not None:
                self._fail(f, err)
                continue
            f.done = True  # its port closed unused
            f.res.duration = time.monotonic() - f.t0
            self.links.release(f.port.name, self.workers.submit(os.close, fd))
            late.append(f.res)
        for f in self.fetches:
            if not f.done:
                if f.in_worker:
                    f.done = True
                    f.res.duration = time.monotonic() - f.t0
                else:
                    self._end(f)
                late.append(f.res)
        self.sel.close()
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
        return late

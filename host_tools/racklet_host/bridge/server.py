"""`bmc-bridge`: an HTTP server that shows every BMC's metrics to Prometheus.

    bmc-bridge [--rack DIR] [--listen HOST:PORT] [--timeout S] [--hub PATH] [--config FILE]

Endpoints:
  /metrics               every BMC (labels `slot` and `serial` added) and the
                         bridge's own families (`bmc_up`, scrape durations, errors)
  /probe?target=T        one BMC by slot, serial or port (the multi-target
                         exporter pattern of snmp_exporter and blackbox_exporter)
  /                      a short index

OpenMetrics 1.0.0 goes to clients whose Accept header asks for it (Prometheus
does), Prometheus text 0.0.4 to everyone else. The listen address is 127.0.0.1
unless configured otherwise: metrics name every serial on the rack.

The config file is INI with a `[bridge]` section: `listen`, `rack`, `timeout`,
`hub` (the backplane hub's USB path, as `BMC_HUB`: slots are named below it).
Command-line flags win over the file.
"""

from __future__ import annotations

import argparse
import configparser
import html
import math
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Dict, Optional, Sequence, Tuple, Type
from urllib.parse import parse_qs, urlsplit

from .. import discovery
from ..errors import NoBmcFound
from . import expo
from .scrape import DEFAULT_TIMEOUT, Scraper

DEFAULT_LISTEN = "127.0.0.1:9580"
# Prometheus tells how long it waits for a scrape; answer a little before that.
_SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
_HEADROOM = 0.5
# A connection that sends nothing for this long is closed: longer than Prometheus's
# longest usual scrape interval (1 min), so its kept-alive connection stays.
IDLE_TIMEOUT_S = 120.0
MAX_CLIENTS = 64  # connections served at once; more are closed as they come


class ConfigError(ValueError):
    pass


def parse_listen(text: str) -> Tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")  # `[]:9580` is no host, not '' (every interface)
    if not sep or not host:
        raise ConfigError(f"listen address '{text}' is not HOST:PORT")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"listen address '{text}': port '{port}' is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"listen address '{text}': port {number} outside 0-65535")
    return host, number


def load_config(path: str) -> Dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)  # a '%' in a path is a '%'
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {e.start})") from None
    except configparser.Error as e:
        raise ConfigError(f"config file {path}: {e}") from None
    if not parser.has_section("bridge"):
        raise ConfigError(f"config file {path}: no [bridge] section")
    known = {"listen", "rack", "timeout", "hub"}
    values = dict(parser.items("bridge"))
    for key in values:
        if key not in known:
            raise ConfigError(f"config file {path}: unknown setting '{key}' in [bridge]")
    return values


class Bridge:
    """The HTTP side: routes requests to the scraper and renders the answer."""

    def __init__(self, scraper: Scraper) -> None:
        self.scraper = scraper

    def budget(self, header: Optional[str]) -> Optional[float]:
        """The scrape's time from Prometheus's timeout header, a little before it; None
        (the configured timeout) when there is none or it is not a finite number."""
        if not header:
            return None
        try:
            value = float(header)
        except ValueError:
            return None
        if not math.isfinite(value):  # "nan" and "inf" parse, and would reach select()
            return None
        return max(value - _HEADROOM, 0.1)

    def metrics(self, openmetrics: bool, budget: Optional[float]) -> bytes:
        results = self.scraper.scrape(timeout=budget)
        return expo.render(self.scraper.merge(results), openmetrics)

    def probe(self, target: str, openmetrics: bool, budget: Optional[float]) -> Optional[bytes]:
        port = self.scraper.find(target, timeout=budget)
        if port is None:
            return None
        results = self.scraper.scrape([port], timeout=budget)
        return expo.render(self.scraper.merge(results), openmetrics)


def make_handler(bridge: Bridge, idle_timeout: float) -> Type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "bmc-bridge"
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout  # the socket's: a silent client gives its thread back

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not news

        def handle(self) -> None:
            try:
                super().handle()
            except ConnectionError:
                # the client went away: a reset while the bridge waited for its next
                # request (it closed with an answer unread) or while it wrote one
                pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, code: int, text: str) -> None:
            self._send(code, (text + "\n").encode(), "text/plain; charset=utf-8")

        def do_HEAD(self) -> None:
            self.do_GET()

        def _not_allowed(self) -> None:
            """A read-only exporter: 405 with what it allows (RFC 9110), not a 501."""
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            body = b"method not allowed: only GET and HEAD\n"
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")  # its body, unread, is no next request
            self.end_headers()
            self.close_connection = True
            self.wfile.write(body)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            om = expo.wants_openmetrics(self.headers.get("Accept"))
            ctype = expo.OPENMETRICS if om else expo.TEXT_004
            budget = bridge.budget(self.headers.get(_SCRAPE_TIMEOUT_HEADER))
            try:
                if url.path == "/metrics":
                    self._send(200, bridge.metrics(om, budget), ctype)
                elif url.path == "/probe":
                    targets = parse_qs(url.query).get("target", [])
                    if len(targets) != 1 or not targets[0]:
                        self._error(400, "probe needs exactly one target=SLOT_OR_SERIAL")
                        return
                    body = bridge.probe(targets[0], om, budget)
                    if body is None:
                        self._error(404, f"no BMC matches target {targets[0][:80]!r}")
                        return
                    self._send(200, body, ctype)
                elif url.path == "/":
                    self._send(200, _index(bridge).encode(), "text/html; charset=utf-8")
                else:
                    self._error(404, "not found: try /metrics or /probe?target=SLOT")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away

    return Handler


def _index(bridge: Bridge) -> str:
    rows = []
    for p in bridge.scraper.ports():
        serial = bridge.scraper.serials.get(p.name, "")
        name = html.escape(p.name)
        rows.append(f'<li><a href="/probe?target={name}">{name}</a> {html.escape(serial)}</li>')
    return (
        "<html><head><title>bmc-bridge</title></head><body><h1>bmc-bridge</h1>"
        '<p><a href="/metrics">/metrics</a>: every BMC</p><ul>'
        + "".join(rows)
        + "</ul></body></html>\n"
    )


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most `max_clients` of them; IPv6 for an IPv6 address."""

    daemon_threads = True

    def __init__(
        self,
        address: Tuple[str, int],
        handler: Type[BaseHTTPRequestHandler],
        max_clients: int,
    ) -> None:
        if ":" in address[0]:  # `--listen [::1]:9580`: the socket is made in __init__
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_clients)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # the client sees the connection closed
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(
    host: str,
    port: int,
    scraper: Scraper,
    idle_timeout: float = IDLE_TIMEOUT_S,
    max_clients: int = MAX_CLIENTS,
) -> ThreadingHTTPServer:
    """Bind the server (not yet serving)."""
    return _Server((host, port), make_handler(Bridge(scraper), idle_timeout), max_clients)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bmc-bridge",
        description="Serve every BMC's OpenMetrics over HTTP for Prometheus.",
    )
    p.add_argument("--rack", help="simulated rack directory (default: $BMC_RACK, else USB)")
    p.add_argument("--listen", help=f"HOST:PORT to listen on (default {DEFAULT_LISTEN})")
    p.add_argument(
        "--timeout",
        type=float,
        help=f"per-BMC scrape timeout in seconds (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--hub",
        help="the backplane hub's USB path (1-1.2): slots named by port below it "
        "(default: $BMC_HUB, else below the root port)",
    )
    p.add_argument("--config", help="INI file with a [bridge] section: listen, rack, timeout, hub")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        conf = load_config(args.config) if args.config else {}
        listen = args.listen or conf.get("listen") or DEFAULT_LISTEN
        host, port = parse_listen(listen)
        rack = args.rack or conf.get("rack") or None
        hub = args.hub or conf.get("hub") or os.environ.get(discovery.ENV_HUB) or None
        try:
            hub = discovery.check_hub(hub)
        except NoBmcFound as e:
            raise ConfigError(e.message.replace(discovery.ENV_HUB, "hub")) from None
        timeout = args.timeout
        if timeout is None:
            try:
                timeout = float(conf.get("timeout", DEFAULT_TIMEOUT))
            except ValueError:
                raise ConfigError(f"timeout '{conf.get('timeout')}' is not a number") from None
        if not 0.1 <= timeout <= 120:
            raise ConfigError(f"timeout {timeout:g} s outside 0.1-120")
    except ConfigError as e:
        print(f"bmc-bridge: {e}", file=sys.stderr)
        return 2
    scraper = Scraper(rack=rack, timeout=timeout, hub=hub)
    try:
        server = serve(host, port, scraper)
    except OSError as e:
        print(f"bmc-bridge: cannot listen on {listen}: {e.strerror or e}", file=sys.stderr)
        return 1
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"  # as a URL writes an IPv6 address
    where = rack or "USB"
    print(
        f"bmc-bridge: serving http://{bound_host}:{bound_port}/metrics (BMCs from {where})",
        flush=True,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    worker.start()
    try:
        while not stop.is_set():
            stop.wait(0.5)
    finally:
        server.shutdown()
        server.server_close()
    # Exit now: a scrape's worker thread may be waiting for a port another program
    # holds (until that scrape's deadline, up to the 120 s timeout, past systemd's stop
    # timeout), and the interpreter's exit would join it. Nothing is left to save.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

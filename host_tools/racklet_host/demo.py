"""`make demo`: a simulated rack of BMCs (real firmware under MicroPython) and bmc-bridge.

    python -m racklet_host.demo [--rack DIR] [--boards N] [--listen HOST:PORT]

Starts `bmc-sim --rack DIR --boards N`, waits until every BMC answers, gives each
BMC a demo admin key (holding its BOOTSEL button, as a person would on a real
board; the key goes to DIR/../admin.key, mode 0600), starts the bridge on
127.0.0.1, and prints what to try next. Ctrl-C (or SIGTERM, or closing its
terminal) stops everything it started and leaves the rack directory as bmc-sim
leaves it; during the set-up it stops there (exit 130). A rack that a bmc-sim
runs already is refused.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import List, Optional, Sequence

from racklet_sim.rack import SimError, control, running

from . import discovery
from .bridge.scrape import Scraper
from .bridge.server import DEFAULT_LISTEN, ConfigError, parse_listen, serve
from .client import BmcClient
from .errors import BmcError
from .keys import Key, load_or_create

START_TIMEOUT = 60.0


class DemoError(Exception):
    pass


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during the set-up."""


def _tool(name: str, module: str) -> List[str]:
    """The console script next to this interpreter, or the module behind it."""
    exe = shutil.which(name, path=os.path.dirname(sys.executable))
    if exe:
        return [exe]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


def start_sim(rack: str, boards: int) -> subprocess.Popen[bytes]:
    os.makedirs(rack, exist_ok=True)
    log = open(os.path.join(os.path.dirname(os.path.abspath(rack)), "bmc-sim.log"), "ab")
    cmd = _tool("bmc-sim", "racklet_sim.rack") + ["--rack", rack, "--boards", str(boards)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_bmcs(
    rack: str,
    boards: int,
    sim: subprocess.Popen[bytes],
    stop: Optional[threading.Event] = None,
) -> List[str]:
    """Slot names once every BMC answers hello; DemoError if bmc-sim stops or it takes too long
    (Interrupted once `stop` is set)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if stop is not None and stop.is_set():
            raise Interrupted()
        if sim.poll() is not None:
            raise DemoError(f"bmc-sim exited with status {sim.returncode} (see bmc-sim.log)")
        ready = []
        try:
            ports = discovery.rack_ports(rack)
        except BmcError:
            ports = []
        for p in ports:
            try:
                with BmcClient.open(p.resolve(), timeout=2.0, name=p.name) as c:
                    c.hello()
                ready.append(p.name)
            except BmcError:
                pass
        if len(ready) >= boards:
            return ready
        if time.monotonic() > deadline:
            raise DemoError(
                f"only {len(ready)} of {boards} BMCs answered within {START_TIMEOUT:g} s"
            )
        if stop is not None:
            stop.wait(0.5)
        else:
            time.sleep(0.5)


def provision(rack: str, slot: str, key: Key) -> bool:
    """Give an unprovisioned BMC the demo key, BOOTSEL held; False if it already has keys."""
    port = discovery.match(discovery.rack_ports(rack), slot)
    if port is None:
        raise DemoError(f"{slot} vanished")
    with BmcClient.open(port.resolve(), timeout=5.0, name=slot) as c:
        if c.hello().get("provisioned"):
            return False
        try:  # in this process: a Ctrl-C that reaches a child would end it with a traceback
            control(rack, {"cmd": "bootsel", "slot": port.slot_number or slot, "seconds": 3})
        except SimError as e:
            raise DemoError(f"cannot hold {slot}'s BOOTSEL: {e}") from None
        c.keys_provision("admin", key)
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="racklet-demo", description="A simulated Racklet rack with its bmc-bridge."
    )
    p.add_argument("--rack", default=".demo/rack", help="rack directory (default .demo/rack)")
    p.add_argument("--boards", type=int, default=4, help="number of BMCs (default 4)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"bridge address ({DEFAULT_LISTEN})")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.boards <= 32:
        print("demo: --boards must be 1-32", file=sys.stderr)
        return 2
    try:
        host, port = parse_listen(args.listen)
    except ConfigError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    rack = os.path.abspath(args.rack)
    key_path = os.path.join(os.path.dirname(rack), "admin.key")
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal closed
        signal.signal(sig, on_signal)
    if running(rack):
        print(
            f"demo: a bmc-sim is already running rack {args.rack} (another demo?)", file=sys.stderr
        )
        return 1
    print(f"Starting {args.boards} simulated BMCs in {args.rack} ...", flush=True)
    sim = start_sim(rack, args.boards)
    server = None
    try:
        slots = wait_for_bmcs(rack, args.boards, sim, stop)
        key, _ = load_or_create(key_path)
        fresh = []
        for s in slots:
            if stop.is_set():
                raise Interrupted()
            if provision(rack, s, key):
                fresh.append(s)
        if fresh:
            print(f"Provisioned the demo admin key {key_path} on {', '.join(fresh)}")
        try:
            server = serve(host, port, Scraper(rack=rack))
        except OSError as e:
            raise DemoError(f"cannot listen on {args.listen}: {e.strerror or e}") from None
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        if stop.is_set():
            raise Interrupted()
        url = f"http://{host}:{server.server_address[1]}"
        print(_next_steps(args.rack, key_path, url, slots), flush=True)
        while not stop.is_set():
            if sim.poll() is not None:
                raise DemoError(f"bmc-sim exited with status {sim.returncode}")
            stop.wait(0.5)
        print("\nStopping ...", flush=True)
        return 0
    except Interrupted:
        print("\nStopping ...", flush=True)
        return 130
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    except BmcError as e:
        print(f"demo: {e.message}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        _stop(sim)


def _stop(sim: subprocess.Popen[bytes]) -> None:
    if sim.poll() is None:
        sim.send_signal(signal.SIGINT)  # bmc-sim stops its BMCs and removes the links
        try:
            sim.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(sim.pid, signal.SIGKILL)
            sim.wait()


def _next_steps(rack: str, key_path: str, url: str, slots: List[str]) -> str:
    node = slots[1] if len(slots) > 1 else slots[0]
    key = os.path.relpath(key_path) if key_path.startswith(os.getcwd() + os.sep) else key_path
    rack = os.path.relpath(rack) if os.path.abspath(rack).startswith(os.getcwd()) else rack
    return f"""
The rack is up: {len(slots)} BMCs ({", ".join(slots)}), bridge at {url}/metrics

In another shell (from this directory):

  export BMC_RACK={rack} BMC_KEY_FILE={key}
  .venv/bin/bmcctl list
  .venv/bin/bmcctl power On {node}
  .venv/bin/bmcctl power PowerCycle {node}
  .venv/bin/bmcctl status {node}
  curl -s {url}/probe?target={node} | grep -E '^(sbc_|bmc_up)'
  curl -s {url}/metrics | less

Prometheus: point a scrape job at {url.split("//")[1]} (packaging/prometheus.yml).
Ctrl-C stops the rack and the bridge.
"""


if __name__ == "__main__":
    sys.exit(main())

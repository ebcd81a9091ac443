"""The bridge and a real Prometheus in front of bmc-sim: the real firmware under MicroPython.

A power action shows up in Prometheus; a hung (SIGSTOP) and an unplugged (killed)
BMC mid-scrape are `bmc_up 0` while the others report correct values; `make demo`
starts, serves and stops cleanly.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Callable, Dict, Iterator, List, Tuple

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from racklet_host.bridge.scrape import Scraper
from racklet_host.bridge.server import serve
from racklet_host.client import BmcClient
from racklet_host.keys import Key
from racklet_sim.rack import Rack

from tests import omcheck
from tests.promserver import Prometheus, by_label

OM_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
TIMEOUT = 2.0
KEY = Key.generate()  # the admin key of every BMC in this module's rack


@pytest.fixture(scope="module")
def rack() -> Iterator[Rack]:
    with Rack(boards=3) as r:
        yield r


@pytest.fixture(scope="module")
def bridge(rack: Rack) -> Iterator[str]:
    server = serve("127.0.0.1", 0, Scraper(rack=str(rack.path), timeout=TIMEOUT))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def get(url: str, accept: str = OM_ACCEPT, timeout: float = TIMEOUT + 3) -> Tuple[str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


def samples(text: str) -> Dict[str, Dict[Tuple[Tuple[str, str], ...], float]]:
    out: Dict[str, Dict[Tuple[Tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def per_slot(v: Dict[Tuple[Tuple[str, str], ...], float], **match: str) -> Dict[str, float]:
    return {
        dict(k)["slot"]: val
        for k, val in v.items()
        if all(dict(k).get(a) == b for a, b in match.items())
    }


def serials(rack: Rack) -> Dict[str, str]:
    out = {}
    for slot in (1, 2, 3):
        with BmcClient.open(rack.port(slot), timeout=5) as c:
            out[f"slot{slot}"] = c.serial
    return out


def power_on(rack: Rack, slot: int, key: Key) -> None:
    with BmcClient.open(rack.port(slot), timeout=5, key=key) as c:
        if not c.hello().get("provisioned"):
            rack.bootsel(slot, seconds=3)
            c.keys_provision("admin", key)
        if c.status().get("state") != "On":
            c.power("On")


def test_real_firmware_through_the_bridge_in_both_formats(
    rack: Rack, bridge: str, tmp_path: pathlib.Path
) -> None:
    ctype, text = get(bridge + "/metrics")
    assert ctype.startswith("application/openmetrics-text; version=1.0.0")
    assert omcheck.openmetrics(text) == []
    v = samples(text)
    assert per_slot(v["bmc_up"]) == {"slot1": 1, "slot2": 1, "slot3": 1}
    want = serials(rack)
    assert {dict(k)["slot"]: dict(k)["serial"] for k in v["bmc_info"]} == want
    assert per_slot(v["bmc_info"], board="pico-rpi4") == {"slot1": 1, "slot2": 1, "slot3": 1}
    assert len(per_slot(v["bmc_temperature_celsius"])) == 3
    # 0.0.4 for everyone else, clean for promtool
    ctype, text = get(bridge + "/metrics", accept="")
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert omcheck.text004(text) == []
    out = tmp_path / "m.txt"
    out.write_text(text)
    with open(out) as f:
        proc = subprocess.run(["promtool", "check", "metrics"], stdin=f, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_sees_a_power_action(rack: Rack, bridge: str, tmp_path: pathlib.Path) -> None:
    prom = Prometheus(tmp_path / "prom", [bridge.split("//")[1]], interval="1s")
    try:
        prom.wait_for("bmc_up", count=3)
        off = prom.wait_for('sbc_power_state{slot="slot1",sbc_power_state="Off"} == 1')
        assert off
        power_on(rack, 1, KEY)
        res = prom.wait_for('sbc_power_state{slot="slot1",sbc_power_state="On"} == 1')
        assert res[0]["metric"]["serial"] == serials(rack)["slot1"]
        actions = by_label(prom.query('sbc_power_actions_total{slot="slot1"}'), "action")
        assert actions == {"On": 1}
        rails = by_label(prom.query('sbc_rail_power_good{slot="slot1"}'), "rail")
        assert rails == {"5v": 1, "3v3": 1}
        others = by_label(prom.query('sbc_power_state{sbc_power_state="Off"}'), "slot")
        assert others["slot2"] == 1 and others["slot3"] == 1
    finally:
        prom.stop()


def scrapes_around(bridge: str, action: Callable[[], object]) -> List[str]:
    """Scrape back to back while `action` happens (so it lands before, in and after scrapes).

    Every scrape must answer within the bridge's timeout (plus HTTP slack).
    """
    texts: List[str] = []
    errors: List[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                texts.append(get(bridge + "/metrics", timeout=TIMEOUT + 2)[1])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    t = threading.Thread(target=loop)
    t.start()
    time.sleep(0.3)
    action()
    time.sleep(TIMEOUT + 1)
    stop.set()
    t.join(TIMEOUT + 5)
    assert not errors, errors
    assert len(texts) >= 3
    return texts


def test_bmcctl_gets_its_turn_while_scrapes_run_back_to_back(rack: Rack, bridge: str) -> None:
    stop = threading.Event()
    done: List[float] = []

    def scrape_loop() -> None:
        while not stop.is_set():
            get(bridge + "/metrics")
            done.append(time.monotonic())

    worker = threading.Thread(target=scrape_loop, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while len(done) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = len(done)
        runs = []
        for _ in range(3):  # each opens the port while the bridge is scraping it
            runs.append(
                subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        "import sys; from racklet_host.cli import main; sys.exit(main())",
                        "--rack",
                        str(rack.path),
                        "--json",
                        "status",
                        "slot1",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            )
        during = len(done) - before
    finally:
        stop.set()
        worker.join(10)
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
        assert json.loads(run.stdout)[0]["data"]["serial"] == serials(rack)["slot1"]
    assert during >= 3  # the bridge kept scraping all along
    v = samples(get(bridge + "/metrics")[1])
    assert set(per_slot(v["bmc_up"]).values()) == {1}


def test_hung_and_unplugged_bmcs_mid_scrape(rack: Rack, bridge: str) -> None:
    power_on(rack, 1, KEY)
    want = serials(rack)
    pid = rack.slot_info(2)["pid"]
    assert pid
    try:
        texts = scrapes_around(bridge, lambda: os.kill(pid, signal.SIGSTOP))
        for text in texts:
            assert omcheck.openmetrics(text) == []
            v = samples(text)
            up = per_slot(v["bmc_up"])
            assert up["slot1"] == 1 and up["slot3"] == 1
            assert per_slot(v["sbc_power_state"], sbc_power_state="On")["slot1"] == 1
            assert per_slot(v["sbc_power_state"], sbc_power_state="Off")["slot3"] == 1
        last = samples(texts[-1])
        assert per_slot(last["bmc_up"]) == {"slot1": 1, "slot2": 0, "slot3": 1}
        assert last["bmc_up"][(("serial", want["slot2"]), ("slot", "slot2"))] == 0
    finally:
        os.kill(pid, signal.SIGCONT)
    # unplugged: the process is killed and not restarted
    texts = scrapes_around(bridge, lambda: rack.kill(3, restart=False))
    for text in texts:
        v = samples(text)
        assert per_slot(v["bmc_up"])["slot1"] == 1
        assert per_slot(v["sbc_power_state"], sbc_power_state="On")["slot1"] == 1
    v = samples(texts[-1])
    assert v["bmc_up"].get((("serial", want["slot3"]), ("slot", "slot3")), 0) == 0
    assert "slot3" not in per_slot(v["bmc_info"])
    # plugged in again: picked up without restarting the bridge
    starts = rack.slot_info(3)["starts"]
    rack.start(3)
    rack.wait_restarted(3, starts)
    deadline = time.monotonic() + 20
    while True:
        v = samples(get(bridge + "/metrics")[1])
        up = per_slot(v["bmc_up"])
        if up == {"slot1": 1, "slot2": 1, "slot3": 1} or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert up == {"slot1": 1, "slot2": 1, "slot3": 1}
    info = {dict(k)["slot"]: dict(k)["serial"] for k in v["bmc_info"]}
    assert info == want


def test_demo_starts_serves_and_stops_cleanly(tmp_path: pathlib.Path) -> None:
    rack = tmp_path / "demo" / "rack"
    proc = subprocess.Popen(
        [sys.executable, "-m", "racklet_host.demo", "--rack", str(rack), "--boards", "2"]
        + ["--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        url = None
        deadline = time.monotonic() + 90
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "bridge at " in line:
                url = line.split("bridge at ")[1].strip().rsplit("/metrics", 1)[0]
        assert url, "".join(lines) + (proc.stderr.read() if proc.stderr else "")
        while not any("Ctrl-C" in x for x in lines):
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        assert "bmcctl power PowerCycle slot2" in text and "/probe?target=slot2" in text
        assert (tmp_path / "demo" / "admin.key").stat().st_mode & 0o077 == 0
        v = samples(get(url + "/metrics")[1])
        assert per_slot(v["bmc_up"]) == {"slot1": 1, "slot2": 1}
        # the printed bmcctl line works with the printed environment
        env = dict(os.environ, BMC_RACK=str(rack), BMC_KEY_FILE=str(tmp_path / "demo/admin.key"))
        bmcctl = [
            sys.executable,
            "-c",
            "import sys; from racklet_host.cli import main; sys.exit(main())",
        ]
        run = subprocess.run(bmcctl + ["power", "On", "slot2"], env=env, capture_output=True)
        assert run.returncode == 0, run.stdout + run.stderr
        pids = [i["pid"] for i in _status(rack)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (rack / "slot1").exists() and not (rack / "slot2").exists()
    for pid in pids:
        assert not pathlib.Path(f"/proc/{pid}").exists() or _zombie(pid)


def _status(rack: pathlib.Path) -> List[Dict[str, object]]:
    from racklet_sim.rack import control

    slots: List[Dict[str, object]] = control(str(rack), {"cmd": "status"})["slots"]
    return slots


def _zombie(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True

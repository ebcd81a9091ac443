"""bmc-bridge against stand-in BMCs on PTYs: formats, labels, probe, hung and unplugged BMCs.

The stand-ins (tests/fake_bmc.py) let a test hang (SIGSTOP) or unplug (kill) one
BMC at an exact moment; the real firmware behind the bridge is in
test_metrics_sim.py.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, Iterator, Tuple

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as text004_families

from tests import omcheck

ROOT = pathlib.Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fake_bmc.py"
OM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)  # what Prometheus 2.x sends
TIMEOUT = 1.5  # the bridge's per-BMC timeout in these tests


class Fakes:
    def __init__(self, rack: pathlib.Path) -> None:
        self.rack = rack
        self.procs: Dict[int, subprocess.Popen[str]] = {}

    def start(self, slot: int) -> None:
        p = subprocess.Popen(
            [sys.executable, str(FAKE), str(self.rack), str(slot), f"SERIAL{slot:02d}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        self.procs[slot] = p

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait()


@pytest.fixture
def fakes(tmp_path: pathlib.Path) -> Iterator[Fakes]:
    f = Fakes(tmp_path / "rack")
    f.rack.mkdir()
    try:
        for slot in (1, 2, 3):
            f.start(slot)
        yield f
    finally:
        f.stop_all()


def start_bridge(*args: str) -> Tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "racklet_host.bridge.server", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    line = p.stdout.readline()
    assert "serving http://" in line, line + (p.stderr.read() if p.stderr else "")
    url = line.split("serving ")[1].split("/metrics")[0]
    return p, url


@pytest.fixture
def bridge(fakes: Fakes) -> Iterator[str]:
    p, url = start_bridge("--rack", str(fakes.rack), "--timeout", str(TIMEOUT))
    try:
        yield url
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            raise


def get(url: str, accept: str | None = None, timeout: float = TIMEOUT + 3) -> Tuple[str, str]:
    req = urllib.request.Request(url)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def by_slot(v: Samples, name: str) -> Dict[str, float]:
    return {dict(labels)["slot"]: value for (n, labels), value in v.items() if n == name}


def test_openmetrics_for_prometheus_with_slot_and_serial(bridge: str) -> None:
    ctype, text = get(bridge + "/metrics", OM_ACCEPT)
    assert ctype.startswith("application/openmetrics-text; version=1.0.0")
    assert omcheck.openmetrics(text) == []
    v = samples(text)
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 1}
    for slot in (1, 2, 3):
        key = ("fake_slot", (("serial", f"SERIAL{slot:02d}"), ("slot", f"slot{slot}")))
        assert v[key] == slot
    # the BMC's own serial label agrees with the one the bridge adds
    info = [labels for (n, labels), _ in v.items() if n == "bmc_info"]
    assert all(dict(lb)["serial"] == f"SERIAL{dict(lb)['slot'][-1:].zfill(2)}" for lb in info)
    assert by_slot(v, "fake_scrapes_total") == {"slot1": 1, "slot2": 1, "slot3": 1}
    assert v[("bmc_bridge_targets", ())] == 3
    # families merged: each family's samples of all three BMCs in one block
    assert text.count("# TYPE fake_scrapes counter") == 1


def test_text_004_passes_promtool(bridge: str, tmp_path: pathlib.Path) -> None:
    ctype, text = get(bridge + "/metrics")
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert omcheck.text004(text) == []
    assert "# TYPE fake_scrapes_total counter" in text
    assert 'bmc_temperature_celsius{serial="SERIAL02",slot="slot2"} 30.5' in text
    names = {f.name for f in text004_families(text)}
    assert {"bmc_up", "fake_scrapes", "bmc_info"} <= names
    out = tmp_path / "metrics.txt"
    out.write_text(text)
    with open(out) as f:
        proc = subprocess.run(
            ["promtool", "check", "metrics"], stdin=f, capture_output=True, text=True
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_probe_one_target_by_slot_or_serial(bridge: str) -> None:
    _, text = get(bridge + "/probe?target=slot2", OM_ACCEPT)
    v = samples(text)
    assert by_slot(v, "bmc_up") == {"slot2": 1}
    assert by_slot(v, "fake_slot") == {"slot2": 2}
    _, text = get(bridge + "/probe?target=3", OM_ACCEPT)
    assert by_slot(samples(text), "fake_slot") == {"slot3": 3}
    _, text = get(bridge + "/probe?target=SERIAL01", OM_ACCEPT)  # serial seen by now
    assert by_slot(samples(text), "fake_slot") == {"slot1": 1}
    with pytest.raises(urllib.error.HTTPError) as e:
        get(bridge + "/probe?target=slot9")
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        get(bridge + "/probe")
    assert e.value.code == 400


def test_hung_bmc_is_down_and_the_others_answer(bridge: str, fakes: Fakes) -> None:
    get(bridge + "/metrics", OM_ACCEPT)
    fakes.procs[2].send_signal(signal.SIGSTOP)
    try:
        # urllib's own timeout fails the test if the scrape waits past the BMC timeout
        _, text = get(bridge + "/metrics", OM_ACCEPT, timeout=TIMEOUT + 2)
        assert omcheck.openmetrics(text) == []
        v = samples(text)
        assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 0, "slot3": 1}
        assert by_slot(v, "fake_scrapes_total") == {"slot1": 2, "slot3": 2}
        # the hung BMC keeps its serial label from before
        assert v[("bmc_up", (("serial", "SERIAL02"), ("slot", "slot2")))] == 0
        errors = {
            dict(k[1])["reason"]: val
            for k, val in v.items()
            if k[0] == "bmc_scrape_errors_total" and dict(k[1])["slot"] == "slot2"
        }
        assert errors == {"timeout": 1}
    finally:
        fakes.procs[2].send_signal(signal.SIGCONT)
    # it answers again once it runs (a scrape may first find its old request finishing)
    deadline = time.monotonic() + 10
    while True:
        v = samples(get(bridge + "/metrics", OM_ACCEPT)[1])
        if by_slot(v, "bmc_up")["slot2"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 1}


def test_unplugged_bmc_then_removed_and_a_new_one(bridge: str, fakes: Fakes) -> None:
    get(bridge + "/metrics", OM_ACCEPT)
    fakes.procs[3].kill()
    fakes.procs[3].wait()
    _, text = get(bridge + "/metrics", OM_ACCEPT, timeout=TIMEOUT + 2)
    v = samples(text)
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 0}
    assert by_slot(v, "fake_scrapes_total") == {"slot1": 2, "slot2": 2}
    # gone from the hub: dropped; a new BMC: picked up, without restarting the bridge
    os.unlink(fakes.rack / "slot3")
    fakes.start(4)
    v = samples(get(bridge + "/metrics", OM_ACCEPT)[1])
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot4": 1}
    assert by_slot(v, "fake_slot") == {"slot1": 1, "slot2": 2, "slot4": 4}


def test_port_held_by_another_program_is_waited_for(bridge: str, fakes: Fakes) -> None:
    from racklet_host.transport import Link

    held = Link(str(fakes.rack / "slot1"))  # as bmcctl holds it during a command
    try:
        v = samples(get(bridge + "/metrics", OM_ACCEPT)[1])
        assert by_slot(v, "bmc_up") == {"slot1": 0, "slot2": 1, "slot3": 1}
    finally:
        held.close()
    v = samples(get(bridge + "/metrics", OM_ACCEPT)[1])
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 1}


def test_bad_command_line_and_config(tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "bridge.ini"
    conf.write_text("[bridge]\nlisten = 127.0.0.1:http\n")
    for args in (["--config", str(conf)], ["--listen", "nohost"], ["--timeout", "0"]):
        proc = subprocess.run(
            [sys.executable, "-m", "racklet_host.bridge.server", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2
        assert proc.stderr.startswith("bmc-bridge: ") and "Traceback" not in proc.stderr
    conf.write_text("[bridge]\nlisten = 127.0.0.1:0\nrack = /nonexistent/rack\nfoo = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "racklet_host.bridge.server", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "unknown setting 'foo'" in proc.stderr


def test_no_bmcs_yet_is_an_empty_valid_answer(tmp_path: pathlib.Path) -> None:
    rack = tmp_path / "empty"
    rack.mkdir()
    p, url = start_bridge("--rack", str(rack))
    try:
        _, text = get(url + "/metrics", OM_ACCEPT)
        assert omcheck.openmetrics(text) == []
        v = samples(text)
        assert v[("bmc_bridge_targets", ())] == 0
        assert not by_slot(v, "bmc_up")
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(10)

"""A real Prometheus server scrapes bmc-bridge in front of stand-in BMCs."""

from __future__ import annotations

import json
import pathlib
import re
import signal
from typing import Iterator

import pytest

from tests.promserver import Prometheus, by_label
from tests.test_bridge import Fakes, bridge, fakes  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def prometheus(bridge: str, tmp_path: pathlib.Path) -> Iterator[Prometheus]:  # noqa: F811
    prom = Prometheus(tmp_path / "prom", [bridge.split("//")[1]])
    try:
        yield prom
    finally:
        prom.stop()


def test_prometheus_scrapes_every_bmc_and_sees_a_hung_one(
    prometheus: Prometheus,
    fakes: Fakes,  # noqa: F811
) -> None:
    up = by_label(prometheus.wait_for("bmc_up", count=3), "slot")
    assert up == {"slot1": 1, "slot2": 1, "slot3": 1}
    assert by_label(prometheus.query('up{job="racklet-bmc"}'), "job") == {"racklet-bmc": 1}
    first = by_label(prometheus.query("fake_scrapes_total"), "slot")
    serials = by_label(prometheus.query("fake_slot"), "serial")
    assert serials == {"SERIAL01": 1, "SERIAL02": 2, "SERIAL03": 3}
    # counters move with each scrape
    prometheus.wait_for(f'fake_scrapes_total{{slot="slot1"}} > {first["slot1"]}')
    # a hung BMC: the bridge still answers Prometheus in time (up 1), with bmc_up 0 for it
    fakes.procs[2].send_signal(signal.SIGSTOP)
    try:
        prometheus.wait_for('bmc_up{slot="slot2"} == 0')
        assert by_label(prometheus.query('up{job="racklet-bmc"}'), "job") == {"racklet-bmc": 1}
        now = by_label(prometheus.query("bmc_up"), "slot")
        assert now == {"slot1": 1, "slot2": 0, "slot3": 1}
    finally:
        fakes.procs[2].send_signal(signal.SIGCONT)
    prometheus.wait_for('bmc_up{slot="slot2"} == 1')


def test_dashboard_and_alert_queries_run_on_prometheus(
    prometheus: Prometheus,
) -> None:
    prometheus.wait_for("bmc_up", count=3)
    dash = json.loads((ROOT / "packaging" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    rules = (ROOT / "packaging" / "racklet-alerts.yml").read_text()
    exprs += re.findall(r"^\s+expr: (.+)$", rules, re.M)
    for expr in exprs:
        # query() raises on a query Prometheus refuses (syntax, types)
        prometheus.query(expr.replace("$slot", ".*"))
    assert prometheus.query('sum(bmc_up{slot=~".*"})')[0]["value"][1] == "3"

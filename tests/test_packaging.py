"""packaging/: alert rules, Prometheus config, systemd unit, udev rule, Grafana dashboard."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
from typing import Set

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.test_metrics_firmware import BOARD, mpy_firmware, run_harness, text_of  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "packaging"
BRIDGE_SERIES = {"bmc_up", "bmc_scrape_duration_seconds", "bmc_scrape_errors_total", "up"}


def promtool(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool missing: apt-get install prometheus (.ci/run does)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)


def test_alert_rules_check_and_unit_tests(tmp_path: pathlib.Path) -> None:
    shutil.copy(PKG / "racklet-alerts.yml", tmp_path)
    shutil.copy(PKG / "prometheus.yml", tmp_path)
    shutil.copy(ROOT / "tests" / "promtool" / "racklet-alerts.test.yml", tmp_path)
    for args in (
        ("check", "rules", "racklet-alerts.yml"),
        ("check", "config", "prometheus.yml"),
        ("test", "rules", "racklet-alerts.test.yml"),
    ):
        proc = promtool(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def exported_series(mpy: pathlib.Path, tmp: pathlib.Path) -> Set[str]:
    """Series names the firmware declares (a counter family may have no sample yet)."""
    text = text_of(run_harness(mpy, tmp, BOARD, 2), 8)
    suffix = {"counter": "_total", "info": "_info"}
    return {f.name + suffix.get(f.type, "") for f in text_string_to_metric_families(text)}


def used_series(expr: str) -> Set[str]:
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\[|\)|$|\s*[=<>!]=?)", expr))
    funcs = {"sum", "by", "count", "increase", "rate", "max", "vector", "or", "on", "and"}
    return {w for w in words if w not in funcs and ("_" in w or w == "up")}


def test_rules_and_dashboard_use_series_the_bmcs_export(
    mpy_firmware: pathlib.Path,  # noqa: F811
    tmp_path: pathlib.Path,
) -> None:
    exported = exported_series(mpy_firmware, tmp_path / "fs") | BRIDGE_SERIES
    rules = (PKG / "racklet-alerts.yml").read_text()
    exprs = re.findall(r"^\s+expr: (.+)$", rules, re.M)
    dash = json.loads((PKG / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) > 10
    for expr in exprs:
        used = used_series(expr)
        assert used, expr
        # sbc_power_watts / current need a sensor the board declares: pico-rpi4 has one
        assert used <= exported, (expr, used - exported)


def test_dashboard_is_grafana_json() -> None:
    dash = json.loads((PKG / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        assert p["datasource"]["uid"] == "${datasource}"
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "slot"]


def test_systemd_unit_verifies(tmp_path: pathlib.Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    exe = shutil.which("bmc-bridge", path=str(pathlib.Path(ROOT / ".venv" / "bin")))
    assert exe, "bmc-bridge entry point not installed (make venv)"
    unit = (PKG / "bmc-bridge.service").read_text()
    assert "/opt/racklet-bmc/bin/bmc-bridge --config " in unit
    unit = unit.replace("/opt/racklet-bmc/bin/bmc-bridge", exe)
    (tmp_path / "bmc-bridge.service").write_text(unit)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "bmc-bridge.service")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    conf = (PKG / "bmc-bridge.ini").read_text()
    assert "listen = 127.0.0.1:" in conf


_UDEV_PAIR = re.compile(r'^\s*([A-Z_]+(?:\{[^}]+\})?)\s*(==|!=|\+=|=|:=)\s*"([^"]*)"\s*$')
_UDEV_KEYS = {"ACTION", "SUBSYSTEM", "ATTRS", "ENV", "GOTO", "LABEL", "IMPORT", "GROUP", "MODE",
              "SYMLINK"}  # fmt: skip


def test_udev_rule_syntax_and_matches() -> None:
    text = (PKG / "99-racklet-bmc.rules").read_text()
    labels = set(re.findall(r'LABEL="([^"]+)"', text))
    gotos = set(re.findall(r'GOTO="([^"]+)"', text))
    assert gotos and gotos <= labels
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        for pair in re.split(r',(?=(?:[^"]*"[^"]*")*[^"]*$)', line):
            m = _UDEV_PAIR.match(pair)
            assert m, f'not KEY op "value": {pair!r}'
            assert m.group(1).split("{")[0] in _UDEV_KEYS, pair
    assert 'GROUP="racklet", MODE="0660"' in text
    assert 'ATTRS{idVendor}!="2e8a"' in text and 'ATTRS{idProduct}!="0005"' in text
    assert "by-serial" in text and "by-port" in text
    # every port with the MicroPython ids (a BMC in maintenance mode too) is no modem
    assert text.index('ENV{ID_MM_DEVICE_IGNORE}="1"') < text.index('ENV{RACKLET_BMC}!="1"')

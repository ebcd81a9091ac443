"""A real Prometheus server for tests, on 127.0.0.1 with a temporary config and data dir."""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, workdir: pathlib.Path, targets: List[str], interval: str = "2s") -> None:
        if shutil.which("prometheus") is None:
            pytest.fail("prometheus missing: apt-get install prometheus (.ci/run does)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "prometheus.yml"
        conf.write_text(
            "global:\n"
            f"  scrape_interval: {interval}\n"
            f"  scrape_timeout: {interval}\n"
            "scrape_configs:\n"
            "  - job_name: racklet-bmc\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        self.log = open(workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={conf}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        self.workdir = workdir

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def api(self, path: str, **params: str) -> Dict[str, Any]:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            data: Dict[str, Any] = json.loads(resp.read())
        return data

    def query(self, expr: str) -> List[Dict[str, Any]]:
        """Instant query: the result vector ([] while there is nothing, or not up yet)."""
        try:
            data = self.api("query", query=expr)
        except OSError:
            return []
        if data.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {data}")
        result: List[Dict[str, Any]] = data["data"]["result"]
        return result

    def wait_for(self, expr: str, deadline_s: float = 60, count: int = 1) -> List[Dict[str, Any]]:
        """Poll `expr` until it returns at least `count` series."""
        deadline = time.monotonic() + deadline_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("prometheus exited: " + self.logtext())
            res = self.query(expr)
            if len(res) >= count:
                return res
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{expr!r} gave {len(res)} series within {deadline_s} s\n" + self.logtext()
                )
            time.sleep(0.5)

    def logtext(self) -> str:
        self.log.flush()
        return (self.workdir / "prometheus.log").read_text()[-3000:]


def by_label(result: List[Dict[str, Any]], label: str) -> Dict[Optional[str], float]:
    return {r["metric"].get(label): float(r["value"][1]) for r in result}

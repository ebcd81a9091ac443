"""`python -m bench requests` runs the firmware under MicroPython and reports every request
it times, each answered ok (the MicroPython side stops at the first refusal)."""

from __future__ import annotations

from bench import requests


def test_reports_each_request_answered() -> None:
    rows = {r["request"]: r for r in requests.measure()}
    assert set(rows) == {"status", "nonce", "signed identify", "signed power action"}
    for r in rows.values():
        assert r["median_us"] > 0 and r["p90_us"] >= r["median_us"]
        assert r["alloc_bytes"] > 0 and r["reply_bytes"] > 0
    # a status reply carries the whole status; a nonce reply only the nonce
    assert rows["status"]["reply_bytes"] > 4 * rows["nonce"]["reply_bytes"]

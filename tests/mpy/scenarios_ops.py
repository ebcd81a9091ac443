"""Hostile arguments and stored state for the operator commands and hello, against the
whole firmware (CPython, and MicroPython through tests/test_app.py): every answer is
the error asked for, in one frame, never `internal`."""

from app_rig import fresh, provision, run_scenarios, scenario_names
from bmc import events
from bmc.clock import ManualClock
from bmc.store import Store


def refused(resp, code):
    assert not resp["ok"] and resp["error"] == code, resp
    return resp


def scenario_event_log_corrupt_bytes_and_long_lines(tmp):
    # Flash that went bad under the log: bytes that are not UTF-8, a line longer than
    # any the firmware writes (one that is an entry would not fit an `events` chunk),
    # a long run without a newline. Each is skipped and reported; the entries after
    # them, and those added later, are read back.
    st = Store(tmp + "/evlog")
    clock = ManualClock()
    ev = events.EventLog(st, clock, 1, capacity=8)
    ev.add("power", "remote", "first")
    f = open(st.path("events", ".jsonl"), "ab")
    f.write(b"\xff\xfe\x80 not text\n")
    f.write(b'[2, 1, 0, "power", "remote", "second"]\n')
    f.write(b'[3, 1, 0, "fault", "x", "' + b"d" * 3000 + b'"]\n')
    for _ in range(20):
        f.write(b"z" * 1000)
    f.write(b'\n[4, 1, 0, "power", "remote", "third"]\n')
    f.close()
    ev2 = events.EventLog(st, clock, 2, capacity=8)
    es = ev2.entries()
    assert [e["detail"] for e in es[:3]] == ["first", "second", "third"], es
    assert es[-1]["kind"] == "store" and es[-1]["cause"] == "corrupt", es
    assert ev2.last_seq == 5
    ev2.add("power", "remote", "fourth")
    ev3 = events.EventLog(st, clock, 3, capacity=8)
    assert [e["detail"] for e in ev3.entries()][-1] == "fourth"
    assert len(ev3) == 5 and ev3.last_seq == 6  # repaired: no new corruption event
    for line in st.read_lines("events"):
        assert len(line) <= events.LINE_MAX, len(line)


def scenario_hello_with_a_huge_proto(tmp):
    rig = fresh(tmp, "ops")
    r = refused(rig.host.call("hello", {"proto": 10**2000}), "unsupported_version")
    assert len(r["message"]) < 200, r
    refused(rig.host.call("hello", {"proto": -(10**2000)}), "unsupported_version")


def scenario_config_set_echoes_little(tmp):
    # A request of nearly a frame whose key or value the message quoted in full did
    # not fit the answer's frame: `internal`, "response too large", and no nonce.
    rig = fresh(tmp, "ops")
    key = provision(rig)
    bad = (
        ("x" * 1800, 1),
        ("min_off_ms", "9" * 1800),
        ("min_off_ms", 10**1800),
        ("restore_policy", "\\" * 900),
        ("restore_policy", "\x01" * 300),
        ("min_off_ms", ["\\" * 100] * 8),
    )
    for k, v in bad:
        r = refused(rig.host.call("config-set", {"key": k, "value": v}, key=key), "invalid")
        assert "nonce" in r and len(r["message"]) < 700, r
    assert rig.host.call("config-get", key=key)["data"]["min_off_ms"] == 5000


def scenario_events_with_a_mangled_line(tmp):
    # An entry on flash that MicroPython parses (raw control characters in a string)
    # but encodes six times longer: the stream goes on past it.
    rig = fresh(tmp, "ops")
    key = provision(rig)
    rig.step()
    f = open(rig.root + "/data/events.jsonl", "ab")
    f.write(b'[90, 1, 0, "fault", "x", "' + b"\x01" * 900 + b'"]\n')
    f.close()
    rig.boot("soft")
    rig.step()
    r = rig.host.call("events", {"since": 0}, key=key)
    assert r["ok"], r
    lines = b"".join(rig.host.last_chunks).split(b"\n")
    assert r["data"]["count"] == len(lines) - 1 >= 3, r


def names():
    return scenario_names(globals())


if __name__ == "__main__":
    run_scenarios(globals())

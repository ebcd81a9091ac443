"""Store, event log, persistent state and config scenarios (MicroPython + CPython)."""

import json
import os

from bmc import config, events, persist
from bmc.clock import ManualClock
from bmc.store import Store
from scenarios_power import board


def _write(path, data):
    f = open(path, "wb")
    f.write(data)
    f.close()


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def sc_store_atomic_and_fallback(root):
    st = Store(root + "/data")
    v, problem = st.load("thing", {"a": 1})
    assert v == {"a": 1} and problem == "missing"
    st.save("thing", {"a": 2, "b": [1, 2]})
    v, problem = st.load("thing", {})
    assert v == {"a": 2, "b": [1, 2]} and problem is None
    assert not _exists(root + "/data/thing.json.tmp")
    st.save("thing", {"a": 3})  # overwrites
    assert st.load("thing", {})[0] == {"a": 3}
    # a kill between writing the temp file and the rename: old version stays
    _write(root + "/data/thing.json.tmp", b'{"a": 4')
    assert st.load("thing", {})[0] == {"a": 3}
    st.save("thing", {"a": 5})
    assert st.load("thing", {})[0] == {"a": 5}
    for bad in (b'{"a": ', b"\xff\xfe\x00garbage", b"", b"[1, 2]"):
        _write(root + "/data/thing.json", bad)
        v, problem = st.load("thing", {"d": 0})
        assert v == {"d": 0}, bad
        assert problem.startswith("corrupt"), (bad, problem)


def sc_config_corrupt_logs_event(root):
    st = Store(root + "/data")
    clock = ManualClock()
    ev = events.EventLog(st, clock, 1)
    _write(root + "/data/config.json", b"{not json")
    cfg = config.Config(st, board(), ev)
    assert cfg.get()["min_off_ms"] == 1000  # the board's default
    assert cfg.problem.startswith("corrupt")
    found = [e for e in ev.entries() if e["kind"] == "store" and e["cause"] == "corrupt"]
    assert found and "config" in found[0]["detail"]
    # a missing file is quietly the defaults
    st2 = Store(root + "/other")
    cfg2 = config.Config(st2, board(), ev)
    assert cfg2.problem == "missing" and cfg2.value("restore_policy") == "AlwaysOff"
    # and setting works again after corruption
    cfg.set("min_off_ms", 2500)
    assert config.Config(st, board(), ev).value("min_off_ms") == 2500


def sc_config_set_validates(root):
    st = Store(root + "/data")
    cfg = config.Config(st, board())
    assert cfg.set("restore_policy", "LastState") == "LastState"
    assert cfg.set("graceful_timeout_ms", "90000") == 90000  # from a CLI
    assert cfg.set("pgood_timeout_ms.3v3", 800) == 800
    assert cfg.get()["pgood_timeout_ms.3v3"] == 800
    assert cfg.pgood_timeout_ms(1) == 800
    bad = (
        ("restore_policy", "Sometimes", "restore_policy"),
        ("min_off_ms", -1, "min_off_ms"),
        ("min_off_ms", 10**9, "outside"),
        ("min_off_ms", "soon", "integer"),
        ("min_off_ms", True, "integer"),
        ("min_off_ms", 1.5, "integer"),
        ("pgood_timeout_ms.12v", 100, "unknown setting"),
        ("colour", "blue", "unknown setting"),
    )
    for key, value, words in bad:
        try:
            cfg.set(key, value)
            raise AssertionError("accepted %s=%r" % (key, value))
        except ValueError as e:
            assert words in str(e), (key, str(e))
    again = config.Config(st, board())
    assert again.value("restore_policy") == "LastState"
    assert again.value("graceful_timeout_ms") == 90000
    assert again.overrides() == {
        "restore_policy": "LastState",
        "graceful_timeout_ms": 90000,
        "pgood_timeout_ms.3v3": 800,
    }
    again.unset("graceful_timeout_ms")
    assert config.Config(st, board()).value("graceful_timeout_ms") == 2000
    # a stored override that no longer validates is dropped, with an event
    st.save("config", {"min_off_ms": "x", "rail.gone": 5, "halt_settle_ms": 300})
    ev = events.EventLog(st, ManualClock(), 1)
    c3 = config.Config(st, board(), ev)
    assert c3.value("halt_settle_ms") == 300 and c3.value("min_off_ms") == 1000
    assert len([e for e in ev.entries() if e["kind"] == "config"]) == 2


def sc_event_log_bounded_and_persistent(root):
    st = Store(root + "/data")
    clock = ManualClock(1000)
    ev = events.EventLog(st, clock, 7, capacity=8)
    for i in range(30):
        clock.advance(10)
        ev.add("power", "remote", "n%d" % i)
    assert len(ev) == 8 and ev.last_seq == 30 and ev.dropped == 22
    es = ev.entries()
    assert [e["seq"] for e in es] == list(range(23, 31))
    assert es[-1]["detail"] == "n29" and es[-1]["boot"] == 7 and es[-1]["uptime_ms"] == 300
    assert [e["seq"] for e in ev.entries(since=28)] == [29, 30]
    # the file stays bounded (compaction) and a restart keeps seq and drops
    n = 0
    for _ in st.read_lines("events"):
        n += 1
    assert n <= 16
    ev2 = events.EventLog(st, clock, 8, capacity=8)
    assert ev2.last_seq == 30 and ev2.dropped == 22
    assert ev2.add("bmc", "start") == 31
    # long details are cut, RAM stays bounded
    ev2.add("fault", "x", "d" * 500)
    assert len(ev2.last()["detail"]) == events.DETAIL_MAX


def sc_event_log_torn_line(root):
    st = Store(root + "/data")
    clock = ManualClock()
    ev = events.EventLog(st, clock, 1, capacity=8)
    ev.add("fault", "pgood_lost", "rail 5v")
    ev.add("power", "remote", "x")
    # a write torn by a reset leaves half a line at the end
    f = open(st.path("events", ".jsonl"), "a")
    f.write('[3, 1, 0, "pow')
    f.close()
    ev2 = events.EventLog(st, clock, 2, capacity=8)
    es = ev2.entries()
    assert es[0]["cause"] == "pgood_lost"  # the fault record survived
    assert es[-1]["kind"] == "store" and es[-1]["cause"] == "corrupt"
    assert ev2.last_seq == 3
    ev3 = events.EventLog(st, clock, 3, capacity=8)
    assert ev3.last_seq == 3 and len(ev3) == 3  # repaired: no new corruption event


def sc_event_log_deferred_write_error_and_compaction(root):
    st = Store(root + "/data")
    clock = ManualClock()
    ev = events.EventLog(st, clock, 1, capacity=4, deferred=True)
    ev.add("power", "remote", "a")
    ev.add("power", "remote", "b")
    assert [e["detail"] for e in ev.entries()] == ["a", "b"]  # seen before they are written
    assert list(st.read_lines("events")) == []  # deferred: nothing on flash yet
    ev.flush()
    assert len(list(st.read_lines("events"))) == 2
    # a failed append: counted, the entries stay, and the next flush rewrites the file
    real = st.append_lines

    def failing(name, lines):
        raise OSError(28)

    st.append_lines = failing
    ev.add("power", "remote", "c")
    ev.flush()
    assert ev.write_errors == 1
    assert [e["detail"] for e in ev.entries()] == ["a", "b", "c"]
    ev.flush()  # nothing new since: no second try
    assert ev.write_errors == 1
    ev.add("power", "remote", "d")
    ev.add("power", "remote", "e")
    ev.flush()  # compacts (rewrites) without append_lines
    st.append_lines = real
    assert ev.write_errors == 1 and ev.dropped == 1 and len(ev) == 4
    lines = list(st.read_lines("events"))
    assert [json.loads(x)[5] for x in lines] == ["b", "c", "d", "e"]
    # a restart reads the same log back from flash
    ev2 = events.EventLog(st, clock, 2, capacity=4)
    assert ev2.last_seq == 5 and ev2.dropped == 1
    assert [e["detail"] for e in ev2.entries(since=3)] == ["d", "e"]
    # more events than the log holds in one pass: the oldest are dropped unwritten
    for i in range(10):
        ev2.deferred = True
        ev2.add("power", "remote", "n%d" % i)
    ev2.flush()
    assert [e["detail"] for e in ev2.entries()] == ["n6", "n7", "n8", "n9"]
    assert ev2.dropped == 11 and len(list(st.read_lines("events"))) == 4


def sc_persist_boot_count_and_state(root):
    st = Store(root + "/data")
    s = persist.BmcState(st, "power_on")
    assert s.boot_count == 1 and s.sbc_on is None and s.problem == "missing"
    s.set_sbc_on(True)
    s2 = persist.BmcState(st, "watchdog")
    assert s2.boot_count == 2 and s2.sbc_on is True
    assert s2.reset_cause == "watchdog" and s2.prev_reset_cause == "power_on"
    _write(st.path("state"), b"\x00\x01")
    s3 = persist.BmcState(st, "bogus")
    assert s3.problem.startswith("corrupt") and s3.boot_count == 1
    assert s3.reset_cause == "unknown" and s3.sbc_on is None
    st.save("state", {"boot_count": "many", "sbc_on": 3})
    s4 = persist.BmcState(st, "soft")
    assert s4.boot_count == 1 and s4.sbc_on is None and s4.problem.startswith("corrupt")
    v = json.loads(open(st.path("state")).read())
    assert v["boot_count"] == 1


SCENARIOS = [
    sc_store_atomic_and_fallback,
    sc_config_corrupt_logs_event,
    sc_config_set_validates,
    sc_event_log_bounded_and_persistent,
    sc_event_log_torn_line,
    sc_event_log_deferred_write_error_and_compaction,
    sc_persist_boot_count_and_state,
]

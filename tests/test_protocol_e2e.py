"""End to end: bmcctl and the client library against the real firmware, under
MicroPython, on bmc-sim PTYs.

Slots: 1 is provisioned with an admin and an operator key and takes the command,
role and bad-input tests; 2 is for provisioning, rotation, revocation and factory
reset; 3 for lock-out (it leaves the BMC locked for a while); 4 for reboots and
links that go away.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from bmc import codec
from racklet_host import cli, errors
from racklet_host.client import BmcClient
from racklet_host.keys import Key, load_key, write_new_key
from racklet_host.transport import Link
from racklet_sim.rack import Rack

BOARDS = 4


# -- fixtures and helpers ------------------------------------------------------


@pytest.fixture(scope="module")
def rack() -> Iterator[Rack]:
    with Rack(boards=BOARDS) as r:
        yield r


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    os.chmod(d, 0o700)
    return d


class Ctl:
    """Runs bmcctl in this process against the rack; (exit code, stdout, stderr)."""

    def __init__(self, rack: Rack, capsys: pytest.CaptureFixture[str]) -> None:
        self.rack = rack
        self.capsys = capsys

    def __call__(self, *argv: str, key: Optional[Path] = None) -> Tuple[int, str, str]:
        self.capsys.readouterr()
        full = ["--rack", str(self.rack.path)]
        if key is not None:
            full += ["--key-file", str(key)]
        code = cli.main(full + list(argv))
        out, err = self.capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    def json(self, *argv: str, key: Optional[Path] = None) -> Tuple[int, List[Dict[str, Any]]]:
        code, out, err = self("--json", *argv, key=key)
        assert out.strip(), err
        return code, json.loads(out)


@pytest.fixture
def ctl(rack: Rack, capsys: pytest.CaptureFixture[str]) -> Ctl:
    return Ctl(rack, capsys)


def provision(rack: Rack, slot: int, path: Path) -> Key:
    rack.bootsel(slot, seconds=3)
    key = load_key(str(path)) if path.exists() else write_new_key(str(path))
    with BmcClient.open(rack.port(slot)) as c:
        # the simulated button reaches the firmware over its wires a moment later
        deadline = time.monotonic() + 2
        while True:
            try:
                c.keys_provision("admin", key)
                return key
            except errors.PresenceRequired:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.fixture(scope="module")
def slot1(rack: Rack, keydir: Path) -> Dict[str, Path]:
    """Slot 1 provisioned: an admin and an operator key file."""
    admin = keydir / "s1-admin"
    oper = keydir / "s1-operator"
    akey = provision(rack, 1, admin)
    okey = write_new_key(str(oper))
    with BmcClient.open(rack.port(1), key=akey) as c:
        c.keys_add("operator", okey)
    return {"admin": admin, "operator": oper}


@pytest.fixture
def admin1(rack: Rack, slot1: Dict[str, Path]) -> Iterator[BmcClient]:
    with BmcClient.open(rack.port(1), key=load_key(str(slot1["admin"]))) as c:
        yield c


STABLE_STATUS = ("state", "rails", "fault", "restore_policy", "provisioned", "serial", "board")


def snapshot(rack: Rack, slot: int, admin: Path) -> Dict[str, Any]:
    """What must not change after bad input: status, settings and keys (stored files)."""
    with BmcClient.open(rack.port(slot), key=load_key(str(admin))) as c:
        st = c.status()
        assert st.get("locked_out_ms") == 0, "the snapshot is taken while not locked out"
        return {
            "status": {k: st.get(k) for k in STABLE_STATUS},
            "config": c.config_get(),
            "keys": c.keys_list(),
            "hello": {k: v for k, v in c.hello().items() if k != "caps"},
        }


def raw_request(
    link: Link, payload: bytes, rid: int = 77, version: int = codec.PROTO_VERSION
) -> Dict[str, Any]:
    link.write(codec.encode_frame(codec.KIND_REQUEST, rid, payload, version))
    deadline = time.monotonic() + 5
    while True:
        f = link.read_frame(deadline)
        if f.req_id == rid and f.kind == codec.KIND_RESPONSE:
            msg: Dict[str, Any] = json.loads(f.payload)
            return msg


def still_fine(rack: Rack, slot: int, admin: Path, before: Dict[str, Any]) -> None:
    """The BMC answers correctly and nothing it stores has changed."""
    with BmcClient.open(rack.port(slot)) as c:
        assert c.hello()["serial"] == before["hello"]["serial"]
        assert c.status()["state"] == before["status"]["state"]
    # a success clears the failure streak, so the bad-input tests never add up to a lock-out
    assert snapshot(rack, slot, admin) == before


# -- discovery, listing, public commands --------------------------------------


def test_list_finds_every_slot(ctl: Ctl, rack: Rack) -> None:
    code, rows = ctl.json("list")
    assert code == 0
    assert [r["target"] for r in rows] == [f"slot{i}" for i in range(1, BOARDS + 1)]
    serials = {r["data"]["serial"] for r in rows}
    assert len(serials) == BOARDS
    assert all(r["data"]["board"] == "pico-rpi4" for r in rows)
    code, out, _ = ctl("list")
    assert code == 0 and "slot4" in out and "SERIAL" in out


def test_status_needs_no_key_and_targets_by_slot_serial_port(ctl: Ctl, rack: Rack) -> None:
    code, rows = ctl.json("status", "2")
    assert code == 0 and rows[0]["target"] == "slot2"
    serial = rows[0]["data"]["serial"]
    assert rows[0]["data"]["state"] in ("Off", "On")
    assert {r["name"] for r in rows[0]["data"]["rails"]} == {"5v", "3v3"}
    code, rows = ctl.json("status", serial, "slot3", rack.port(4))
    assert code == 0
    assert [r["target"] for r in rows] == ["slot2", "slot3", "slot4"]
    code, rows = ctl.json("status", serial.lower())  # a serial typed in lower case
    assert code == 0 and [r["target"] for r in rows] == ["slot2"]
    code, rows = ctl.json("status", "--all")
    assert code == 0 and len(rows) == BOARDS


def test_hello_nonce_metrics(rack: Rack) -> None:
    with BmcClient.open(rack.port(1)) as c:
        h = c.hello()
        assert h["proto"] == codec.PROTO_VERSION and h["max_payload"] == codec.MAX_PAYLOAD
        assert {"status", "power", "keys-provision", "metrics"} <= set(h["caps"])
        n1, n2 = c.nonce(), c.nonce()
        assert n1["nonce"] != n2["nonce"] and n1["ttl_ms"] > 0
        text = c.metrics()
        assert text.endswith("# EOF\n")


def test_unknown_target_and_missing_rack(ctl: Ctl, tmp_path: Path) -> None:
    code, _, err = ctl("status", "slot9")
    assert code == errors.EXIT_NO_BMC and "slot9" in err
    code, _, err = ctl("status", "NOSUCHSERIAL")
    assert code == errors.EXIT_NO_BMC
    assert cli.main(["--rack", str(tmp_path), "status"]) == errors.EXIT_NO_BMC
    code, _, err = ctl("status")
    assert code == errors.EXIT_USAGE and "--all" in err


def test_usage_errors(ctl: Ctl) -> None:
    code, _, _ = ctl("power", "Explode", "1")
    assert code == errors.EXIT_USAGE
    code, _, _ = ctl("nonsense")
    assert code == errors.EXIT_USAGE
    code, _, err = ctl("power", "On", "1")  # no key file anywhere
    assert code == errors.EXIT_USAGE and "--key-file" in err
    for bad in ("nan", "inf", "0", "-1", "soon"):
        code, _, err = ctl("--timeout", bad, "status", "1")
        assert code == errors.EXIT_USAGE and "not a positive number of seconds" in err, bad


# -- keys: provisioning, roles, rotation, revocation -------------------------------


def test_provisioning_needs_bootsel_then_writes_a_0600_key(
    ctl: Ctl, rack: Rack, keydir: Path
) -> None:
    kf = keydir / "s2-admin"
    code, out, err = ctl("keys", "provision", "2", key=kf)
    assert code == errors.EXIT_NOT_ALLOWED
    assert "BOOTSEL" in out and "bmc-sim bootsel" in out
    assert stat.S_IMODE(kf.stat().st_mode) == 0o600  # written, reused on the next try
    first = kf.read_text()
    with BmcClient.open(rack.port(2)) as c:
        assert c.hello()["provisioned"] is False
    rack.bootsel(2, seconds=2)
    # the form: global options after the command's own words
    code, out, err = ctl(
        "keys", "provision", "2", "--role", "admin", "--key-file", str(kf), "--json"
    )
    assert code == 0, err
    rows = json.loads(out)
    assert kf.read_text() == first
    assert rows[0]["data"]["key_id"] == load_key(str(kf)).key_id
    with BmcClient.open(rack.port(2)) as c:
        assert c.hello()["provisioned"] is True
    # once provisioned, never again
    rack.bootsel(2, seconds=2)
    code, _, _ = ctl("keys", "provision", "2", key=keydir / "s2-other")
    assert code == errors.EXIT_NOT_ALLOWED
    code, rows = ctl.json("keys", "list", "2", key=kf)
    assert code == 0 and [k["role"] for k in rows[0]["data"]["keys"]] == ["admin"]


def test_roles(ctl: Ctl, rack: Rack, slot1: Dict[str, Path]) -> None:
    op, admin = slot1["operator"], slot1["admin"]
    # operator: power, identify, events, console, config get
    for argv in (
        ("identify", "--seconds", "2", "1"),
        ("events", "1"),
        ("console", "1"),
        ("config", "get", "1"),
    ):
        code, _, err = ctl(*argv, key=op)
        assert code == 0, (argv, err)
    # admin only
    for argv in (
        ("config", "set", "min_off_ms", "6000", "1"),
        ("keys", "list", "1"),
        ("keys", "revoke", "0000000000000000", "1"),
        ("maintenance", "1"),
    ):
        code, out, _ = ctl(*argv, key=op)
        assert code == errors.EXIT_AUTH, argv
        assert "forbidden" in out
    code, rows = ctl.json("config", "set", "min_off_ms", "6000", "1", key=admin)
    assert code == 0 and rows[0]["data"]["min_off_ms"] == 6000
    code, rows = ctl.json("config", "get", "1", key=op)
    assert rows[0]["data"]["min_off_ms"] == 6000
    code, rows = ctl.json("config", "set", "min_off_ms", "5000", "1", key=admin)
    assert code == 0
    code, rows = ctl.json("config", "set", "no_such_setting", "1", "1", key=admin)
    assert code == errors.EXIT_USAGE and rows[0]["error"] == "invalid"


def test_power_cycle_by_operator(ctl: Ctl, rack: Rack, slot1: Dict[str, Path]) -> None:
    op = slot1["operator"]
    with BmcClient.open(rack.port(1)) as c:
        if c.status()["state"] != "Off":
            pytest.fail("slot1 should start Off")
    code, rows = ctl.json("power", "on", "1", key=op)
    assert code == 0 and rows[0]["data"]["state"] in ("PoweringOn", "On")
    wait_state(rack, 1, "On")
    code, rows = ctl.json("power", "On", "1", key=op)
    assert code == errors.EXIT_NOT_ALLOWED and rows[0]["error"] == "not_allowed"
    code, rows = ctl.json("reset", "1", key=op)
    assert code == 0
    code, rows = ctl.json("--yes", "power", "ForceOff", "1", key=op)
    assert code == 0
    wait_state(rack, 1, "Off")
    code, out, _ = ctl("events", "1", key=op)
    assert "ForceOff" in out and "ForceRestart" in out


def wait_state(rack: Rack, slot: int, state: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    with BmcClient.open(rack.port(slot)) as c:
        while c.status()["state"] != state:
            assert time.monotonic() < deadline, f"slot{slot} never reached {state}"
            time.sleep(0.1)


def test_signed_calls_after_the_first_need_no_nonce_round_trip(
    admin1: BmcClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: List[str] = []
    real = admin1.nonce

    def counting() -> Any:
        n = real()
        fetched.append(n["nonce"])
        return n

    monkeypatch.setattr(admin1, "nonce", counting)
    for _ in range(3):
        admin1.identify(0)
    assert len(fetched) == 1
    # A stale cached nonce is not used: after NONCE_REUSE_S the client asks again.
    assert admin1._next_nonce is not None
    admin1._next_nonce = (admin1._next_nonce[0], time.monotonic() - 60)
    admin1.identify(0)
    assert len(fetched) == 2


def test_events_since_next_misses_nothing(admin1: BmcClient) -> None:
    _, data = admin1.events(0)
    admin1.identify(0)
    admin1.config_set("min_off_ms", 5000)
    newer, _ = admin1.events(data["next"])
    all_events, _ = admin1.events(0)
    want = [e["seq"] for e in all_events if e["seq"] >= data["next"]]
    assert [e["seq"] for e in newer] == want and want


def test_events_from_an_sbc_cannot_drive_the_terminal(
    ctl: Ctl, rack: Rack, slot1: Dict[str, Path]
) -> None:
    """A file name the SBC asked for reaches the event log through the relay; printed
    by `bmcctl events`, its control characters are escapes, not terminal commands."""
    with BmcClient.open(rack.port(1), key=load_key(str(slot1["admin"]))) as c:
        for name in ("\x1b]0;owned\x07../x", "a\n    9 boot 1  forged"):
            c.call("boot-report", {"event": "refused", "name": name, "detail": ".."})
    code, out, _ = ctl("events", "1", key=slot1["admin"])
    assert code == 0, out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;owned\\x07../x" in out
    assert "a\\x0a    9 boot 1  forged" in out  # one line: no forged event under it


def test_console_since(admin1: BmcClient) -> None:
    body, data = admin1.console(-1)
    assert isinstance(data["next"], int)
    more, data2 = admin1.console(data["next"])
    assert data2["next"] >= data["next"]
    assert len(more) == data2["next"] - data["next"] - data2.get("lost", 0)


def test_console_follow_leaves_the_port_to_others_between_polls(
    rack: Rack, slot1: Dict[str, Path]
) -> None:
    """Someone watching the SBC's console for hours must not take its BMC off the
    bridge's scrapes, nor keep other admins out."""
    argv = [sys.executable, "-m", "racklet_host.cli", "--rack", str(rack.path)]
    argv += ["--key-file", str(slot1["operator"]), "console", "--follow", "slot1"]
    follower = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # it polls every 0.3 s
        for _ in range(5):
            t0 = time.monotonic()
            with BmcClient.open(rack.port(1), busy_wait=1.0) as c:
                assert c.status()["serial"]
            assert time.monotonic() - t0 < 1.0  # a poll's moment at most, not the follow
            time.sleep(0.13)
        assert follower.poll() is None  # and it is still following
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)


def test_rotation_and_revocation(ctl: Ctl, rack: Rack, keydir: Path) -> None:
    kf = keydir / "s2-admin"
    if not kf.exists():
        provision(rack, 2, kf)
    old = load_key(str(kf))
    code, rows = ctl.json("keys", "rotate", "2", key=kf)
    assert code == 0, rows
    new = load_key(str(kf))
    assert new.key_id != old.key_id and rows[0]["data"]["new"] == new.key_id
    assert stat.S_IMODE(kf.stat().st_mode) == 0o600
    with BmcClient.open(rack.port(2), key=old) as c:
        with pytest.raises(errors.AuthFailed):
            c.keys_list()
    # a second admin and an operator; revoke the operator
    op = keydir / "s2-op"
    code, rows = ctl.json(
        "keys", "add", "--role", "operator", "--new-key-file", str(op), "2", key=kf
    )
    assert code == 0
    op_id = load_key(str(op)).key_id
    code, _, _ = ctl("identify", "--seconds", "0", "2", key=op)
    assert code == 0
    code, rows = ctl.json("keys", "revoke", op_id, "2", key=kf)
    assert code == 0
    code, rows = ctl.json("identify", "--seconds", "0", "2", key=op)
    assert code == errors.EXIT_AUTH and rows[0]["error"] == "auth_failed"
    # the last admin key cannot go
    code, rows = ctl.json("keys", "revoke", new.key_id, "2", key=kf)
    assert code == errors.EXIT_NOT_ALLOWED
    code, rows = ctl.json("keys", "list", "2", key=kf)
    assert [k["id"] for k in rows[0]["data"]["keys"]] == [new.key_id]


def test_rotation_that_cannot_store_the_new_key_leaves_none_behind(
    ctl: Ctl, rack: Rack, keydir: Path
) -> None:
    kf = keydir / "s2-admin"
    if not kf.exists():
        provision(rack, 2, kf)
    taken = keydir / "s2-taken"
    taken.write_text("not a key\n")
    code, rows = ctl.json("keys", "list", "2", key=kf)
    before = rows[0]["data"]["keys"]
    code, _, err = ctl("keys", "rotate", "--new-key-file", str(taken), "2", key=kf)
    assert code == errors.EXIT_USAGE and "already exists" in err, err
    assert taken.read_text() == "not a key\n"
    code, rows = ctl.json("keys", "list", "2", key=kf)  # the old key still works
    assert code == 0 and rows[0]["data"]["keys"] == before  # and no key nobody holds


def test_key_file_readable_by_others_is_refused(ctl: Ctl, keydir: Path) -> None:
    kf = keydir / "loose"
    write_new_key(str(kf))
    os.chmod(kf, 0o640)
    code, _, err = ctl("identify", "1", key=kf)
    assert code == errors.EXIT_USAGE and "chmod 600" in err


def test_key_file_from_environment(
    ctl: Ctl, slot1: Dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BMC_KEY_FILE", str(slot1["operator"]))
    code, _, err = ctl("identify", "--seconds", "0", "1")
    assert code == 0, err


# -- lock-out -----------------------------------------------------------------------


def test_lockout_after_repeated_failures(ctl: Ctl, rack: Rack, keydir: Path) -> None:
    kf = keydir / "s3-admin"
    good = provision(rack, 3, kf)
    bad = Key(bytes(range(1, 33)))
    codes = []
    with BmcClient.open(rack.port(3), key=bad) as c:
        for _ in range(8):
            try:
                c.identify(0)
            except errors.BmcError as e:
                codes.append(e.code)
        st = c.status()
    assert codes[:5] == ["auth_failed"] * 5
    assert "locked_out" in codes
    assert st["locked_out_ms"] > 0 and st["auth_failures_in_a_row"] >= 5
    # even the right key is refused while locked out; bmcctl says so
    code, rows = ctl.json("identify", "--seconds", "0", "3", key=kf)
    assert code == errors.EXIT_AUTH and rows[0]["error"] == "locked_out"
    assert rows[0]["data"]["retry_ms"] > 0
    deadline = time.monotonic() + 30
    with BmcClient.open(rack.port(3), key=good) as c:
        while c.status()["locked_out_ms"] > 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        c.identify(0)
        assert c.status()["auth_failures_in_a_row"] == 0
        events, _ = c.events(0)
    assert any(e["kind"] == "lockout" for e in events)


# -- bad input ----------------------------------------------------------------------


@pytest.fixture
def before(rack: Rack, slot1: Dict[str, Path]) -> Iterator[Dict[str, Any]]:
    snap = snapshot(rack, 1, slot1["admin"])
    yield snap
    still_fine(rack, 1, slot1["admin"], snap)


GARBAGE = {
    "random_bytes": bytes(random.Random(1).getrandbits(8) for _ in range(3000)),
    "magic_storm": b"\xb5\x4d" * 1500,
    "truncated_frame": codec.encode_frame(1, 5, b'{"cmd":"power","args":{"action":"On"}}')[:20],
    "oversized_length": b"\xb5\x4d\x01\x01\x05\x00\xff\xff" + b"A" * 100,
    "bad_crc": codec.encode_frame(1, 6, b'{"cmd":"status","args":{}}')[:-1] + b"\x00",
    "response_kind": codec.encode_frame(2, 7, b'{"cmd":"status","args":{}}'),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_gets_no_answer_and_changes_nothing(
    rack: Rack, before: Dict[str, Any], name: str
) -> None:
    with Link(rack.port(1)) as link:
        link.write(GARBAGE[name])
        with pytest.raises(errors.Timeout):
            link.read_frame(time.monotonic() + 0.4)  # past the 200 ms half-frame limit
        msg = raw_request(link, codec.dumps({"cmd": "status", "args": {}}))
        assert msg["ok"] is True


BAD_REQUESTS = {
    "not_json": (b"{nope", "bad_request"),
    "not_utf8": (b"\xff\xfe\xfd", "bad_request"),
    "json_array": (b"[1,2]", "bad_request"),
    "cmd_not_string": (b'{"cmd": 5, "args": {}}', "bad_request"),
    "args_not_object": (b'{"cmd": "status", "args": [1]}', "bad_request"),
    "unknown_command": (b'{"cmd": "format-flash", "args": {}}', "unknown_command"),
    "no_auth": (b'{"cmd": "power", "args": {"action": "ForceOff"}}', "auth_required"),
    "auth_not_object": (
        b'{"cmd": "power", "args": {"action": "ForceOff"}, "auth": "x"}',
        "auth_failed",
    ),
    "auth_wrong_types": (
        b'{"cmd": "config-set", "args": {"key": "min_off_ms", "value": 1},'
        b' "auth": {"key": 1, "nonce": [], "mac": null}}',
        "auth_failed",
    ),
    "hello_wrong_proto": (b'{"cmd": "hello", "args": {"proto": 99}}', "unsupported_version"),
    "hello_proto_type": (b'{"cmd": "hello", "args": {"proto": "1"}}', "invalid"),
    "provision_when_provisioned": (
        b'{"cmd": "keys-provision", "args": {"role": "admin", "key": "' + b"ab" * 32 + b'"}}',
        "not_allowed",
    ),
    "factory_reset_no_presence": (b'{"cmd": "factory-reset", "args": {}}', "presence_required"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_requests_are_refused_and_change_nothing(
    rack: Rack, before: Dict[str, Any], name: str
) -> None:
    payload, code = BAD_REQUESTS[name]
    with Link(rack.port(1)) as link:
        msg = raw_request(link, payload)
    assert msg["ok"] is False and msg["error"] == code, msg
    assert isinstance(msg["message"], str) and msg["message"]


def test_other_protocol_version_is_answered(rack: Rack, before: Dict[str, Any]) -> None:
    with Link(rack.port(1)) as link:
        msg = raw_request(link, codec.dumps({"cmd": "status", "args": {}}), version=9)
    assert msg["error"] == "unsupported_version"


def signed(c: BmcClient, key: Key, cmd: str, args: Dict[str, Any]) -> Dict[str, Any]:
    return {"cmd": cmd, "args": args, "auth": c.sign(key, cmd, args)}


def test_replayed_mac_is_refused(
    rack: Rack, slot1: Dict[str, Path], before: Dict[str, Any]
) -> None:
    key = load_key(str(slot1["admin"]))
    with BmcClient.open(rack.port(1), key=key) as c:
        msg = signed(c, key, "config-set", {"key": "min_off_ms", "value": 5000})
        assert c.request(msg)["min_off_ms"] == 5000
        with pytest.raises(errors.AuthFailed, match="nonce"):
            c.request(msg)


def test_forged_mac_and_unknown_key_are_refused(
    rack: Rack, slot1: Dict[str, Path], before: Dict[str, Any]
) -> None:
    key = load_key(str(slot1["admin"]))
    with BmcClient.open(rack.port(1), key=key) as c:
        msg = signed(c, key, "config-set", {"key": "min_off_ms", "value": 9000})
        mac = bytearray(bytes.fromhex(msg["auth"]["mac"]))
        mac[0] ^= 1
        msg["auth"]["mac"] = mac.hex()
        with pytest.raises(errors.AuthFailed, match="MAC"):
            c.request(msg)
        stranger = Key(bytes(range(100, 132)))
        with pytest.raises(errors.AuthFailed, match="unknown key"):
            c.config_set("min_off_ms", 9000, key=stranger)
        msg = signed(c, key, "config-set", {"key": "min_off_ms", "value": 9000})
        msg["auth"]["mac"] = "zz"
        with pytest.raises(errors.AuthFailed):
            c.request(msg)


def test_mac_over_other_args_is_refused(
    rack: Rack, slot1: Dict[str, Path], before: Dict[str, Any]
) -> None:
    key = load_key(str(slot1["admin"]))
    with BmcClient.open(rack.port(1), key=key) as c:
        msg = signed(c, key, "config-set", {"key": "min_off_ms", "value": 5000})
        msg["args"]["value"] = 9000
        with pytest.raises(errors.AuthFailed, match="MAC"):
            c.request(msg)
        msg = signed(c, key, "keys-list", {})
        msg["cmd"] = "config-set"
        msg["args"] = {"key": "min_off_ms", "value": 9000}
        with pytest.raises(errors.AuthFailed, match="MAC"):
            c.request(msg)


def test_wrong_role_is_forbidden(
    rack: Rack, slot1: Dict[str, Path], before: Dict[str, Any]
) -> None:
    with BmcClient.open(rack.port(1), key=load_key(str(slot1["operator"]))) as c:
        with pytest.raises(errors.Forbidden):
            c.config_set("min_off_ms", 9000)
        with pytest.raises(errors.Forbidden):
            c.keys_add("admin", Key(bytes(range(7, 39))))


def test_expired_nonce_is_refused(
    rack: Rack, slot1: Dict[str, Path], before: Dict[str, Any]
) -> None:
    key = load_key(str(slot1["admin"]))
    with BmcClient.open(rack.port(1), key=key) as c:
        msg = signed(c, key, "config-set", {"key": "min_off_ms", "value": 9000})
        time.sleep(c.nonce()["ttl_ms"] / 1000 + 0.3)
        with pytest.raises(errors.AuthFailed, match="expired"):
            c.request(msg)


def test_invalid_arguments_with_a_valid_mac(before: Dict[str, Any], admin1: BmcClient) -> None:
    with pytest.raises(errors.Invalid):
        admin1.power("Explode")
    with pytest.raises(errors.Invalid):
        admin1.call("identify", {"seconds": "ten"})
    with pytest.raises(errors.Invalid):
        admin1.call("identify", {"seconds": 10**6})
    with pytest.raises(errors.Invalid):
        admin1.keys_add("root", Key(bytes(range(9, 41))))
    with pytest.raises(errors.Invalid):
        admin1.call("config-set", {"key": "min_off_ms", "value": "soon"})
    with pytest.raises(errors.NotFound):
        admin1.keys_revoke("0123456789abcdef")


def test_largest_request_is_answered(before: Dict[str, Any], admin1: BmcClient) -> None:
    msg = {"cmd": "status", "args": {"pad": "x" * (codec.MAX_PAYLOAD - 38)}}
    assert len(codec.dumps(msg)) == codec.MAX_PAYLOAD
    assert admin1.request(msg)["serial"] == before["hello"]["serial"]
    msg["args"]["pad"] += "x"
    with pytest.raises(errors.ProtocolError, match="too large"):
        admin1.request(msg)


# -- links: busy, gone, reboot --------------------------------------------------------


def test_port_busy(ctl: Ctl, rack: Rack) -> None:
    with Link(rack.port(4)):
        code, rows = ctl.json("status", "4")
    assert code == errors.EXIT_LINK and rows[0]["error"] == "port_busy"
    assert "busy" in rows[0]["message"]


def test_bmc_reboot_reconnects_and_the_sbc_keeps_running(
    ctl: Ctl, rack: Rack, keydir: Path
) -> None:
    kf = keydir / "s4-admin"
    key = provision(rack, 4, kf)
    with BmcClient.open(rack.port(4), key=key) as c:
        c.power("On")
    wait_state(rack, 4, "On")
    starts = rack.slot_info(4)["starts"]
    code, rows = ctl.json("bmc-reboot", "4", key=kf)
    assert code == 0 and rows[0]["data"]["back"] is True
    assert rack.slot_info(4)["starts"] == starts + 1
    with BmcClient.open(rack.port(4)) as c:
        st = c.status()
    assert st["state"] == "On"  # the SBC never noticed
    assert st["uptime_ms"] < 30000


def test_link_gone_mid_session_then_reconnect(rack: Rack, keydir: Path) -> None:
    from racklet_host.discovery import rack_ports

    port = next(p for p in rack_ports(str(rack.path)) if p.name == "slot4")
    with BmcClient.open(port.path, resolve=port.resolve, name=port.name, timeout=3) as c:
        serial = c.serial
        starts = rack.slot_info(4)["starts"]
        rack.kill(4)
        with pytest.raises((errors.LinkGone, errors.Timeout)):
            c.status()
        rack.wait_restarted(4, starts)
        info = c.reconnect(20, expect_serial=serial)
        assert info["serial"] == serial
        assert c.status()["serial"] == serial


def test_several_targets_in_parallel(ctl: Ctl, rack: Rack, keydir: Path) -> None:
    code, rows = ctl.json("identify", "--seconds", "0", "2", "4", key=keydir / "s4-admin")
    # slot 4's key is unknown to slot 2: one row each, a common exit code
    by = {r["target"]: r for r in rows}
    assert by["slot4"]["ok"] is True
    assert by["slot2"]["ok"] is False and by["slot2"]["error"] == "auth_failed"
    assert code == errors.EXIT_AUTH
    code, out, _ = ctl("identify", "--seconds", "0", "2", "4", key=keydir / "s4-admin")
    assert "slot2" in out and "auth_failed" in out and "slot4" in out


# -- last: factory reset and maintenance ------------------------------------------------


def test_factory_reset_needs_presence(ctl: Ctl, rack: Rack, keydir: Path) -> None:
    kf = keydir / "s2-admin"
    code, _, _ = ctl("factory-reset", "2")
    assert code == errors.EXIT_NOT_ALLOWED
    with BmcClient.open(rack.port(2)) as c:
        assert c.hello()["provisioned"] is True
    rack.bootsel(2, seconds=2)
    code, _, _ = ctl("factory-reset", "2")
    assert code == 0
    with BmcClient.open(rack.port(2)) as c:
        assert c.hello()["provisioned"] is False
    code, rows = ctl.json("keys", "list", "2", key=kf)
    assert code == errors.EXIT_AUTH


def test_maintenance_needs_admin_and_reboots(ctl: Ctl, rack: Rack, keydir: Path) -> None:
    kf = keydir / "s4-admin"
    starts = rack.slot_info(4)["starts"]
    code, rows = ctl.json("maintenance", "4", key=kf)
    assert code == 0 and rows[0]["data"]["rebooting"] is True
    rack.wait_restarted(4, starts)


# -- the installed command ----------------------------------------------------------


BMCCTL = str(Path(sys.executable).parent / "bmcctl")


def test_bmcctl_command_exit_codes_and_no_traceback(rack: Rack, tmp_path: Path) -> None:
    env = {**os.environ, "BMC_RACK": str(rack.path)}
    env.pop("BMC_KEY_FILE", None)
    p = subprocess.run([BMCCTL, "--json", "status", "1"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and json.loads(p.stdout)[0]["data"]["serial"]
    p = subprocess.run([BMCCTL, "status", "slot42"], capture_output=True, text=True, env=env)
    assert p.returncode == 3 and p.stderr.startswith("bmcctl: ") and "Traceback" not in p.stderr
    p = subprocess.run(
        [BMCCTL, "--rack", str(tmp_path), "list"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 3 and "no BMC" in p.stderr
    p = subprocess.run([BMCCTL, "--help"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "exit codes" in p.stdout


def test_disruptive_action_on_several_targets_asks_on_a_terminal(rack: Rack, keydir: Path) -> None:
    kf = keydir / "s4-admin"
    if not kf.exists():
        pytest.skip("needs slot 4's key")
    master, slave = os.openpty()
    env = {**os.environ, "BMC_RACK": str(rack.path), "BMC_KEY_FILE": str(kf)}
    proc = subprocess.Popen(
        [BMCCTL, "power", "ForceOff", "2", "4"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(slave)
    os.write(master, b"n\n")
    out, err = proc.communicate(timeout=30)
    os.close(master)
    assert proc.returncode == errors.EXIT_USAGE
    assert b"2 BMCs" in err and b"cancelled" in err
    assert b"slot" not in out  # nothing was done

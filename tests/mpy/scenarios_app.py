"""Protocol and authentication scenarios against the whole firmware.

Runs on CPython (pytest imports it) and inside the micropython binary:
`micropython -X heapsize=192K tests/mpy/scenarios_app.py TMPDIR` prints one
line per scenario, `PASS name` or `FAIL name: why`.
"""

import os

from app_rig import fresh, hexkey, new_key, provision, run_scenarios, scenario_names
from bmc import codec


def ok(resp):
    assert resp["ok"], resp
    return resp["data"]


def err(resp, code):
    assert not resp["ok"], resp
    assert resp["error"] == code, resp
    return resp


def files(rig):
    """Every stored file and its bytes (what must not change on refusals), after a
    pass without requests: the BMC writes what it holds then."""
    rig.step()
    out = {}
    _walk(rig.root + "/data", "", out)
    return out


def _walk(d, prefix, out):
    for name in sorted(os.listdir(d)):
        if name.startswith("events"):
            continue  # refusals are logged, by design
        path = d + "/" + name
        if os.stat(path)[0] & 0x4000:
            _walk(path, prefix + name + "/", out)
            continue
        with open(path, "rb") as f:
            out[prefix + name] = f.read()


def scenario_hello_and_status(tmp):
    rig = fresh(tmp)
    h = ok(rig.host.call("hello", {"proto": codec.PROTO_VERSION}))
    assert h["proto"] == codec.PROTO_VERSION and h["board"] == "pico-rpi4", h
    assert h["serial"] == rig.app.serial and len(h["serial"]) == 16
    assert "power" in h["caps"] and h["provisioned"] is False
    err(rig.host.call("hello", {"proto": 9}), "unsupported_version")
    st = ok(rig.host.call("status"))
    assert st["state"] == "Off" and st["provisioned"] is False, st
    assert st["rails"] and "pgood" in st["rails"][0], st


def scenario_the_same_request_again(tmp):
    # Pollers send the same bytes again and again: the BMC keeps the last unsigned
    # request's parse, and the CRC of a cached reply's text. Each answer must still
    # be the one asked for, whole, after other requests, garbage and changes of state.
    rig = fresh(tmp)
    host = rig.host
    for _ in range(3):
        assert ok(host.call("status"))["state"] == "Off"
        assert ok(host.call("status"))["state"] == "Off"
        assert ok(host.call("hello"))["board"] == "pico-rpi4"
        assert len(ok(host.call("nonce"))["nonce"]) == 32
    host.send_raw(codec.encode_frame(codec.KIND_REQUEST, 9, b'{"cmd": "status", "args": {'))
    err(host.exchange()[1], "bad_request")
    assert ok(host.call("status"))["state"] == "Off"
    err(host.call("power"), "auth_required")  # unsigned and without arguments: kept too
    err(host.call("power"), "auth_required")
    key = provision(rig)
    rig.step()
    assert ok(host.call("power", {"action": "On"}, key=key))["state"] == "PoweringOn"
    assert ok(host.call("status"))["state"] in ("PoweringOn", "On")
    rig.until_state("On")
    assert ok(host.call("status"))["state"] == "On"
    assert ok(host.call("status"))["state"] == "On"
    assert ok(host.call("power", {"action": "ForceOff"}, key=key))["state"] != "On"
    rig.until_state("Off")
    assert ok(host.call("status"))["state"] == "Off"
    assert rig.app.dispatch.reader.bad_crc == 0
    assert host.reader.bad_crc == 0  # every reply's CRC checked on the host side


def scenario_power_needs_a_key(tmp):
    rig = fresh(tmp)
    before = files(rig)
    err(rig.host.call("power", {"action": "On"}), "auth_required")
    assert rig.app.power.state == "Off"
    assert files(rig) == before


def scenario_provision_needs_bootsel_once(tmp):
    rig = fresh(tmp)
    key = new_key()
    err(rig.host.call("keys-provision", {"role": "admin", "key": hexkey(key)}), "presence_required")
    rig.board.button = True
    err(rig.host.call("keys-provision", {"role": "operator", "key": hexkey(key)}), "invalid")
    ok(rig.host.call("keys-provision", {"role": "admin", "key": hexkey(key)}))
    err(rig.host.call("keys-provision", {"role": "admin", "key": hexkey(new_key())}), "not_allowed")
    assert ok(rig.host.call("status"))["provisioned"] is True


def scenario_authenticated_power_cycle(tmp):
    rig = fresh(tmp)
    key = provision(rig)
    rig.step()  # a quiet pass: the power request below is not one of a run back to back
    st = ok(rig.host.call("power", {"action": "On"}, key=key))
    assert st["state"] == "PoweringOn", st
    # Not written in the pass that answered (the next request may be on its way)...
    with open(rig.root + "/data/state.json") as f:
        assert '"sbc_on": true' not in f.read()
    rig.step()  # ...but in the first pass that takes no request
    with open(rig.root + "/data/events.jsonl") as f:
        logged = f.read()
    assert '"action"' in logged and '"On"' in logged, logged
    with open(rig.root + "/data/state.json") as f:
        assert '"sbc_on": true' in f.read()
    rig.until_state("On")
    assert rig.sbc.running
    err(rig.host.call("power", {"action": "On"}, key=key), "not_allowed")
    err(rig.host.call("power", {"action": "Explode"}, key=key), "invalid")
    ok(rig.host.call("power", {"action": "ForceOff"}, key=key))
    rig.until_state("Off")
    assert not rig.sbc.running


def scenario_replay_forgery_expiry(tmp):
    rig = fresh(tmp)
    key = provision(rig)
    host = rig.host
    nonce = ok(host.call("nonce"))["nonce"]
    ok(host.call("identify", {"seconds": 1}, key=key, nonce=nonce))
    before = files(rig)
    # The same nonce again: a replay.
    err(host.call("identify", {"seconds": 1}, key=key, nonce=nonce), "auth_failed")
    # A MAC over other arguments.
    err(
        host.call("power", {"action": "On"}, key=key, mac_args={"action": "ForceOff"}),
        "auth_failed",
    )
    # A key the BMC does not know.
    err(host.call("power", {"action": "On"}, key=new_key()), "auth_failed")
    # An expired nonce.
    nonce = ok(host.call("nonce"))["nonce"]
    rig.clock.advance(6000)
    err(host.call("power", {"action": "On"}, key=key, nonce=nonce), "auth_failed")
    assert rig.app.power.state == "Off"
    assert files(rig) == before
    assert rig.app.auth.failures["bad_nonce"] == 1 and rig.app.auth.failures["expired"] == 1


def scenario_signed_reply_carries_the_next_nonce(tmp):
    rig = fresh(tmp)
    key = provision(rig)
    r = rig.host.call("identify", {"seconds": 0}, key=key)
    ok(r)
    nxt = r["nonce"]
    r2 = rig.host.call("identify", {"seconds": 0}, key=key, nonce=nxt)
    ok(r2)
    err(rig.host.call("identify", {"seconds": 0}, key=key, nonce=nxt), "auth_failed")  # single use
    assert "nonce" not in rig.host.call("status"), "only signed requests get one"


def scenario_roles(tmp):
    rig = fresh(tmp)
    admin = provision(rig)
    op = new_key()
    ok(rig.host.call("keys-add", {"role": "operator", "key": hexkey(op)}, key=admin))
    ok(rig.host.call("power", {"action": "On"}, key=op))
    before = files(rig)
    err(rig.host.call("config-set", {"key": "min_off_ms", "value": 0}, key=op), "forbidden")
    err(rig.host.call("keys-list", {}, key=op), "forbidden")
    assert files(rig) == before
    listed = ok(rig.host.call("keys-list", {}, key=admin))["keys"]
    assert len(listed) == 2
    for k in listed:
        assert set(k.keys()) == {"id", "role"}, k  # keys never leave the BMC
    ok(rig.host.call("config-set", {"key": "min_off_ms", "value": 0}, key=admin))
    assert rig.app.config.value("min_off_ms") == 0


def scenario_rotate_and_revoke(tmp):
    rig = fresh(tmp)
    old = provision(rig)
    new = new_key()
    from bmc.auth import key_id

    ok(rig.host.call("keys-add", {"role": "admin", "key": hexkey(new)}, key=old))
    ok(rig.host.call("keys-revoke", {"key_id": key_id(old)}, key=new))
    err(rig.host.call("identify", {"seconds": 0}, key=old), "auth_failed")
    err(rig.host.call("keys-revoke", {"key_id": key_id(new)}, key=new), "not_allowed")
    ok(rig.host.call("identify", {"seconds": 0}, key=new))


def scenario_lockout_backs_off(tmp):
    rig = fresh(tmp)
    key = provision(rig)
    wrong = new_key()
    for _ in range(5):
        err(rig.host.call("identify", {"seconds": 0}, key=wrong), "auth_failed")
    r = err(rig.host.call("identify", {"seconds": 0}, key=key), "locked_out")
    assert r["data"]["retry_ms"] > 0
    assert ok(rig.host.call("status"))["locked_out_ms"] > 0
    rig.clock.advance(r["data"]["retry_ms"] + 1)
    ok(rig.host.call("identify", {"seconds": 0}, key=key))
    # One more failure after a success starts from the free budget again.
    err(rig.host.call("identify", {"seconds": 0}, key=wrong), "auth_failed")
    ok(rig.host.call("identify", {"seconds": 0}, key=key))


def _locked_out_with_a_nonce(tmp):
    """A provisioned BMC just locked out by five failures, its admin key, and a fresh nonce."""
    rig = fresh(tmp)
    key = provision(rig)
    for _ in range(5):
        err(rig.host.call("identify", {"seconds": 0}, key=new_key()), "auth_failed")
    return rig, key, ok(rig.host.call("nonce"))["nonce"]


def scenario_lockout_spends_the_nonce(tmp):
    # A request refused while locked out is refused for good: its nonce is spent,
    # so whoever saw it cannot have it run once the lock-out ends.
    rig, key, nonce = _locked_out_with_a_nonce(tmp)
    r = err(rig.host.call("power", {"action": "On"}, key=key, nonce=nonce), "locked_out")
    rig.clock.advance(r["data"]["retry_ms"] + 1)
    err(rig.host.call("power", {"action": "On"}, key=key, nonce=nonce), "auth_failed")
    assert rig.app.power.state == "Off"


def scenario_lockout_and_nonces_after_a_week(tmp):
    # Ticks wrap every 2**30 ms (~12 days) on the RP2040: a lock-out or a nonce left
    # alone for a week must not come back to life.
    rig, key, nonce = _locked_out_with_a_nonce(tmp)
    rig.clock.advance(7 * 86400 * 1000)
    assert ok(rig.host.call("status"))["locked_out_ms"] == 0
    r = err(rig.host.call("identify", {"seconds": 0}, key=key, nonce=nonce), "auth_failed")
    assert r["message"] == "nonce expired", r
    rig.clock.advance(
        err(rig.host.call("identify", {"seconds": 0}, key=key), "locked_out")["data"]["retry_ms"]
    )
    ok(rig.host.call("identify", {"seconds": 0}, key=key))
    for _ in range(5):
        err(rig.host.call("identify", {"seconds": 0}, key=new_key()), "auth_failed")
    rig.clock.advance(7 * 86400 * 1000)
    r = rig.host.call("identify", {"seconds": 0}, key=key)
    assert r["ok"], r


def scenario_bad_input_then_good(tmp):
    rig = fresh(tmp)
    host = rig.host
    before = files(rig)
    host.send_raw(b"\x00\xff garbage \xb5\xb5M\x01")
    host.send_raw(b"\xb5M\x01\x01\x01\x00\xff\xff")  # oversized length
    frame = codec.encode_frame(codec.KIND_REQUEST, 9, codec.dumps({"cmd": "status"}))
    host.send_raw(frame[:7])  # truncated
    bad = bytearray(frame)
    bad[9] ^= 0x20  # CRC error
    host.send_raw(bytes(bad))
    rig.app.step()
    # A request that arrives behind the debris waits until the link has been quiet.
    frame = codec.encode_frame(codec.KIND_REQUEST, 10, codec.dumps({"cmd": "status"}))
    host.send_raw(frame)
    rig.app.step()
    assert not rig.board.link.from_bmc
    rig.clock.advance(500)
    chunks, resp, rid = host.exchange()  # the stale half frames are abandoned
    assert rid == 10 and resp["ok"], resp
    assert ok(host.call("status"))["state"] == "Off"
    err(host.call("no-such-command"), "unknown_command")
    host.send_raw(codec.encode_frame(codec.KIND_REQUEST, 77, b"not json"))
    chunks, resp, rid = host.exchange()
    assert rid == 77 and resp["error"] == "bad_request", resp
    host.send_raw(codec.encode_frame(codec.KIND_REQUEST, 78, b'{"cmd": "power", "args": []}'))
    chunks, resp, rid = host.exchange()
    assert resp["error"] == "bad_request", resp
    host.send_raw(
        codec.encode_frame(codec.KIND_REQUEST, 79, b'{"cmd":"identify","args":{"seconds":"x"}}')
    )
    chunks, resp, rid = host.exchange()
    assert resp["error"] == "auth_required", resp
    host.send_raw(
        codec.encode_frame(codec.KIND_REQUEST, 80, codec.dumps({"cmd": "hello"}), version=7)
    )
    chunks, resp, rid = host.exchange()
    assert resp["error"] == "unsupported_version", resp
    assert ok(host.call("status"))["state"] == "Off"
    assert files(rig) == before
    assert rig.app.dispatch.reader.bad_crc >= 1


def scenario_events_stream(tmp):
    rig = fresh(tmp)
    key = provision(rig)
    for _ in range(3):
        ok(rig.host.call("identify", {"seconds": 0}, key=key))
    data = ok(rig.host.call("events", {"since": 0}, key=key))
    text = b"".join(rig.host.last_chunks).decode()
    lines = [x for x in text.split("\n") if x]
    assert data["count"] == len(lines) and len(lines) >= 2, (data, lines)
    assert '"provisioned"' in text
    assert data["next"] > 1


def scenario_host_stops_reading_mid_stream(tmp):
    rig = fresh(tmp)
    key = provision(rig)
    for _ in range(30):
        ok(rig.host.call("identify", {"seconds": 0}, key=key))
    nonce = ok(rig.host.call("nonce"))["nonce"]
    rig.board.link.room = 100  # the host reads the first 100 bytes, then nothing
    args = {"since": 0}
    import binascii

    from app_rig import key_id
    from bmc.hmac256 import HmacKey

    mac = HmacKey(key).mac(codec.mac_input(rig.app.serial, nonce, "events", args))
    auth = {"key": key_id(key), "nonce": nonce, "mac": binascii.hexlify(mac).decode()}
    msg = {"cmd": "events", "args": args, "auth": auth}
    rig.host.send_raw(codec.encode_frame(codec.KIND_REQUEST, 900, codec.dumps(msg)))
    rig.app.step()
    assert rig.app.dispatch.results.get("link_stalled") == 1, rig.app.dispatch.results
    rig.board.link.room = None
    rig.board.link.from_bmc = bytearray()
    rig.host.reader = codec.FrameReader()
    assert ok(rig.host.call("status"))["state"] == "Off"


def scenario_bmc_reboot_keeps_sbc(tmp):
    rig = fresh(tmp)
    key = provision(rig)
    ok(rig.host.call("power", {"action": "On"}, key=key))
    rig.until_state("On")
    ups = rig.sbc.power_ups
    try:
        rig.host.call("bmc-reboot", {}, key=key)
    except SystemExit:
        pass
    assert rig.board.rebooted
    rig.wires.bmc_reset()
    rig.sbc.update()
    rig.boot("soft")
    rig.run(200)
    assert rig.app.power.state == "On" and rig.sbc.running
    assert rig.sbc.power_ups == ups and rig.sbc.power_losses == 0
    assert ok(rig.host.call("status"))["boot_count"] == 2


def scenario_factory_reset_needs_presence(tmp):
    rig = fresh(tmp)
    key = provision(rig)
    err(rig.host.call("factory-reset"), "presence_required")
    assert ok(rig.host.call("status"))["provisioned"] is True
    rig.board.button = True
    ok(rig.host.call("factory-reset"))
    rig.board.button = False
    assert ok(rig.host.call("status"))["provisioned"] is False
    err(rig.host.call("identify", {"seconds": 0}, key=key), "auth_failed")


def scenario_corrupt_keys_file(tmp):
    rig = fresh(tmp)
    provision(rig)
    with open(rig.root + "/data/keys.json", "w") as f:
        f.write('{"keys": [{"role": "admin", "ke')
    rig.boot("soft")
    st = ok(rig.host.call("status"))
    assert st["provisioned"] is False
    kinds = [e["cause"] for e in rig.app.events.entries(0)]
    assert "keys_file_corrupt" in kinds, kinds


def scenario_a_failing_loop_logs_why_before_the_watchdog_resets(tmp):
    # Three failing passes in a row starve the watchdog; what they logged must be on
    # flash by then (a failing pass never reaches its own flush).
    rig = fresh(tmp)
    rig.step()

    def broken():
        raise RuntimeError("tick broke")

    rig.app.power.tick = broken
    passes = [0]

    def wait(ms):
        passes[0] += 1
        if passes[0] > 50:  # the watchdog has long reset the BMC
            raise SystemExit("watchdog")

    rig.board.wait = wait
    feeds = rig.board.feeds
    try:
        rig.app.run()
    except SystemExit:
        pass
    assert rig.board.feeds == feeds + 2, rig.board.feeds  # starved from the 3rd failure
    on_flash = list(rig.app.store.read_lines("events"))
    assert len([x for x in on_flash if "tick broke" in x]) == 3, on_flash


def names():
    return scenario_names(globals())


if __name__ == "__main__":
    run_scenarios(globals())

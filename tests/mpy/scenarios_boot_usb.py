"""USB boot orchestration and factory reset: scenarios on the whole firmware."""

from boot_helpers import (
    _manifest,
    admin_and_operator,
    blob,
    causes,
    err,
    fresh,
    hx,
    keys_of,
    manifest_of,
    ok,
    run_main,
    stored,
    upload,
)

# -- USB boot orchestration ----------------------------------------------------------


def _steps(rig, ms):
    rig.run(ms, step=20)


def scenario_usb_boot_done(root):
    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    boot = blob(1500, 5)
    upload(rig, admin, boot)
    ok(
        rig.host.call(
            "boot-manifest-set", {"files": _manifest([("bootcode4.bin", boot, "bmc")])}, key=admin
        )
    )
    err(rig.host.call("boot-usb", {}), "auth_required")
    st = ok(rig.host.call("boot-usb", {"timeout_ms": 5000}, key=op))
    assert st["state"] == "waiting", st
    err(rig.host.call("boot-usb", {}, key=op), "busy")
    rig.until_state("On")
    assert rig.sbc.boot_modes[-1] == "usb", rig.sbc.boot_modes
    r = ok(
        rig.host.call(
            "boot-report",
            {"event": "serve", "name": "bootcode4.bin", "gen": 1, "sha256": hx(boot)},
            key=op,
        )
    )
    assert r["src"] == "bmc"
    ok(rig.host.call("boot-report", {"event": "missing", "name": "bootcfg.txt"}, key=op))
    st = ok(rig.host.call("boot-report", {"event": "done", "detail": "1 served"}, key=op))
    assert st["state"] == "done", st
    assert st["counters"]["files_served"] == 1 and st["counters"]["missing"] == 1, st
    assert rig.app.power.boot_mode == "normal"
    c = causes(rig)
    for want in ("usb_boot_select", "usb_boot_power_cycle", "usb_boot_done", "usb_boot_release"):
        assert want in c, (want, c)
    # the next power cycle boots normally
    rig.app.power_action("PowerCycle")
    _steps(rig, 8000)
    rig.until_state("On")
    assert rig.sbc.boot_modes[-1] == "normal", rig.sbc.boot_modes


def scenario_usb_boot_timeout(root):
    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    ok(rig.host.call("boot-usb", {"timeout_ms": 3000}, key=op))
    rig.until_state("On")
    _steps(rig, 3500)
    st = ok(rig.host.call("boot-status"))
    assert st["state"] == "timeout" and st["counters"]["boots_timed_out"] == 1, st
    assert rig.app.power.boot_mode == "normal"
    assert "usb_boot_timeout" in causes(rig) and "usb_boot_release" in causes(rig)
    err(rig.host.call("boot-usb", {"timeout_ms": 10}, key=op), "invalid")


def scenario_manifest_changed_mid_boot(root):
    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    a = blob(1200, 6)
    b = blob(1300, 7)
    upload(rig, admin, a)
    ok(
        rig.host.call(
            "boot-manifest-set", {"files": _manifest([("start4.elf", a, "bmc")])}, key=admin
        )
    )
    ok(rig.host.call("boot-usb", {"timeout_ms": 5000}, key=op))
    serve = {"event": "check", "name": "start4.elf", "gen": 1, "sha256": hx(a)}
    ok(rig.host.call("boot-report", serve, key=op))
    upload(rig, admin, b)
    ok(
        rig.host.call(
            "boot-manifest-set", {"files": _manifest([("start4.elf", b, "bmc")])}, key=admin
        )
    )
    err(rig.host.call("boot-report", serve, key=op), "conflict", "changed")
    serve["gen"] = 2
    err(rig.host.call("boot-report", serve, key=op), "conflict", "start4.elf changed")
    ok(rig.host.call("boot-report", {"event": "failed", "detail": "manifest changed"}, key=op))
    st = ok(rig.host.call("boot-status"))
    assert st["state"] == "failed" and st["counters"]["conflict"] == 2, st
    c = causes(rig)
    assert "boot_refused" in c and "usb_boot_failed" in c and "boot_manifest_changed" in c, c


def scenario_digest_mismatch_counted(root):
    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    ok(
        rig.host.call(
            "boot-report", {"event": "mismatch", "name": "kernel8.img", "detail": "sha"}, key=op
        )
    )
    ok(rig.host.call("boot-report", {"event": "refused", "name": "../x", "detail": ".."}, key=op))
    st = ok(rig.host.call("boot-status"))
    assert st["counters"]["digest_mismatch"] == 1 and st["counters"]["refused"] == 1, st
    assert "boot_digest_mismatch" in causes(rig) and "boot_file_refused" in causes(rig)
    err(rig.host.call("boot-report", {"event": "bogus"}, key=op), "invalid")
    ok(rig.host.call("metrics"))
    om = b"".join(rig.host.last_chunks).decode()
    assert 'bmc_boot_refusals_total{reason="digest_mismatch"} 1' in om, om
    assert 'bmc_usb_boot_state{bmc_usb_boot_state="idle"} 1' in om, om


def scenario_factory_reset_forgets(root):
    rig = fresh(root)
    k = keys_of(root)
    admin, op = admin_and_operator(rig)
    ok(
        rig.host.call(
            "inventory-set",
            {"url": "https://a.example/", "keys": [k["ed_pem"]], "generation": 1},
            key=admin,
        )
    )
    d = blob(100, 8)
    upload(rig, admin, d)
    ok(
        rig.host.call(
            "boot-manifest-set", {"files": _manifest([("config.txt", d, "bmc")])}, key=admin
        )
    )
    rig.board.button = True
    ok(rig.host.call("factory-reset"))
    rig.board.button = False
    assert ok(rig.host.call("inventory-get"))["generation"] == 0
    assert manifest_of(rig)[1] == []
    assert not [n for n in stored(rig) if n.startswith("boot/")]


def scenario_usb_boot_select_is_held_only_while_a_boot_runs(root):
    """Seeded random sequences of USB boots, relay reports (right, stale and wrong),
    power actions, manifest changes, BMC restarts and waits. After every step: no
    `internal` answer; boot-select is asserted exactly while a USB boot is waiting
    or serving; and the SBC powers up in USB boot mode only then. At the end, a
    boot left alone times out and lets go of the line."""
    import random

    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    ok(rig.host.call("config-set", {"key": "min_off_ms", "value": 0}, key=admin))
    files = [blob(700, 11), blob(900, 12)]
    for d in files:
        upload(rig, admin, d)
    entries = [("start4.elf", files[0], "bmc"), ("config.txt", files[1], "bmc")]
    gen = ok(rig.host.call("boot-manifest-set", {"files": _manifest(entries)}, key=admin))["gen"]
    listed = list(entries)
    rng = random.Random(5)
    running = ("waiting", "serving")
    seen = {}
    modes_seen = len(rig.sbc.boot_modes)
    for i in range(160):
        before = ok(rig.host.call("boot-status"))["state"]
        pick = rng.randrange(9)
        if pick == 0:
            r = rig.host.call("boot-usb", {"timeout_ms": rng.choice([1000, 3000])}, key=op)
        elif pick in (1, 2):
            name, data, _ = rng.choice(listed if rng.random() < 0.8 else entries + [("x", b"", "")])
            args = {
                "event": rng.choice(["check", "serve", "serve", "missing", "refused"]),
                "name": name,
                "gen": gen if rng.random() < 0.8 else gen + rng.choice([-1, 1]),
                "sha256": hx(data) if rng.random() < 0.8 else "ab" * 32,
            }
            r = rig.host.call("boot-report", args, key=op)
        elif pick == 3:
            event = rng.choice(["done", "failed", "mismatch", "bogus"])
            r = rig.host.call("boot-report", {"event": event, "detail": "step %d" % i}, key=op)
        elif pick == 4:
            action = rng.choice(
                ["On", "ForceOff", "PowerCycle", "ForceRestart", "GracefulShutdown"]
            )
            r = rig.host.call("power", {"action": action}, key=op)
        elif pick == 5:
            rng.shuffle(entries)
            chosen = entries[: rng.randrange(1, 3)]
            r = rig.host.call("boot-manifest-set", {"files": _manifest(chosen)}, key=admin)
            if r["ok"]:
                gen, listed = r["data"]["gen"], chosen
        elif pick == 6:
            rig.boot(reset_cause="watchdog")  # the BMC restarts; the SBC keeps its power
            r = {"ok": True}
        else:
            rig.run(rng.choice([20, 300, 1200, 3500]), step=20)
            r = {"ok": True}
        assert r["ok"] or r["error"] != "internal", (i, r)
        st = ok(rig.host.call("boot-status"))
        seen[st["state"]] = seen.get(st["state"], 0) + 1
        mode = rig.app.power.boot_mode
        assert (mode == "usb") == (st["state"] in running), (i, pick, st["state"], mode)
        new = rig.sbc.boot_modes[modes_seen:]
        modes_seen = len(rig.sbc.boot_modes)
        if before not in running and st["state"] not in running:
            assert "usb" not in new, (i, pick, before, st["state"], new)
    # every outcome came up, so the sequences went through the whole orchestration
    for state in ("idle", "waiting", "serving", "done", "failed", "timeout"):
        assert seen.get(state), (state, seen)
    if ok(rig.host.call("boot-status"))["state"] not in running:
        ok(rig.host.call("boot-usb", {"timeout_ms": 1000}, key=op))
    rig.run(1500, step=20)
    assert ok(rig.host.call("boot-status"))["state"] == "timeout"
    assert rig.app.power.boot_mode == "normal"


SCENARIOS = [
    scenario_usb_boot_done,
    scenario_usb_boot_timeout,
    scenario_manifest_changed_mid_boot,
    scenario_digest_mismatch_counted,
    scenario_factory_reset_forgets,
    scenario_usb_boot_select_is_held_only_while_a_boot_runs,
]


if __name__ == "__main__":
    run_main(SCENARIOS)

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


SCENARIOS = [
    scenario_usb_boot_done,
    scenario_usb_boot_timeout,
    scenario_manifest_changed_mid_boot,
    scenario_digest_mismatch_counted,
    scenario_factory_reset_forgets,
]


if __name__ == "__main__":
    run_main(SCENARIOS)

"""Power state machine scenarios: run by pytest on CPython and inside the
MicroPython unix port (tests/mpy/run_scenarios.py) against the real modules.

Each scenario is `def sc_name(root)`; `root` is a fresh, empty directory.
Plain asserts only (MicroPython has no pytest).
"""

from bmc import boardfile, power
from fakes import Rig

WRAP = 1 << 30


def board(**over):
    """A two-rail Pi-4-like test board with short timings."""
    raw = {
        "name": "test-board",
        "signals": {
            "run": {"pin": 6, "active": "low", "open_drain": True},
            "global_en": {"pin": 4, "active": "high", "open_drain": True},
            "boot_select": {"pin": 9, "active": "low", "open_drain": True},
            "shutdown_req": {"pin": 7, "active": "low", "open_drain": True},
            "halted": {"pin": 8, "active": "high", "pull": "down"},
            "status_led": {"pin": 25},
        },
        "rails": [
            {
                "name": "5v",
                "enable": {"pin": 2},
                "pgood": {"pin": 3, "pull": "up"},
                "pgood_timeout_ms": 300,
            },
            {
                "name": "3v3",
                "enable": "global_en",
                "pgood": {"pin": 5, "pull": "down"},
                "pgood_timeout_ms": 300,
            },
        ],
        "timing": {
            "rail_delay_ms": 20,
            "rail_off_delay_ms": 50,
            "pgood_off_timeout_ms": 500,
            "pgood_debounce_ms": 10,
            "graceful_timeout_ms": 2000,
            "min_off_ms": 1000,
            "reset_pulse_ms": 100,
            "button_press_ms": 100,
            "halt_settle_ms": 200,
            "boot_select_hold_ms": 300,
        },
        "restore_policy": "AlwaysOff",
    }
    for k in over:
        if k == "drop_signal":
            del raw["signals"][over[k]]
        else:
            raw[k] = over[k]
    return boardfile.validate(raw)


def powered_on(root, **kw):
    """A rig whose SBC is On (min off time already served)."""
    r = Rig(board(), root, **kw)
    r.run(1000)
    r.act("On")
    r.until_state("On", 3000)
    return r


def falls(r, pin, since):
    return [c[0] for c in r.changes(pin, since) if c[1] == 0]


def rises(r, pin, since):
    return [c[0] for c in r.changes(pin, since) if c[1] == 1]


# ---------------------------------------------------------------- sequencing


def sc_power_on_in_order(root):
    r = Rig(board(), root)
    assert r.pc.state == "Off"
    r.run(1000)
    t0 = r.clock.ticks_ms()
    r.act("On")
    assert r.pc.state == "PoweringOn"
    r.until_state("On", 3000)
    en5 = rises(r, r.rail_pin(0), t0)
    ge = rises(r, r.pin("global_en"), t0)
    assert len(en5) == 1 and len(ge) == 1
    # GLOBAL_EN released only after the 5V rail's power-good (50 ms) + delay
    assert r.clock.ticks_diff(ge[0], en5[0]) >= 50 + 20
    st = r.pc.status()
    assert st["state"] == "On" and st["cause"] == "remote"
    assert [x["pgood"] for x in st["rails"]] == [True, True]
    assert [x["enable"] for x in st["rails"]] == [True, True]
    assert r.sbc.power_ups == 1 and r.sbc.running
    assert r.persist.sbc_on is True
    kinds = [e["kind"] for e in r.events.entries()]
    assert "action" in kinds and "power" in kinds
    assert r.pc.actions_total["On"] == 1


def sc_sequencing_timeout(root):
    r = Rig(board(), root)
    r.sbc.never_pgood = [1]
    r.run(1000)
    r.act("On")
    t_on = r.clock.ticks_ms()
    r.until_state("Fault", 3000)
    st = r.pc.status()
    assert st["fault_cause"] == "sequencing_timeout"
    assert "3v3" in st["fault"], st["fault"]
    assert r.clock.ticks_diff(r.clock.ticks_ms(), t_on) >= 300
    # every enabled rail off, in reverse order: GLOBAL_EN low before 5V off
    f_ge = falls(r, r.pin("global_en"), t_on)
    f_5v = falls(r, r.rail_pin(0), t_on)
    assert len(f_ge) == 1 and len(f_5v) == 1
    assert st["rails"][0]["enable"] is False and st["rails"][1]["enable"] is False
    ev = r.events.entries()
    assert [e for e in ev if e["kind"] == "fault" and e["cause"] == "sequencing_timeout"]
    assert r.pc.faults_total == {"sequencing_timeout": 1}
    # the first rail timing out names that rail
    r2 = Rig(board(), root + "/b")
    r2.sbc.never_pgood = [0]
    r2.run(1000)
    r2.act("On")
    r2.until_state("Fault", 3000)
    assert "5v" in r2.pc.fault
    assert r2.wires.level(r2.pin("global_en")) == 0  # never released


def sc_fault_is_sticky(root):
    r = Rig(board(), root)
    r.sbc.never_pgood = [1]
    r.run(1000)
    r.act("On")
    r.until_state("Fault", 3000)
    t = r.clock.ticks_ms()
    r.sbc.never_pgood = []
    r.run(30000, step=50)
    assert r.pc.state == "Fault"
    assert rises(r, r.rail_pin(0), t) == []  # never powered again on its own
    e = r.refused("On")
    assert e.state == "Fault" and "ForceOff" in e.reason
    for a in (
        "GracefulShutdown",
        "GracefulRestart",
        "ForceRestart",
        "PowerCycle",
        "PushPowerButton",
    ):
        r.refused(a)
    r.act("ForceOff")  # explicit action clears the fault
    r.until_state("Off", 2000)
    assert r.pc.fault is None
    r.act("On")
    r.until_state("On", 3000)


def sc_pgood_lost_while_on(root):
    r = powered_on(root)
    t = r.clock.ticks_ms()
    r.sbc.dropped = [0]
    r.run_until(lambda: r.pc.state == "Fault", 200)
    assert r.pc.fault_cause == "pgood_lost" and r.pc.cause == "pgood_lost"
    assert "5v" in r.pc.fault
    f_ge = falls(r, r.pin("global_en"), t)
    f_5v = falls(r, r.rail_pin(0), t)
    assert f_ge and f_5v and r.clock.ticks_diff(f_5v[0], f_ge[0]) >= 0
    r.sbc.dropped = []
    r.run(20000, step=50)
    assert r.pc.state == "Fault"
    assert rises(r, r.rail_pin(0), t) == []
    assert r.persist.sbc_on is False  # LastState will not bring it back either


def sc_pgood_glitch_is_filtered(root):
    r = powered_on(root)
    r.sbc.dropped = [1]
    r.step(5)
    r.sbc.dropped = []
    r.run(100)
    assert r.pc.state == "On"


def sc_pgood_glitch_while_powering_on(root):
    # the next rail's inrush may dip the one before for a moment: filtered as while On
    r = Rig(board(), root)
    r.run(1000)
    r.act("On")
    r.run_until(lambda: r.pc._phase == "rail" and r.pc._rail == 1, 2000)
    r.sbc.dropped = [0]
    r.step(5)
    r.sbc.dropped = []
    r.until_state("On", 1000)
    assert r.pc.faults_total == {}
    # a lasting loss still ends the power-on, within the debounce time
    r2 = Rig(board(), root + "/b")
    r2.run(1000)
    r2.act("On")
    r2.run_until(lambda: r2.pc._phase == "rail" and r2.pc._rail == 1, 2000)
    r2.sbc.dropped = [0]
    r2.until_state("Fault", 30)
    assert r2.pc.fault_cause == "pgood_lost" and "5v" in r2.pc.fault, r2.pc.fault


def sc_pgood_stuck_after_off(root):
    r = powered_on(root)
    # the SBC keeps 3V3 from elsewhere: power-good never goes away
    r.wires.sbc[5] = 1
    real = r.sbc._drive

    def drive(s, asserted):
        if s["pin"] != 5:
            real(s, asserted)

    r.sbc._drive = drive
    r.act("ForceOff")
    r.until_state("Fault", 2000)
    assert r.pc.fault_cause == "pgood_stuck" and "3v3" in r.pc.fault


def sc_pgood_stuck_before_enable(root):
    # a power-good already asserted before its rail is enabled proves nothing: the
    # power-on stops there instead of taking it for the rail and going on
    for rail, pin in ((0, 3), (1, 5)):
        r = Rig(board(), root + "/%d" % rail)
        r.run(1000)
        r.wires.sbc[pin] = 1
        real = r.sbc._drive

        def drive(s, asserted, real=real, pin=pin):
            if s["pin"] != pin:
                real(s, asserted)

        r.sbc._drive = drive
        t = r.clock.ticks_ms()
        r.act("On")
        r.until_state("Fault", 2000)
        assert r.pc.fault_cause == "pgood_stuck", r.pc.fault
        assert r.defn["rails"][rail]["name"] in r.pc.fault, r.pc.fault
        assert rises(r, r.pin("global_en"), t) == []  # the PMIC never enabled
        assert r.wires.level(r.rail_pin(0)) == 0
        if rail == 0:
            assert rises(r, r.rail_pin(0), t) == []


# ---------------------------------------------------------------- actions


def sc_graceful_shutdown(root):
    r = powered_on(root)
    t = r.clock.ticks_ms()
    r.act("GracefulShutdown")
    assert r.pc.state == "ShuttingDown"
    req = r.changes(r.pin("shutdown_req"), t)
    assert [c[1] for c in req] == [0]  # pulled low (active low) ...
    r.run(150)
    req = r.changes(r.pin("shutdown_req"), t)
    assert [c[1] for c in req] == [0, 1]  # ... and released after the pulse
    assert r.clock.ticks_diff(req[1][0], req[0][0]) >= 100
    assert r.sbc.shutdown_requests == 1
    r.until_state("Off", 3000)
    assert r.pc.cause == "remote"
    assert r.sbc.power_losses == 1
    assert r.pc.forced_off_total == 0
    assert r.persist.sbc_on is False


def sc_graceful_timeout_forces_off(root):
    r = powered_on(root)
    r.sbc.halt_never = True
    t = r.clock.ticks_ms()
    r.act("GracefulShutdown")
    r.until_state("Off", 5000)
    assert r.clock.ticks_diff(r.clock.ticks_ms(), t) >= 2000
    assert r.pc.cause == "graceful_timeout"
    assert r.pc.forced_off_total == 1
    ev = r.events.entries()
    assert [e for e in ev if e["kind"] == "warning" and e["cause"] == "graceful_timeout"]


def sc_graceful_restart(root):
    r = powered_on(root)
    t = r.clock.ticks_ms()
    r.act("GracefulRestart")
    r.until_state("PoweringOn", 3000)
    r.until_state("On", 5000)
    f = falls(r, r.rail_pin(0), t)
    u = rises(r, r.rail_pin(0), t)
    assert len(f) == 1 and len(u) == 1
    assert r.clock.ticks_diff(u[0], f[0]) >= 1000  # minimum off time
    assert r.sbc.power_ups == 2
    assert r.persist.sbc_on is True


def sc_force_restart_pulses_run(root):
    r = powered_on(root)
    t = r.clock.ticks_ms()
    r.act("ForceRestart")
    assert r.pc.state == "On"
    r.run(500)
    run = r.changes(r.pin("run"), t)
    assert [c[1] for c in run] == [0, 1]
    assert r.clock.ticks_diff(run[1][0], run[0][0]) >= 100
    assert r.sbc.resets == 1 and r.sbc.power_losses == 0
    assert r.pc.state == "On"
    # a board without a RUN line refuses it
    r2 = Rig(board(drop_signal="run"), root + "/b")
    r2.run(1000)
    r2.act("On")
    r2.until_state("On", 3000)
    e = r2.refused("ForceRestart")
    assert "RUN" in e.reason and e.state == "On"


def sc_shutdown_during_run_pulse(root):
    # a shutdown asked for while ForceRestart's RUN pulse is out must not keep the
    # SBC in reset (deaf to the request until the graceful timeout forces it off)
    n = 0
    for action in ("GracefulShutdown", "GracefulRestart", "PushPowerButton"):
        n += 1
        r = powered_on(root + "/%d" % n)
        t = r.clock.ticks_ms()
        r.act("ForceRestart")
        r.step(20)
        e = r.refused(action)
        assert e.state == "On" and "pulse" in e.reason, e.reason
        r.run(200)
        run = r.changes(r.pin("run"), t)
        assert [c[1] for c in run] == [0, 1], (action, run)
        assert r.clock.ticks_diff(run[1][0], run[0][0]) <= 110, (action, run)
        r.act(action)  # accepted once the pulse is over
        assert r.pc.state == "ShuttingDown"
        r.run_until(lambda: r.pc.state in ("Off", "On") and r.sbc.shutdown_requests, 5000)
        assert r.pc.forced_off_total == 0


def sc_power_cycle_waits_min_off(root):
    r = powered_on(root)
    t = r.clock.ticks_ms()
    r.act("PowerCycle")
    assert r.pc.state == "PoweringOff"
    r.until_state("PoweringOn", 2000)
    r.until_state("On", 5000)
    f = falls(r, r.rail_pin(0), t)
    u = rises(r, r.rail_pin(0), t)
    assert len(f) == 1 and len(u) == 1
    assert r.clock.ticks_diff(u[0], f[0]) >= 1000
    assert r.sbc.power_losses == 1 and r.sbc.power_ups == 2


def sc_min_off_time_on_after_off(root):
    r = powered_on(root)
    t = r.clock.ticks_ms()
    r.act("ForceOff")
    r.until_state("Off", 2000)
    r.act("On")  # waits, is not refused
    assert r.pc.state == "PoweringOn"
    r.run(500)
    assert rises(r, r.rail_pin(0), t) == []
    r.until_state("On", 3000)
    f = falls(r, r.rail_pin(0), t)
    u = rises(r, r.rail_pin(0), t)
    assert r.clock.ticks_diff(u[0], f[0]) >= 1000
    # ForceOn waits the same way
    t = r.clock.ticks_ms()
    r.act("ForceOff")
    r.until_state("Off", 2000)
    r.act("ForceOn")
    r.until_state("On", 3000)
    f = falls(r, r.rail_pin(0), t)
    u = rises(r, r.rail_pin(0), t)
    assert r.clock.ticks_diff(u[0], f[0]) >= 1000


def sc_push_power_button(root):
    r = Rig(board(), root)
    r.run(1000)
    r.pc.request("PushPowerButton")
    r.until_state("On", 3000)
    assert r.pc.cause == "button"
    r.pc.request("PushPowerButton")
    assert r.pc.state == "ShuttingDown"
    r.until_state("Off", 3000)
    assert r.sbc.shutdown_requests == 1 and r.pc.cause == "button"


def _to_state(root, state):
    """A rig parked in `state` (stays there for at least 10 ms)."""
    if state == "Off":
        r = Rig(board(), root)
        r.run(1000)
        return r
    if state == "PoweringOn":
        r = Rig(board(), root)
        r.act("On")  # min off time from the BMC start keeps it here
        return r
    if state == "Fault":
        r = Rig(board(), root)
        r.sbc.never_pgood = [0]
        r.run(1000)
        r.act("On")
        r.until_state("Fault", 2000)
        return r
    r = powered_on(root)
    if state == "ShuttingDown":
        r.act("GracefulShutdown")
    elif state == "PoweringOff":
        r.act("ForceOff")
    return r


# state -> {action: resulting state, or None when refused}
EXPECTED = {
    "Off": {"On": "PoweringOn", "ForceOn": "PoweringOn", "PushPowerButton": "PoweringOn"},
    # no rail is up yet: off is immediate; a cycle goes straight back to waiting
    "PoweringOn": {"ForceOff": "Off", "PowerCycle": "PoweringOn"},
    "On": {
        "ForceOff": "PoweringOff",
        "GracefulShutdown": "ShuttingDown",
        "GracefulRestart": "ShuttingDown",
        "ForceRestart": "On",
        "PowerCycle": "PoweringOff",
        "PushPowerButton": "ShuttingDown",
    },
    "ShuttingDown": {"ForceOff": "PoweringOff"},
    "PoweringOff": {"PowerCycle": "PoweringOff"},
    "Fault": {"ForceOff": "Off", "ForceOn": "PoweringOn"},  # rails are already off
}


def sc_every_action_from_every_state(root):
    n = 0
    for state in ("Off", "PoweringOn", "On", "ShuttingDown", "PoweringOff", "Fault"):
        for action in power.ACTIONS:
            n += 1
            r = _to_state(root + "/%d" % n, state)
            assert r.pc.state == state, (state, r.pc.state)
            want = EXPECTED[state].get(action)
            if want is None:
                e = r.refused(action)
                assert e.state == state and e.action == action and e.reason
                assert r.pc.state == state
                assert r.pc.refused_total[action] == 1
            else:
                r.act(action)
                assert r.pc.state == want, (state, action, r.pc.state)
                assert r.pc.actions_total[action] == 1
    try:
        r.pc.request("Nmi")
        raise AssertionError("unknown action accepted")
    except ValueError as e:
        assert "Nmi" in str(e)


def sc_cancel_and_queue_in_powering_off(root):
    r = powered_on(root)
    r.act("PowerCycle")
    r.act("ForceOff")  # cancels the pending power-on
    r.until_state("Off", 2000)
    r.run(3000, step=20)
    assert r.pc.state == "Off"
    r.act("On")
    r.until_state("On", 3000)
    r.act("ForceOff")
    r.act("PowerCycle")  # turns the power-off into a cycle
    r.until_state("On", 5000)


# ---------------------------------------------------------------- OS halt


def sc_os_halt_by_itself(root):
    r = powered_on(root)
    t = r.clock.ticks_ms()
    r.sbc.self_halt()
    r.step()
    assert r.pc.state == "ShuttingDown" and r.pc.cause == "os_halt"
    r.run(100)
    assert r.sbc.power_losses == 0  # settle time first
    r.until_state("Off", 2000)
    assert r.pc.cause == "os_halt"
    assert r.clock.ticks_diff(falls(r, r.rail_pin(0), t)[0], t) >= 200
    r.run(10000, step=50)
    assert r.pc.state == "Off" and r.sbc.power_ups == 1
    # not even LastState brings it back after a BMC restart
    r.restart_bmc(settings={"restore_policy": "LastState"})
    r.run(5000, step=50)
    assert r.pc.state == "Off" and r.sbc.power_ups == 1


# ---------------------------------------------------------------- BMC start


def sc_bmc_restart_while_on_no_glitch(root):
    r = powered_on(root)
    t = r.clock.ticks_ms()
    ups, losses = r.sbc.power_ups, r.sbc.power_losses
    for cause in ("soft", "watchdog"):
        r.restart_bmc(cause)
        assert r.pc.state == "On"
        assert r.pc.cause == ("watchdog" if cause == "watchdog" else "bmc_start")
        # outputs were created at the adopted levels
        made = r.wires.created[r.created_from :]
        first = {}
        for pin, v, od in made:
            first[pin] = v
        assert first[r.rail_pin(0)] == 1
        assert first[r.pin("global_en")] == 1  # released = PMIC on
        assert first[r.pin("run")] == 1  # released = not in reset
        r.run(2000, step=20)
    # the SBC never saw a single change on any line
    for role in ("run", "global_en", "shutdown_req", "boot_select"):
        assert r.changes(r.pin(role), t) == [], role
    assert r.changes(r.rail_pin(0), t) == []
    assert r.sbc.power_ups == ups and r.sbc.power_losses == losses and r.sbc.resets == 0
    assert r.persist.boot_count == 3 and r.persist.reset_cause == "watchdog"
    # and the adopted machine still works
    r.sbc.dropped = [0]
    r.until_state("Fault", 200)


def sc_bmc_restart_while_off_no_glitch(root):
    r = Rig(board(), root)
    r.run(100)
    t = r.clock.ticks_ms()
    r.restart_bmc()
    r.run(2000)
    assert r.pc.state == "Off"
    assert r.changes(r.rail_pin(0), t) == []
    assert r.sbc.power_ups == 0


def sc_bmc_restart_during_shutdown(root):
    r = powered_on(root, halt_delay=1000)
    r.act("GracefulShutdown")
    r.run(200)
    r.restart_bmc()
    assert r.pc.state == "On"
    r.until_state("ShuttingDown", 2000)  # the SBC halts as it was asked to
    assert r.pc.cause == "os_halt"
    r.until_state("Off", 2000)


def sc_restore_policies(root):
    # AlwaysOn: a fresh board powers its SBC
    r = Rig(board(restore_policy="AlwaysOn"), root + "/on")
    assert r.pc.state == "PoweringOn" and r.pc.cause == "restore_policy"
    r.until_state("On", 3000)
    # AlwaysOff: stays off
    r = Rig(board(), root + "/off")
    r.run(3000, step=50)
    assert r.pc.state == "Off" and r.sbc.power_ups == 0
    # LastState, SBC was off: stays off
    r = Rig(board(restore_policy="LastState"), root + "/ls")
    r.run(3000, step=50)
    assert r.pc.state == "Off"
    # LastState, the rack lost power while the SBC was on
    r.act("On")
    r.until_state("On", 3000)
    r.wires.bmc_reset()
    r.sbc.cut = True
    r.sbc.update()
    r.clock.advance(100)  # nobody ticks: the BMC is down too
    r.sbc.cut = False
    r.boot("power_on")
    assert r.pc.state == "PoweringOn" and r.pc.cause == "restore_policy"
    ev = r.events.entries()
    assert [e for e in ev if e["cause"] == "power_lost_while_bmc_away"]
    r.until_state("On", 3000)
    # AlwaysOff after the same loss: recorded, stays off
    r.wires.bmc_reset()
    r.sbc.cut = True
    r.sbc.update()
    r.sbc.cut = False
    r.boot("power_on", {"restore_policy": "AlwaysOff"})
    r.wires.bmc_reset()
    r.boot("soft")  # the setting was stored; the loss was recorded once
    assert r.pc.state == "Off"
    lost = [
        e
        for e in r.events.entries()
        if e["cause"] == "power_lost_while_bmc_away" and e["kind"] == "warning"
    ]
    assert len(lost) == 2
    r.run(3000, step=50)
    assert r.pc.state == "Off"
    # AlwaysOn never turns a running SBC off or on again at BMC start
    r2 = powered_on(root + "/run")
    ups = r2.sbc.power_ups
    r2.restart_bmc(settings={"restore_policy": "AlwaysOn"})
    r2.restart_bmc()
    assert r2.pc.state == "On" and r2.sbc.power_ups == ups and r2.sbc.power_losses == 0


def sc_partial_power_at_start(root):
    r = powered_on(root)
    # the BMC goes away, and with it GLOBAL_EN goes low: only 5V is up
    r.wires.bmc_reset()
    r.wires.driven[r.pin("global_en")] = 0
    r.sbc.update()
    r.wires.driven[r.pin("global_en")] = None
    r.sbc.powered[1] = False
    r.sbc._drive(r.defn["rails"][1]["pgood"], False)
    r.boot("soft")
    assert r.pc.state == "Fault" and r.pc.fault_cause == "partial_power_at_start"
    assert r.wires.level(r.rail_pin(0)) == 0


# ---------------------------------------------------------------- boot mode


def sc_boot_mode_usb(root):
    r = Rig(board(), root)
    r.run(1000)
    pin = r.pin("boot_select")
    t = r.clock.ticks_ms()
    r.pc.set_boot_mode("usb")
    r.act("On")
    assert r.wires.level(pin) == 0  # nRPIBOOT pulled low before any rail
    r.until_state("On", 3000)
    assert r.sbc.boot_modes == ["usb"]
    t_on = r.clock.ticks_ms()
    r.run(500)
    ch = r.changes(pin, t)
    assert [c[1] for c in ch] == [0, 1]
    assert r.clock.ticks_diff(ch[1][0], t_on) >= 290
    assert r.clock.ticks_diff(rises(r, r.rail_pin(0), t)[0], ch[0][0]) >= 0
    # a RUN pulse in USB mode boots over USB again
    r.act("ForceRestart")
    r.run(600)
    assert r.sbc.boot_modes == ["usb", "usb"]
    assert r.wires.level(pin) == 1
    r.pc.set_boot_mode("normal")
    r.act("PowerCycle")
    r.until_state("On", 5000)
    assert r.sbc.boot_modes[-1] == "normal"
    try:
        r.pc.set_boot_mode("sd")
        raise AssertionError("bad mode accepted")
    except ValueError:
        pass
    r2 = Rig(board(drop_signal="boot_select"), root + "/b")
    try:
        r2.pc.set_boot_mode("usb")
        raise AssertionError("usb accepted without a boot-select line")
    except power.NotAllowed as e:
        assert "boot-select" in e.reason


# ---------------------------------------------------------------- time


def sc_tick_wrap(root):
    # start 0.5 s before the 2**30 wrap of a 32-bit port
    r = Rig(board(), root, start=WRAP - 500)
    r.act("On")
    t0 = r.clock.ticks_ms()
    r.until_state("On", 3000)
    assert r.clock.ticks_ms() < t0  # the clock really wrapped
    assert r.clock.ticks_diff(r.clock.ticks_ms(), t0) >= 1000  # min off held across it
    # a sequencing timeout that straddles the wrap fires on time, not at once/never
    r2 = Rig(board(), root + "/b", start=WRAP - 1200)
    r2.sbc.never_pgood = [1]
    r2.act("On")
    t1 = r2.clock.ticks_ms()
    r2.until_state("Fault", 3000)
    waited = r2.clock.ticks_diff(r2.clock.ticks_ms(), t1)
    assert 1000 + 50 + 20 + 300 <= waited <= 1000 + 50 + 20 + 300 + 30, waited
    # graceful timeout across the wrap
    r3 = Rig(board(), root + "/c", start=WRAP - 4000)
    r3.run(1000)
    r3.act("On")
    r3.until_state("On", 3000)
    r3.sbc.halt_never = True
    t2 = r3.clock.ticks_ms()
    r3.act("GracefulShutdown")
    r3.until_state("PoweringOff", 5000)
    d = r3.clock.ticks_diff(r3.clock.ticks_ms(), t2)
    assert 2000 <= d <= 2010, d
    assert r3.clock.uptime_ms() >= 3000
    assert r3.pc.ms_to_next_deadline() <= 50


WEEK = 7 * 86400 * 1000  # past 2**29 ms: a ticks_diff over it comes out negative


def sc_min_off_after_a_week(root):
    # An SBC left off (or in Fault) for a week has long served its minimum off time:
    # On must not wait in PoweringOn for days because ticks wrapped meanwhile.
    r = Rig(board(), root)  # adopted Off at BMC start
    r.clock.advance(WEEK)
    r.step()
    r.act("On")
    r.until_state("On", 3000)
    r.act("ForceOff")
    r.until_state("Off", 2000)
    r.clock.advance(WEEK)
    r.step()
    r.act("On")
    r.until_state("On", 3000)
    r.sbc.dropped = [1]
    r.until_state("Fault", 200)
    r.clock.advance(WEEK)
    r.step()
    r.sbc.dropped = []
    r.act("ForceOn")
    r.until_state("On", 3000)


def sc_since_last_change_after_weeks(root):
    # since_ms (in status, and sbc_power_last_change_seconds made from it) counts on
    # past 2**29 ms (where a ticks_diff turns negative) and 2**30 (where it is ~0 again).
    r = powered_on(root)
    s0 = r.pc.since_ms()
    u0 = r.clock.uptime_ms()
    for ms in (WEEK, WEEK):
        r.clock.advance(ms)
        r.step()
        assert r.pc.state == "On"
        since = s0 + r.clock.uptime_ms() - u0
        assert r.pc.since_ms() == since, (r.pc.since_ms(), since)
        st = r.pc.status()
        assert st["since_ms"] == since, st
        assert st["last_change"] == r.clock.uptime_ms() - since, st


def pi5_board():
    """Pi-5-like: a power button instead of RUN/boot-select, a watched-only rail."""
    return boardfile.validate(
        {
            "name": "pi5-test",
            "signals": {
                "power_button": {"pin": 9, "active": "low", "open_drain": True},
                "shutdown_req": {"pin": 7, "active": "low", "open_drain": True},
                "halted": {"pin": 8, "active": "high", "pull": "down"},
            },
            "rails": [
                {"name": "5v", "enable": {"pin": 2}, "pgood": {"pin": 3, "pull": "up"}},
                {"name": "3v3", "enable": None, "pgood": {"pin": 5, "pull": "down"}},
            ],
            "timing": {"min_off_ms": 500, "halt_settle_ms": 100, "boot_select_hold_ms": 300},
        }
    )


def sc_pi5_power_button_and_watched_rail(root):
    r = Rig(pi5_board(), root)
    r.run(500)
    r.pc.set_boot_mode("usb")  # held power button at power-on selects USB boot
    t = r.clock.ticks_ms()
    r.act("On")
    r.until_state("On", 3000)
    assert r.sbc.boot_modes == ["usb"]
    r.run(400)
    assert [c[1] for c in r.changes(9, t)] == [0, 1]  # held, then released
    r.refused("ForceRestart")  # no RUN line
    r.pc.set_boot_mode("normal")
    t = r.clock.ticks_ms()
    r.pc.request("PushPowerButton")  # presses the Pi's own button
    assert r.pc.state == "ShuttingDown"
    r.until_state("Off", 3000)
    assert [c[1] for c in r.changes(9, t)] == [0, 1]
    assert r.changes(7, t) == []  # shutdown_req untouched
    assert r.sbc.shutdown_requests == 1
    # the watched rail dropping while On is a fault like any other
    r.act("On")
    r.until_state("On", 3000)
    r.sbc.dropped = [1]
    r.until_state("Fault", 200)
    assert "3v3" in r.pc.fault


SCENARIOS = [
    sc_power_on_in_order,
    sc_sequencing_timeout,
    sc_fault_is_sticky,
    sc_pgood_lost_while_on,
    sc_pgood_glitch_is_filtered,
    sc_pgood_glitch_while_powering_on,
    sc_pgood_stuck_after_off,
    sc_pgood_stuck_before_enable,
    sc_graceful_shutdown,
    sc_graceful_timeout_forces_off,
    sc_graceful_restart,
    sc_force_restart_pulses_run,
    sc_shutdown_during_run_pulse,
    sc_power_cycle_waits_min_off,
    sc_min_off_time_on_after_off,
    sc_push_power_button,
    sc_every_action_from_every_state,
    sc_cancel_and_queue_in_powering_off,
    sc_os_halt_by_itself,
    sc_bmc_restart_while_on_no_glitch,
    sc_bmc_restart_while_off_no_glitch,
    sc_bmc_restart_during_shutdown,
    sc_restore_policies,
    sc_partial_power_at_start,
    sc_boot_mode_usb,
    sc_tick_wrap,
    sc_min_off_after_a_week,
    sc_since_last_change_after_weeks,
    sc_pi5_power_button_and_watched_rail,
]

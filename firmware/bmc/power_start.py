"""Adopting the SBC's state at BMC start (`PowerController.start`).

Run once, at start: loaded for it and dropped after (`bmc.ondemand`), as its code
would otherwise stay in the heap for good. The outputs are created only once the
inputs have been read, at the level that matches what the SBC is doing, so an
SBC that is on stays on through a BMC restart; then the restore policy applies.
"""

from bmc.power import OFF, ON


def start(pc):
    lines = pc._lines
    pg = lines.pgood_all()
    halted = lines.halted.get()
    n_on = 0
    for p in pg:
        if p:
            n_on += 1
    persist = pc._persist
    rc = persist.reset_cause
    adopt_cause = "watchdog" if rc == "watchdog" else "bmc_start"
    # Outputs take the level that matches what the SBC is doing right now.
    lines.start_outputs(pg, status_on=(n_on == pc._n))
    pc._bs_line = lines.boot_select
    if pc._bs_line is None:
        pc._bs_line = lines.power_button
    pc.last_change = pc._clock.uptime_ms()
    if n_on == pc._n:
        pc._enter(ON, adopt_cause, "adopted: all rails have power-good")
        persist.set_sbc_on(True)
        if halted:
            pc._os_halt("halted already asserted at BMC start")
        return
    if n_on == 0:
        pc._off_since = pc._clock.uptime_ms()
        was_on = persist.sbc_on
        if was_on:
            pc._enter(OFF, "power_lost_while_bmc_away", "SBC was on when the BMC went down")
            pc._events.add("warning", "power_lost_while_bmc_away", "SBC found off at BMC start")
        else:
            pc._enter(OFF, adopt_cause, "adopted: no rail has power-good")
        policy = pc.config.value("restore_policy")
        if policy == "AlwaysOn" or (policy == "LastState" and was_on):
            pc._begin_on("restore_policy")
        else:
            persist.set_sbc_on(False)
        return
    up = [pc._names[i] for i in range(pc._n) if pg[i]]
    detail = "rails up at BMC start: " + ",".join(up)
    if persist.sbc_on:
        pc._enter(ON, adopt_cause, detail)
        pc._fault("partial_power_at_start", detail)
    else:
        pc._enter(ON, adopt_cause, detail)
        pc._begin_off("partial_power_at_start")

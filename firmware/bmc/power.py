"""The power state machine of one SBC.

    pc = PowerController(defn, cfg, lines, clock, events, persist)
    pc.start()                  # adopt the SBC's state from power-good, THEN create
                                # the outputs (no glitch), then apply the restore policy
    loop: pc.tick(); sleep at most pc.ms_to_next_deadline()
    pc.request("GracefulShutdown", cause="remote")   # NotAllowed if refused
    pc.set_boot_mode("usb"); pc.status()

The LEDs belong to `bmc.indicators`; `start()` only gives the status LED its
first level (lit when the SBC is found on).

`defn` is `bmc.boardfile` output, `cfg` a `bmc.config.Config`, `lines` a
`bmc.lines.Lines` built on the board (outputs not yet started), `clock` a
`bmc.clock.Clock`, `events` a `bmc.events.EventLog`, `persist` a
`bmc.persist.BmcState`.

States: Off, PoweringOn, On, ShuttingDown, PoweringOff, Fault. Actions use
Redfish's ResetType names (ACTIONS). Causes of transitions: "remote",
"button", "restore_policy", "bmc_start", "watchdog" (adopted after a watchdog
reset of the BMC), "pgood_lost", "sequencing_timeout", "pgood_stuck",
"graceful_timeout", "os_halt", "power_lost_while_bmc_away",
"partial_power_at_start" (or whatever cause the caller passes to request()).

Rules it keeps: rails go on in order, each waiting for its power-good within
its timeout (one already up before its enable is a fault), and off in reverse
order; a fault switches every rail off and stays in Fault until ForceOff or
ForceOn; the minimum off time holds between any off and the next on (a request
waits in PoweringOn, it is not refused);
the SBC is never powered on by the firmware on its own except by the restore
policy at BMC start (AlwaysOn at every BMC start, also after the SBC halted by
itself; LastState never after that).
"""

from bmc import ondemand

OFF = "Off"
POWERING_ON = "PoweringOn"
ON = "On"
SHUTTING_DOWN = "ShuttingDown"
POWERING_OFF = "PoweringOff"
FAULT = "Fault"
STATES = (OFF, POWERING_ON, ON, SHUTTING_DOWN, POWERING_OFF, FAULT)

ACTIONS = (
    "On",
    "ForceOff",
    "GracefulShutdown",
    "GracefulRestart",
    "ForceRestart",
    "PowerCycle",
    "PushPowerButton",
    "ForceOn",
)
BOOT_MODES = ("normal", "usb")

POLL_ON_MS = 50  # how often inputs are read while the SBC has power
POLL_BUSY_MS = 10  # ... while a sequence runs
IDLE_MS = 1000


class NotAllowed(Exception):
    """A refused action: `.action`, `.state` (current state), `.reason`."""

    def __init__(self, action, state, reason):
        super().__init__("%s not allowed in state %s: %s" % (action, state, reason))
        self.action = action
        self.state = state
        self.reason = reason


def _inc(d, k):
    d[k] = d.get(k, 0) + 1


class PowerController:
    def __init__(self, defn, cfg, lines, clock, events, persist):
        self._defn = defn
        self.config = cfg
        self._lines = lines
        self._clock = clock
        self._events = events
        self._persist = persist
        self._n = len(defn["rails"])
        self._names = [r["name"] for r in defn["rails"]]
        self.state = None  # until start()
        # uptime_ms, not ticks: ticks wrap every 2**30 ms (~12 days) on the RP2040,
        # and an SBC stays in one state for weeks
        self.last_change = clock.uptime_ms()
        self.cause = None
        self.fault = None  # detail of the current fault
        self.fault_cause = None
        self.boot_mode = "normal"
        # Sequencer.
        self._phase = None
        self._rail = 0
        self._dl = None  # ticks of the current step's deadline, or None
        self._pending_on = False
        self._off_since = None  # uptime_ms (not ticks: an SBC stays off for weeks)
        self._shutdown_cause = None
        self._lost_since = None
        self._grace_until = None
        self._pulse_line = None
        self._pulse_end = 0
        self._bs_line = None
        self._bs_release = None
        # Counters for metrics.
        self.actions_total = {}  # accepted actions by name
        self.refused_total = {}  # refused actions by name
        self.faults_total = {}  # faults by cause
        self.transitions_total = {}  # state changes by cause
        self.forced_off_total = 0  # graceful shutdowns that timed out

    # ---- start -----------------------------------------------------------

    def start(self):
        """Adopt the SBC's state (inputs only), create outputs, apply the restore policy.
        Run once: its code (bmc.power_start) is loaded for it and dropped after."""
        if self.state is not None:
            raise RuntimeError("already started")
        ondemand.call("power_start", "start", self)

    # ---- requests --------------------------------------------------------

    def request(self, action, cause=None):
        """Perform a Redfish ResetType action, or raise NotAllowed / ValueError."""
        if action not in ACTIONS:
            raise ValueError("unknown action %r (known: %s)" % (action, ", ".join(ACTIONS)))
        if self.state is None:
            raise NotAllowed(action, "Starting", "the BMC has not adopted the SBC state yet")
        if cause is None:
            cause = "button" if action == "PushPowerButton" else "remote"
        try:
            self._do(action, cause)
        except NotAllowed:
            _inc(self.refused_total, action)
            raise
        _inc(self.actions_total, action)
        self._events.add("action", cause, action)
        self.tick()

    def _refuse(self, action, reason):
        raise NotAllowed(action, self.state, reason)

    def _fault_reason(self):
        return "in Fault (%s): clear it with ForceOff, or use ForceOn" % self.fault

    def _do(self, action, cause):
        st = self.state
        if action == "On" or action == "ForceOn":
            if st == OFF or (st == FAULT and action == "ForceOn"):
                self._begin_on(cause)
            elif st == FAULT:
                self._refuse(action, self._fault_reason())
            elif st == ON:
                self._refuse(action, "already On")
            elif st == POWERING_ON:
                self._refuse(action, "already powering on")
            else:
                self._refuse(action, "a power-off is in progress; wait until Off")
        elif action == "ForceOff":
            if st == OFF:
                self._refuse(action, "already Off")
            elif st == POWERING_OFF:
                if not self._pending_on:
                    self._refuse(action, "already powering off")
                self._pending_on = False
                self._persist.set_sbc_on(False)
            else:
                self._begin_off(cause)
        elif action == "GracefulShutdown" or action == "GracefulRestart":
            if st != ON:
                self._refuse(action, self._only_on(st))
            if self._pulse_line is not None:  # RUN: the SBC is in reset, deaf to the request
                self._refuse(action, "a pulse is in progress")
            self._begin_shutdown(cause, action == "GracefulRestart", self._lines.shutdown_req)
        elif action == "ForceRestart":
            if st != ON:
                self._refuse(action, self._only_on(st))
            if self._lines.run is None:
                self._refuse(action, "this board has no RUN line")
            if self._pulse_line is not None:
                self._refuse(action, "a pulse is in progress")
            now = self._clock.ticks_ms()
            width = self.config.value("reset_pulse_ms")
            if self.boot_mode == "usb" and self._bs_line is not None:
                self._bs_line.set(True)
                self._bs_release = self._clock.ticks_add(
                    now, width + self.config.value("boot_select_hold_ms")
                )
            self._pulse(self._lines.run, width)
            tmo = 0
            for i in range(self._n):
                t = self.config.pgood_timeout_ms(i)
                if t > tmo:
                    tmo = t
            self._grace_until = self._clock.ticks_add(now, width + tmo)
            self._events.add("power", cause, "ForceRestart: RUN pulse %d ms" % width)
        elif action == "PowerCycle":
            if st == ON or st == POWERING_ON:
                self._begin_off(cause, then_on=True)
            elif st == POWERING_OFF:
                if self._pending_on:
                    self._refuse(action, "a power cycle is already in progress")
                self._pending_on = True
                self._persist.set_sbc_on(True)
            elif st == OFF:
                self._refuse(action, "the system is Off; use On")
            elif st == FAULT:
                self._refuse(action, self._fault_reason())
            else:
                self._refuse(action, "a shutdown is in progress; use ForceOff")
        elif action == "PushPowerButton":
            if st == OFF:
                self._begin_on(cause)
            elif st == ON:
                if self._pulse_line is not None:
                    self._refuse(action, "a pulse is in progress")
                line = self._lines.power_button
                if line is None:
                    line = self._lines.shutdown_req
                self._begin_shutdown(cause, False, line)
            elif st == FAULT:
                self._refuse(action, self._fault_reason())
            else:
                self._refuse(action, "the button does nothing while " + st)

    def _only_on(self, st):
        if st == SHUTTING_DOWN:
            return "already shutting down"
        if st == FAULT:
            return self._fault_reason()
        return "only possible while On"

    def set_boot_mode(self, mode):
        """Boot mode "normal" or "usb": how boot-select is held at the next power-on / RUN pulse."""
        if mode not in BOOT_MODES:
            raise ValueError("boot mode must be one of %s, got %r" % (", ".join(BOOT_MODES), mode))
        sigs = self._defn["signals"]
        if mode == "usb" and "boot_select" not in sigs and "power_button" not in sigs:
            raise NotAllowed("set_boot_mode", self.state, "this board has no boot-select line")
        if mode != self.boot_mode:
            self.boot_mode = mode
            self._events.add("config", "boot_mode", mode)

    # ---- transitions -----------------------------------------------------

    def _enter(self, state, cause, detail=""):
        old = self.state
        self.state = state
        self.cause = cause
        self.last_change = self._clock.uptime_ms()
        _inc(self.transitions_total, cause)
        self._events.add(
            "power", cause, "%s->%s%s" % (old or "Start", state, (": " + detail) if detail else "")
        )

    def _deadline(self, ms):
        self._dl = self._clock.ticks_add(self._clock.ticks_ms(), ms)

    def _due(self, now):
        return self._dl is not None and self._clock.ticks_diff(now, self._dl) >= 0

    def _pulse(self, line, ms):
        line.set(True)
        self._pulse_line = line
        self._pulse_end = self._clock.ticks_add(self._clock.ticks_ms(), ms)

    def _end_pulse(self):
        if self._pulse_line is not None:
            self._pulse_line.set(False)
            self._pulse_line = None

    def _release_aux(self):
        """Deassert every auxiliary output (pulses, boot-select, RUN)."""
        self._end_pulse()
        if self._bs_line is not None:
            self._bs_line.set(False)
        self._bs_release = None
        if self._lines.run is not None:
            self._lines.run.set(False)
        self._grace_until = None

    def _rails_off_now(self):
        en = self._lines.enables
        for i in range(self._n - 1, -1, -1):
            if en[i] is not None:
                en[i].set(False)

    def _fault(self, cause, detail):
        self._rails_off_now()
        self._release_aux()
        self._dl = None
        self._phase = None
        self._pending_on = False
        self._lost_since = None
        self._off_since = self._clock.uptime_ms()
        self.fault = detail
        self.fault_cause = cause
        _inc(self.faults_total, cause)
        self._events.add("fault", cause, detail)
        self._persist.set_sbc_on(False)
        self._enter(FAULT, cause, detail)

    def _begin_on(self, cause):
        self._persist.set_sbc_on(True)
        self.fault = None
        self.fault_cause = None
        self._pending_on = False
        self._lost_since = None
        self._enter(POWERING_ON, cause)
        if self.boot_mode == "usb" and self._bs_line is not None:
            self._bs_line.set(True)
        self._bs_release = None
        self._phase = "wait_off"
        self._dl = None
        if self._off_since is not None:
            left = self._off_since + self.config.value("min_off_ms") - self._clock.uptime_ms()
            if left > 0:
                self._deadline(left)

    def _begin_shutdown(self, cause, restart, line):
        self._enter(SHUTTING_DOWN, cause, "restart" if restart else "")
        self._shutdown_cause = cause
        self._pending_on = restart
        if not restart:
            self._persist.set_sbc_on(False)
        self._pulse(line, self.config.value("button_press_ms"))
        self._phase = "wait_halt"
        self._deadline(self.config.value("graceful_timeout_ms"))

    def _os_halt(self, detail):
        self._persist.set_sbc_on(False)
        self._pending_on = False
        self._shutdown_cause = "os_halt"
        self._enter(SHUTTING_DOWN, "os_halt", detail)
        self._phase = "settle"
        self._deadline(self.config.value("halt_settle_ms"))

    def _begin_off(self, cause, then_on=False):
        self._release_aux()
        self._pending_on = then_on
        if not then_on:
            self._persist.set_sbc_on(False)
        self.fault = None
        self.fault_cause = None
        self._lost_since = None
        self._enter(POWERING_OFF, cause, "then on" if then_on else "")
        self._phase = "rails"
        self._rail = self._n - 1
        self._dl = None

    def _off_done(self, now):
        self._off_since = self._clock.uptime_ms()
        self._dl = None
        self._phase = None
        if self._pending_on:
            self._begin_on(self.cause)
        else:
            self._enter(OFF, self.cause)

    # ---- the machine -----------------------------------------------------

    def tick(self):
        """Advance the machine; cheap, never blocks. Call it every loop pass."""
        if self.state is None:
            return
        clock = self._clock
        now = clock.ticks_ms()
        if self._pulse_line is not None and clock.ticks_diff(now, self._pulse_end) >= 0:
            self._end_pulse()
        if self._bs_release is not None and clock.ticks_diff(now, self._bs_release) >= 0:
            self._bs_line.set(False)
            self._bs_release = None
        st = self.state
        if st == ON:
            self._tick_on(now)
        elif st == POWERING_ON:
            self._tick_powering_on(now)
        elif st == SHUTTING_DOWN:
            self._tick_shutting_down(now)
        elif st == POWERING_OFF:
            self._tick_powering_off(now)

    def _first_lost(self, upto):
        pgoods = self._lines.pgoods
        for i in range(upto):
            if not pgoods[i].get():
                return i
        return -1

    def _tick_on(self, now):
        lines = self._lines
        if lines.halted.get():
            self._os_halt("halted asserted without a request")
            return
        if self._grace_until is not None:
            if self._lines.run is not None and self._pulse_line is self._lines.run:
                return
            if self._clock.ticks_diff(now, self._grace_until) < 0:
                if self._first_lost(self._n) < 0:
                    self._grace_until = None  # everything is back
                return
            self._grace_until = None
        lost = self._first_lost(self._n)
        if lost < 0:
            self._lost_since = None
            return
        if self._lost_since is None:
            self._lost_since = now
        if self._clock.ticks_diff(now, self._lost_since) >= self.config.value("pgood_debounce_ms"):
            self._fault("pgood_lost", "rail %s lost power-good while On" % self._names[lost])

    def _tick_powering_on(self, now):
        while True:
            ph = self._phase
            if ph == "wait_off" or ph == "delay":
                if self._dl is not None and not self._due(now):
                    return
                if ph == "wait_off":
                    self._rail = 0
                else:
                    self._rail += 1
                self._phase = "rail"
                en = self._lines.enables[self._rail]
                if en is not None:
                    if self._lines.pgoods[self._rail].get():  # stuck, or fed from elsewhere
                        self._fault(
                            "pgood_stuck",
                            "rail %s has power-good before its enable" % self._names[self._rail],
                        )
                        return
                    en.set(True)
                self._deadline(self.config.pgood_timeout_ms(self._rail))
            elif ph == "rail":
                i = self._rail
                lost = self._first_lost(i)
                if lost >= 0:  # debounced as while On: the next rail's inrush may dip it
                    if self._lost_since is None:
                        self._lost_since = now
                    if self._clock.ticks_diff(now, self._lost_since) >= self.config.value(
                        "pgood_debounce_ms"
                    ):
                        self._fault(
                            "pgood_lost",
                            "rail %s lost power-good while rail %s came up"
                            % (self._names[lost], self._names[i]),
                        )
                    return
                self._lost_since = None
                if not self._lines.pgoods[i].get():
                    if self._due(now):
                        self._fault(
                            "sequencing_timeout",
                            "rail %s: no power-good within %d ms"
                            % (self._names[i], self.config.pgood_timeout_ms(i)),
                        )
                    return
                if i == self._n - 1:
                    self._dl = None
                    self._phase = None
                    if self._bs_line is not None and self.boot_mode == "usb":
                        self._bs_release = self._clock.ticks_add(
                            now, self.config.value("boot_select_hold_ms")
                        )
                    self._enter(ON, self.cause)
                    return
                self._phase = "delay"
                self._deadline(self.config.value("rail_delay_ms"))
            else:
                return

    def _tick_shutting_down(self, now):
        if self._phase == "wait_halt":
            if self._lines.halted.get():
                self._phase = "settle"
                self._deadline(self.config.value("halt_settle_ms"))
                self._events.add("power", self._shutdown_cause, "SBC halted; settling")
            elif self._first_lost(self._n) >= 0:
                self._begin_off(self._shutdown_cause, self._pending_on)
                return
            elif self._due(now):
                self.forced_off_total += 1
                ms = self.config.value("graceful_timeout_ms")
                self._events.add(
                    "warning", "graceful_timeout", "no halt within %d ms: forcing off" % ms
                )
                self._begin_off("graceful_timeout", self._pending_on)
                return
        if self._phase == "settle" and self._due(now):
            self._begin_off(self._shutdown_cause, self._pending_on)

    def _tick_powering_off(self, now):
        if self._phase == "rails":
            if self._dl is not None and not self._due(now):
                return
            en = self._lines.enables
            while self._rail >= 0:
                i = self._rail
                self._rail -= 1
                if en[i] is not None and en[i].get():
                    en[i].set(False)
                    delay = self.config.value("rail_off_delay_ms")
                    if self._rail >= 0 and delay > 0:
                        self._deadline(delay)
                        return
            self._phase = "wait_pgood"
            self._deadline(self.config.value("pgood_off_timeout_ms"))
        if self._phase == "wait_pgood":
            pgoods = self._lines.pgoods
            for i in range(self._n):
                if pgoods[i].get():
                    if self._due(now):
                        self._fault(
                            "pgood_stuck",
                            "rail %s still has power-good %d ms after off"
                            % (self._names[i], self.config.value("pgood_off_timeout_ms")),
                        )
                    return
            self._off_done(now)

    def ms_to_next_deadline(self):
        """How long the main loop may sleep before the next tick() is due."""
        st = self.state
        if st is None:
            return 0
        clock = self._clock
        now = clock.ticks_ms()
        if st == OFF:
            best = IDLE_MS
        elif st == FAULT:
            best = IDLE_MS
        elif st == ON:
            best = POLL_ON_MS
        else:
            best = POLL_BUSY_MS
        if self._pulse_line is not None:
            best = self._sooner(best, self._pulse_end, now)
        if self._dl is not None:  # two tests, not a loop over a tuple built every pass
            best = self._sooner(best, self._dl, now)
        if self._bs_release is not None:
            best = self._sooner(best, self._bs_release, now)
        return best if best > 0 else 0

    def _sooner(self, best, t, now):
        d = self._clock.ticks_diff(t, now)
        return d if d < best else best

    # ---- read-out --------------------------------------------------------

    def status(self):
        """The power state as a dict (`fill`, and since_ms)."""
        st = self.fill()
        st["since_ms"] = self.since_ms()
        return st

    def fill(self, st=None):
        """The power state as a dict, since_ms apart. `st`, a dict this filled before,
        is refilled in place, its rail dicts too: a status reply allocates no new
        ones (a dict grown key by key reallocates its table as it grows)."""
        if st is None:
            st = {"rails": [{} for _ in range(self._n)]}
        lines = self._lines
        i = 0
        while i < self._n:  # not `for`: its iterator would put this frame on the heap
            r = st["rails"][i]
            r["name"] = self._names[i]
            r["enable"] = lines.enables[i].get() if lines.enables[i] is not None else None
            r["pgood"] = lines.pgoods[i].get()
            i += 1
        st["state"] = self.state
        st["phase"] = self._phase
        st["last_change"] = self.last_change
        st["cause"] = self.cause
        st["fault"] = self.fault
        st["fault_cause"] = self.fault_cause
        st["halted"] = lines.halted.get()
        st["restore_policy"] = self.config.value("restore_policy")
        st["boot_mode"] = self.boot_mode
        st["pending_on"] = self._pending_on
        return st

    def since_ms(self):
        """Milliseconds since the last state change."""
        return self._clock.uptime_ms() - self.last_change

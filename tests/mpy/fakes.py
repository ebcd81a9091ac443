"""In-memory board, wires and SBC for the power scenarios (MicroPython + CPython).

`Wires` is what sits between the RP2040 and the SBC: it resolves each pin's
level from what the BMC drives, what the SBC drives and the pulls, and records
every level the SBC sees (`history[pin]` = [(ticks, level), ...]).
`FakeBoard` implements the board interface over it; `FakeSBC` reacts to the
wires (rails, power-good after a delay, halted after a shutdown request, RUN
resets) and injects faults. `Rig` ties them to a ManualClock and the real
firmware modules, and can restart "the BMC" while the SBC keeps running.
"""

from bmc import config, events, lines, persist, power, store
from bmc.clock import ManualClock


class Wires:
    def __init__(self, defn, clock):
        self.clock = clock
        self.driven = {}  # pin -> raw level driven by the BMC (None = released/input)
        self.sbc = {}  # pin -> level driven by the SBC
        self.hold = {}  # self-holding push-pull enables keep their level when undriven
        self.pullup = {}  # open-drain lines are pulled up on the SBC side
        self.history = {}
        self.created = []  # (pin, first raw value, open_drain) per board.output call
        for r in defn["rails"]:
            en = r["enable"]
            if en is not None:
                if en["open_drain"]:
                    self.pullup[en["pin"]] = True
                else:
                    self.hold[en["pin"]] = 0
        for role in defn["signals"]:
            s = defn["signals"][role]
            if s["output"] and s["open_drain"]:
                self.pullup[s["pin"]] = True
        self.last = {}

    def level(self, pin):
        d = self.driven.get(pin)
        if d is not None:
            return d
        if pin in self.sbc:
            return self.sbc[pin]
        if pin in self.hold:
            return self.hold[pin]
        if pin in self.pullup:
            return 1
        return 0

    def settle(self):
        """Record changes of every level the SBC can see."""
        now = self.clock.ticks_ms()
        pins = list(self.driven.keys()) + list(self.hold.keys()) + list(self.pullup.keys())
        for pin in pins:
            lv = self.level(pin)
            if pin in self.hold:
                self.hold[pin] = lv
            if self.last.get(pin) != lv:
                self.last[pin] = lv
                h = self.history.get(pin)
                if h is None:
                    h = []
                    self.history[pin] = h
                h.append((now, lv))

    def bmc_reset(self):
        """The RP2040 resets: every pad becomes an input."""
        for pin in list(self.driven.keys()):
            self.driven[pin] = None
        self.settle()


class _In:
    def __init__(self, wires, pin, pull):
        self.w = wires
        self.pin = pin
        self.pull = pull

    def value(self):
        w = self.w
        if self.pin in w.sbc:
            return w.sbc[self.pin]
        return 1 if self.pull == "up" else 0


class _Out:
    def __init__(self, wires, pin, od):
        self.w = wires
        self.pin = pin
        self.od = od

    def value(self, v=None):
        if v is None:
            return self.w.level(self.pin)
        self.w.driven[self.pin] = None if (self.od and v) else (1 if v else 0)
        self.w.settle()


class FakeBoard:
    def __init__(self, wires, clock, root, reset_cause="power_on"):
        self.wires = wires
        self.clock = clock
        self.root = root
        self._rc = reset_cause
        self.pins = {}

    def input(self, pin, pull):
        if pin in self.pins:
            raise ValueError("pin %d configured twice" % pin)
        self.pins[pin] = "in"
        return _In(self.wires, pin, pull)

    def output(self, pin, value, open_drain):
        if pin in self.pins:
            raise ValueError("pin %d configured twice" % pin)
        self.pins[pin] = "out"
        self.wires.created.append((pin, value, open_drain))
        o = _Out(self.wires, pin, open_drain)
        o.value(value)
        return o

    def reset_cause(self):
        return self._rc


class FakeSBC:
    """A Raspberry-Pi-like SBC at the far end of the wires."""

    def __init__(self, wires, defn, clock, pg_delays=None, halt_delay=300):
        self.w = wires
        self.defn = defn
        self.clock = clock
        n = len(defn["rails"])
        self.n = n
        self.pg_delays = pg_delays or [50] * n
        self.halt_delay = halt_delay
        self.powered = [False] * n
        self.powered_at = [0] * n
        self.never_pgood = []  # rail indices whose pgood never rises
        self.dropped = []  # rail indices whose pgood is forced low
        self.halt_never = False
        self.running = False
        self.halted = False
        self._halt_at = None
        self.power_ups = 0
        self.power_losses = 0
        self.resets = 0
        self.shutdown_requests = 0
        self.boot_modes = []  # "usb"/"normal" seen at each power-up and RUN release
        self._in_reset = False
        self._req_was = False
        self._pb_was = False
        self.cut = False  # external power gone (e.g. the rack lost mains)
        sig = defn["signals"]
        self._sig = sig
        self.update()

    def _asserted(self, s):
        return (self.w.level(s["pin"]) == 1) == s["active_high"]

    def _drive(self, s, asserted):
        self.w.sbc[s["pin"]] = 1 if (asserted == s["active_high"]) else 0

    def _boot_mode(self):
        s = self._sig.get("boot_select") or self._sig.get("power_button")
        return "usb" if (s is not None and self._asserted(s)) else "normal"

    def update(self):
        now = self.clock.ticks_ms()
        self.w.settle()
        prev_all = all(self.powered)
        was_running = self.running  # a button held while power comes up is no press
        for i in range(self.n):
            r = self.defn["rails"][i]
            up_before = i == 0 or self.powered[i - 1]
            if r["enable"] is None:
                on = up_before
            else:
                on = up_before and self._asserted(r["enable"])
            if self.cut:
                on = False
                for pin in self.w.hold:  # a self-holding enable loses its latch
                    self.w.hold[pin] = 0
            if on and not self.powered[i]:
                self.powered_at[i] = now
            self.powered[i] = on
        for i in range(self.n):
            r = self.defn["rails"][i]
            pg = (
                self.powered[i]
                and i not in self.never_pgood
                and i not in self.dropped
                and self.clock.ticks_diff(now, self.powered_at[i]) >= self.pg_delays[i]
            )
            self._drive(r["pgood"], pg)
        now_all = all(self.powered)
        if now_all and not prev_all:
            self.power_ups += 1
            self.running = True
            self.halted = False
            self._halt_at = None
            self.boot_modes.append(self._boot_mode())
        if prev_all and not now_all:
            self.power_losses += 1
            self.running = False
            self.halted = False
            self._halt_at = None
        run = self._sig.get("run")
        if run is not None and now_all:
            r = self._asserted(run)
            if r and not self._in_reset:
                self.resets += 1
                self.halted = False
                self._halt_at = None
            if self._in_reset and not r:
                self.boot_modes.append(self._boot_mode())
            self._in_reset = r
        req = self._asserted(self._sig["shutdown_req"])
        pb = self._sig.get("power_button")
        pbv = self._asserted(pb) if pb is not None else False
        pressed = (req and not self._req_was) or (pbv and not self._pb_was)
        if was_running and self.running and pressed and not self._in_reset:  # held in reset: deaf
            self.shutdown_requests += 1
            if not self.halt_never and self._halt_at is None and not self.halted:
                self._halt_at = self.clock.ticks_add(now, self.halt_delay)
        self._req_was = req
        self._pb_was = pbv
        if self._halt_at is not None and self.clock.ticks_diff(now, self._halt_at) >= 0:
            self._halt_at = None
            self.halted = True
        self._drive(self._sig["halted"], self.running and self.halted)
        self.w.settle()

    def self_halt(self):
        """Someone ran `poweroff` on the SBC."""
        self.halted = True
        self.update()


class Rig:
    """The real firmware core on a fake board, a fake SBC and a ManualClock."""

    def __init__(self, defn, root, start=0, pg_delays=None, halt_delay=300, reset_cause="power_on"):
        self.defn = defn
        self.root = root
        self.clock = ManualClock(start)
        self.wires = Wires(defn, self.clock)
        self.sbc = FakeSBC(self.wires, defn, self.clock, pg_delays, halt_delay)
        self.boots = 0
        self.boot(reset_cause)

    def boot(self, reset_cause="power_on", settings=None):
        self.boots += 1
        self.board = FakeBoard(self.wires, self.clock, self.root, reset_cause)
        self.created_from = len(self.wires.created)
        self.store = store.Store(self.root + "/data")
        self.persist = persist.BmcState(self.store, self.board.reset_cause())
        self.events = events.EventLog(self.store, self.clock, self.persist.boot_count, 32)
        self.cfg = config.Config(self.store, self.defn, self.events)
        if settings:
            for k in settings:
                self.cfg.set(k, settings[k])
        self.lines = lines.Lines(self.board, self.defn)
        self.pc = power.PowerController(
            self.defn, self.cfg, self.lines, self.clock, self.events, self.persist
        )
        self.pc.start()
        self.sbc.update()

    def restart_bmc(self, reset_cause="soft", settings=None):
        self.wires.bmc_reset()
        self.sbc.update()
        self.boot(reset_cause, settings)

    def step(self, ms=5):
        self.clock.advance(ms)
        self.sbc.update()
        self.pc.tick()
        self.sbc.update()

    def run(self, ms, step=5):
        t = 0
        while t < ms:
            self.step(step)
            t += step

    def run_until(self, pred, max_ms, step=5):
        t = 0
        while not pred():
            if t >= max_ms:
                raise AssertionError(
                    "condition not met within %d ms; state %s" % (max_ms, self.pc.state)
                )
            self.step(step)
            t += step
        return t

    def until_state(self, state, max_ms=20000):
        return self.run_until(lambda: self.pc.state == state, max_ms)

    def act(self, action):
        self.pc.request(action)
        self.sbc.update()

    def refused(self, action):
        try:
            self.pc.request(action)
        except power.NotAllowed as e:
            return e
        raise AssertionError("%s was not refused in %s" % (action, self.pc.state))

    def pin(self, role):
        return self.defn["signals"][role]["pin"]

    def rail_pin(self, i):
        return self.defn["rails"][i]["enable"]["pin"]

    def changes(self, pin, since_tick=None):
        h = self.wires.history.get(pin, [])
        if since_tick is None:
            return list(h)
        return [x for x in h if self.clock.ticks_diff(x[0], since_tick) >= 0]

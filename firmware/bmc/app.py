"""The BMC main loop: wire the core to a board and run until reset.

`main(board)` never returns on a healthy board. `App(board)` builds everything
(bmc.appbuild, in the order that never glitches the SBC); `run` is the loop.
"""

import gc

try:
    from typing import Any  # for the annotations below; MicroPython has no typing
except ImportError:
    pass

from bmc import auth as _auth
from bmc import clock as _clock
from bmc import config, errors, ondemand, power
from bmc import console as _console
from bmc import dispatch as _dispatch
from bmc import events as _events
from bmc import indicators as _indicators
from bmc import persist as _persist
from bmc import store as _store
from bmc.compat import const

WDT_MS = const(5000)
_MAX_WAIT_MS = const(100)
_BUSY_FRAMES = const(3)  # requests answered back to back before flash writes and a collection
_FAILING_LOOPS = const(3)  # loops in a row that raise before the watchdog is starved


class App:
    # Set by bmc.appbuild. Annotations only: MicroPython stores nothing for them; they
    # tell the firmware type check (tools/check_firmware_types.py) what each one is.
    board: "Any"  # bmc.board.rp2 or bmc.board.sim
    clock: "_clock.Clock"
    data_dir: str
    store: "_store.Store"
    serial: str
    persist: "_persist.BmcState"
    events: "_events.EventLog"
    reboot_pending: bool
    loop_errors: int
    reset_hooks: list
    tick_hooks: list
    defn: "dict | None"
    config: "config.Config | None"
    power: "power.PowerController | None"
    lines: "object"
    board_error: "str | None"
    console: "_console.Console"
    indicators: "_indicators.Indicators"
    auth: "_auth.Auth"
    inventory: "object"
    bootfiles: "object"
    dispatch: "_dispatch.Dispatcher"
    _gc_frames: int
    _quiet_frames: int

    def __init__(self, board):
        # Run once: the code that builds everything (bmc.appbuild) is loaded for it
        # and dropped after, as it would otherwise stay in the heap for good.
        ondemand.call("appbuild", "build", self, board)

    # -- used by command modules -----------------------------------------
    def board_name(self):
        return self.defn["name"] if self.defn else None

    def require_power(self):
        if self.power is None:
            raise errors.CmdError(errors.NOT_ALLOWED, "no power control: %s" % self.board_error)
        return self.power

    def power_action(self, action, cause="remote_command"):
        pc = self.require_power()
        if action not in power.ACTIONS:
            raise errors.CmdError(
                errors.INVALID,
                "unknown action %s; one of: %s" % (action[:32], ", ".join(power.ACTIONS)),
            )
        try:
            pc.request(action, cause)
        except power.NotAllowed as e:
            raise errors.CmdError(errors.NOT_ALLOWED, str(e), {"state": pc.state})

    def usb_boot_cycle(self):
        """Power the SBC on (or cycle it) for a USB boot (bmc.bootfiles)."""
        st = self.require_power().state
        self.power_action("On" if st == "Off" else "PowerCycle", "usb_boot")

    def factory_reset(self):
        """Forget keys, settings and what the hooks own; the SBC is untouched."""
        self.auth.erase()
        self.store.remove("config")
        if self.defn is not None:
            self.config = config.Config(self.store, self.defn, self.events)
            self.power.config = self.config
        for hook in self.reset_hooks:
            hook()
        self.events.add("bmc", "factory_reset", "")

    def request_maintenance(self):
        ondemand.call("maintenance", "request", self.board.root)
        self.events.add("bmc", "maintenance_requested", "REPL on next boot")
        self.reboot_pending = True

    # -- the loop ----------------------------------------------------------
    def step(self):
        # Run for every pass: few locals, no `for` (its iterator takes four words),
        # so that MicroPython keeps this frame on the C stack, not on the heap.
        timeout = self.indicators.ms_to_next()
        if self.power is not None:
            timeout = min(timeout, self.power.ms_to_next_deadline())
        if timeout > _MAX_WAIT_MS:
            timeout = _MAX_WAIT_MS
        self.board.wait(timeout if timeout > 0 else 0)
        self.clock.uptime_ms()
        before = self.dispatch.reader.frames
        self.dispatch.poll()
        if self.reboot_pending:
            self.events.add("bmc", "reboot", "")
            self.flush()
            self.board.reboot()
        if self.power is not None:
            self.power.tick()
        i = 0
        while i < len(self.tick_hooks):
            self.tick_hooks[i]()
            i += 1
        self.console.poll()
        self.indicators.tick(self.power.state if self.power else "Fault")
        # Flash writes and the collection of answered requests' garbage wait for
        # the first pass that takes no request (the link is quiet): done in the
        # pass that answered, they hold up the request that may already be on
        # its way, and the allocation threshold, left to strike, does so inside
        # a request. Requests back to back get them after every few.
        frames = self.dispatch.reader.frames
        if frames == before or frames - self._quiet_frames >= _BUSY_FRAMES:
            self._quiet_frames = frames
            self.flush()
            if frames != self._gc_frames:
                self._gc_frames = frames
                gc.collect()

    def flush(self):
        """Write what is held in RAM: the event log, then the BMC state."""
        self.events.flush()
        self.persist.flush()

    def run(self):
        board = self.board
        board.wdt_start(WDT_MS)
        while True:
            try:
                self.step()
                self.loop_errors = 0
            except MemoryError:
                gc.collect()
                self.loop_errors += 1
                self.events.add("fault", "out_of_memory", "main loop")
            except Exception as e:
                self.loop_errors += 1
                self.events.add("fault", "internal", repr(e))
            # A loop that keeps failing is not healthy: starve the watchdog. A failing
            # pass never reaches its flush, so the faults go to flash first: the reset
            # would otherwise lose why it came.
            if self.loop_errors < _FAILING_LOOPS:
                board.wdt_feed()
            elif self.loop_errors == _FAILING_LOOPS:
                try:
                    self.flush()
                except Exception:  # noqa: BLE001 - the watchdog resets the BMC anyway
                    pass


def main(board):
    App(board).run()

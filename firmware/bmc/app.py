"""The BMC main loop: wire the core to a board and run until reset.

`main(board)` never returns on a healthy board. The order at start matters:
inputs first, adopt the SBC's state from power-good, only then create the
outputs (with the adopted levels), so a BMC start never glitches the SBC.
"""

import binascii
import gc
import sys

from bmc import (
    VERSION,
    auth,
    bootfiles,
    config,
    console,
    dispatch,
    errors,
    events,
    indicators,
    inventory,
    lines,
    ondemand,
    persist,
    power,
    store,
)
from bmc.compat import const

WDT_MS = const(5000)
_MAX_WAIT_MS = const(100)
_GC_EVERY = const(12288)
_BUSY_FRAMES = const(3)  # requests answered back to back before flash writes and a collection
_FAILING_LOOPS = const(3)  # loops in a row that raise before the watchdog is starved
BOARD_FILE = "/board.json"


class App:
    def __init__(self, board):
        self.board = board
        self.clock = board.clock
        self.data_dir = board.root + "/data"
        self.store = store.Store(self.data_dir)
        self.serial = binascii.hexlify(board.unique_id()).decode().upper()
        # Deferred: state and events reach flash at the end of each loop pass, after
        # any reply has gone out (see `step`), so no answer waits for a flash write.
        self.persist = persist.BmcState(self.store, board.reset_cause(), deferred=True)
        self.events = events.EventLog(
            self.store, self.clock, self.persist.boot_count, deferred=True
        )
        self.events.add("bmc", "start", "fw %s reset %s" % (VERSION, self.persist.reset_cause))
        if self.persist.problem and self.persist.problem != "missing":
            self.events.add("store", "corrupt", "state: " + self.persist.problem)
        self.reboot_pending = False
        self.loop_errors = 0
        self.reset_hooks = []  # called by a factory reset, after keys and config
        self.tick_hooks = []  # called every loop pass (deadlines of command modules)
        self.defn = None
        self.config = None
        self.power = None
        self.lines = None
        self.board_error = None
        try:
            self.defn = load_board_file(board.root + BOARD_FILE)
        except (OSError, ValueError) as e:  # BoardFileError is a ValueError
            self.board_error = "board file: %s" % e
            self.events.add("fault", "board_file", self.board_error)
        uart = None
        if self.defn is not None:
            self.config = config.Config(self.store, self.defn, self.events)
            self.lines = lines.Lines(board, self.defn)
            self.power = power.PowerController(
                self.defn, self.config, self.lines, self.clock, self.events, self.persist
            )
            self.power.start()
            con = self.defn["console"]
            if con is not None:
                uart = board.uart(con["uart"], con["tx"], con["rx"], con["baud"])
        self.console = console.Console(uart)
        self.indicators = indicators.Indicators(
            self.clock,
            self.lines.status_led if self.lines else None,
            self.lines.identify_led if self.lines else None,
        )
        self.auth = auth.Auth(self.store, self.clock, self.serial, self.events, board.bootsel)
        self.inventory = inventory.Inventory(self.store, self.events)
        self.reset_hooks.append(self.inventory.forget)
        bf = bootfiles.BootFiles(self.store, self.events, self.clock, self.inventory)
        self.bootfiles = bf
        bf.power = self.power
        bf.power_action = self.usb_boot_cycle
        if self.lines is not None:
            bf.mux = getattr(self.lines, "usb_mux", None)
        self.reset_hooks.append(bf.forget)
        self.tick_hooks.append(bf.tick)
        self.dispatch = dispatch.Dispatcher(board.link, self.auth, self.clock, self)
        self._gc_frames = 0
        self._quiet_frames = 0
        ondemand.call("commands", "register", self)  # the command table (bmc.commands)
        gc.collect()
        # Collect after every few KB allocated, not only when the heap is full:
        # garbage left lying between live objects fragments a small heap until
        # a 1 KB reply no longer fits anywhere.
        if hasattr(gc, "threshold"):
            gc.threshold(_GC_EVERY)
        self.flush()

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
            # A loop that keeps failing is not healthy: starve the watchdog.
            if self.loop_errors < _FAILING_LOOPS:
                board.wdt_feed()


def load_board_file(path):
    """Load and validate the board file, then drop the validator from RAM.

    Validation is only needed at start; unloading it gives its heap (a tenth of
    the firmware's code) back to the running BMC.
    """
    from bmc import boardfile

    try:
        return boardfile.load(path)
    finally:
        del boardfile
        sys.modules.pop("bmc.boardfile", None)
        pkg = sys.modules.get("bmc")
        if pkg is not None and "boardfile" in pkg.__dict__:
            delattr(pkg, "boardfile")


def main(board):
    App(board).run()

"""Building the firmware from the board object (`App.__init__`).

Run once, at start: loaded for it and dropped after (`bmc.ondemand`), as its code
would otherwise stay in the heap for good. The order matters: inputs first, the
SBC's state adopted from power-good, only then the outputs (with the adopted
levels), so a BMC start never glitches the SBC.
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

_GC_EVERY = const(12288)
BOARD_FILE = "/board.json"


def build(app, board):
    app.board = board
    app.clock = board.clock
    app.data_dir = board.root + "/data"
    app.store = store.Store(app.data_dir)
    app.serial = binascii.hexlify(board.unique_id()).decode().upper()
    # Deferred: state and events reach flash at the end of each loop pass, after
    # any reply has gone out (see `step`), so no answer waits for a flash write.
    app.persist = persist.BmcState(app.store, board.reset_cause(), deferred=True)
    app.events = events.EventLog(app.store, app.clock, app.persist.boot_count, deferred=True)
    app.events.add("bmc", "start", "fw %s reset %s" % (VERSION, app.persist.reset_cause))
    if app.persist.problem and app.persist.problem != "missing":
        app.events.add("store", "corrupt", "state: " + app.persist.problem)
    app.reboot_pending = False
    app.loop_errors = 0
    app.reset_hooks = []  # called by a factory reset, after keys and config
    app.tick_hooks = []  # called every loop pass (deadlines of command modules)
    app.defn = None
    app.config = None
    app.power = None
    app.lines = None
    app.board_error = None
    try:
        app.defn = load_board_file(board.root + BOARD_FILE)
    except (OSError, ValueError) as e:  # BoardFileError is a ValueError
        app.board_error = "board file: %s" % e
        app.events.add("fault", "board_file", app.board_error)
    uart = None
    if app.defn is not None:
        app.config = config.Config(app.store, app.defn, app.events)
        app.lines = lines.Lines(board, app.defn)
        app.power = power.PowerController(
            app.defn, app.config, app.lines, app.clock, app.events, app.persist
        )
        app.power.start()
        con = app.defn["console"]
        if con is not None:
            uart = board.uart(con["uart"], con["tx"], con["rx"], con["baud"])
    app.console = console.Console(uart)
    app.indicators = indicators.Indicators(
        app.clock,
        app.lines.status_led if app.lines else None,
        app.lines.identify_led if app.lines else None,
    )
    app.auth = auth.Auth(app.store, app.clock, app.serial, app.events, board.bootsel)
    app.inventory = inventory.Inventory(app.store, app.events)
    app.reset_hooks.append(app.inventory.forget)
    bf = bootfiles.BootFiles(app.store, app.events, app.clock, app.inventory)
    app.bootfiles = bf
    bf.power = app.power
    bf.power_action = app.usb_boot_cycle
    if app.lines is not None:
        bf.mux = getattr(app.lines, "usb_mux", None)
    app.reset_hooks.append(bf.forget)
    app.tick_hooks.append(bf.tick)
    app.dispatch = dispatch.Dispatcher(board.link, app.auth, app.clock, app)
    app._gc_frames = 0
    app._quiet_frames = 0
    ondemand.call("commands", "register", app)  # the command table (bmc.commands)
    gc.collect()
    # Collect after every few KB allocated, not only when the heap is full:
    # garbage left lying between live objects fragments a small heap until
    # a 1 KB reply no longer fits anywhere.
    if hasattr(gc, "threshold"):
        gc.threshold(_GC_EVERY)
    app.flush()


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

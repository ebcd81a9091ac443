"""OpenMetrics 1.0 text of one BMC, rendered in chunks straight to the link.

`render(app, out)` writes every family into `out` (an `Out`), which fills one
chunk buffer (on the BMC: the frame writer's own payload area, so a full chunk
goes to the link without a copy) and hands it on when full. The whole text is
never held in RAM: a render allocates only the short lines it formats.

The rules kept here (OpenMetrics 1.0): `# HELP`, `# TYPE` and `# UNIT` once per
family, before its samples; a family with a unit is named `..._<unit>`; a
counter's samples end in `_total`; families never interleave; label values
escape backslash, double quote and line feed; `# EOF` ends the text.

The heap high-water mark is sampled (`gc.mem_alloc()`, which every port has)
whenever a chunk is handed on and at every family; where the port counts
allocations (`micropython.mem_total()`, the unix port) the bytes allocated by
the render are counted too. Both are exposed for the *previous* render, as the
current one is still running when they are written.
"""

from bmc import VERSION, auth, power
from bmc.compat import mem_alloc, mem_free

try:
    from micropython import mem_total as _mem_total  # type: ignore[attr-defined]
except ImportError:  # the rp2 port builds without MICROPY_MEM_STATS; CPython
    _mem_total = None

CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

POWER_STATES = ("Off", "PoweringOn", "On", "ShuttingDown", "PoweringOff", "Fault")
RESET_CAUSES = ("power_on", "watchdog", "soft", "unknown")


try:
    memoryview("")  # MicroPython: a str lends its UTF-8 bytes without a copy
    _as_bytes = memoryview
except TypeError:  # CPython

    def _as_bytes(s):  # type: ignore[no-redef]
        return s.encode()


def escape(value):
    """A label value with backslash, double quote and line feed escaped."""
    s = str(value)
    if "\\" in s or '"' in s or "\n" in s:
        s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return s


def number(v):
    """A sample value in OpenMetrics syntax."""
    if v is True:
        return "1"
    if v is False or v is None:
        return "0"
    if isinstance(v, int):
        return str(v)
    if v != v:
        return "NaN"
    if v - v != 0:  # only an infinity minus itself is not 0 (NaN)
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


class Out:
    """Fills `view` and calls `flush(n)` with each full chunk.

    `flush(n)` must consume view[:n] before returning (on the BMC it sends the
    frame built around the view in place).
    """

    def __init__(self, view, flush):
        self.view = view
        self.size = len(view)
        self.n = 0
        self._flush = flush
        self.chunks = 0
        self.bytes = 0
        self.peak = mem_alloc()

    # Hot methods keep few locals: a MicroPython call whose frame outgrows
    # 11 slots allocates it on the heap, on every call.
    def write(self, s):
        """Append a str (its bytes lent without a copy where the port can) or bytes."""
        if isinstance(s, str):
            s = _as_bytes(s)
        n = self.n
        k = len(s)
        if n + k > self.size:
            self._overflow(s)
            return
        self.view[n : n + k] = s
        self.n = n + k

    def _overflow(self, b):
        self.flush()
        size = self.size
        for i in range(0, len(b), size):  # longer than a chunk: never the lines here
            part = b[i : i + size]
            self.view[0 : len(part)] = part
            self.n = len(part)
            if len(part) == size:
                self.flush()

    def flush(self):
        self.sample_heap()
        if self.n:
            self._flush(self.n)
            self.chunks += 1
            self.bytes += self.n
            self.n = 0

    def sample_heap(self):
        a = mem_alloc()
        if a > self.peak:
            self.peak = a

    # -- OpenMetrics ------------------------------------------------------
    def family(self, name, typ, help_text, unit=None):
        # Written piece by piece: constant bytes cost nothing, a str piece one
        # small view, where formatting a whole line would allocate it (and grow it).
        self.sample_heap()
        w = self.write
        w(b"# HELP ")
        w(name)
        w(b" ")
        w(help_text)
        w(b"\n# TYPE ")
        w(name)
        w(b" ")
        w(typ)
        if unit is not None:
            w(b"\n# UNIT ")
            w(name)
            w(b" ")
            w(unit)
        w(b"\n")

    def sample(self, name, value, k1=None, v1=None):
        w = self.write
        w(name)
        if k1 is not None:
            w(b"{")
            w(k1)
            w(b'="')
            w(escape(v1))
            w(b'"}')
        w(b" ")
        w(number(value))
        w(b"\n")

    def gauge(self, name, help_text, value, unit=None):
        """A family with one unlabelled gauge sample."""
        self.family(name, "gauge", help_text, unit)
        self.sample(name, value)

    def counts(self, name, help_text, label, table, known=()):
        """A counter family from {label value: count}; `known` values always appear."""
        self.family(name, "counter", help_text)
        total = name + "_total"
        for k in known:
            self.sample(total, table.get(k, 0), label, k)
        for k in sorted(table):
            if k not in known:
                self.sample(total, table[k], label, k)

    def eof(self):
        self.write("# EOF\n")
        self.flush()


class Renderer:
    """Renders one BMC's metrics from the app's modules; keeps render statistics."""

    def __init__(self, app, sensors):
        self.app = app
        self.sensors = sensors
        self.renders = 0
        self.last_peak = None  # heap high-water (bytes allocated) during the last render
        self.last_alloc = None  # bytes allocated by the last render (where countable)
        self.last_bytes = 0
        self.last_chunks = 0

    def new_out(self, view, flush):
        return Out(view, flush)

    def render(self, out):
        """Write every family, then `# EOF`; returns the bytes written."""
        t0 = _mem_total() if _mem_total is not None else None
        self._bmc(out)
        self._power(out)
        self._sensors(out)
        self._link(out)
        inv = getattr(self.app, "inventory", None)  # bmc.inventory
        if inv is not None:
            _inventory(inv, out)
        bf = getattr(self.app, "bootfiles", None)  # bmc.bootfiles: USB boot families
        if bf is not None:
            _boot(bf, out)
        self._render_stats(out)
        out.eof()
        self.renders += 1
        self.last_peak = out.peak
        self.last_bytes = out.bytes
        self.last_chunks = out.chunks
        if t0 is not None:
            self.last_alloc = _mem_total() - t0
        return out.bytes

    # -- the BMC itself ---------------------------------------------------
    def _bmc(self, out):
        app = self.app
        out.family("bmc", "info", "Firmware version, board and serial of this BMC")
        out.write(
            'bmc_info{firmware_version="%s",board="%s",serial="%s"} 1\n'
            % (escape(VERSION), escape(app.board_name() or ""), escape(app.serial))
        )
        out.gauge(
            "bmc_board_file_ok",
            "1 when the board file loaded; 0: no power control (see hello board_error)",
            app.defn is not None,
        )
        out.gauge(
            "bmc_uptime_seconds",
            "Time since this BMC started",
            app.clock.uptime_ms() / 1000,
            "seconds",
        )
        st = app.persist
        out.family("bmc_boots", "counter", "BMC starts recorded on its flash")
        out.sample("bmc_boots_total", st.boot_count)
        out.family("bmc_reset_cause", "stateset", "Why the BMC last started")
        for c in RESET_CAUSES:
            out.sample("bmc_reset_cause", c == st.reset_cause, "bmc_reset_cause", c)
        out.gauge("bmc_heap_free_bytes", "MicroPython heap free", mem_free(), "bytes")
        out.gauge("bmc_heap_allocated_bytes", "MicroPython heap allocated", mem_alloc(), "bytes")
        ev = app.events
        out.family("bmc_events_dropped", "counter", "Event-log entries dropped, oldest first")
        out.sample("bmc_events_dropped_total", ev.dropped)
        out.family("bmc_events_write_errors", "counter", "Event-log writes to flash that failed")
        out.sample("bmc_events_write_errors_total", ev.write_errors)
        out.gauge(
            "bmc_identify_active",
            "1 while the identify LED blinks",
            app.indicators.identify_left_ms() > 0,
        )
        # Commands and authentication.
        out.counts(
            "bmc_commands",
            "Requests answered, by result (ok or the error code)",
            "result",
            app.dispatch.results,
            ("ok",),
        )
        a = app.auth
        out.counts(
            "bmc_auth_failures",
            "Authentication failures by reason",
            "reason",
            a.failures,
            auth.FAIL_REASONS,
        )
        out.family("bmc_auth_successes", "counter", "Requests whose key and MAC were accepted")
        out.sample("bmc_auth_successes_total", a.successes)
        out.family("bmc_auth_lockouts", "counter", "Lock-outs after repeated failures")
        out.sample("bmc_auth_lockouts_total", a.lockouts)
        left = a.locked_ms()
        out.gauge("bmc_auth_locked_out", "1 while authenticated commands are locked out", left > 0)
        out.gauge(
            "bmc_auth_lockout_remaining_seconds",
            "Time left in the current lock-out",
            left / 1000,
            "seconds",
        )
        out.gauge("bmc_auth_failures_in_a_row", "Failures since the last success", a.in_a_row)
        out.gauge("bmc_auth_provisioned", "1 once the BMC holds an admin key", a.provisioned())

    # -- the SBC's power --------------------------------------------------
    def _power(self, out):
        pc = self.app.power
        if pc is None:
            return
        st = pc.status()
        state = st["state"]
        out.family("sbc_power_state", "stateset", "Power state of the SBC")
        for s in POWER_STATES:
            out.sample("sbc_power_state", s == state, "sbc_power_state", s)
        rails = st["rails"]
        out.family("sbc_rail_power_good", "gauge", "1 while the rail's power-good is asserted")
        for r in rails:
            out.sample("sbc_rail_power_good", r["pgood"], "rail", r["name"])
        out.family("sbc_rail_enabled", "gauge", "1 while the BMC asserts the rail's enable")
        for r in rails:
            if r["enable"] is not None:
                out.sample("sbc_rail_enabled", r["enable"], "rail", r["name"])
        out.gauge("sbc_halted", "1 while the SBC signals halted (gpio-poweroff)", st["halted"])
        out.counts(
            "sbc_power_actions",
            "Power actions accepted, by action",
            "action",
            pc.actions_total,
        )
        out.counts(
            "sbc_power_actions_refused",
            "Power actions refused in the state they came in",
            "action",
            pc.refused_total,
        )
        out.counts(
            "sbc_power_transitions",
            "Power state changes by cause",
            "cause",
            pc.transitions_total,
        )
        out.counts("sbc_power_faults", "Power faults by cause", "cause", pc.faults_total)
        out.family(
            "sbc_power_forced_off", "counter", "Graceful shutdowns that timed out and forced off"
        )
        out.sample("sbc_power_forced_off_total", pc.forced_off_total)
        up = self.app.clock.uptime_ms()
        out.gauge(
            "sbc_power_last_change_seconds",
            "BMC uptime at the last power state change (it changed uptime - this ago)",
            max(0, up - st["since_ms"]) / 1000,
            "seconds",
        )
        out.family("sbc_boot_mode", "stateset", "Boot mode the BMC holds for the SBC")
        for m in power.BOOT_MODES:
            out.sample("sbc_boot_mode", m == st["boot_mode"], "sbc_boot_mode", m)

    # -- sensors ----------------------------------------------------------
    def _sensors(self, out):
        sn = self.sensors
        t = sn.die_celsius()
        if t is not None:
            out.gauge("bmc_temperature_celsius", "RP2040 die temperature (ADC 4)", t, "celsius")
        readings = []
        for i in range(len(sn.channels)):
            readings.append(sn.read_channel(i))
        for name, kind, v in readings:
            if name == "vsys" and v is not None:
                out.gauge("bmc_input_voltage_volts", "BMC input voltage (VSYS)", v, "volts")
        ina = sn.read_ina219()
        volts = []
        amps = []
        for name, kind, v in readings:
            if v is None or name == "vsys":
                continue
            if kind == "voltage":
                volts.append((name, v))
            else:
                amps.append((name, v))
        watts = []
        if amps and volts:
            # An ADC current channel is paired with the first SBC voltage channel.
            for name, a in amps:
                watts.append((name, a * volts[0][1]))
        if ina is not None:
            volts.append(("ina219", ina[0]))
            amps.append(("ina219", ina[1]))
            watts.append(("ina219", ina[2]))
        self._by_sensor(out, "sbc_voltage_volts", "SBC supply voltage", "volts", volts)
        self._by_sensor(out, "sbc_current_amperes", "SBC supply current", "amperes", amps)
        self._by_sensor(out, "sbc_power_watts", "SBC power draw", "watts", watts)
        out.counts("bmc_sensor_errors", "Sensor reads that failed, by sensor", "sensor", sn.errors)

    def _by_sensor(self, out, name, help_text, unit, values):
        if not values:
            return
        out.family(name, "gauge", help_text, unit)
        for sensor, v in values:
            out.sample(name, v, "sensor", sensor)

    # -- the link and this renderer ---------------------------------------
    def _link(self, out):
        r = self.app.dispatch.reader
        out.family("bmc_link_frames_received", "counter", "Valid frames received from the host")
        out.sample("bmc_link_frames_received_total", r.frames)
        out.family("bmc_link_errors", "counter", "Frames dropped while resynchronising, by kind")
        out.sample("bmc_link_errors_total", r.bad_crc, "kind", "bad_crc")
        out.sample("bmc_link_errors_total", r.oversize, "kind", "oversize")
        out.sample("bmc_link_errors_total", r.stale, "kind", "stale")
        out.family("bmc_link_garbage_bytes", "counter", "Bytes skipped looking for a frame")
        out.sample("bmc_link_garbage_bytes_total", r.dropped)

    def _render_stats(self, out):
        out.family("bmc_metrics_renders", "counter", "Metrics renders completed")
        out.sample("bmc_metrics_renders_total", self.renders)
        if self.last_peak is not None:
            out.gauge(
                "bmc_metrics_render_heap_peak_bytes",
                "Heap allocated at its highest during the previous render",
                self.last_peak,
                "bytes",
            )
            out.gauge(
                "bmc_metrics_render_size_bytes",
                "Size of the previous render",
                self.last_bytes,
                "bytes",
            )
        if self.last_alloc is not None:
            out.gauge(
                "bmc_metrics_render_allocated_bytes",
                "Bytes the previous render allocated on the heap (ports that count them)",
                self.last_alloc,
                "bytes",
            )


def _inventory(inv, out):
    """What the SBC boots with: the inventory's generation (0: never pushed; it grows
    with every push to this BMC) and how many trust keys it holds."""
    out.family("bmc_inventory_generation", "gauge", "Generation of the inventory URL and keys held")
    out.sample("bmc_inventory_generation", inv.generation)
    out.family("bmc_inventory_keys", "gauge", "Trust keys held for the SBC's bootstrap")
    out.sample("bmc_inventory_keys", len(inv.rec.get("keys", ())))


def _boot(bf, out):
    """The boot files and USB boot families of a `bmc.bootfiles.BootFiles`."""
    from bmc.bootfiles import STATES

    out.family("bmc_boot_manifest_generation", "gauge", "Generation of the boot manifest held")
    out.sample("bmc_boot_manifest_generation", bf.gen)
    out.family("bmc_boot_manifest_files", "gauge", "Files the boot manifest lists, as given")
    out.sample("bmc_boot_manifest_files", len(bf.rec["files"]))
    c = bf.counters
    out.family("bmc_boot_files_served", "counter", "Boot files vouched for and served")
    out.sample("bmc_boot_files_served_total", c["files_served"])
    out.family(
        "bmc_boot_streamed_bytes", "counter", "Boot file bytes streamed over the link", "bytes"
    )
    out.sample("bmc_boot_streamed_bytes_total", c["bytes_streamed"])
    out.family(
        "bmc_boot_stream_seconds",
        "counter",
        "Time spent streaming boot files, from each request's turn to its last chunk",
        "seconds",
    )
    out.sample("bmc_boot_stream_seconds_total", c["stream_ms"] / 1000)
    out.family("bmc_boot_refusals", "counter", "Boot file requests refused, by reason")
    for k in ("digest_mismatch", "missing", "refused", "conflict"):
        out.sample("bmc_boot_refusals_total", c[k], "reason", k)
    out.family("bmc_usb_boots", "counter", "USB boots by outcome")
    for k, label in (
        ("boots_started", "started"),
        ("boots_done", "done"),
        ("boots_failed", "failed"),
        ("boots_timed_out", "timeout"),
    ):
        out.sample("bmc_usb_boots_total", c[k], "outcome", label)
    out.family("bmc_usb_boot_state", "stateset", "The USB boot session")
    for s in STATES:
        out.sample("bmc_usb_boot_state", s == bf.state, "bmc_usb_boot_state", s)

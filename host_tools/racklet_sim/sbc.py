"""A virtual SBC: what sits across the wires from one BMC.

Electrically (as docs/hardware.md wires a real board):

- every BMC pad is driven 0/1, or released ("z", or with the RP2040's own weak pull
  "u"/"d"); a BMC that resets or dies leaves every pad released with pull-down, the
  RP2040's reset state;
- open-drain outputs (RUN, GLOBAL_EN, shutdown request, boot select, power button) are
  pulled up on the SBC side, so a released pad reads 1 there;
- a push-pull rail enable is self-holding: released, it keeps the rail's state;
- anything else released reads as the BMC's weak pull (0 when none).

Behaviour: a rail is powered while its enable is asserted and the rail before it has
power-good; power-good rises `pgood_delay_ms` after power arrives and falls with it. With
every rail good and RUN released the OS boots and prints a boot log on the console UART;
a shutdown-request press (or a power-button press) halts it after `halt_delay_ms`, and
`gpio-poweroff` then asserts `halted`. RUN asserted holds the SoC in reset; its release
reboots. Boot mode (SD or USB) is sampled at power-on from boot select / power button.

Faults (`inject`): "pgood_never" (power-good never rises, optionally for one rail),
"pgood_drop" (power-good falls now while the rail stays enabled, until it is switched
off and on), "halted_never" (the OS never reports halted), "self_halt" (the OS halts by
itself, as after `poweroff`), "clear" (forget the lasting ones).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from bmc import boardfile

FAULTS = ("pgood_never", "pgood_drop", "halted_never", "self_halt", "clear")
OPEN_DRAIN_PULLED_UP = ("run", "global_en", "shutdown_req", "boot_select", "power_button")

PGOOD_DELAY_MS = 150
HALT_DELAY_MS = 1500
BOOT_LINE_MS = 30
DIE_TEMP_C = 30.0
VSYS_V = 5.0
RAIL_V = 5.0
CURRENT_RUNNING_A = 0.65
CURRENT_HALTED_A = 0.25
CURRENT_RESET_A = 0.2
HISTORY_MAX = 2000
CONSOLE_MAX = 65536
INA219_CONFIG, INA219_SHUNT, INA219_BUS = 0, 1, 2
INA219_CONFIG_RESET = 0x399F
WIRES_CHUNK = 256  # UART bytes per wires line (the firmware's line buffer is 1 KiB)

BOOT_LOG = (
    "",
    "racklet-sim virtual SBC {name}: power on, boot mode {mode}",
    "[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd083]",
    "[    0.000000] Linux version 6.6.31+rpt-rpi-v8 (virtual SBC of racklet-sim)",
    "[    0.000000] Machine model: {model}",
    "[    1.102217] gpio-shutdown: key press on GPIO3 powers off",
    "[    1.354410] gpio-poweroff: GPIO26 asserted when halted",
    "[    2.845522] systemd[1]: Reached target multi-user.target",
    "",
    "Debian GNU/Linux 12 racklet-slot{slot} ttyS0",
    "",
    "racklet-slot{slot} login: ",
)
HALT_LOG = (
    "",
    "[  OK  ] Reached target System Power Off.",
    "[ 2101.774231] reboot: Power down",
)


class Rail:
    def __init__(self, spec: Dict[str, Any]) -> None:
        self.name: str = spec["name"]
        self.enable: Optional[Dict[str, Any]] = spec["enable"]
        self.pgood_sig: Dict[str, Any] = spec["pgood"]
        self.powered = False
        self.pgood = False
        self.dropped = False  # pgood_drop: stays low until power goes away
        self.timer: Optional[asyncio.TimerHandle] = None


class VirtualSbc:
    """One SBC. `send(line)` writes a wires line to the BMC (when one is connected)."""

    def __init__(
        self,
        slot: int,
        defn: Dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        *,
        pgood_delay_ms: int = PGOOD_DELAY_MS,
        halt_delay_ms: int = HALT_DELAY_MS,
        boot_line_ms: int = BOOT_LINE_MS,
    ) -> None:
        self.slot = slot
        self.defn = defn
        self.loop = loop
        self.pgood_delay_ms = pgood_delay_ms
        self.halt_delay_ms = halt_delay_ms
        self.boot_line_ms = boot_line_ms
        self.t0 = time.monotonic()
        self.send: Optional[Callable[[str], None]] = None
        self.signals: Dict[str, Dict[str, Any]] = defn["signals"]
        self.rails = [Rail(r) for r in defn["rails"]]
        # What the BMC does with each of its pads, and how the SBC side resolves a release.
        self.pads: Dict[int, str] = {}
        self.external: Dict[int, str] = {}  # pin -> "up" | "hold"
        self.hold: Dict[int, int] = {}
        for role, sig in self.signals.items():
            if sig["output"] and (sig["open_drain"] or role in OPEN_DRAIN_PULLED_UP):
                self.external[sig["pin"]] = "up"
        for rail in self.rails:
            en = rail.enable
            if en is not None and not en["open_drain"] and en["pin"] not in self.external:
                self.external[en["pin"]] = "hold"
                self.hold[en["pin"]] = 0
        self.sbc_driven = {r.pgood_sig["pin"] for r in self.rails}
        self.sbc_driven.add(self.signals["halted"]["pin"])
        self.levels: Dict[int, int] = {}
        self.history: Dict[int, List[Tuple[float, int]]] = {}
        self.os = "off"  # off, reset, running, halting, halted
        self.boot_mode = "sd"
        self.boots = 0
        self.rail_drops = 0  # times a rail lost power
        self.faults: Dict[str, Optional[str]] = {}
        self.bootsel = False
        self._bootsel_timer: Optional[asyncio.TimerHandle] = None
        self._halt_timer: Optional[asyncio.TimerHandle] = None
        self._console_timer: Optional[asyncio.TimerHandle] = None
        self._console_queue: List[str] = []
        self.console_out = bytearray()
        self.console_in = bytearray()
        self.connected = False
        self.ina219_config = INA219_CONFIG_RESET
        self._sent_adc: Dict[int, int] = {}
        self._sent_levels: Dict[int, str] = {}
        self._pressed = False
        self._evaluate()

    # -- wires ------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def bmc_connected(self, send: Callable[[str], None]) -> None:
        self.send = send
        self.connected = True
        self._sent_adc.clear()
        self._sent_levels.clear()
        self._push_inputs(force=True)
        send(f"B {int(self.bootsel)}\n")
        send("S\n")

    def bmc_disconnected(self) -> None:
        """The BMC reset or died: its pads float with the RP2040's reset pull-down."""
        self.send = None
        self.connected = False
        for pin in list(self.pads):
            self.pads[pin] = "d"
        self._evaluate()

    def on_line(self, line: str) -> None:
        parts = line.split()
        if not parts:
            return
        op = parts[0]
        try:
            if op == "P" and len(parts) == 3 and parts[2] in ("0", "1", "z", "u", "d"):
                pin = int(parts[1])
                if 0 <= pin <= 29:
                    self.pads[pin] = parts[2]
                    self._evaluate()
            elif op == "T" and len(parts) == 3:
                self._console_input(bytes.fromhex(parts[2]))
            elif op == "I":
                self._send(f"J {self._i2c(parts[1:])}\n")
            elif op == "H":
                pass
        except ValueError:
            pass

    def _send(self, line: str) -> None:
        if self.send is not None:
            self.send(line)

    # -- levels -----------------------------------------------------------------
    def level(self, pin: int) -> int:
        pad = self.pads.get(pin, "d")
        if pad in ("0", "1"):
            return int(pad)
        ext = self.external.get(pin)
        if ext == "up":
            return 1
        if ext == "hold":
            return self.hold.get(pin, 0)
        return 1 if pad == "u" else 0

    def asserted(self, role: str) -> bool:
        sig = self.signals.get(role)
        if sig is None:
            return False
        return self.level(sig["pin"]) == (1 if sig["active_high"] else 0)

    def _enable_on(self, rail: Rail, index: int) -> bool:
        upstream = index == 0 or (self.rails[index - 1].pgood)
        if rail.enable is None:
            return upstream
        lv = self.level(rail.enable["pin"])
        return upstream and lv == (1 if rail.enable["active_high"] else 0)

    def _record_levels(self) -> None:
        now = round(self.now(), 4)
        for pin in sorted((set(self.pads) | set(self.external)) - self.sbc_driven):
            lv = self.level(pin)
            if pin in self.hold and self.pads.get(pin, "d") in ("0", "1"):
                self.hold[pin] = lv
            if self.levels.get(pin) != lv:
                self.levels[pin] = lv
                h = self.history.setdefault(pin, [])
                h.append((now, lv))
                if len(h) > HISTORY_MAX:
                    del h[0]

    def _evaluate(self) -> None:
        self._record_levels()
        pressed = self.asserted("shutdown_req") or self.asserted("power_button")
        edge = pressed and not self._pressed
        self._pressed = pressed
        changed = True
        while changed:
            changed = False
            for i, rail in enumerate(self.rails):
                on = self._enable_on(rail, i)
                if on and not rail.powered:
                    rail.powered = True
                    changed = True
                    self._schedule_pgood(rail)
                elif not on and rail.powered:
                    rail.powered = False
                    rail.dropped = False
                    self.rail_drops += 1
                    if rail.timer is not None:
                        rail.timer.cancel()
                        rail.timer = None
                    if rail.pgood:
                        rail.pgood = False
                    changed = True
        self._update_os(pressed_edge=edge)
        self._push_inputs()

    def _schedule_pgood(self, rail: Rail) -> None:
        never = "pgood_never" in self.faults and self.faults["pgood_never"] in (None, rail.name)
        if never:
            return

        def rise() -> None:
            rail.timer = None
            if rail.powered and not rail.dropped:
                rail.pgood = True
                self._evaluate()

        rail.timer = self.loop.call_later(self.pgood_delay_ms / 1000, rise)

    # -- the OS -----------------------------------------------------------------
    def _all_good(self) -> bool:
        return all(r.pgood for r in self.rails)

    def _update_os(self, pressed_edge: bool) -> None:
        good = self._all_good()
        in_reset = self.asserted("run")
        if not good:
            if self.os != "off":
                self._set_os("off")
            return
        if in_reset:
            if self.os != "reset":
                self._set_os("reset")
            return
        if self.os in ("off", "reset"):
            self._boot()
            return
        if pressed_edge:
            if self.os == "running":
                self._start_halt()
            elif self.os == "halted":
                self._boot()  # gpio-shutdown's key wakes a halted Pi

    def _set_os(self, state: str) -> None:
        self.os = state
        if state != "halting" and self._halt_timer is not None:
            self._halt_timer.cancel()
            self._halt_timer = None
        if state in ("off", "reset"):
            self._console_queue.clear()

    def _boot(self) -> None:
        self._set_os("running")
        self.boots += 1
        usb = self.asserted("boot_select") or self.asserted("power_button")
        self.boot_mode = "usb" if usb else "sd"
        fields = {
            "name": self.defn["name"],
            "mode": self.boot_mode,
            "model": self.defn.get("description") or self.defn["name"],
            "slot": self.slot,
        }
        self._console_lines([line.format(**fields) for line in BOOT_LOG])

    def _start_halt(self) -> None:
        self._set_os("halting")
        self._console_lines(HALT_LOG[:2])

        def halted() -> None:
            self._halt_timer = None
            if self.os == "halting":
                self._console_lines(HALT_LOG[2:])
                if "halted_never" not in self.faults:
                    self._set_os("halted")
                self._push_inputs()

        self._halt_timer = self.loop.call_later(self.halt_delay_ms / 1000, halted)

    # -- console ----------------------------------------------------------------
    def _console_lines(self, lines: Sequence[str]) -> None:
        self._console_queue.extend(lines)
        if self._console_timer is None:
            self._console_next()

    def _console_next(self) -> None:
        self._console_timer = None
        if not self._console_queue:
            return
        line = self._console_queue.pop(0)
        end = "" if line.endswith(": ") else "\r\n"
        self._console_write((line + end).encode())
        self._console_timer = self.loop.call_later(self.boot_line_ms / 1000, self._console_next)

    def _console_write(self, data: bytes) -> None:
        self.console_out.extend(data)
        if len(self.console_out) > CONSOLE_MAX:
            del self.console_out[: len(self.console_out) - CONSOLE_MAX]
        con = self.defn["console"]
        if con is not None:
            for i in range(0, len(data), WIRES_CHUNK):
                self._send(f"R {con['uart']} {data[i : i + WIRES_CHUNK].hex()}\n")

    def _console_input(self, data: bytes) -> None:
        self.console_in.extend(data)
        if len(self.console_in) > CONSOLE_MAX:
            del self.console_in[: len(self.console_in) - CONSOLE_MAX]
        if self.os == "running":  # the login prompt's tty echoes
            self._console_write(data.replace(b"\r", b"\r\n"))

    # -- I2C: the INA219 the board file declares ------------------------------------
    def _i2c(self, req: List[str]) -> str:
        """Answer `bus addr reg r n` or `bus addr reg w hex`: hex data, "" (written), "-"."""
        ina = self.defn.get("ina219")
        if len(req) != 5 or req[3] not in ("r", "w") or not all(x.isdigit() for x in req[:3]):
            return "-"
        bus, addr, reg = int(req[0]), int(req[1]), int(req[2])
        if ina is None or bus != ina["bus"] or addr != ina["address"]:
            return "-"  # nobody acknowledges
        if req[3] == "w":
            try:
                data = bytes.fromhex(req[4])
            except ValueError:
                return "-"
            if reg == INA219_CONFIG and len(data) == 2:
                self.ina219_config = int.from_bytes(data, "big")
                if self.ina219_config & 0x8000:  # RST bit: back to the power-on value
                    self.ina219_config = INA219_CONFIG_RESET
            return ""
        if not req[4].isdigit():
            return "-"
        n = int(req[4])
        value = self._ina219_register(reg, ina)
        return value.to_bytes(2, "big").hex()[: 2 * n] if value is not None else "-"

    def _ina219_register(self, reg: int, ina: Dict[str, Any]) -> Optional[int]:
        if reg == INA219_CONFIG:
            return self.ina219_config
        amps = self.current_amps()
        if reg == INA219_SHUNT:  # signed, 10 uV per LSB
            return int(round(amps * ina["shunt_ohms"] / 1e-5)) & 0xFFFF
        if reg == INA219_BUS:  # bits 15..3, 4 mV per LSB; CNVR (bit 1) set
            volts = self.rail_volts()
            return ((int(round(volts / 0.004)) & 0x1FFF) << 3) | 0x2
        if reg in (3, 4, 5):
            return 0  # power, current, calibration: 0 until calibrated
        return None

    def current_amps(self) -> float:
        return {
            "running": CURRENT_RUNNING_A,
            "halting": CURRENT_RUNNING_A,
            "halted": CURRENT_HALTED_A,
            "reset": CURRENT_RESET_A,
        }.get(self.os, 0.0)

    def rail_volts(self) -> float:
        return RAIL_V if self.rails and self.rails[0].powered else 0.0

    # -- what the SBC drives ------------------------------------------------------
    def _pgood_level(self, rail: Rail) -> str:
        return str(int(rail.pgood == rail.pgood_sig["active_high"]))

    def _halted_level(self) -> str:
        sig = self.signals["halted"]
        if self.os in ("off", "reset"):
            return "z"  # the SoC's GPIOs are unpowered or in reset
        active = self.os == "halted"
        return str(int(active == sig["active_high"]))

    def adc_volts(self) -> Dict[int, float]:
        """Volts at each ADC pin the board file names (channel -> volts), and the die."""
        out: Dict[int, float] = {}
        for name, a in self.defn["adc"].items():
            if a["kind"] == "current":
                value = self.current_amps()
            elif name == "vsys":
                value = VSYS_V
            else:
                value = self.rail_volts()
            out[a["channel"]] = (value - a["offset"]) / a["scale"] if a["scale"] else 0.0
        out[4] = 0.706 - (DIE_TEMP_C - 27.0) * 0.001721
        return out

    def _push_inputs(self, force: bool = False) -> None:
        if self.send is None:
            return
        want: Dict[int, str] = {}
        for rail in self.rails:
            want[rail.pgood_sig["pin"]] = self._pgood_level(rail)
        want[self.signals["halted"]["pin"]] = self._halted_level()
        for pin, lv in want.items():
            if force or self._sent_levels.get(pin) != lv:
                self._sent_levels[pin] = lv
                self.send(f"L {pin} {lv}\n")
        for ch, volts in self.adc_volts().items():
            raw = max(0, min(65535, int(round(volts / 3.3 * 65535))))
            if force or self._sent_adc.get(ch) != raw:
                self._sent_adc[ch] = raw
                self.send(f"A {ch} {raw}\n")

    # -- control ------------------------------------------------------------------
    def inject(self, kind: str, rail: Optional[str] = None) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r} (one of: {', '.join(FAULTS)})")
        names = [r.name for r in self.rails]
        if rail is not None and rail not in names:
            raise ValueError(f"unknown rail {rail!r} (rails: {', '.join(names)})")
        if kind == "clear":
            self.faults.clear()
        elif kind in ("pgood_never", "halted_never"):
            self.faults[kind] = rail
        elif kind == "pgood_drop":
            for r in self.rails:
                if (rail is None or r.name == rail) and r.powered:
                    r.dropped = True
                    r.pgood = False
                    if r.timer is not None:
                        r.timer.cancel()
                        r.timer = None
                    if rail is None:
                        break  # the first powered rail
            self._evaluate()
        elif kind == "self_halt":
            if self.os != "running":
                raise ValueError(f"the SBC is {self.os}, not running: it cannot halt itself")
            self._console_lines(HALT_LOG)
            self._set_os("halted")
            self._push_inputs()

    def press_bootsel(self, seconds: float) -> None:
        if not 0 < seconds <= 600:
            raise ValueError("seconds must be in (0, 600]")
        if self._bootsel_timer is not None:
            self._bootsel_timer.cancel()
        self._set_bootsel(True)

        def release() -> None:
            self._bootsel_timer = None
            self._set_bootsel(False)

        self._bootsel_timer = self.loop.call_later(seconds, release)

    def _set_bootsel(self, held: bool) -> None:
        self.bootsel = held
        self._send(f"B {int(held)}\n")

    def state(self) -> Dict[str, Any]:
        return {
            "slot": self.slot,
            "board": self.defn["name"],
            "os": self.os,
            "boot_mode": self.boot_mode,
            "boots": self.boots,
            "rails": [{"name": r.name, "powered": r.powered, "pgood": r.pgood} for r in self.rails],
            "rail_drops": self.rail_drops,
            "pads": {str(p): v for p, v in sorted(self.pads.items())},
            "levels": {str(p): v for p, v in sorted(self.levels.items())},
            "history": {str(p): [list(e) for e in h] for p, h in sorted(self.history.items())},
            "faults": dict(self.faults),
            "bootsel": self.bootsel,
            "bmc_connected": self.connected,
            "console_out": self.console_out.decode("utf-8", "replace"),
            "console_in": self.console_in.decode("utf-8", "replace"),
        }


def load_board(path: str) -> Dict[str, Any]:
    """The normalised board definition, as the firmware will see it."""
    result: Dict[str, Any] = boardfile.load(path)
    return result

"""Board definitions: load and validate `boards/rp2040/<name>.json`.

`load(path)` reads a file, `parse(text)` a JSON string, `validate(raw)` a dict;
each returns the normalised definition or raises `BoardFileError` whose message
starts with the offending field, e.g. ``signals.run.pin: 31 outside 0-29``.
Shared by the firmware, the simulator and the host tools (pure Python, runs on
MicroPython and CPython).

Normalised definition (every key present, defaults filled in):

    {"name": str, "description": str, "comment": str,
     "signals": {role: SIG},            # roles in ROLES that the board has
     "rails": [{"name": str,
                "enable": SIG|None,     # may be signals["global_en"]; None: the rail
                                        # follows the previous one, only watched
                "enable_role": str|None,  # "global_en" when the rail uses it
                "pgood": SIG,
                "pgood_timeout_ms": int}],   # in power-on order
     "console": {"uart": int, "tx": int, "rx": int, "baud": int} | None,
     "adc": {name: {"channel": int, "pin": int, "kind": "voltage"|"current",
                    "scale": float, "offset": float}},  # value = volts_at_pin*scale+offset
     "ina219": {"bus", "sda", "scl", "freq", "address", "shunt_ohms", "max_current_a"} | None,
     "bootsel_presence": bool,
     "timing": {key: int ms},           # see TIMING
     "restore_policy": "AlwaysOff"|"AlwaysOn"|"LastState"}

    SIG = {"pin": int, "active_high": bool, "pull": "up"|"down"|None,
           "open_drain": bool, "output": bool}

In the file a signal is ``{"pin": 6, "active": "low", "pull": null,
"open_drain": true}`` ("active" defaults to "high", "pull" to null, "open_drain"
to false). A rail's "enable" is such an object or the string "global_en" (the
rail is switched by the GLOBAL_EN signal). An open-drain output "drives low or
releases": asserted/deasserted map to drive-low/release by its polarity.
"""

import json

# Timing keys with defaults and ranges, the restore policies (shared with bmc.config).
from bmc.timing import DEFAULT_PGOOD_TIMEOUT_MS, PGOOD_TIMEOUT_RANGE, RESTORE_POLICIES, TIMING

ROLES = (
    "run",  # reset (RUN / RUN_PG), output
    "global_en",  # PMIC enable, output; must be a rail's enable
    "boot_select",  # nRPIBOOT / boot-select, output, asserted = USB boot
    "shutdown_req",  # to the SBC's gpio-shutdown overlay, output
    "halted",  # from the SBC's gpio-poweroff overlay, input
    "power_button",  # the SBC's own power button (Pi 5), output
    "usb_mux",  # SBC USB-C data to the hub while a USB boot runs (docs/boot.md), output
    "status_led",
    "identify_led",
)
INPUT_ROLES = ("halted",)
REQUIRED_ROLES = ("shutdown_req", "halted")

_TOP = (
    "name",
    "description",
    "comment",
    "signals",
    "rails",
    "console",
    "adc",
    "ina219",
    "bootsel_presence",
    "timing",
    "restore_policy",
)
_UART_TX = ((0, 12, 16, 28), (4, 8, 20, 24))
_UART_RX = ((1, 13, 17, 29), (5, 9, 21, 25))


class BoardFileError(ValueError):
    """A board definition that must not be used; the message names the field."""


def _err(field, msg):
    raise BoardFileError(field + ": " + msg)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _int(d, key, field, default, lo, hi):
    v = d.get(key, default)
    if not _is_int(v):
        _err(field, "expected an integer, got " + repr(v))
    if v < lo or v > hi:
        _err(field, "%d outside %d-%d" % (v, lo, hi))
    return v


def _num(d, key, field, default, lo, hi):
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _err(field, "expected a number, got " + repr(v))
    if v < lo or v > hi:
        _err(field, "%s outside %s-%s" % (v, lo, hi))
    return float(v)


def _str(d, key, field, default):
    v = d.get(key, default)
    if not isinstance(v, str):
        _err(field, "expected a string, got " + repr(v))
    return v


def _obj(v, field):
    if not isinstance(v, dict):
        _err(field, "expected an object, got " + repr(v))
    return v


def _keys(d, allowed, field):
    for k in d:
        if k not in allowed:
            _err(field + "." + str(k), "unknown field")


class _Pins:
    def __init__(self):
        self.used = {}

    def take(self, pin, field):
        if not _is_int(pin):
            _err(field, "expected an integer pin, got " + repr(pin))
        if pin < 0 or pin > 29:
            _err(field, "%d outside 0-29" % pin)
        other = self.used.get(pin)
        if other is not None:
            _err(field, "pin %d already used by %s" % (pin, other))
        self.used[pin] = field
        return pin


def _signal(raw, field, pins, output):
    raw = _obj(raw, field)
    _keys(raw, ("pin", "active", "pull", "open_drain", "comment"), field)
    if "pin" not in raw:
        _err(field + ".pin", "missing")
    pin = pins.take(raw["pin"], field + ".pin")
    active = raw.get("active", "high")
    if active not in ("high", "low"):
        _err(field + ".active", 'expected "high" or "low", got ' + repr(active))
    pull = raw.get("pull", None)
    if pull not in ("up", "down", None):
        _err(field + ".pull", 'expected "up", "down" or null, got ' + repr(pull))
    od = raw.get("open_drain", False)
    if not isinstance(od, bool):
        _err(field + ".open_drain", "expected true or false, got " + repr(od))
    if od and not output:
        _err(field + ".open_drain", "an input cannot be open-drain")
    return {
        "pin": pin,
        "active_high": active == "high",
        "pull": pull,
        "open_drain": od,
        "output": output,
    }


def _console(raw, pins):
    f = "console"
    raw = _obj(raw, f)
    _keys(raw, ("uart", "tx", "rx", "baud", "comment"), f)
    for k in ("uart", "tx", "rx"):
        if k not in raw:
            _err(f + "." + k, "missing")
    uart = _int(raw, "uart", f + ".uart", None, 0, 1)
    tx = pins.take(raw["tx"], f + ".tx")
    rx = pins.take(raw["rx"], f + ".rx")
    if tx not in _UART_TX[uart]:
        _err(f + ".tx", "GP%d cannot be UART%d TX (use one of %s)" % (tx, uart, _UART_TX[uart]))
    if rx not in _UART_RX[uart]:
        _err(f + ".rx", "GP%d cannot be UART%d RX (use one of %s)" % (rx, uart, _UART_RX[uart]))
    baud = _int(raw, "baud", f + ".baud", 115200, 300, 3000000)
    return {"uart": uart, "tx": tx, "rx": rx, "baud": baud}


def _adc(raw, pins):
    raw = _obj(raw, "adc")
    out = {}
    for name in raw:
        f = "adc." + name
        a = _obj(raw[name], f)
        _keys(a, ("channel", "kind", "scale", "offset", "shunt_ohms", "gain", "comment"), f)
        if "channel" not in a:
            _err(f + ".channel", "missing")
        ch = _int(a, "channel", f + ".channel", None, 0, 3)
        pins.take(26 + ch, f + ".channel")
        kind = a.get("kind", "voltage")
        if kind == "voltage":
            for k in ("shunt_ohms", "gain"):
                if k in a:
                    _err(f + "." + k, 'only for kind "current"')
            scale = _num(a, "scale", f + ".scale", 1.0, 0.001, 1000.0)
        elif kind == "current":
            if "scale" in a:
                _err(f + ".scale", "a current channel is scaled by shunt_ohms and gain")
            if "shunt_ohms" not in a:
                _err(f + ".shunt_ohms", "missing")
            shunt = _num(a, "shunt_ohms", f + ".shunt_ohms", None, 0.0001, 100.0)
            gain = _num(a, "gain", f + ".gain", 1.0, 0.01, 10000.0)
            scale = 1.0 / (shunt * gain)
        else:
            _err(f + ".kind", 'expected "voltage" or "current", got ' + repr(kind))
        offset = _num(a, "offset", f + ".offset", 0.0, -1000.0, 1000.0)
        out[name] = {
            "channel": ch,
            "pin": 26 + ch,
            "kind": kind,
            "scale": scale,
            "offset": offset,
        }
    return out


def _ina219(raw, pins):
    f = "ina219"
    raw = _obj(raw, f)
    _keys(
        raw, ("bus", "sda", "scl", "freq", "address", "shunt_ohms", "max_current_a", "comment"), f
    )
    for k in ("bus", "sda", "scl"):
        if k not in raw:
            _err(f + "." + k, "missing")
    bus = _int(raw, "bus", f + ".bus", None, 0, 1)
    sda = pins.take(raw["sda"], f + ".sda")
    scl = pins.take(raw["scl"], f + ".scl")
    if sda % 4 != bus * 2:
        _err(f + ".sda", "GP%d cannot be I2C%d SDA" % (sda, bus))
    if scl % 4 != bus * 2 + 1:
        _err(f + ".scl", "GP%d cannot be I2C%d SCL" % (scl, bus))
    return {
        "bus": bus,
        "sda": sda,
        "scl": scl,
        "freq": _int(raw, "freq", f + ".freq", 400000, 10000, 1000000),
        "address": _int(raw, "address", f + ".address", 0x40, 0x40, 0x4F),
        "shunt_ohms": _num(raw, "shunt_ohms", f + ".shunt_ohms", 0.1, 0.0001, 100.0),
        "max_current_a": _num(raw, "max_current_a", f + ".max_current_a", 3.2, 0.01, 100.0),
    }


def validate(raw):
    """Check a decoded board definition and return it normalised."""
    raw = _obj(raw, "board")
    _keys(raw, _TOP, "board")
    pins = _Pins()
    name = _str(raw, "name", "name", "")
    if not name:
        _err("name", "missing")
    defn = {
        "name": name,
        "description": _str(raw, "description", "description", ""),
        "comment": _str(raw, "comment", "comment", ""),
    }
    # Signals by role.
    sraw = _obj(raw.get("signals", {}), "signals")
    signals = {}
    for role in sraw:
        if role not in ROLES:
            _err("signals." + str(role), "unknown role (known: " + ", ".join(ROLES) + ")")
        signals[role] = _signal(sraw[role], "signals." + role, pins, role not in INPUT_ROLES)
    for role in REQUIRED_ROLES:
        if role not in signals:
            _err("signals." + role, "missing required role")
    defn["signals"] = signals
    # Rails, in power-on order.
    rraw = raw.get("rails")
    if rraw is None:
        _err("rails", "missing required role (at least one rail)")
    if not isinstance(rraw, list) or not rraw:
        _err("rails", "expected a non-empty list of rails")
    rails = []
    names = []
    ge_used = False
    for i, r in enumerate(rraw):
        f = "rails[%d]" % i
        r = _obj(r, f)
        _keys(r, ("name", "enable", "pgood", "pgood_timeout_ms", "comment"), f)
        rname = _str(r, "name", f + ".name", "")
        if not rname:
            _err(f + ".name", "missing")
        if rname in names:
            _err(f + ".name", "rail " + repr(rname) + " defined twice")
        names.append(rname)
        f = "rails." + rname
        if "enable" not in r:
            _err(f + ".enable", "missing (null for a rail that follows the previous one)")
        en = r["enable"]
        if en is None:
            if i == 0:
                _err(f + ".enable", "the first rail needs an enable")
            enable = None
            role = None
        elif isinstance(en, str):
            if en != "global_en":
                _err(f + ".enable", 'expected a signal or "global_en", got ' + repr(en))
            if "global_en" not in signals:
                _err(f + ".enable", "refers to signals.global_en, which is missing")
            if ge_used:
                _err(f + ".enable", "global_en already enables another rail")
            ge_used = True
            enable = signals["global_en"]
            role = "global_en"
        else:
            enable = _signal(en, f + ".enable", pins, True)
            role = None
        if "pgood" not in r:
            _err(f + ".pgood", "missing")
        pgood = _signal(r["pgood"], f + ".pgood", pins, False)
        lo, hi = PGOOD_TIMEOUT_RANGE
        tmo = _int(r, "pgood_timeout_ms", f + ".pgood_timeout_ms", DEFAULT_PGOOD_TIMEOUT_MS, lo, hi)
        rails.append(
            {
                "name": rname,
                "enable": enable,
                "enable_role": role,
                "pgood": pgood,
                "pgood_timeout_ms": tmo,
            }
        )
    if "global_en" in signals and not ge_used:
        _err("signals.global_en", 'must be the enable of a rail ("enable": "global_en")')
    defn["rails"] = rails
    defn["console"] = _console(raw["console"], pins) if raw.get("console") is not None else None
    defn["adc"] = _adc(raw["adc"], pins) if raw.get("adc") is not None else {}
    defn["ina219"] = _ina219(raw["ina219"], pins) if raw.get("ina219") is not None else None
    bp = raw.get("bootsel_presence", True)
    if not isinstance(bp, bool):
        _err("bootsel_presence", "expected true or false, got " + repr(bp))
    defn["bootsel_presence"] = bp
    traw = _obj(raw.get("timing", {}), "timing")
    _keys(traw, tuple(TIMING.keys()), "timing")
    timing = {}
    for k in TIMING:
        d, lo, hi = TIMING[k]
        timing[k] = _int(traw, k, "timing." + k, d, lo, hi)
    defn["timing"] = timing
    rp = raw.get("restore_policy", "AlwaysOff")
    if rp not in RESTORE_POLICIES:
        _err(
            "restore_policy", "expected one of " + ", ".join(RESTORE_POLICIES) + ", got " + repr(rp)
        )
    defn["restore_policy"] = rp
    return defn


def parse(text, source="board"):
    """Decode JSON text and validate it."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise BoardFileError(source + ": not valid JSON (" + str(e) + ")")
    return validate(raw)


def load(path):
    """Read, decode and validate a board file."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise BoardFileError(path + ": cannot read (" + str(e) + ")")
    except ValueError:  # UnicodeError; MicroPython's has no message
        raise BoardFileError(path + ": not UTF-8 text")
    return parse(text, path)

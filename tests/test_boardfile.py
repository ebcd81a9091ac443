"""Board definitions: the shipped boards load, and every bad case names its field."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import pytest
from bmc import boardfile
from bmc.boardfile import BoardFileError

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOARDS = sorted((ROOT / "boards" / "rp2040").glob("*.json"))


def base() -> dict[str, Any]:
    return json.loads((ROOT / "boards" / "rp2040" / "pico-rpi4.json").read_text())


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_shipped_boards_load(path: pathlib.Path) -> None:
    d = boardfile.load(str(path))
    assert d["name"] == path.stem
    assert d["rails"] and "shutdown_req" in d["signals"] and "halted" in d["signals"]
    pins = [s["pin"] for s in d["signals"].values()]
    pins += [r["pgood"]["pin"] for r in d["rails"]]
    pins += [r["enable"]["pin"] for r in d["rails"] if r["enable"] and not r["enable_role"]]
    assert len(pins) == len(set(pins))


def test_shipped_boards_cover_pi4_and_cm4() -> None:
    names = {p.stem for p in BOARDS}
    assert {"pico-rpi4", "pico-cm4"} <= names


def test_normalised_signals_and_defaults() -> None:
    d = boardfile.validate(base())
    run = d["signals"]["run"]
    assert run == {"pin": 6, "active_high": False, "pull": None, "open_drain": True, "output": True}
    assert d["signals"]["halted"]["output"] is False
    assert d["rails"][1]["enable"] is d["signals"]["global_en"]
    assert d["rails"][1]["enable_role"] == "global_en"
    assert d["console"] == {"uart": 0, "tx": 0, "rx": 1, "baud": 115200}
    assert d["adc"]["vsys"]["pin"] == 29 and d["adc"]["vsys"]["scale"] == 3.0
    cur = d["adc"]["sbc_current"]
    assert cur["kind"] == "current" and abs(cur["scale"] - 1 / (0.01 * 50)) < 1e-9
    assert d["timing"]["pgood_off_timeout_ms"] == 3000  # default filled in
    assert d["restore_policy"] == "LastState"


def edit(path: str, value: Any) -> dict[str, Any]:
    """A copy of the base board with `path` (dotted, [i] for list items) set or deleted."""
    raw = copy.deepcopy(base())
    node: Any = raw
    parts = path.replace("[", ".").replace("]", "").split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    key: Any = int(last) if isinstance(node, list) else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return raw


DELETE = object()

BAD = [
    ("signals.run.pin", 31, "signals.run.pin: 31 outside 0-29"),
    ("signals.run.pin", -1, "signals.run.pin: -1 outside 0-29"),
    ("signals.run.pin", "6", "signals.run.pin: expected an integer"),
    ("signals.run.pin", True, "signals.run.pin: expected an integer"),
    ("signals.run.pin", 7, "signals.shutdown_req.pin: pin 7 already used by signals.run.pin"),
    ("signals.fan", {"pin": 22}, "signals.fan: unknown role"),
    ("signals.halted", DELETE, "signals.halted: missing required role"),
    ("signals.shutdown_req", DELETE, "signals.shutdown_req: missing required role"),
    ("signals.run.active", "middle", "signals.run.active: expected"),
    ("signals.run.pull", "sideways", "signals.run.pull: expected"),
    ("signals.run.open_drain", "yes", "signals.run.open_drain: expected true or false"),
    ("signals.run.colour", "red", "signals.run.colour: unknown field"),
    ("signals.run.pin", DELETE, "signals.run.pin: missing"),
    ("signals.halted.open_drain", True, "signals.halted.open_drain: an input cannot"),
    ("signals", [], "signals: expected an object"),
    ("rails", DELETE, "rails: missing required role"),
    ("rails", [], "rails: expected a non-empty list"),
    ("rails[0].pgood.pin", 2, "rails.5v.pgood.pin: pin 2 already used by rails.5v.enable.pin"),
    ("rails[0].pgood_timeout_ms", 0, "rails.5v.pgood_timeout_ms: 0 outside 1-60000"),
    ("rails[0].pgood_timeout_ms", 1.5, "rails.5v.pgood_timeout_ms: expected an integer"),
    ("rails[0].pgood", DELETE, "rails.5v.pgood: missing"),
    ("rails[0].enable", DELETE, "rails.5v.enable: missing"),
    ("rails[0].enable", None, "rails.5v.enable: the first rail needs an enable"),
    ("rails[1].enable", "run", "rails.3v3.enable: expected a signal or"),
    ("rails[1].name", "5v", "rails[1].name: rail '5v' defined twice"),
    ("rails[0].name", "", "rails[0].name: missing"),
    ("rails[1].enable", {"pin": 11}, "signals.global_en: must be the enable of a rail"),
    ("console.tx", 2, "console.tx: pin 2 already used"),
    ("console.tx", 10, "console.tx: GP10 cannot be UART0 TX"),
    ("console.uart", 2, "console.uart: 2 outside 0-1"),
    ("console.baud", "fast", "console.baud: expected an integer"),
    ("adc.vsys.channel", 4, "adc.vsys.channel: 4 outside 0-3"),
    ("adc.sbc_5v.channel", 3, "adc.sbc_5v.channel: pin 29 already used by adc.vsys.channel"),
    ("adc.vsys.scale", "x", "adc.vsys.scale: expected a number"),
    ("adc.vsys.kind", "power", "adc.vsys.kind: expected"),
    ("adc.sbc_current.shunt_ohms", DELETE, "adc.sbc_current.shunt_ohms: missing"),
    ("adc.vsys.shunt_ohms", 0.1, "adc.vsys.shunt_ohms: only for kind"),
    ("timing.min_off_ms", -5, "timing.min_off_ms: -5 outside 0-600000"),
    ("timing.min_off_ms", "5s", "timing.min_off_ms: expected an integer"),
    ("timing.warp_ms", 5, "timing.warp_ms: unknown field"),
    ("restore_policy", "Sometimes", "restore_policy: expected one of"),
    ("name", DELETE, "name: missing"),
    ("bootsel_presence", "yes", "bootsel_presence: expected true or false"),
    ("gpio", {}, "board.gpio: unknown field"),
    ("ina219", {"bus": 0, "sda": 21, "scl": 20}, "ina219.sda: GP21 cannot be I2C0 SDA"),
    ("ina219", {"bus": 1, "sda": 18}, "ina219.scl: missing"),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[b[2].split(":")[0] for b in BAD])
def test_bad_board_names_the_field(path: str, value: Any, message: str) -> None:
    raw = edit(path, value)
    with pytest.raises(BoardFileError) as exc:
        boardfile.validate(raw)
    assert str(exc.value).startswith(message), str(exc.value)


def test_bad_files(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "b.json"
    p.write_text("{not json")
    with pytest.raises(BoardFileError, match="not valid JSON"):
        boardfile.load(str(p))
    with pytest.raises(BoardFileError, match="cannot read"):
        boardfile.load(str(tmp_path / "missing.json"))
    with pytest.raises(BoardFileError, match="board: expected an object"):
        boardfile.parse("[1, 2]")
    p.write_bytes(b"\xff\xfe{\x00")  # garbage on flash: MicroPython's UnicodeError has no message
    with pytest.raises(BoardFileError, match="b.json: not UTF-8 text"):
        boardfile.load(str(p))


def test_ina219_and_monitored_rail() -> None:
    raw = edit("ina219", {"bus": 0, "sda": 20, "scl": 21})
    d = boardfile.validate(raw)
    assert d["ina219"]["address"] == 0x40 and d["ina219"]["freq"] == 400000
    raw = json.loads((ROOT / "boards" / "rp2040" / "pico-rpi5.json").read_text())
    d = boardfile.validate(raw)
    assert d["rails"][1]["enable"] is None

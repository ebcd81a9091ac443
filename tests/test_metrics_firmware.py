"""The BMC's OpenMetrics, rendered by the real firmware under MicroPython.

`tests/mp/metrics_harness.py` runs `bmc.app.App` on a small fake board inside
the `micropython` unix port (RP2040-sized heap), sends `metrics` requests and
writes the frames it answers to stdout; here they are decoded with the shared
codec and the text is checked with prometheus_client's OpenMetrics parser plus
`tests.omcheck` (what that parser lets through).
"""

from __future__ import annotations

import json
import math
import pathlib
import random
import subprocess
from typing import Dict, List, Tuple

import pytest
from bmc import codec, sensors
from bmc.metrics import Out, escape, number
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests import omcheck
from tests.fake_bmc import frames as frames_in
from tests.mprun import HEAP, micropython_binary

ROOT = pathlib.Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "mp" / "metrics_harness.py"
BOARD = ROOT / "boards" / "rp2040" / "pico-rpi4.json"
SERIAL = "E6613852834A2B2F"  # the fake board's unique_id in hex


@pytest.fixture(scope="module")
def mpy_firmware(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The firmware compiled with mpy-cross, as a real board runs it."""
    out = tmp_path_factory.mktemp("mpy")
    mpy_cross = pathlib.Path(micropython_binary()).parent / "mpy-cross"
    for src in sorted((ROOT / "firmware" / "bmc").rglob("*.py")):
        dest = out / src.relative_to(ROOT / "firmware").with_suffix(".mpy")
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(mpy_cross), "-O2", "-o", str(dest), str(src)], check=True, cwd=ROOT / "firmware"
        )
    return out


Frames = Tuple[Dict[int, List[bytes]], Dict[int, dict]]


def run_harness(
    mpy: pathlib.Path, root: pathlib.Path, board: pathlib.Path, renders: int, *flags: str
) -> Frames:
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [micropython_binary(), "-X", f"heapsize={HEAP}", str(HARNESS), str(root), str(board)]
        + [str(renders), *flags],
        capture_output=True,
        timeout=120,
        env={"MICROPYPATH": f".frozen:{mpy}"},
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout.decode("utf-8", "replace")[-3000:]
    chunks: Dict[int, List[bytes]] = {}
    responses: Dict[int, dict] = {}
    reader = codec.FrameReader()
    for kind, rid, payload in frames_in(reader, proc.stdout):
        if kind == codec.KIND_CHUNK:
            chunks.setdefault(rid, []).append(payload)
        elif kind == codec.KIND_RESPONSE:
            responses[rid] = json.loads(payload)
    assert not reader.bad_crc and not reader.dropped, "stray output between frames"
    return chunks, responses


def text_of(frames: Frames, rid: int) -> str:
    return b"".join(frames[0][rid]).decode("utf-8")


def values(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def board_with(tmp_path: pathlib.Path, **changes: object) -> pathlib.Path:
    d = json.loads(BOARD.read_text())
    d.update(changes)
    p = tmp_path / "board.json"
    p.write_text(json.dumps(d))
    return p


INA219 = {"bus": 0, "sda": 12, "scl": 13, "shunt_ohms": 0.1, "max_current_a": 3.2}


def test_render_is_strict_openmetrics_with_the_boards_values(
    mpy_firmware: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    frames = run_harness(mpy_firmware, tmp_path / "fs", BOARD, 2)
    chunks, responses = frames
    assert sorted(responses) == [7, 8]
    for rid in (7, 8):
        assert responses[rid]["ok"] is True
        text = text_of(frames, rid)
        assert omcheck.openmetrics(text) == []
        # streamed: several chunks, none over a frame, nothing lost
        assert len(chunks[rid]) > 1
        assert all(len(c) <= codec.MAX_PAYLOAD for c in chunks[rid])
        assert responses[rid]["data"]["bytes"] == len(text.encode())
    v = values(text_of(frames, 8))
    assert v[("bmc_info", (("board", "pico-rpi4"), ("firmware_version", "0.1.0"),
                           ("serial", SERIAL)))] == 1  # fmt: skip
    assert v[("bmc_reset_cause", (("bmc_reset_cause", "watchdog"),))] == 1
    assert v[("bmc_reset_cause", (("bmc_reset_cause", "power_on"),))] == 0
    assert v[("bmc_boots_total", ())] == 1
    assert v[("sbc_power_state", (("sbc_power_state", "Off"),))] == 1
    assert v[("sbc_power_state", (("sbc_power_state", "On"),))] == 0
    for rail in ("5v", "3v3"):
        assert v[("sbc_rail_power_good", (("rail", rail),))] == 0
        assert v[("sbc_rail_enabled", (("rail", rail),))] == 0
    # ADC 4 raw 14000 -> RP2040 datasheet formula; VSYS = ADC3 * 3
    assert v[("bmc_temperature_celsius", ())] == pytest.approx(
        27 - (14000 * 3.3 / 65535 - 0.706) / 0.001721
    )
    assert v[("bmc_input_voltage_volts", ())] == pytest.approx(30000 * 3.3 / 65535 * 3)
    amps = 2000 * 3.3 / 65535 / (0.01 * 50)
    assert v[("sbc_current_amperes", (("sensor", "sbc_current"),))] == pytest.approx(amps)
    volts = 50000 * 3.3 / 65535 * 2
    assert v[("sbc_power_watts", (("sensor", "sbc_current"),))] == pytest.approx(amps * volts)
    assert v[("bmc_commands_total", (("result", "ok"),))] == 1  # the first metrics request
    assert v[("bmc_auth_failures_total", (("reason", "bad_mac"),))] == 0
    assert v[("bmc_auth_locked_out", ())] == 0
    assert v[("bmc_heap_free_bytes", ())] > 0
    assert v[("bmc_metrics_renders_total", ())] == 1
    # the first render's own figures show up in the second
    assert v[("bmc_metrics_render_heap_peak_bytes", ())] > v[("bmc_heap_allocated_bytes", ())] / 2
    assert v[("bmc_metrics_render_allocated_bytes", ())] > 0
    assert v[("bmc_metrics_render_size_bytes", ())] == len(text_of(frames, 7).encode())
    first = values(text_of(frames, 7))
    assert ("bmc_metrics_render_heap_peak_bytes", ()) not in first


# Pieces that make a line wrong, or right in a way the bridge must keep right.
_TOKENS = (
    "NaN", "+Inf", "-Inf", "1e999", "-1", "0x10", "1_0", " ", "", "\\", "\\q", '\\"', '"',
    "{", "}", ",", "=", "slot", "serial", "exported_slot", "_total", "_created", "_info",
    "# EOF", "# HELP", "# TYPE", "# UNIT", "counter", "gauge", "info", "stateset",
    "unknown", "histogram", "\u00e9", "\x00", "le", "1.5", "01", ".5", "a:b", "\t",
)  # fmt: skip


def _mutated(lines: List[str], rng: random.Random) -> str:
    ls = list(lines)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(len(ls))
        if op == 0:
            ls.insert(i, ls[rng.randrange(len(ls))])
        elif op == 1:
            del ls[i]
        elif op == 2:
            j = rng.randrange(len(ls[i]) + 1)
            ls[i] = ls[i][:j] + rng.choice(_TOKENS) + ls[i][j:]
        elif op == 3:
            j = rng.randrange(len(ls[i]) + 1)
            ls[i] = ls[i][:j] + ls[i][rng.randrange(j, len(ls[i]) + 1) :]
        elif op == 4:
            j = rng.randrange(len(ls))
            ls[i], ls[j] = ls[j], ls[i]
        else:
            ls[i] = ls[i].rpartition(" ")[0] + " " + rng.choice(_TOKENS + ("1", "-0", "3.25"))
    return "\n".join(ls)


def test_the_bridge_passes_on_only_valid_text_from_mutated_renders(
    mpy_firmware: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """One BMC's bad text must never reach Prometheus: it would fail the scrape of the
    whole rack. A real render, mutated line by line (seeded), goes through the bridge's
    check; whatever it takes, merged for two BMCs and written in both formats, must
    pass prometheus_client's parsers and the strict checks."""
    from prometheus_client.parser import text_string_to_metric_families as text004_families
    from racklet_host.bridge import expo

    frames = run_harness(mpy_firmware, tmp_path / "fs", BOARD, 1)
    lines = text_of(frames, 7).split("\n")
    rng = random.Random(20261206)
    taken = 0
    for _ in range(1500):
        text = _mutated(lines, rng)
        if rng.random() < 0.3:
            expo.forget_checked()  # the full check as well as the cached one
        try:
            exposition = expo.parse(text)
        except expo.ExpositionError:
            continue
        taken += 1
        merger = expo.Merger()
        merger.add(exposition, "SER1", "slot1")
        merger.add(exposition, "SER2", "slot2")
        om = expo.render(merger, True).decode()
        assert omcheck.openmetrics(om) == [], text
        plain = expo.render(merger, False).decode()
        assert omcheck.text004(plain) == [], text
        list(text004_families(plain))
    assert taken > 100  # the draw reaches texts the bridge takes, not only refusals


def test_ina219_and_a_failing_bus(mpy_firmware: pathlib.Path, tmp_path: pathlib.Path) -> None:
    board = board_with(tmp_path, ina219=INA219)
    v = values(text_of(run_harness(mpy_firmware, tmp_path / "a", board, 1), 7))
    # fake chip: 25 mV over 0.1 ohm, bus register 1275 * 4 mV
    assert v[("sbc_current_amperes", (("sensor", "ina219"),))] == pytest.approx(0.25)
    assert v[("sbc_voltage_volts", (("sensor", "ina219"),))] == pytest.approx(5.1)
    assert v[("sbc_power_watts", (("sensor", "ina219"),))] == pytest.approx(1.275)
    frames = run_harness(mpy_firmware, tmp_path / "b", board, 1, "--i2c-fail")
    text = text_of(frames, 7)
    assert omcheck.openmetrics(text) == []
    v = values(text)
    assert ("sbc_current_amperes", (("sensor", "ina219"),)) not in v
    assert v[("bmc_sensor_errors_total", (("sensor", "ina219"),))] >= 1
    assert ("sbc_current_amperes", (("sensor", "sbc_current"),)) in v  # the ADC still reads


def test_label_values_are_escaped(mpy_firmware: pathlib.Path, tmp_path: pathlib.Path) -> None:
    name = 'rack "A"\\left\nslot'
    frames = run_harness(mpy_firmware, tmp_path / "fs", board_with(tmp_path, name=name), 1)
    text = text_of(frames, 7)
    assert omcheck.openmetrics(text) == []
    assert 'board="rack \\"A\\"\\\\left\\nslot"' in text
    info = [f for f in text_string_to_metric_families(text) if f.name == "bmc"][0]
    assert info.samples[0].labels["board"] == name


# -- the same modules on CPython ----------------------------------------------


def test_out_chunks_and_escapes() -> None:
    sent: List[bytes] = []
    buf = bytearray(64)
    view = memoryview(buf)
    out = Out(view, lambda n: sent.append(bytes(view[:n])))
    out.family("x_seconds", "gauge", "a help", "seconds")
    for i in range(10):
        out.sample("x_seconds", i * 0.5, "k", f'v"{i}')
    out.write("y" * 150 + "\n")  # longer than a chunk
    out.eof()
    text = b"".join(sent).decode()
    assert all(len(c) <= 64 for c in sent)
    assert text.startswith("# HELP x_seconds a help\n# TYPE x_seconds gauge\n# UNIT x_seconds")
    assert 'x_seconds{k="v\\"3"} 1.5\n' in text
    assert "y" * 150 + "\n# EOF\n" in text
    assert escape('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert [number(x) for x in (True, False, 3, 0.25, math.nan, math.inf, -math.inf)] == [
        "1", "0", "3", "0.25", "NaN", "+Inf", "-Inf"
    ]  # fmt: skip


class FakeI2C:
    def __init__(self, shunt: int, bus: int) -> None:
        self.regs = {0: 0x399F, 1: shunt & 0xFFFF, 2: bus}
        self.writes: List[Tuple[int, int]] = []

    def readfrom_mem(self, addr: int, reg: int, n: int) -> bytes:
        return self.regs[reg].to_bytes(2, "big")

    def writeto_mem(self, addr: int, reg: int, buf: bytes) -> None:
        self.regs[reg] = int.from_bytes(bytes(buf), "big")
        self.writes.append((reg, self.regs[reg]))


def test_ina219_driver_signs_ranges_and_reconfigures() -> None:
    spec = dict(INA219, address=0x40, freq=400000, max_current_a=1.0)
    i2c = FakeI2C(shunt=-1500, bus=(3300 // 4) << 3)  # current flowing backwards
    chip = sensors.INA219(i2c, spec)
    volts, amps, watts = chip.read()
    assert volts == pytest.approx(3.3)
    assert amps == pytest.approx(-0.15)
    assert watts == pytest.approx(-0.495)
    # 1 A over 0.1 ohm = 100 mV: the 160 mV range (PGA /4, bits 12..11 = 10)
    assert i2c.writes == [(0, 0x219F | (2 << 11))]
    chip.read()
    assert len(i2c.writes) == 1  # configured once ...
    i2c.regs[0] = 0x399F  # ... until the chip lost power and forgot it
    chip.read()
    assert len(i2c.writes) == 2

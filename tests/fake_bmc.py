"""Stand-in BMCs on PTYs for bridge tests and benchmarks: they answer `hello` and `metrics`.

    python tests/fake_bmc.py RACK_DIR SLOT SERIAL [--garbage | --replay FILE [--pace PACE]]

Links RACK_DIR/slotSLOT to its PTY like `bmc-sim` does, and renders its metrics
with the firmware's own `bmc.metrics.Out` (a counter of scrapes it answered, its
serial in `bmc_info`); `--garbage` sends an exposition with a malformed line
instead, `--replay FILE` sends FILE's text (a recorded firmware render, with
`@SERIAL@` replaced by SERIAL). It answers at once: no MicroPython, no render
cost. With `--pace PACE` (JSON: `{"sizes": [chunk bytes...], "offsets_ms": [when
each chunk went out...], "done_ms": when the response did}`, as recorded from a
real BMC) the replay is cut into those chunks and each is sent at its recorded
time after the request, sleeping in between: a BMC that takes the real render's
time on a CPU of its own, without taking the host's. Stopping it (SIGSTOP) is a
hung BMC, killing it an unplugged one. The firmware's real output is tested under
MicroPython in test_metrics_firmware.py and through bmc-sim in test_metrics_sim.py.

`Fakes` starts and stops such processes (tests/test_bridge.py, bench/metrics.py).
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from bmc import codec
from bmc.metrics import Out

SERIAL_TOKEN = "@SERIAL@"


class Fakes:
    """Stand-in BMC processes, one per slot, linked into the rack directory `rack`."""

    def __init__(self, rack: pathlib.Path) -> None:
        self.rack = rack
        self.procs: Dict[int, subprocess.Popen[str]] = {}

    def start(self, slot: int, *extra: str) -> None:
        self.start_many([slot], *extra)

    def start_many(self, slots: List[int], *extra: str) -> None:
        """Start one stand-in per slot (all at once), each ready when this returns."""
        started = []
        for slot in slots:
            p = subprocess.Popen(
                [sys.executable, __file__, str(self.rack), str(slot), f"SERIAL{slot:02d}", *extra],
                stdout=subprocess.PIPE,
                text=True,
            )
            self.procs[slot] = p
            started.append(p)
        for p in started:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"stand-in BMC did not start: {line!r}")

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait()


def render(serial: str, slot: str, scrapes: int, send: Out) -> None:
    send.family("bmc", "info", "Firmware version, board and serial of this BMC")
    send.write(f'bmc_info{{firmware_version="fake",board="fake",serial="{serial}"}} 1\n')
    send.family("fake_scrapes", "counter", "Metrics requests answered")
    send.sample("fake_scrapes_total", scrapes)
    send.family("fake_slot", "gauge", "The slot number this fake was started for")
    send.sample("fake_slot", int(slot))
    send.family("bmc_temperature_celsius", "gauge", "RP2040 die temperature", "celsius")
    send.sample("bmc_temperature_celsius", 30.5)
    send.eof()


def render_garbage(serial: str, send: Out) -> None:
    send.family("bmc", "info", "Firmware version, board and serial of this BMC")
    send.write(f'bmc_info{{firmware_version="fake",board="fake",serial="{serial}"}} 1\n')
    send.family("fake_slot", "gauge", "A sample line the bridge must refuse")
    send.write("fake_slot{oops} 1\n")
    send.eof()


def main() -> None:
    rack, slot, serial = sys.argv[1], sys.argv[2], sys.argv[3]
    mode = sys.argv[4] if len(sys.argv) > 4 else ""
    replay: Optional[bytes] = None
    pace: Optional[Dict[str, Any]] = None
    if mode == "--replay":
        with open(sys.argv[5], encoding="utf-8") as f:
            replay = f.read().replace(SERIAL_TOKEN, serial).encode()
        if len(sys.argv) > 7 and sys.argv[6] == "--pace":
            with open(sys.argv[7], encoding="utf-8") as f:
                pace = json.load(f)
    master, slave = os.openpty()
    name = os.ttyname(slave)
    import tty

    tty.setraw(slave)
    link = os.path.join(rack, f"slot{slot}")
    tmp = link + ".tmp"
    os.symlink(name, tmp)
    os.replace(tmp, link)
    reader = codec.FrameReader()
    writer = codec.FrameWriter(_Master(master))
    replay_chunks: Optional[List[bytes]] = None
    replay_reply = codec.dumps({"ok": True, "data": {}})
    offsets: List[float] = []
    if replay is not None and pace is not None:  # cut and timed as the recorded render
        replay_chunks, offsets = _paced_chunks(replay, pace)
    elif replay is not None:  # cut as the firmware's Out cuts: full payloads, then the rest
        size = codec.MAX_PAYLOAD
        replay_chunks = [replay[i : i + size] for i in range(0, len(replay), size)]
    scrapes = 0
    print("ready", flush=True)
    while True:
        r, _, _ = select.select([master], [], [], 1.0)
        if not r:
            continue
        try:
            data = os.read(master, 4096)
        except OSError:
            time.sleep(0.01)
            continue
        now = int(time.monotonic() * 1000)
        while data:
            k = reader.feed(data, now)
            data = data[k:]
            while True:
                f = reader.next_frame()
                if f is None:
                    break
                kind, _, rid, payload = f
                if kind != codec.KIND_REQUEST:
                    continue
                msg = json.loads(bytes(payload))
                if msg.get("cmd") == "metrics" and replay_chunks is not None and offsets:
                    scrapes += 1
                    t0 = time.monotonic()
                    for chunk, at in zip(replay_chunks, offsets):
                        time.sleep(max(t0 + at - time.monotonic(), 0.0))
                        _write_all(master, codec.encode_frame(codec.KIND_CHUNK, rid, chunk))
                    time.sleep(max(t0 + offsets[-1] - time.monotonic(), 0.0))
                    _write_all(master, codec.encode_frame(codec.KIND_RESPONSE, rid, replay_reply))
                    continue
                if msg.get("cmd") == "metrics" and replay_chunks is not None:
                    # the whole answer (chunks and response) in one write: a stand-in
                    # should cost the CPU it shares with the bridge as little as it can
                    scrapes += 1
                    frames = [codec.encode_frame(codec.KIND_CHUNK, rid, c) for c in replay_chunks]
                    frames.append(codec.encode_frame(codec.KIND_RESPONSE, rid, replay_reply))
                    _write_all(master, b"".join(frames))
                    continue
                if msg.get("cmd") == "metrics":
                    scrapes += 1
                    view = writer.payload_view()

                    def flush(n: int, rid: int = rid) -> None:
                        writer.send_prepared(codec.KIND_CHUNK, rid, n)

                    out = Out(view, flush)
                    if mode == "--garbage":
                        render_garbage(serial, out)
                    else:
                        render(serial, slot, scrapes, out)
                    reply = {"ok": True, "data": {}}
                elif msg.get("cmd") == "hello":
                    reply = {"ok": True, "data": {"serial": serial, "proto": 1, "board": "fake"}}
                else:
                    reply = {"ok": False, "error": "unknown_command", "message": "fake"}
                writer.send(codec.KIND_RESPONSE, rid, codec.dumps(reply))


def _paced_chunks(text: bytes, pace: Dict[str, Any]) -> Tuple[List[bytes], List[float]]:
    """`text` cut into the recorded chunk sizes (the last takes the rest, split if too
    long); the time in seconds after the request of each chunk, then of the response."""
    sizes: List[int] = pace["sizes"]
    times: List[float] = [ms / 1000.0 for ms in pace["offsets_ms"]]
    chunks: List[bytes] = []
    offsets: List[float] = []
    pos = 0
    for i, size in enumerate(sizes):
        if pos >= len(text):
            break
        end = len(text) if i == len(sizes) - 1 else pos + size
        while pos < end:
            chunks.append(text[pos : min(end, pos + codec.MAX_PAYLOAD)])
            offsets.append(times[i])
            pos += len(chunks[-1])
    offsets.append(pace["done_ms"] / 1000.0)
    return chunks, offsets


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view) :]


class _Master:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, b: memoryview) -> int:
        return os.write(self.fd, b)


if __name__ == "__main__":
    main()

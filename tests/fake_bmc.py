"""Stand-in BMCs on PTYs for bridge tests and benchmarks: they answer `hello` and `metrics`.

    python tests/fake_bmc.py RACK_DIR SLOT SERIAL [--garbage | --replay FILE]
    python tests/fake_bmc.py RACK_DIR --paced FILE PACE SLOT...

Links RACK_DIR/slotSLOT to its PTY like `bmc-sim` does, and renders its metrics
with the firmware's own `bmc.metrics.Out` (a counter of scrapes it answered, its
serial in `bmc_info`); `--garbage` sends an exposition with a malformed line
instead, `--replay FILE` sends FILE's text (a recorded firmware render, with
`@SERIAL@` replaced by SERIAL and every `@SCRAPE@` by a number that grows with
every scrape and differs from BMC to BMC: the values a real BMC's render changes
from one scrape to the next, such as its uptime and its command counters). It
answers at once: no MicroPython, no render cost. Stopping it (SIGSTOP) is a hung
BMC, killing it an unplugged one.

`--paced` runs one stand-in per SLOT (serial SERIALnn) in a single process, each
replaying FILE as a BMC that renders on a CPU of its own: PACE (JSON: `{"sizes":
[chunk bytes...], "offsets_ms": [when each chunk went out...], "done_ms": when
the response did}`, recorded from a real BMC) cuts the text into those chunks,
and each goes out at its recorded time after that BMC's request. In between the
process sleeps; one process for all slots wakes once for every chunk due at that
moment, so the stand-ins take as little of the host's CPU as they can. Still,
frames due at one moment go out one after another: with the environment variable
FAKE_BMC_LATENESS naming a file, each time every due frame is out it appends a
line `BMCS FRAMES LAST_US`: how many BMCs and frames that run of writes served
and how late (after its due time) its last frame went out.

The firmware's real output is tested under MicroPython in test_metrics_firmware.py
and through bmc-sim in test_metrics_sim.py.

`Fakes` starts and stops such processes (tests/test_bridge.py, bench/metrics.py).
"""

from __future__ import annotations

import heapq
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from bmc import codec
from bmc.metrics import Out

SERIAL_TOKEN = "@SERIAL@"
SCRAPE_TOKEN = "@SCRAPE@"


def changing(first: str, second: str) -> str:
    """`first` (a render) with the value of every counter and gauge sample that reads
    differently in `second` (the same BMC's next render) replaced by SCRAPE_TOKEN."""
    a = first.split("\n")
    b = second.split("\n")
    if len(a) != len(b):
        return first
    kind = ""  # the type of the family the line belongs to
    out = []
    for x, y in zip(a, b):
        if x.startswith("# TYPE "):
            kind = x.split(" ", 3)[3]
        elif x != y and not x.startswith("#") and kind in ("counter", "gauge"):
            x = x.rpartition(" ")[0] + " " + SCRAPE_TOKEN
        out.append(x)
    return "\n".join(out)


def _count(scrapes: int, slot: str) -> str:
    """What replaces SCRAPE_TOKEN: grows with the scrapes, differs per slot."""
    return str(scrapes * 100 + int(slot))


def _cut(text: bytes) -> List[bytes]:
    """Cut as the firmware's Out cuts: full payloads, then the rest."""
    size = codec.MAX_PAYLOAD
    return [text[i : i + size] for i in range(0, len(text), size)]


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

    def start_paced(
        self, slots: List[int], template: str, pace: str, lateness: Optional[str] = None
    ) -> None:
        """Paced stand-ins for `slots`, all in one process (see `--paced`);
        `lateness`: the file for FAKE_BMC_LATENESS."""
        env = dict(os.environ)
        if lateness is not None:
            env["FAKE_BMC_LATENESS"] = lateness
        p = subprocess.Popen(
            [sys.executable, __file__, str(self.rack), "--paced", template, pace]
            + [str(s) for s in slots],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.procs[-len(self.procs) - 1] = p  # not a slot: one process serves them all
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"paced stand-in BMCs did not start: {line!r}")

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
    replay: Optional[List[str]] = None  # the text around each SCRAPE_TOKEN
    if mode == "--replay":
        with open(sys.argv[5], encoding="utf-8") as f:
            replay = f.read().replace(SERIAL_TOKEN, serial).split(SCRAPE_TOKEN)
    master = _pty(rack, slot)
    reader = codec.FrameReader()
    writer = codec.FrameWriter(_Master(master))
    replay_reply = codec.dumps({"ok": True, "data": {}})
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
        for rid, msg in _requests(reader, data):
            if msg.get("cmd") == "metrics" and replay is not None:
                # the whole answer (chunks and response) in one write: a stand-in
                # should cost the CPU it shares with the bridge as little as it can
                scrapes += 1
                chunks = _cut(_count(scrapes, slot).join(replay).encode())
                frames = [codec.encode_frame(codec.KIND_CHUNK, rid, c) for c in chunks]
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
            else:
                reply = _answer(msg, serial)
            writer.send(codec.KIND_RESPONSE, rid, codec.dumps(reply))


def frames(reader: codec.FrameReader, data: bytes) -> Iterator[Tuple[int, int, bytes]]:
    """(kind, request id, payload) of every frame `data` completes (also for tests)."""
    while data:
        k = reader.feed(data, int(time.monotonic() * 1000))
        data = data[k:]
        while True:
            f = reader.next_frame()
            if f is None:
                break
            yield f[0], f[2], bytes(f[3])


def _requests(reader: codec.FrameReader, data: bytes) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(request id, message) of every request frame `data` completes."""
    for kind, rid, payload in frames(reader, data):
        if kind == codec.KIND_REQUEST:
            yield rid, json.loads(payload)


def _answer(msg: Dict[str, Any], serial: str) -> Dict[str, Any]:
    """The reply to a request other than `metrics`."""
    if msg.get("cmd") == "hello":
        return {
            "ok": True,
            "data": {"serial": serial, "proto": codec.PROTO_VERSION, "board": "fake"},
        }
    if msg.get("cmd") == "status":
        return {"ok": True, "data": {"state": "Off"}}
    return {"ok": False, "error": "unknown_command", "message": "fake"}


def _pty(rack: str, slot: str) -> int:
    """A raw PTY linked as RACK/slotSLOT (as bmc-sim does); its master end."""
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    link = os.path.join(rack, f"slot{slot}")
    tmp = link + ".tmp"
    os.symlink(os.ttyname(slave), tmp)
    os.replace(tmp, link)
    return master


def paced_main(rack: str, template: str, pace_file: str, slots: List[str]) -> None:
    with open(template, encoding="utf-8") as f:
        text = f.read()
    with open(pace_file, encoding="utf-8") as f:
        pace = json.load(f)
    reply = codec.dumps({"ok": True, "data": {}})
    # per port: slot, serial, reader, the text around each SCRAPE_TOKEN, scrapes answered
    masters: Dict[int, Tuple[str, str, codec.FrameReader, List[str], List[int]]] = {}
    for slot in slots:
        serial = f"SERIAL{int(slot):02d}"
        parts = text.replace(SERIAL_TOKEN, serial).split(SCRAPE_TOKEN)
        masters[_pty(rack, slot)] = (slot, serial, codec.FrameReader(), parts, [0])
    due: List[Tuple[float, int, int, bytes]] = []  # (when, seq, master, frame): a heap
    seq = 0
    lateness = os.environ.get("FAKE_BMC_LATENESS")
    run_fds: set[int] = set()
    run_frames = 0
    print("ready", flush=True)
    while True:
        wait = max(due[0][0] - time.monotonic(), 0.0) if due else 1.0
        ready, _, _ = select.select(list(masters), [], [], wait)
        now = time.monotonic()
        while due and due[0][0] <= now:
            when, _, fd, frame = heapq.heappop(due)
            _write_all(fd, frame)
            if lateness:
                run_fds.add(fd)
                run_frames += 1
                if not due:  # the run's last frame: how late it went out
                    late = (time.monotonic() - when) * 1e6
                    with open(lateness, "a", encoding="utf-8") as f:
                        f.write(f"{len(run_fds)} {run_frames} {late:.0f}\n")
                    run_fds.clear()
                    run_frames = 0
        for fd in ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                continue
            slot, serial, reader, parts, scrapes = masters[fd]
            for rid, msg in _requests(reader, data):
                if msg.get("cmd") == "metrics":
                    scrapes[0] += 1
                    text = _count(scrapes[0], slot).join(parts)
                    chunks, offsets = _paced_chunks(text.encode(), pace)
                    frames = [codec.encode_frame(codec.KIND_CHUNK, rid, c) for c in chunks]
                    frames.append(codec.encode_frame(codec.KIND_RESPONSE, rid, reply))
                    for frame, at in zip(frames, offsets):
                        seq += 1  # in order, also when two are due at the same time
                        heapq.heappush(due, (now + at, seq, fd, frame))
                    continue
                answer = _answer(msg, serial)
                _write_all(fd, codec.encode_frame(codec.KIND_RESPONSE, rid, codec.dumps(answer)))


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
        # the replayed text may be shorter than the recorded one (a shorter serial)
        end = len(text) if i == len(sizes) - 1 else min(pos + size, len(text))
        while pos < end:
            chunks.append(text[pos : min(end, pos + codec.MAX_PAYLOAD)])
            offsets.append(times[i])
            pos += len(chunks[-1])
    offsets.append(pace["done_ms"] / 1000.0)
    return chunks, offsets


def fill_port(fd: int) -> None:
    """Write to a BMC's port (a PTY) until not a byte more fits, also once the kernel has moved
    what it holds into the line discipline's buffer (it does so a moment later)."""
    wrote = 1
    while wrote:
        wrote = 0
        for size in (1024, 1):
            try:
                while True:
                    wrote += os.write(fd, b"\0" * size)
            except BlockingIOError:
                pass
        time.sleep(0.05)


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
    if len(sys.argv) > 2 and sys.argv[2] == "--paced":
        paced_main(sys.argv[1], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        main()

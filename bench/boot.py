"""Boot files streamed from the BMC, as a ratio to a raw bulk transfer on the same kind of PTY.

In one run: a `bmc-sim` rack with one CM4 BMC (the firmware under the MicroPython unix
port on a PTY) holding one boot file on its flash, and beside it a bare MicroPython
bulk writer on a PTY set up the same way (`bench.protocol.Echo` with another script).
Measured, interleaved so both see the same machine load:

- `boot-file-read` of the stored file: the signed request frame written (the MAC is
  made before the clock starts), every chunk frame and the response read, as the relay
  reads them (`Link.read_frame`);
- the raw transfer: on the same request bytes the bare script writes the very frames
  the BMC sent (the same number of bytes, in the same frame-sized writes, the file's
  bytes as chunk payloads), read by the host the same way;
- for comparison, the whole client call the relay makes (`BmcClient.call`, nonce
  reuse included) and the payload it returns.

Goal (issue 5): the BMC's stream >= 0.8 of the raw transfer's throughput (median).
Also the streams' own time on the BMC, from the request's turn (its MAC checked) to the
last chunk written (`bmc_boot_stream_seconds_total`), which tells the firmware's part
from the request's way in and the host's; and the BMC's heap high-water mark while it
streamed (`boot-status` `heap_peak`: bytes allocated, garbage not yet collected
included) and, for comparison, the heap during a metrics scrape
(`bmc_heap_allocated_bytes`, after the scrape's collection, with the renderer loaded).
Nothing here asserts on speed.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from typing import Any, Dict, List, Tuple

from bmc import codec
from racklet_host.cli_boot import ON_BMC_MAX, manifest_set
from racklet_host.client import BmcClient
from racklet_host.keys import Key
from racklet_host.transport import Link
from racklet_sim.rack import Rack

from bench.protocol import Echo, provision

FILE_NAME = "start4.elf"
FILE_SIZE = 60000  # a start4.elf-sized file that lives on the BMC (<= --on-bmc-max)
ROUNDS = 40
ROUNDS_CALL = 20
WARMUP = 3
GOAL = 0.8
RID = 0x5151

# The bare bulk writer: once a whole request has arrived, write the frames held in
# BLOB (sizes in SIZES) to stdout, each as one write (finished after a POLLOUT wait
# when the PTY is full, as the firmware's link does).
BULK_WRITER = """\
import sys
import select

with open({blob!r}, "rb") as f:
    blob = f.read()
mv = memoryview(blob)
sizes = {sizes!r}
need = {req_len}
buf = bytearray(4096)
inp = sys.stdin.buffer
out = sys.stdout.buffer
rp = select.poll()
rp.register(inp, select.POLLIN)
wp = select.poll()
wp.register(out, select.POLLOUT)


def put(v):
    done = 0
    n = len(v)
    while done < n:
        try:
            k = out.write(v[done:])
        except OSError:
            k = 0
        done += k or 0
        if done < n:
            wp.poll(1000)


got = 0
while True:
    rp.poll(-1)
    n = inp.readinto(buf)
    if n is None:
        continue
    if n == 0:
        break
    got += n
    if got < need:
        continue
    got = 0
    off = 0
    for s in sizes:
        put(mv[off : off + s])
        off += s
"""


def _read_reply(link: Link, rid: int) -> Tuple[List[bytes], bytes]:
    """Chunk payloads and the response payload of request `rid`."""
    chunks: List[bytes] = []
    deadline = time.monotonic() + 10
    while True:
        f = link.read_frame(deadline)
        if f.req_id != rid:
            continue
        if f.kind == codec.KIND_CHUNK:
            chunks.append(f.payload)
        elif f.kind == codec.KIND_RESPONSE:
            return chunks, f.payload


def _timed(link: Link, frame: bytes, rid: int) -> Tuple[float, List[bytes], bytes]:
    t = time.perf_counter()
    link.write(frame)
    chunks, resp = _read_reply(link, rid)
    return time.perf_counter() - t, chunks, resp


def _signed_frame(client: BmcClient, key: Key, args: Dict[str, Any]) -> bytes:
    msg = {"cmd": "boot-file-read", "args": args, "auth": client.sign(key, "boot-file-read", args)}
    return codec.encode_frame(codec.KIND_REQUEST, RID, codec.dumps(msg))


def _check(data: bytes, chunks: List[bytes], resp: bytes, what: str) -> None:
    got = b"".join(chunks)
    if got != data:
        raise RuntimeError(f"{what}: {len(got)} bytes, not the file's {len(data)}: {resp[:200]!r}")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    raise RuntimeError(f"no {name} in the BMC's metrics")


def measure() -> Dict[str, Any]:
    data = os.urandom(FILE_SIZE)
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as work:
        with Rack(boards=1, board="pico-cm4") as rack:
            key = Key.generate()
            rack.bootsel(1, seconds=3)
            client = BmcClient.open(rack.port(1), key=key, timeout=10)
            bulk = None
            try:
                provision(client, key)
                path = os.path.join(work, FILE_NAME)
                with open(path, "wb") as f:
                    f.write(data)
                manifest_set(client, [(FILE_NAME, path)], ON_BMC_MAX, os.path.join(work, "cache"))
                man = client.boot_manifest()
                entry = [e for e in man["files"] if e["name"] == FILE_NAME][0]
                if entry["src"] != "bmc" or entry["sha256"] != hashlib.sha256(data).hexdigest():
                    raise RuntimeError(f"{FILE_NAME} is not stored on the BMC: {entry}")
                args = {"name": FILE_NAME, "gen": man["gen"], "sha256": entry["sha256"]}

                # the frames the BMC sends for this file, rebuilt for the bare writer
                frame = _signed_frame(client, key, args)
                _, chunks, resp = _timed(client.link, frame, RID)
                _check(data, chunks, resp, "boot-file-read")
                frames = [codec.encode_frame(codec.KIND_CHUNK, RID, c) for c in chunks]
                frames.append(codec.encode_frame(codec.KIND_RESPONSE, RID, resp))
                blob = os.path.join(work, "frames.bin")
                with open(blob, "wb") as f:
                    f.write(b"".join(frames))
                source = BULK_WRITER.format(
                    blob=blob, sizes=[len(x) for x in frames], req_len=len(frame)
                )
                bulk = Echo(work, source, "bulk.py")

                fw: List[float] = []
                raw: List[float] = []
                in_fw = client.call("boot-status", auth=False)["counters"]["stream_ms"]
                for i in range(WARMUP + ROUNDS):
                    frame = _signed_frame(client, key, args)  # untimed: nonce and MAC
                    t_raw, c_raw, r_raw = _timed(bulk.link, frame, RID)
                    t_fw, c_fw, r_fw = _timed(client.link, frame, RID)
                    _check(data, c_raw, r_raw, "raw")
                    _check(data, c_fw, r_fw, "boot-file-read")
                    if i >= WARMUP:
                        raw.append(t_raw)
                        fw.append(t_fw)

                in_fw = client.call("boot-status", auth=False)["counters"]["stream_ms"] - in_fw
                calls: List[float] = []
                for _ in range(ROUNDS_CALL):
                    got: List[bytes] = []
                    t = time.perf_counter()
                    client.call("boot-file-read", args, on_chunk=got.append)
                    calls.append(time.perf_counter() - t)
                    _check(data, got, b"", "BmcClient.call")

                st = client.call("boot-status", auth=False)
                live = _metric(client.metrics(), "bmc_heap_allocated_bytes")
            finally:
                client.close()
                if bulk is not None:
                    bulk.close()
    wire = sum(len(x) for x in frames)
    return {
        "fw": fw,
        "raw": raw,
        "calls": calls,
        "frames": len(frames),
        "wire_bytes": wire,
        "fw_stream_s": in_fw / 1e3 / (WARMUP + ROUNDS),
        "heap_peak": st.get("heap_peak"),
        "heap_size": st.get("heap_size"),
        "heap_live": live,
    }


def run() -> None:
    res = measure()
    mb = FILE_SIZE / 1e6
    raw_med = statistics.median(res["raw"])
    print(
        f"A {FILE_SIZE}-byte boot file on the BMC's flash, streamed over a PTY by the firmware\n"
        f"under the MicroPython unix port (bmc-sim), vs a bare MicroPython script writing\n"
        f"the same {res['frames']} frames ({res['wire_bytes']} bytes) to its PTY; same run,"
        " interleaved."
    )
    raw_min = min(res["raw"])
    print(
        f"{'transfer':<32}{'n':>4}{'median':>10}{'min':>10}{'MB/s':>8}{'ratio':>8}"
        f"{'by min':>8}{'goal':>8}"
    )
    for label, xs, goal in (
        ("raw bulk (bare MicroPython)", res["raw"], None),
        ("boot-file-read stream", res["fw"], GOAL),
        ("BmcClient.call (relay's call)", res["calls"], None),
    ):
        med = statistics.median(xs)
        ratio = raw_med / med
        verdict = ""
        if goal is not None:
            verdict = "  " + ("met" if ratio >= goal else "MISSED") + " (median)"
        print(
            f"{label:<32}{len(xs):>4}{med * 1e3:>8.2f}ms{min(xs) * 1e3:>8.2f}ms"
            f"{mb / med:>8.1f}{ratio:>7.2f}x{raw_min / min(xs):>7.2f}x"
            f"{'>=' + format(goal, 'g') if goal else '-':>8}{verdict}"
        )
    print(
        "(ratio: raw median / median, the goal's measure; by min: raw min / min, what the"
        " transfer takes when\nnothing else on this shared machine gets in its way)"
    )
    fw_s = res["fw_stream_s"]
    print(
        f"On the BMC: {fw_s * 1e3:.2f} ms a stream (mean; bmc_boot_stream_seconds_total: from"
        " the request's turn, its MAC checked,\nto its last chunk written). The rest of the"
        f" {statistics.median(res['fw']) * 1e3:.2f} ms median: the request's way in (frame,"
        " JSON, MAC) and the host reading."
    )
    print(
        f"BMC heap while streaming: high-water {res['heap_peak']} of {res['heap_size']} bytes"
        f" (allocated, uncollected garbage included; 'heap_peak' in boot-status);\n"
        f"For comparison, during a metrics scrape after its collection: {res['heap_live']:.0f}"
        " bytes (bmc_heap_allocated_bytes)."
    )

"""A stand-in BMC on a PTY for bridge tests: answers `hello` and `metrics` frames.

    python tests/fake_bmc.py RACK_DIR SLOT SERIAL

Links RACK_DIR/slotSLOT to its PTY like `bmc-sim` does, and renders its metrics
with the firmware's own `bmc.metrics.Out` (a counter of scrapes it answered, its
serial in `bmc_info`). Stopping it (SIGSTOP) is a hung BMC, killing it an
unplugged one. The firmware's real output is tested under MicroPython in
test_metrics_firmware.py and through bmc-sim in test_metrics_sim.py.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time

from bmc import codec
from bmc.metrics import Out


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


def main() -> None:
    rack, slot, serial = sys.argv[1], sys.argv[2], sys.argv[3]
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
                if msg.get("cmd") == "metrics":
                    scrapes += 1
                    view = writer.payload_view()

                    def flush(n: int, rid: int = rid) -> None:
                        writer.send_prepared(codec.KIND_CHUNK, rid, n)

                    render(serial, slot, scrapes, Out(view, flush))
                    reply = {"ok": True, "data": {}}
                elif msg.get("cmd") == "hello":
                    reply = {"ok": True, "data": {"serial": serial, "proto": 1, "board": "fake"}}
                else:
                    reply = {"ok": False, "error": "unknown_command", "message": "fake"}
                writer.send(codec.KIND_RESPONSE, rid, codec.dumps(reply))


class _Master:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, b: memoryview) -> int:
        return os.write(self.fd, b)


if __name__ == "__main__":
    main()

"""A 32-entry boot manifest under MicroPython with an RP2040-sized heap.

    micropython -X heapsize=192K -m manifest_units TMPDIR

Drives bmc.bootfiles directly (store, event log, no inventory): a Pi 5 style manifest
of 32 entries is uploaded as a files list, set by its digest, listed back an entry a
line, and read again by a BMC that restarted. Prints PASS/FAIL lines with the heap
figures (bytes live after a collection; what a call allocates, garbage included).
"""

import binascii
import gc
import json
import os

from bmc import codec, errors, events, store
from bmc.bootfiles import BootFiles
from bmc.clock import ManualClock
from bmc.inventory import Inventory
from unit_rig import Req, check, hx, main


def pi5_names():
    out = ["bootcode5.bin", "mcb.bin", "bootmain", "rp1c0fw1.bin", "config.txt", "boot.img"]
    out += ["memsys%02d.bin" % i for i in range(9)]
    out += ["kernel_2712.img", "initramfs8", "bcm2712-rpi-5-b.dtb", "bcm2712-rpi-cm5-cm5io.dtb"]
    out += ["overlays/overlay_map.dtb"] + ["overlays/extra-%02d.dtbo" % i for i in range(12)]
    return out


def put(bf, data, manifest=False):
    sha = hx(data)
    off = 0
    while off < len(data):
        c = data[off : off + 1024]
        bf.put(sha, len(data), off, binascii.b2a_base64(c).decode(), hx(c), manifest)
        off += len(c)
    return sha


def live():
    gc.collect()
    return gc.mem_alloc()


def allocated(fn, *args):
    """(result, bytes allocated by the call, garbage included: no collection runs)."""
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        r = fn(*args)
        return r, gc.mem_alloc() - before
    finally:
        gc.enable()


def run(tmp):
    st = store.Store(tmp + "/data")
    clock = ManualClock(1000)
    log = events.EventLog(st, clock)
    inv = Inventory(st, log)
    bf = BootFiles(st, log, clock, inv)
    names = pi5_names()
    small = b"dtparam=uart0=on\n"
    files = []
    for i in range(len(names)):
        if names[i] == "config.txt":
            sha = put(bf, small)
            files.append({"name": "config.txt", "size": len(small), "sha256": sha, "src": "bmc"})
        else:
            h = hx(names[i].encode())
            files.append({"name": names[i], "size": 100000 + i, "sha256": h, "src": "host"})
    check(len(files) == 32, len(files))
    text = codec.canon(files).encode()
    files = None
    sha = put(bf, text, True)
    size = len(text)
    text = None
    base = live()
    m, spent = allocated(bf.set_manifest, None, 0, sha)
    check(m == {"gen": 1, "count": 32, "bmc_bytes": len(small), "bmc_limit": 262144}, m)
    check([n for n in os.listdir(bf.dir) if n.endswith(".manifest")] == [], os.listdir(bf.dir))
    kept = live() - base
    print("PASS set (a %d B files list; %d B allocated, %d B kept)" % (size, spent, kept))

    req = Req()
    base = live() + len(req.buf)  # the request's buffer is the harness's, not the listing's
    d, spent = allocated(bf.send_manifest, req)
    got = [json.loads(x) for x in bytes(req.out).decode().split("\n") if x]
    check(d["count"] == 32 and len(got) == 32 and req.chunks >= 2, (d, len(got), req.chunks))
    check([f["name"] for f in got] == names, got)
    check(req.whole, "a listing line was cut between chunks")
    try:
        Req().line(b"x" * 2049)
        check(False, "a line longer than a chunk was taken")
    except errors.CmdError as e:
        check(e.code == errors.INTERNAL, e.code)
    print("PASS listing (%d B in %d chunks; %d B allocated)" % (len(req.out), req.chunks, spent))

    bf = BootFiles(st, log, clock, inv)  # a BMC that restarted
    check(len(bf.rec["files"]) == 32 and bf.gen == 1, bf.rec)
    print("PASS restart")


if __name__ == "__main__":
    main(run)

"""bmc.inventory and bmc.bootfiles under MicroPython with an RP2040-sized heap.

    micropython -X heapsize=192K -m boot_units TMPDIR   (TMPDIR/keys.json from the pytest test)

Drives the modules directly (store, event log, a fake request and power), so
the heap holds the code under test and not a whole host rig. Prints PASS/FAIL.
"""

import binascii
import gc
import json
import os
import sys

from bmc import errors, events, store
from bmc.bootfiles import BootFiles
from bmc.clock import ManualClock
from bmc.inventory import Inventory
from unit_rig import Req, check, hx, main


def sidecar(bf, sha):
    try:
        with open(bf.dir + "/" + sha + ".crc", "rb") as f:
            return f.read()
    except OSError:
        return None


def crcs_of(data, step=2048):
    out = b""
    for i in range(0, len(data), step):
        c = binascii.crc32(data[i : i + step]) & 0xFFFFFFFF
        out += bytes([(c >> s) & 0xFF for s in (0, 8, 16, 24)])
    c = binascii.crc32(out, step) & 0xFFFFFFFF
    return out + bytes([(c >> s) & 0xFF for s in (0, 8, 16, 24)])


class Counting:
    """A request whose chunks are counted, not kept: a stream's own allocations show."""

    def __init__(self, check=False):
        self.buf = bytearray(2048)
        self.chunks = 0
        self.sent = 0
        self.check = check  # also: the CRC of all bytes sent, chunks sent with a wrong CRC
        self.crc = 0
        self.stale = 0

    def chunk_view(self):
        return memoryview(self.buf)

    def chunk_prepared(self, n, pcrc=None):
        self.chunks += 1
        self.sent += n
        if self.check:
            mv = memoryview(self.buf)[:n]
            if pcrc is not None and pcrc != binascii.crc32(mv) & 0xFFFFFFFF:
                self.stale += 1
            self.crc = binascii.crc32(mv, self.crc)


def restarted(bf):
    """The same flash seen by a BMC that restarted (nothing kept in RAM)."""
    return BootFiles(bf._store, bf.events, bf.clock, bf.inventory)


def stream_alloc(bf, name, sha):
    req = Counting()
    gc.collect()
    before = gc.mem_alloc()
    bf.stream(name, None, sha, req)
    return gc.mem_alloc() - before, req


def stream_heap(bf, small, small_sha):
    """A stream allocates nothing per chunk: a 6-chunk file costs what a 3-chunk one does."""
    gc.collect()
    big = bytearray(12000)
    for i in range(12000):
        big[i] = (i * 13 + (i >> 9)) & 0xFF
    big_sha = hx(big)
    off = 0
    while off < len(big):
        c = big[off : off + 1024]
        bf.put(big_sha, len(big), off, binascii.b2a_base64(c).decode(), hx(c))
        off += len(c)
    files = [{"name": "start4.elf", "size": len(small), "sha256": small_sha, "src": "bmc"}]
    files.append({"name": "kernel8.img", "size": len(big), "sha256": big_sha, "src": "bmc"})
    bf.set_manifest(files)
    first, req = stream_alloc(bf, "kernel8.img", big_sha)
    check(req.sent == len(big) and req.chunks == 6, (req.sent, req.chunks))
    again, req = stream_alloc(bf, "kernel8.img", big_sha)
    check(req.sent == len(big), req.sent)
    few, req = stream_alloc(bf, "start4.elf", small_sha)
    few, req = stream_alloc(bf, "start4.elf", small_sha)
    check(req.chunks == 3, req.chunks)
    # 6 chunks allocate what 3 do: nothing per chunk
    check(again - few < 64, (again, few))
    return "%d B for 6 chunks, %d B for 3; %d B the first time" % (again, few, first)


def stream_sidecar(bf, data, sha):
    """The chunk CRCs stored at upload are the ones sent; without a sidecar (an older
    firmware's file) they are computed and the sidecar comes back; bytes changed on
    the flash go out with their old CRC (a bad-CRC frame for the host)."""
    want = crcs_of(data)
    assert sidecar(bf, sha) == want, sidecar(bf, sha)
    path = bf.dir + "/" + sha

    bad = {"torn": want[:-1], "wrong size": want + want, "flipped": bytes([want[0] ^ 1]) + want[1:]}
    for damage in ("missing", "torn", "wrong size", "flipped"):
        if damage == "missing":
            os.remove(path + ".crc")
        else:
            with open(path + ".crc", "wb") as f:
                f.write(bad[damage])
        bf = restarted(bf)
        req = Req()
        bf.stream("start4.elf", 1, sha, req)
        assert bytes(req.out) == data and req.stale == 0, (damage, req.stale)
        assert sidecar(bf, sha) == want, damage
        assert "bmc.bootadmin" not in sys.modules  # the fallback's code is dropped after
    with open(path, "r+b") as f:
        f.seek(2100)
        f.write(b"\x00\x01")
    req = Req()
    bf.stream("start4.elf", 1, sha, req)
    assert req.stale == 1 and bytes(req.out) != data, req.stale
    os.remove(path + ".crc")
    bf = restarted(bf)
    req = Req()
    bf.stream("start4.elf", 1, sha, req)  # CRCs computed: the host's SHA-256 check refuses it
    assert req.stale == 0 and sidecar(bf, sha) is None, "sidecar written for damaged bytes"
    with open(path, "r+b") as f:
        f.seek(2100)
        f.write(data[2100:2102])
    req = Req()
    bf.stream("start4.elf", 1, sha, req)
    assert bytes(req.out) == data and sidecar(bf, sha) == want


class Power:
    def __init__(self):
        self.modes = []

    def set_boot_mode(self, mode):
        self.modes.append(mode)


def refused(code, fn, *args):
    try:
        fn(*args)
    except errors.CmdError as e:
        assert e.code == code, (e.code, e.message)
        return e.message
    raise AssertionError("accepted")


def run(tmp):
    with open(tmp + "/keys.json") as f:
        k = json.load(f)
    root = tmp + "/data"
    st = store.Store(root)
    clock = ManualClock((1 << 30) - 1000)
    log = events.EventLog(st, clock)
    inv = Inventory(st, log)
    url = "https://inv.example/r"
    d = inv.set(url, [k["ed_pem"], k["ec_pem"], k["tuf_root"]], 1)
    assert [x["type"] for x in d["keys"]] == ["ed25519", "ecdsa-p256", "tuf-root"], d
    assert d["keys"][0]["fp"] == hx(binascii.unhexlify(k["ed_hex"]))
    assert "bmc.keyparse" not in sys.modules  # dropped after use
    for bad in (k["ed_priv_pem"], k["ec_priv_pem"], k["p384_pem"], k["ec_hex"][:-4] + "0001"):
        refused("invalid", inv.set, url, [bad], 2)
    for what in k["bad"]:  # what MicroPython's own parsers let through
        try:
            refused("invalid", inv.set, url, [k["bad"][what]], 2)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (what, e))
    refused("invalid", inv.set, "http://x/", [], 2)
    refused("conflict", inv.set, url, [], 1)
    assert Inventory(st, log).generation == 1
    print("PASS inventory")

    bf = BootFiles(st, log, clock, inv)
    data = bytearray(5000)
    for i in range(5000):
        data[i] = (i * 7) & 0xFF
    data = bytes(data)
    sha = hx(data)
    off = 0
    while off < len(data):
        c = data[off : off + 1024]
        r = bf.put(sha, len(data), off, binascii.b2a_base64(c).decode(), hx(c))
        off += len(c)
    assert r["complete"], r
    assert "bmc.bootadmin" not in sys.modules
    m = bf.set_manifest([{"name": "start4.elf", "size": 5000, "sha256": sha, "src": "bmc"}])
    assert m == {"gen": 1, "count": 3, "bmc_bytes": 5000, "bmc_limit": 262144}, m
    gc.collect()
    before = gc.mem_alloc()
    req = Req()
    bf.stream("start4.elf", 1, sha, req)
    assert bytes(req.out) == data and req.chunks == 3, (len(req.out), req.chunks)
    st_ = bf.status()
    assert before <= st_["heap_peak"] <= st_["heap_size"], (before, st_)
    req = Req()
    bf.stream("cmdline.txt", 1, None, req)
    assert bytes(req.out).startswith(b"racklet.inventory=" + url.encode() + b" racklet.keys=")
    print("PASS stream (heap grew %d bytes)" % (gc.mem_alloc() - before))
    refused("conflict", bf.stream, "start4.elf", 0, None, Req())
    refused("invalid", bf.stream, "../start4.elf", None, None, Req())
    stream_sidecar(bf, data, sha)
    print("PASS chunk CRC sidecar")

    pw = Power()
    bf.power = pw
    bf.power_action = lambda: None
    bf.usb_start(2000)
    assert pw.modes == ["usb"] and bf.state == "waiting"
    bf.report("serve", "start4.elf", sha, 1, "")
    clock.advance(2500)
    bf.tick()
    assert bf.state == "timeout" and pw.modes == ["usb", "normal"], (bf.state, pw.modes)
    causes = [e["cause"] for e in log.entries(0)]
    assert "usb_boot_timeout" in causes and "usb_boot_release" in causes, causes
    print("PASS orchestration")

    print("PASS stream heap (%s)" % stream_heap(bf, data, sha))
    bf.set_manifest([])  # the file leaves the manifest: it and its sidecar leave the flash
    assert os.listdir(bf.dir) == [], os.listdir(bf.dir)
    print("PASS prune")


if __name__ == "__main__":
    main(run)

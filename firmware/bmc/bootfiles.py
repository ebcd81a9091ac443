"""Boot manifest, boot files on flash, and USB boot orchestration.

The BMC vouches for what its SBC boots. The manifest lists every boot file by
name, size and SHA-256 and says where it is served from: "bmc" (stored on the
BMC's flash, content-addressed by digest, uploaded in chunks) or "host" (too
large for the flash: served by the host relay from its content-addressed
cache, only when the cached file's SHA-256 matches). Two files are generated
from the inventory (`bmc.inventory`) and listed with source "gen":
`cmdline.txt` (the stored cmdline.txt, if any, plus
`racklet.inventory=<url> racklet.keys=<fp>,...`) and `racklet-inventory.json`.

    bf = BootFiles(store, events, clock, inventory)
    bf.send_manifest(req)               # one JSON line per entry as chunks; {"gen", "count", ...}
    bf.set_manifest(files, expect)      # admin; a summary of the new manifest is returned
    bf.set_manifest(None, expect, sha)  # the same, the files list read from an upload
    bf.put(sha, size, offset, data, chunk_sha)   # chunked upload (manifest=True: a files list)
    bf.stream(name, gen, sha, req)      # chunks of a "bmc"/"gen" file, zero copy
    bf.report(event, name, sha, gen, detail)     # what the relay did
    bf.usb_start(timeout_ms) / bf.tick()         # boot-select + power cycle, release

A manifest of MAX_FILES entries does not fit one frame (codec.MAX_PAYLOAD), so
`boot-manifest-get` streams it, an entry a line, and `boot-manifest-set` also takes
the files list as an upload: its canonical JSON, stored by `put(..., manifest=True)`
as `<sha256>.manifest` (checked like any upload, at most MANIFEST_UPLOAD_MAX bytes,
not counted in max_total, one kept at a time), then named by its digest. The
set reads it back, checks the digest again and parses it; from there both ways
are one: the same validation, one atomic save. A listed file is always `<sha256>`
without suffix, so an uploaded files list is never listed or served, and it goes
with the next prune like any file the manifest does not list.

A relay asks (`report("serve", ...)`) before it serves any file, so every file
the SBC gets, from the BMC or from the host cache, was vouched for by the
current manifest; a changed manifest answers `conflict` and the boot fails.

A stored file `<sha256>` has a sidecar `<sha256>.crc`: the CRC-32 of each
MAX_PAYLOAD-sized chunk (u32 little endian, one per chunk, at most 256 B for a
128 KiB file), then a u32 that checks them (CRC-32 of the list, seeded with the
chunk size). It is written when the upload's SHA-256 has been verified
(`bmc.bootadmin.put`), and lets a stream send each chunk with a CRC computed once
(the frame CRC covers the payload first: `bmc.codec`) instead of once per chunk
sent. Bytes that changed on the flash since then go out as bad-CRC frames, which
the host refuses. A file without a valid sidecar (stored by an older firmware,
or a torn write) is sent with CRCs computed as it goes, and its sidecar is
written afterwards, when the bytes sent had the manifest's SHA-256.

A `BootFiles` stays in RAM with what must outlive a request (the manifest,
counters, an upload and a USB boot session in progress, whose timeout `tick`
keeps); the code behind most methods is loaded for each call and dropped after
(`bmc.ondemand`): serving and the USB boot start in `bmc.bootserve`, manifest
changes and uploads in `bmc.bootadmin`. Its metrics are rendered by `bmc.metrics`.
"""

import array
import binascii
import os

from bmc import errors, ondemand
from bmc.compat import const, mem_alloc

MAX_FILES = const(32)  # files given (a stored cmdline.txt too); generated ones not counted
NAME_MAX = const(64)
MAX_FILE = const(131072)  # one file on the BMC's flash
MAX_TOTAL = const(262144)  # all boot files on the BMC's flash
MAX_SIZE = const(0x7FFFFFFF)  # any listed file (GetFileSize carries 32 bits)
CHUNK_MAX = const(1024)  # raw bytes per upload request (base64 in JSON)
TIMEOUT_DEFAULT_MS = const(120000)
TIMEOUT_MAX_MS = const(600000)

CMDLINE = "cmdline.txt"
INVENTORY_FILE = "racklet-inventory.json"
GENERATED = (CMDLINE, INVENTORY_FILE)
SOURCES = ("bmc", "host")
_NAME_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/"
MANIFEST = "boot_manifest"
CRC_SUFFIX = ".crc"  # a stored file's chunk CRCs (see the module docstring)
UPLOAD_SUFFIX = ".manifest"  # an uploaded files list (see the module docstring)
MANIFEST_UPLOAD_MAX = const(8192)  # bytes: 33 entries of the longest names still fit

REPORT_EVENTS = ("check", "serve", "mismatch", "missing", "refused", "done", "failed")
COUNTERS = (
    "files_served",
    "bytes_streamed",
    "stream_ms",
    "digest_mismatch",
    "missing",
    "refused",
    "conflict",
    "boots_started",
    "boots_done",
    "boots_failed",
    "boots_timed_out",
)
STATES = ("idle", "waiting", "serving", "done", "failed", "timeout")


def _bad(msg):
    raise errors.CmdError(errors.INVALID, msg)


def _hex(b):
    return binascii.hexlify(b).decode()


def check_name(name):
    """A boot file name as the SBC asks for it; CmdError if unsafe."""
    if not isinstance(name, str) or not name or len(name) > NAME_MAX:
        _bad("file name must be 1-%d characters" % NAME_MAX)
    if ".." in name or name[0] == "/":
        _bad("file name %r refused: no '..' and no leading '/'" % name)
    for c in name:
        if c not in _NAME_OK:
            _bad("file name %r has a character outside A-Z a-z 0-9 . _ - /" % name)
    return name


class BootFiles:
    def __init__(self, store, events, clock, inventory, max_file=MAX_FILE, max_total=MAX_TOTAL):
        self._store = store
        self.events = events
        self.clock = clock
        self.inventory = inventory
        self.max_file = max_file
        self.max_total = max_total
        self.dir = store.root + "/boot"
        try:
            os.mkdir(self.dir)
        except OSError:
            pass
        self._tmp = self.dir + "/upload.tmp"
        self._up = None  # [sha, size, received, manifest] of the upload in progress
        try:  # an upload cut short by a reset: it cannot go on, and would hold the flash
            os.remove(self._tmp)
        except OSError:
            pass
        self.counters = {}
        for c in COUNTERS:
            self.counters[c] = 0
        self._gen_cache = None  # (key, [(name, data, sha)])
        self._crcs = None  # chunk CRCs of the file being streamed or stored (crc_table)
        m, problem = store.load(MANIFEST, {})
        if problem and problem != "missing":
            events.add("store", "corrupt", "boot manifest: " + problem)
        if not _valid_manifest(m):
            m = {"gen": 0, "files": []}
        self.rec = m
        # USB boot session
        self.state = "idle"
        self.detail = ""
        self.deadline = 0
        self.timeout_ms = TIMEOUT_DEFAULT_MS
        self.started_ms = 0
        self.session_files = 0
        self.session_missing = 0
        self.heap_peak = 0  # heap allocated at its highest during the last stream (bootserve)
        self._peak_due = -1  # a stream ended: its high-water mark is sampled after its reply
        self._t0 = 0  # ticks_ms when the stream being served began
        self.power = None  # set by cmd_boot: needs set_boot_mode() and an action runner
        self.power_action = self._no_power  # cmd_boot: power-cycles the SBC
        self.mux = None  # a bmc.lines Line (role usb_mux) or None

    # -- manifest -------------------------------------------------------------
    @property
    def gen(self):
        return self.rec["gen"]

    # What is not needed between requests is loaded for each call (bmc.ondemand):
    # serving and the USB boot start in bmc.bootserve, changes in bmc.bootadmin.
    def _serve(self, fn, *args):
        return ondemand.call("bootserve", fn, self, *args)

    def _admin(self, fn, *args):
        return ondemand.call("bootadmin", fn, self, *args)

    def entries(self):
        return self._serve("entries")

    def lookup(self, name):
        return self._serve("lookup", name)

    def send_manifest(self, req):
        return self._serve("send_manifest", req)

    def summary(self):
        return self._serve("summary")

    def stream(self, name, gen, sha, req):
        # The stream's time, up to its last chunk (`streamed`), in ms: a stream shorter than
        # a tick counts 0 or 1 as the tick falls, so many of them add up right on average.
        self._t0 = self.clock.ticks_ms()
        # A stored ("bmc") file the manifest lists as asked is served by resident code:
        # a USB boot reads one file after another, and loading bmc.bootserve for each
        # (and collecting it after) costs more than the transfer. Everything else
        # (generated or host files, any refusal) is bmc.bootserve's.
        if (gen is None or gen == self.rec["gen"]) and name != CMDLINE:
            for f in self.rec["files"]:
                if f[0] == name:
                    if f[3] == "bmc" and (sha is None or sha == f[2]):
                        check_name(name)
                        return self.send_stored(f, req, 0)
                    break
        return self._serve("stream", name, gen, sha, req)

    def send_stored(self, e, req, peak):
        """Send the stored file of manifest entry `e` as chunks (see bootserve.stream),
        each with its CRC from the file's sidecar. Without a valid sidecar
        `bmc.bootadmin.send_indexing` sends it and writes the sidecar."""
        path = self.dir + "/" + e[2]
        view = req.chunk_view()
        step = len(view)
        size = e[1]
        count = (size + step - 1) // step
        crcs = self.crc_table(step)
        if count >= len(crcs) or not self._load_crcs(path, count, step):
            return self._admin("send_indexing", e, req, peak)
        try:
            fh = open(path, "rb")
        except OSError:
            raise errors.CmdError(errors.STORAGE, "%s is missing from the flash" % e[0])
        send = req.chunk_prepared
        readinto = fh.readinto
        sent = 0
        k = 0
        try:
            while True:
                n = readinto(view)
                if not n:
                    break
                if k < count and (n == step or sent + n == size):
                    send(n, crcs[k])
                else:  # not the chunk the sidecar describes (a short read): computed
                    count = 0
                    send(n)
                sent += n
                k += 1
        finally:
            fh.close()
        return self.streamed(e, sent, peak)

    def crc_table(self, step):
        """The resident table of chunk CRCs (one per `step`-byte chunk of the largest
        file, and the check; `step` is codec.MAX_PAYLOAD), made at the first use."""
        t = self._crcs
        if t is None:
            t = self._crcs = array.array("I", bytes(4 * (self.max_file // step + 2)))
        return t

    def _load_crcs(self, path, count, step):
        """True when `path`'s sidecar holds `count` chunk CRCs for chunks of `step`."""
        crcs = self._crcs
        try:
            with open(path + CRC_SUFFIX, "rb") as fh:
                got = fh.readinto(crcs)
        except OSError:
            return False
        if got != 4 * (count + 1):
            return False
        return crcs[count] == binascii.crc32(memoryview(crcs)[:count], step) & 0xFFFFFFFF

    def streamed(self, e, sent, peak):
        """Bookkeeping after a stream of entry `e`: counters, size check, and the heap
        high-water mark, sampled once the reply is out (`sample_peak`).

        The mark is sampled after the stream: what it allocated (the open file, its
        buffers) is still counted, as nothing was collected since, and the chunk loop
        allocates next to nothing (a full chunk frame is written from the writer's
        own buffer); only a collection during the stream (the link's own
        allocations) would hide a higher point. mem_alloc() scans the heap's block
        table (tens of microseconds in the simulator): sampling every few chunks
        cost more than the chunks' frames, and the sample waits for the loop pass's
        tick, after the reply, so a relay's next request is not held up by it."""
        self._peak_due = peak
        c = self.counters
        c["stream_ms"] += self.clock.ticks_diff(self.clock.ticks_ms(), self._t0)
        c["bytes_streamed"] += sent
        if sent != e[1]:
            raise errors.CmdError(
                errors.STORAGE, "%s on flash is %d bytes, manifest says %d" % (e[0], sent, e[1])
            )
        return {"name": e[0], "size": sent, "sha256": e[2]}

    def sample_peak(self):
        """Take the high-water mark of the stream that ended last, if not yet taken."""
        if self._peak_due >= 0:
            self.heap_peak = max(self._peak_due, mem_alloc())
            self._peak_due = -1

    def report(self, event, name, sha, gen, detail):
        return self._serve("report", event, name, sha, gen, detail)

    def usb_start(self, timeout_ms):
        return self._serve("usb_start", timeout_ms)

    def status(self):
        return self._serve("status")

    def set_manifest(self, files, expect=None, files_sha=None):
        self._admin("set_manifest", files, expect, files_sha)
        files = None  # the caller keeps no other reference (bmc.cmd_boot)
        return self.summary()  # with bmc.bootadmin dropped: not both loaded at once

    def put(self, sha, size, offset, data, chunk_sha, manifest=False):
        return self._admin("put", sha, size, offset, data, chunk_sha, manifest)

    def forget(self):
        """Factory reset: no manifest, no stored files."""
        self._store.remove(MANIFEST)
        self.rec = {"gen": 0, "files": []}
        self._gen_cache = None
        self._admin("prune")

    # -- files on flash -------------------------------------------------------
    def _stored_size(self, name):
        """Size of the file `name` (a digest, or with a suffix) in the boot folder; -1: none."""
        try:
            return os.stat(self.dir + "/" + name)[6]
        except OSError:
            return -1

    def _used(self):
        total = 0
        for n in os.listdir(self.dir):
            if n != "upload.tmp" and not n.endswith(CRC_SUFFIX) and not n.endswith(UPLOAD_SUFFIX):
                total += self._stored_size(n)
        return total

    # -- the USB boot session's timeout ----------------------------------------
    def _no_power(self):
        raise errors.CmdError(errors.NOT_ALLOWED, "no power control on this BMC")

    def _release(self):
        if self.power is not None:
            self.power.set_boot_mode("normal")
        if self.mux is not None:
            self.mux.set(False)

    def _finish(self, state, detail):
        if self.state in ("waiting", "serving"):
            self._release()
            self.events.add("action", "usb_boot_release", "boot-select released")
        self.state = state
        self.detail = detail

    def tick(self):
        self.sample_peak()
        if self.state in ("waiting", "serving"):
            if self.clock.ticks_diff(self.clock.ticks_ms(), self.deadline) >= 0:
                self.counters["boots_timed_out"] += 1
                self.events.add(
                    "fault", "usb_boot_timeout", "no relay activity for %d ms" % self.timeout_ms
                )
                self._finish("timeout", "no relay activity for %d ms" % self.timeout_ms)

    def ms_to_next(self):
        if self.state in ("waiting", "serving"):
            return max(0, self.clock.ticks_diff(self.deadline, self.clock.ticks_ms()))
        return 1000000


def _valid_manifest(m):
    if not isinstance(m, dict) or not isinstance(m.get("gen"), int):
        return False
    files = m.get("files")
    if not isinstance(files, list):
        return False
    for f in files:
        if not (isinstance(f, list) and len(f) == 4 and f[3] in SOURCES):
            return False
    return True

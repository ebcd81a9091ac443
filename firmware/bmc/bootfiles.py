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
    bf.manifest()                       # {"gen", "files": [{"name","size","sha256","src"}], ...}
    bf.set_manifest(files, expect)      # admin; the new generation is returned
    bf.put(sha, size, offset, data, chunk_sha)   # chunked upload
    bf.stream(name, gen, sha, req)      # chunks of a "bmc"/"gen" file, zero copy
    bf.report(event, name, sha, gen, detail)     # what the relay did
    bf.usb_start(timeout_ms) / bf.tick()         # boot-select + power cycle, release

A relay asks (`report("serve", ...)`) before it serves any file, so every file
the SBC gets, from the BMC or from the host cache, was vouched for by the
current manifest; a changed manifest answers `conflict` and the boot fails.
"""

import binascii
import hashlib
import os

from bmc import errors, ondemand
from bmc.compat import const

MAX_FILES = const(12)  # files in the manifest, generated ones not counted
NAME_MAX = const(64)
MAX_FILE = const(131072)  # one file on the BMC's flash
MAX_TOTAL = const(262144)  # all boot files on the BMC's flash
MAX_SIZE = const(0x7FFFFFFF)  # any listed file (GetFileSize carries 32 bits)
CHUNK_MAX = const(1024)  # raw bytes per upload request (base64 in JSON)
TIMEOUT_DEFAULT_MS = const(120000)
TIMEOUT_MAX_MS = const(600000)
_HASH_BUF = const(512)

CMDLINE = "cmdline.txt"
INVENTORY_FILE = "racklet-inventory.json"
GENERATED = (CMDLINE, INVENTORY_FILE)
SOURCES = ("bmc", "host")
_NAME_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/"
MANIFEST = "boot_manifest"

REPORT_EVENTS = ("check", "serve", "mismatch", "missing", "refused", "done", "failed")
COUNTERS = (
    "files_served",
    "bytes_streamed",
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
        self._up = None  # [sha, size, received] of the upload in progress
        self._hbuf = bytearray(_HASH_BUF)
        self.counters = {}
        for c in COUNTERS:
            self.counters[c] = 0
        self._gen_cache = None  # (key, [(name, data, sha)])
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
        self.power = None  # set by cmd_boot: needs set_boot_mode() and an action runner
        self.power_action = self._no_power  # cmd_boot: power-cycles the SBC
        self.mux = None  # a bmc.lines Line (role usb_mux) or None

    # -- manifest -------------------------------------------------------------
    @property
    def gen(self):
        return self.rec["gen"]

    def _generated(self):
        """[(name, data, sha)] generated from the inventory and the stored cmdline.txt."""
        inv = self.inventory
        base = None
        for f in self.rec["files"]:
            if f[0] == CMDLINE:
                base = f[2]
        key = (inv.generation, self.gen)
        c = self._gen_cache
        if c is not None and c[0] == key:
            return c[1]
        out = []
        frag = inv.cmdline_fragment()
        text = b""
        if base is not None:
            try:
                with open(self.dir + "/" + base, "rb") as fh:
                    text = fh.read().strip()
            except OSError:
                text = b""
        if frag:
            text = (text + b" " + frag.encode()) if text else frag.encode()
        if text or base is not None:
            text += b"\n"
            out.append((CMDLINE, text, _hex(hashlib.sha256(text).digest())))
        if inv.rec:
            data = inv.inventory_file()
            out.append((INVENTORY_FILE, data, _hex(hashlib.sha256(data).digest())))
        self._gen_cache = (key, out)
        return out

    def entries(self):
        """The effective manifest: [(name, size, sha, src)]."""
        out = []
        for f in self.rec["files"]:
            if f[0] != CMDLINE:
                out.append((f[0], f[1], f[2], f[3]))
        for name, data, sha in self._generated():
            out.append((name, len(data), sha, "gen"))
        return out

    def lookup(self, name):
        for e in self.entries():
            if e[0] == name:
                return e
        return None

    def manifest(self):
        return {
            "gen": self.gen,
            "files": [
                {"name": e[0], "size": e[1], "sha256": e[2], "src": e[3]} for e in self.entries()
            ],
            "bmc_bytes": self._used(),
            "bmc_limit": self.max_total,
        }

    def _admin(self, fn, *args):
        m = ondemand.load("bootadmin")
        try:
            return getattr(m, fn)(self, *args)
        finally:
            ondemand.drop("bootadmin")

    def set_manifest(self, files, expect=None):
        return self._admin("set_manifest", files, expect)

    def put(self, sha, size, offset, data, chunk_sha):
        return self._admin("put", sha, size, offset, data, chunk_sha)

    def forget(self):
        """Factory reset: no manifest, no stored files."""
        self._store.remove(MANIFEST)
        self.rec = {"gen": 0, "files": []}
        self._gen_cache = None
        self._admin("prune")

    # -- files on flash -------------------------------------------------------
    def _stored_size(self, sha):
        try:
            return os.stat(self.dir + "/" + sha)[6]
        except OSError:
            return -1

    def _used(self):
        total = 0
        for n in os.listdir(self.dir):
            if n != "upload.tmp":
                total += self._stored_size(n)
        return total

    def _vouch(self, name, gen, sha):
        """The manifest entry for a request, or CmdError (counted)."""
        if gen is not None and gen != self.gen:
            self.counters["conflict"] += 1
            raise errors.CmdError(
                errors.CONFLICT,
                "boot manifest changed: generation %d, not %d" % (self.gen, gen),
                {"gen": self.gen},
            )
        e = self.lookup(name)
        if e is None:
            raise errors.CmdError(errors.NOT_FOUND, "%s is not in the boot manifest" % name)
        if sha is not None and sha != e[2]:
            self.counters["conflict"] += 1
            raise errors.CmdError(
                errors.CONFLICT,
                "%s changed in the boot manifest" % name,
                {"gen": self.gen, "sha256": e[2]},
            )
        return e

    def stream(self, name, gen, sha, req):
        """Send a "bmc" or "gen" file as chunks; returns its size and digest."""
        check_name(name)
        e = self._vouch(name, gen, sha)
        view = req.chunk_view()
        room = len(view)
        sent = 0
        if e[3] == "gen":
            for g in self._generated():
                if g[0] == name:
                    data = memoryview(g[1])
                    while sent < len(data):
                        n = min(room, len(data) - sent)
                        view[:n] = data[sent : sent + n]
                        req.chunk_prepared(n)
                        sent += n
        elif e[3] == "bmc":
            try:
                fh = open(self.dir + "/" + e[2], "rb")
            except OSError:
                raise errors.CmdError(errors.STORAGE, "%s is missing from the flash" % name)
            try:
                while True:
                    n = fh.readinto(view)
                    if not n:
                        break
                    req.chunk_prepared(n)
                    sent += n
            finally:
                fh.close()
        else:
            raise errors.CmdError(
                errors.NOT_FOUND, "%s is served from the host cache, not the BMC" % name
            )
        self.counters["bytes_streamed"] += sent
        if sent != e[1]:
            raise errors.CmdError(
                errors.STORAGE, "%s on flash is %d bytes, manifest says %d" % (name, sent, e[1])
            )
        return {"name": name, "size": sent, "sha256": e[2]}

    # -- relay reports --------------------------------------------------------
    def report(self, event, name, sha, gen, detail):
        c = self.counters
        self._touch()
        if event == "check" or event == "serve":
            check_name(name)
            try:
                e = self._vouch(name, gen, sha)
            except errors.CmdError as ex:
                self.events.add("fault", "boot_refused", "%s: %s" % (name, ex.message))
                raise
            if event == "check":
                return {"name": name, "size": e[1], "sha256": e[2], "src": e[3]}
            c["files_served"] += 1
            self.session_files += 1
            if self.state == "waiting":
                self.state = "serving"
            return {"name": name, "size": e[1], "sha256": e[2], "src": e[3]}
        if event == "mismatch":
            c["digest_mismatch"] += 1
            self.events.add("fault", "boot_digest_mismatch", "%s %s" % (name, detail))
        elif event == "missing":
            c["missing"] += 1  # counted, not logged: ROMs probe for optional files
            self.session_missing += 1
        elif event == "refused":
            c["refused"] += 1
            self.events.add("warning", "boot_file_refused", "%s %s" % (name, detail))
        elif event == "done":
            c["boots_done"] += 1
            self.events.add(
                "action",
                "usb_boot_done",
                "%d served, %d unlisted asked" % (self.session_files, self.session_missing),
            )
            self._finish("done", detail)
        elif event == "failed":
            c["boots_failed"] += 1
            self.events.add("fault", "usb_boot_failed", detail or "relay gave up")
            self._finish("failed", detail)
        else:
            _bad("event must be one of: " + ", ".join(REPORT_EVENTS))
        return self.status()

    # -- orchestration ----------------------------------------------------------
    def _touch(self):
        if self.state in ("waiting", "serving"):
            self.deadline = self.clock.ticks_add(self.clock.ticks_ms(), self.timeout_ms)

    def usb_start(self, timeout_ms):
        if self.state in ("waiting", "serving"):
            raise errors.CmdError(errors.BUSY, "a USB boot is already in progress")
        if self.power is None:
            raise errors.CmdError(errors.NOT_ALLOWED, "no power control on this BMC")
        self.timeout_ms = timeout_ms
        try:
            self.power.set_boot_mode("usb")
        except Exception as e:  # power.NotAllowed: the board has no boot-select line
            raise errors.CmdError(errors.NOT_ALLOWED, str(e))
        if self.mux is not None:
            self.mux.set(True)
        self.events.add("action", "usb_boot_select", "boot-select asserted")
        try:
            self.power_action()
        except errors.CmdError as e:
            self._release()
            self.events.add("fault", "usb_boot_failed", "power: " + e.message)
            raise
        self.counters["boots_started"] += 1
        self.state = "waiting"
        self.detail = ""
        self.session_files = 0
        self.session_missing = 0
        self.started_ms = self.clock.ticks_ms()
        self._touch()
        self.events.add("action", "usb_boot_power_cycle", "timeout %d ms" % timeout_ms)
        return self.status()

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

    def status(self):
        st = {"state": self.state, "detail": self.detail, "gen": self.gen}
        if self.state in ("waiting", "serving"):
            st["left_ms"] = self.ms_to_next()
            st["files"] = self.session_files
        st["counters"] = dict(self.counters)
        return st

    def render_metrics(self, out):
        """OpenMetrics families (a bmc.metrics Out)."""
        c = self.counters
        out.family("bmc_boot_files_served", "counter", "Boot files vouched for and served")
        out.sample("bmc_boot_files_served_total", c["files_served"])
        out.family(
            "bmc_boot_streamed_bytes", "counter", "Boot file bytes streamed over the link", "bytes"
        )
        out.sample("bmc_boot_streamed_bytes_total", c["bytes_streamed"])
        out.family("bmc_boot_refusals", "counter", "Boot file requests refused, by reason")
        for k in ("digest_mismatch", "missing", "refused", "conflict"):
            out.sample("bmc_boot_refusals_total", c[k], "reason", k)
        out.family("bmc_usb_boots", "counter", "USB boots by outcome")
        for k, label in (
            ("boots_started", "started"),
            ("boots_done", "done"),
            ("boots_failed", "failed"),
            ("boots_timed_out", "timeout"),
        ):
            out.sample("bmc_usb_boots_total", c[k], "outcome", label)
        out.family("bmc_usb_boot_state", "stateset", "The USB boot session")
        for s in STATES:
            out.sample("bmc_usb_boot_state", s == self.state, "bmc_usb_boot_state", s)


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

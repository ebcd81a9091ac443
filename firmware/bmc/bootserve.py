"""The serving side of the boot files: the manifest's listing, streams, relay reports,
USB boot start.

Loaded for one request and dropped after (`bmc.ondemand`); the state these
functions work on (manifest, counters, the USB boot session and its deadline)
lives in the resident `bmc.bootfiles.BootFiles`, which also keeps the session's
timeout. See bmc.bootfiles for the design.
"""

import hashlib
import json

from bmc import errors
from bmc.bootfiles import CMDLINE, INVENTORY_FILE, REPORT_EVENTS, _bad, _hex, check_name
from bmc.compat import mem_alloc, mem_free


def _plan(bf):
    """What is generated: (the stored cmdline.txt's digest or None, the inventory's
    cmdline fragment, whether cmdline.txt is generated, whether the inventory file is)."""
    base = None
    for f in bf.rec["files"]:
        if f[0] == CMDLINE:
            base = f[2]
    frag = bf.inventory.cmdline_fragment()
    return base, frag, bool(frag) or base is not None, bool(bf.inventory.rec)


def _generated(bf):
    """[(name, data, sha)] generated from the inventory and the stored cmdline.txt."""
    inv = bf.inventory
    key = (inv.generation, bf.gen)
    c = bf._gen_cache
    if c is not None and c[0] == key:
        return c[1]
    base, frag, cmdline, inventory = _plan(bf)
    out = []
    if cmdline:
        text = b""
        if base is not None:
            try:
                with open(bf.dir + "/" + base, "rb") as fh:
                    text = fh.read().strip()
            except OSError:
                text = b""
        if frag:
            text = (text + b" " + frag.encode()) if text else frag.encode()
        text += b"\n"
        out.append((CMDLINE, text, _hex(hashlib.sha256(text).digest())))
    if inventory:
        data = inv.inventory_file()
        out.append((INVENTORY_FILE, data, _hex(hashlib.sha256(data).digest())))
    bf._gen_cache = (key, out)
    return out


def entries(bf):
    """The effective manifest: [(name, size, sha, src)]."""
    out = []
    for f in bf.rec["files"]:
        if f[0] != CMDLINE:
            out.append((f[0], f[1], f[2], f[3]))
    for name, data, sha in _generated(bf):
        out.append((name, len(data), sha, "gen"))
    return out


def lookup(bf, name):
    for e in entries(bf):
        if e[0] == name:
            return e
    return None


_LINE = '{"name":%s,"size":%d,"sha256":"%s","src":"%s"}\n'


def send_manifest(bf, req):
    """The effective manifest as chunks of JSON lines, one entry a line
    ({"name", "size", "sha256", "src"}), each line made and copied into the frame
    buffer on its own: the whole text is never in RAM. The reply: the summary."""
    count = 0
    for e in entries(bf):
        # the digest and the source are checked hex and a fixed word (bmc.bootadmin)
        req.line((_LINE % (json.dumps(e[0]), e[1], e[2], e[3])).encode())
        count += 1
    req.end_lines()
    return _summary(bf, count)


def summary(bf):
    """What `boot-manifest-set` answers: generation, entries (generated ones included),
    the bytes stored on the BMC's flash and its limit. Counted without making the
    generated files: no file is opened (a littlefs file takes a block of over 1 KB,
    and the heap is at its most fragmented right after a manifest change)."""
    _, _, cmdline, inventory = _plan(bf)
    n = 0
    for f in bf.rec["files"]:
        if f[0] != CMDLINE:
            n += 1
    return _summary(bf, n + cmdline + inventory)


def _summary(bf, count):
    return {"gen": bf.gen, "count": count, "bmc_bytes": bf._used(), "bmc_limit": bf.max_total}


def _vouch(bf, name, gen, sha):
    """The manifest entry for a request, or CmdError (counted)."""
    if gen is not None and gen != bf.gen:
        bf.counters["conflict"] += 1
        raise errors.CmdError(
            errors.CONFLICT,
            "boot manifest changed: generation %d, not %d" % (bf.gen, gen),
            {"gen": bf.gen},
        )
    e = lookup(bf, name)
    if e is None:
        raise errors.CmdError(errors.NOT_FOUND, "%s is not in the boot manifest" % name)
    if sha is not None and sha != e[2]:
        bf.counters["conflict"] += 1
        raise errors.CmdError(
            errors.CONFLICT,
            "%s changed in the boot manifest" % name,
            {"gen": bf.gen, "sha256": e[2]},
        )
    return e


def stream(bf, name, gen, sha, req):
    """Send a "bmc" or "gen" file as chunks; returns its size and digest.

    The heap's high-water mark while streaming (bytes allocated, garbage not yet
    collected included) is kept in `bf.heap_peak` for boot-status: sampled
    here and after the reply (`BootFiles.streamed`). Stored files go out through
    the resident `BootFiles.send_stored`, which `BootFiles.stream` calls itself
    when the request is plainly good.
    """
    check_name(name)
    e = _vouch(bf, name, gen, sha)
    peak = mem_alloc()
    if e[3] == "bmc":
        return bf.send_stored(e, req, peak)
    if e[3] != "gen":
        raise errors.CmdError(
            errors.NOT_FOUND, "%s is served from the host cache, not the BMC" % name
        )
    view = req.chunk_view()
    room = len(view)
    sent = 0
    for g in _generated(bf):
        if g[0] == name:
            data = memoryview(g[1])
            while sent < len(data):
                n = min(room, len(data) - sent)
                view[:n] = data[sent : sent + n]
                req.chunk_prepared(n)
                sent += n
    return bf.streamed(e, sent, peak)


def report(bf, event, name, sha, gen, detail):
    c = bf.counters
    _touch(bf)
    if event == "check" or event == "serve":
        check_name(name)
        try:
            e = _vouch(bf, name, gen, sha)
        except errors.CmdError as ex:
            bf.events.add("fault", "boot_refused", "%s: %s" % (name, ex.message))
            raise
        if event == "check":
            return {"name": name, "size": e[1], "sha256": e[2], "src": e[3]}
        c["files_served"] += 1
        bf.session_files += 1
        if bf.state == "waiting":
            bf.state = "serving"
        return {"name": name, "size": e[1], "sha256": e[2], "src": e[3]}
    if event == "mismatch":
        c["digest_mismatch"] += 1
        bf.events.add("fault", "boot_digest_mismatch", "%s %s" % (name, detail))
    elif event == "missing":
        c["missing"] += 1  # counted, not logged: ROMs probe for optional files
        bf.session_missing += 1
    elif event == "refused":
        c["refused"] += 1
        bf.events.add("warning", "boot_file_refused", "%s %s" % (name, detail))
    elif event == "done":
        c["boots_done"] += 1
        bf.events.add(
            "action",
            "usb_boot_done",
            "%d served, %d unlisted asked" % (bf.session_files, bf.session_missing),
        )
        bf._finish("done", detail)
    elif event == "failed":
        c["boots_failed"] += 1
        bf.events.add("fault", "usb_boot_failed", detail or "relay gave up")
        bf._finish("failed", detail)
    else:
        _bad("event must be one of: " + ", ".join(REPORT_EVENTS))
    return status(bf)


def _touch(bf):
    if bf.state in ("waiting", "serving"):
        bf.deadline = bf.clock.ticks_add(bf.clock.ticks_ms(), bf.timeout_ms)


def usb_start(bf, timeout_ms):
    if bf.state in ("waiting", "serving"):
        raise errors.CmdError(errors.BUSY, "a USB boot is already in progress")
    if bf.power is None:
        raise errors.CmdError(errors.NOT_ALLOWED, "no power control on this BMC")
    bf.timeout_ms = timeout_ms
    try:
        bf.power.set_boot_mode("usb")
    except Exception as e:  # power.NotAllowed: the board has no boot-select line
        raise errors.CmdError(errors.NOT_ALLOWED, str(e))
    if bf.mux is not None:
        bf.mux.set(True)
    bf.events.add("action", "usb_boot_select", "boot-select asserted")
    try:
        bf.power_action()
    except errors.CmdError as e:
        bf._release()
        bf.events.add("fault", "usb_boot_failed", "power: " + e.message)
        raise
    bf.counters["boots_started"] += 1
    bf.state = "waiting"
    bf.detail = ""
    bf.session_files = 0
    bf.session_missing = 0
    bf.started_ms = bf.clock.ticks_ms()
    _touch(bf)
    bf.events.add("action", "usb_boot_power_cycle", "timeout %d ms" % timeout_ms)
    return status(bf)


def status(bf):
    st = {"state": bf.state, "detail": bf.detail, "gen": bf.gen}
    if bf.state in ("waiting", "serving"):
        st["left_ms"] = bf.ms_to_next()
        st["files"] = bf.session_files
    st["counters"] = dict(bf.counters)
    bf.sample_peak()  # a stream answered in this same pass has not been sampled yet
    st["heap_peak"] = bf.heap_peak
    st["heap_size"] = mem_alloc() + mem_free()
    return st

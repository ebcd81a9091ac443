"""Request dispatch: frames in, one response (after any chunks) out.

Hot commands are registered with `Dispatcher.register(name, role, fn)`;
`fn(req)` returns the response data (a JSON-able dict, or its JSON text
already, as a tuple of two bytes-likes to be joined: the first one is a `bytes`,
whose CRC-32 is kept while the same object comes back) or raises `CmdError`.
Rarely used ones with `register_lazy(name, role, module, function)`: the
module-level `bmc.<module>.<function>(app, req)` is imported for the request
and dropped after it (`bmc.ondemand`), so its code costs RAM only while it
runs. A streaming command sends chunks with `req.chunk(data)` (or fills
`req.chunk_view()` and calls `req.chunk_prepared(n)`, or `chunk_prepared(n, crc)`
with the bytes' CRC-32 when it was computed earlier) before returning; a
listing of records sends them as lines, `req.line(data)` each, then
`req.end_lines()`, packed whole into as few chunks as they fit.
"""

import gc

from bmc import codec, errors, ondemand
from bmc.compat import const

PUBLIC = "public"
OPERATOR = "operator"
ADMIN = "admin"
ROLE_RANK = {PUBLIC: 0, OPERATOR: 1, ADMIN: 2}

_MAX_RESULTS = const(24)  # bound on distinct result labels counted
_HOT_MAX = const(64)  # bytes: the longest request kept with its parse (Dispatcher._hot_msg)
_TOO_LARGE = {"ok": False, "error": errors.INTERNAL, "message": "response too large"}
_OK_DATA = b'{"ok": true, "data": '  # a reply whose data is JSON text already
_NONCE = b', "nonce": "'  # a nonce is hex: nothing in it to escape


class Request:
    __slots__ = ("rid", "cmd", "args", "role", "key_id", "_writer", "_view", "_used")

    def __init__(self, writer, rid, cmd, args, role, key_id):
        self._writer = writer
        self.rid = rid
        self.cmd = cmd
        self.args = args
        self.role = role
        self.key_id = key_id
        self._view = None  # the chunk that `line` fills
        self._used = 0

    def line(self, data):
        """Add one line (bytes, at most a chunk) to the chunk being filled; the chunk
        goes out when the next line does not fit, so no line is cut."""
        view = self._view
        if view is None:
            view = self._view = self._writer.payload_view()
        n = self._used
        k = len(data)
        if n + k > len(view):
            if k > len(view):
                raise errors.CmdError(errors.INTERNAL, "a line longer than a chunk")
            self.chunk_prepared(n)
            n = 0
        view[n : n + k] = data
        self._used = n + k

    def end_lines(self):
        """Send the last chunk of lines."""
        if self._used:
            self.chunk_prepared(self._used)
            self._used = 0

    def chunk(self, data):
        self._writer.send(codec.KIND_CHUNK, self.rid, data)

    def chunk_view(self):
        return self._writer.payload_view()

    def chunk_prepared(self, n, pcrc=None):
        """Send the first `n` bytes of `chunk_view()`; `pcrc`: their CRC-32 if known."""
        self._writer.send_prepared(codec.KIND_CHUNK, self.rid, n, pcrc)


class Dispatcher:
    def __init__(self, link, auth, clock, app=None):
        self.app = app  # what lazily registered commands get as their first argument
        self.link = link
        self.auth = auth
        self.clock = clock
        self._ticks_diff = clock.ticks_diff  # bound once: a bound method is made per lookup
        self.reader = codec.FrameReader()
        self.writer = codec.FrameWriter(link)
        # One Request, refilled for each request: a fresh one costs ~450 B of heap on
        # MicroPython, whose instances grow their attribute table one store at a time.
        # A handler must not keep it past its return.
        self._req = Request(self.writer, 0, None, None, PUBLIC, None)
        self.commands = {}
        self.results = {}  # result label -> count, for metrics
        # The last unsigned request without arguments, and its parse: pollers send the
        # same bytes again and again (a status, a scrape), and these are compared in C
        # where parsing them again took longer than the status handler itself.
        self._hot_payload = b""
        self._hot_msg = None
        # The CRC-32 of a reply's constant start (_OK_DATA and the text piece of a
        # cached reply, as `_crc_head` is): the frame CRC goes on from there.
        self._crc_head = None
        self._crc_at_head = 0

    def register(self, name, role, fn):
        self.commands[name] = (role, fn)

    def register_lazy(self, name, role, module, function):
        self.commands[name] = (role, module, function)

    def poll(self):
        """Read what the link has and answer every complete request."""
        # Run for every request: kept to few locals and no `try` (six words), so that
        # MicroPython keeps its frame on the C stack (a frame of more than 11 words is
        # allocated on the heap at every call: slow in a fragmented heap). _handle
        # cannot be; it catches what a request raises, and sends the response itself.
        reader = self.reader
        now = self.clock.ticks_ms()
        while True:
            k = self.link.readinto(reader.space())
            if not k:
                break
            reader.added(k, now)
            if reader.n < len(reader.buf):
                break  # a short read: the link had no more, what comes later wakes the next pass
        while True:
            frame = reader.next_frame()
            if frame is None:
                break
            self._handle(frame)
            self._req.args = None  # an upload's data must not stay live until the next request
        reader.expire(now, self._ticks_diff)

    def _count(self, label):
        r = self.results
        if label in r or len(r) < _MAX_RESULTS:
            r[label] = r.get(label, 0) + 1

    def _handle(self, frame):
        kind, version, rid, payload = frame
        signed = False  # a signed request's reply carries the next nonce (one round trip each)
        if kind != codec.KIND_REQUEST:
            self._count("ignored")
            return
        req = self._req
        req.rid = rid
        try:
            if version != codec.PROTO_VERSION:
                raise errors.CmdError(
                    errors.UNSUPPORTED_VERSION,
                    "protocol version %d not supported (this BMC speaks %d)"
                    % (version, codec.PROTO_VERSION),
                )
            if payload == self._hot_payload:  # compared in C
                msg = self._hot_msg  # checked when it was parsed; handlers never change args
                cmd = msg["cmd"]
                args = msg["args"]
            else:
                try:
                    try:
                        msg = codec.loads(payload)
                    except MemoryError:
                        gc.collect()  # garbage may be all that stands in the way; parsing is pure
                        msg = codec.loads(payload)
                except ValueError as e:
                    raise errors.CmdError(errors.BAD_REQUEST, str(e))
                cmd = msg.get("cmd")
                args = msg.get("args", {})
                if not isinstance(cmd, str) or not isinstance(args, dict):
                    raise errors.CmdError(errors.BAD_REQUEST, "need cmd (string) and args (object)")
                if not args and "auth" not in msg and len(payload) <= _HOT_MAX:
                    msg["args"] = args  # present, for the next time
                    self._hot_msg = msg
                    self._hot_payload = bytes(payload)
            entry = self.commands.get(cmd)
            if entry is None:
                raise errors.CmdError(errors.UNKNOWN_COMMAND, "unknown command: %s" % cmd[:40])
            auth = msg.get("auth")
            signed = auth is not None
            req.cmd = cmd
            req.args = args
            req._view = None
            req._used = 0
            if entry[0] == PUBLIC:  # nothing to check: no call into auth
                req.role = PUBLIC
                req.key_id = None
            else:
                req.role, req.key_id = self.auth.authorize(cmd, args, auth, entry[0])
            if len(entry) == 2:
                data = entry[1](req)
            else:
                data = ondemand.call(entry[1], entry[2], self.app, req)
            self._count("ok")
            if data is None:
                data = {}
            if isinstance(data, tuple):  # its JSON text already, in two pieces
                if signed:
                    nonce = self.auth.issue_nonce().encode()
                    out = (_OK_DATA, data[0], data[1], _NONCE, nonce, b'"}')
                else:
                    out = (_OK_DATA, data[0], data[1], b"}")
                if data[0] is not self._crc_head:
                    self._crc_at_head = codec.crc32_pieces(out, 0, 2, 0)
                    self._crc_head = data[0]
            elif signed:
                out = {"ok": True, "data": data, "nonce": self.auth.issue_nonce()}
            else:
                out = {"ok": True, "data": data}
        except errors.CmdError as e:
            self._count(e.code)
            out = {"ok": False, "error": e.code, "message": e.message}
            if e.data is not None:
                out["data"] = e.data
            if signed:
                out["nonce"] = self.auth.issue_nonce()
        except MemoryError:
            gc.collect()
            self._count(errors.INTERNAL)
            out = {"ok": False, "error": errors.INTERNAL, "message": "out of memory"}
        except codec.LinkStalled:
            self._count("link_stalled")  # the host went away mid-stream
            return
        except Exception as e:  # a handler bug must not take the BMC down
            self._count(errors.INTERNAL)
            out = {"ok": False, "error": errors.INTERNAL, "message": repr(e)[:200]}
        try:
            try:
                if isinstance(out, tuple):
                    self.writer.send_prepared(
                        codec.KIND_RESPONSE,
                        rid,
                        self.writer.put_pieces(out),
                        codec.crc32_pieces(out, 2, len(out), self._crc_at_head),
                    )
                else:
                    self.writer.send_json(codec.KIND_RESPONSE, rid, out)
            except codec.PayloadFull:
                self.writer.send_json(codec.KIND_RESPONSE, rid, _TOO_LARGE)
        except codec.LinkStalled:
            self._count("link_stalled")  # the host went away before the answer


def arg(args, name, kind, default=None, required=False):
    """Fetch and type-check one argument; CmdError(INVALID) naming it if wrong."""
    if name not in args:
        if required:
            raise errors.CmdError(errors.INVALID, "missing argument: %s" % name)
        return default
    v = args[name]
    if kind is int and isinstance(v, bool):
        raise errors.CmdError(errors.INVALID, "%s must be an integer" % name)
    if not isinstance(v, kind):
        raise errors.CmdError(errors.INVALID, "%s has the wrong type" % name)
    return v

"""Wire codec: frames over the USB CDC link, shared by firmware and host.

Frame (little endian):

    0  0xB5 0x4D   magic
    2  u8 kind     KIND_REQUEST / KIND_RESPONSE / KIND_CHUNK
    3  u8 version  PROTO_VERSION
    4  u16 id      request id, echoed by every frame that answers it
    6  u16 len     payload length, at most MAX_PAYLOAD
    8  payload     JSON (request, response) or raw bytes (chunk)
    8+len u32      CRC-32 of the payload, continued over the header bytes 2 .. 8:
                   crc32(header[2:8], crc32(payload)) (version 2; version 1
                   covered bytes 2 .. 8+len in wire order)

The payload comes first in the CRC so that a sender can reuse a CRC it
computed earlier for the same bytes (`FrameWriter.send_prepared(..., pcrc)`:
the BMC keeps one per chunk of a stored boot file). A payload that no longer
matches such a CRC arrives as a bad-CRC frame, which the reader counts.

The reader resynchronises after garbage, CRC errors and half-sent frames
(a partial frame older than STALE_MS is abandoned), and never holds more
than one maximum frame: a peer cannot make it allocate. A frame that fails
the CRC but carries version 1 and passes version 1's CRC is counted in
`old_version` (and dropped): a host tells the user the peer's firmware is old.
"""

import binascii
import io
import json
import struct

from bmc.compat import const, ticks_diff

MAGIC0 = const(0xB5)
MAGIC1 = const(0x4D)
PROTO_VERSION = const(2)
HEADER = const(8)
TRAILER = const(4)
MAX_PAYLOAD = const(2048)
MAX_FRAME = const(2060)  # HEADER + MAX_PAYLOAD + TRAILER
STALE_MS = const(200)
_V1 = const(1)  # the protocol version whose CRC covered the header first

KIND_REQUEST = const(1)
KIND_RESPONSE = const(2)
KIND_CHUNK = const(3)

_MAGIC = b"\xb5"
_crc32 = binascii.crc32
_pack_into = struct.pack_into
_MAC_DOMAIN = "racklet-bmc-v1\n"


class FrameReader:
    """Incremental frame parser over one preallocated buffer.

    `next_frame()` returns `(kind, version, req_id, payload_view)` or None.
    The payload view is valid until the next call.
    """

    def __init__(self, max_payload=MAX_PAYLOAD):
        self.max_payload = max_payload
        self.buf = bytearray(HEADER + max_payload + TRAILER)
        self.mv = memoryview(self.buf)
        self.n = 0  # bytes held
        self.used = 0  # bytes of the last returned frame, dropped on the next call
        self.last_rx = 0
        self.frames = 0
        self.bad_crc = 0
        self.oversize = 0
        self.dropped = 0  # garbage bytes skipped while resynchronising
        self.stale = 0
        self.old_version = 0  # frames of protocol version 1 (the other CRC layout)

    def space(self):
        """Writable view for `stream.readinto`; call `added(k)` afterwards."""
        self._compact()
        n = self.n
        return self.mv[n:] if n else self.mv  # the usual case (empty) allocates nothing

    def added(self, k, now=0):
        if k:
            self.n += k
            self.last_rx = now

    def feed(self, data, now=0):
        """Copy bytes in (host side); returns how many were taken."""
        self._compact()
        k = min(len(data), len(self.buf) - self.n)
        self.mv[self.n : self.n + k] = data[:k]
        self.added(k, now)
        return k

    def expire(self, now, diff=ticks_diff):
        """Abandon a half-received frame once the link has gone quiet.

        Nothing is in flight after STALE_MS of silence, so every incomplete
        frame held is garbage: drop up to the first complete one, or all.
        `diff`: the ticks_diff of the clock `now` comes from (the BMC's clock).
        """
        self._compact()
        if self.n and diff(now, self.last_rx) > STALE_MS:
            self.stale += 1
            self.last_rx = now
            while self.n:
                self._skip(1)
                self._resync(0)
                if self._front() > 0:
                    break

    def _compact(self):
        if self.used:
            self._skip(self.used)
            self.used = 0

    def _skip(self, k):
        n = self.n - k
        if n > 0:
            self.mv[0:n] = self.mv[k : self.n]
        self.n = max(n, 0)

    def _resync(self, start):
        i = self.buf.find(_MAGIC, start, self.n)
        if i < 0:
            i = self.n
        self.dropped += i
        self._skip(i)

    def _front(self):
        """At the buffer's start: frame length if complete and valid, 0 if it
        may still complete, -1 if it is not a frame."""
        buf = self.buf
        n = self.n
        if not n or buf[0] != MAGIC0:
            return -1 if n else 0
        if n < 2:
            return 0
        if buf[1] != MAGIC1:
            return -1
        if n < HEADER:
            return 0
        if not KIND_REQUEST <= buf[2] <= KIND_CHUNK:
            return -1
        total = HEADER + (buf[6] | (buf[7] << 8)) + TRAILER
        if total > self.max_payload + HEADER + TRAILER:
            self.oversize += 1
            return -1
        if n < total:
            return 0
        return total if self._crc_ok(total - TRAILER) else -1

    def _crc_ok(self, end):
        """True when the CRC after the payload (which ends at `end`) checks; a
        failure is counted. Apart from _front, so that both frames stay on the C stack."""
        crc = binascii.crc32(self.mv[HEADER:end])
        crc = binascii.crc32(self.mv[2:HEADER], crc) & 0xFFFFFFFF
        want = struct.unpack_from("<I", self.buf, end)[0]
        if crc == want:
            return True
        if self.buf[3] == _V1 and binascii.crc32(self.mv[2:end]) & 0xFFFFFFFF == want:
            self.old_version += 1
        else:
            self.bad_crc += 1
        return False

    def next_frame(self):
        self._compact()
        while self.n:
            total = self._front()
            if total < 0:
                self._resync(1)
                continue
            if total == 0:
                return None
            buf = self.buf
            self.frames += 1
            self.used = total
            return buf[2], buf[3], buf[4] | (buf[5] << 8), self.mv[HEADER : total - TRAILER]
        return None


try:
    memoryview("")
    _utf8 = memoryview  # MicroPython: a str lends its UTF-8 bytes without a copy
except TypeError:  # CPython

    def _utf8(text):  # type: ignore[misc,no-redef]
        return text.encode()


class PayloadFull(ValueError):
    """A message does not fit in one frame."""


class _Sink(io.IOBase):
    """json.dump target that fills a frame's payload in place: no large allocation."""

    def __init__(self, view):
        self.view = view
        self.n = 0

    def write(self, data):
        if isinstance(data, str):  # CPython's json writes str pieces
            data = data.encode()
        k = len(data)
        n = self.n
        if n + k > len(self.view):
            raise PayloadFull("message larger than one frame")
        self.view[n : n + k] = data
        self.n = n + k
        return k


class LinkStalled(Exception):
    """The host stopped reading: the response (or stream) was cut short."""


_STAGE = const(704)  # replies this long (status, power: ~620 B) are encoded without allocating
try:
    io.BytesIO(_STAGE)
    _STAGED = True  # MicroPython: an empty stream with room for that many bytes
except TypeError:  # CPython: wants initial bytes; json.dumps serves
    _STAGED = False
_MPY = _STAGED  # what told them apart


class FrameWriter:
    """Builds frames in one preallocated buffer and writes each with one call."""

    def __init__(self, stream, max_payload=MAX_PAYLOAD):
        self.stream = stream
        self.buf = bytearray(HEADER + max_payload + TRAILER)
        self.mv = memoryview(self.buf)
        self.max_payload = max_payload
        self.frames = 0
        self.stalled = 0
        self._sink = _Sink(self.mv[HEADER : HEADER + max_payload])
        self._stage = None  # made at the first reply
        self._head = self.mv[2:HEADER]  # what the CRC covers after the payload
        buf = self.buf
        buf[0] = MAGIC0  # the bytes every frame starts with, set once
        buf[1] = MAGIC1
        buf[3] = PROTO_VERSION

    def payload_view(self):
        """Where a caller may `readinto` a chunk before `send_prepared`."""
        return self.mv[HEADER : HEADER + self.max_payload]

    def send_prepared(self, kind, req_id, length, pcrc=None):
        """Send the `length` payload bytes already in the buffer as one frame.

        `pcrc`: the payload's CRC-32 when the caller knows it (computed earlier
        for the same bytes); otherwise it is computed here.

        Called once per chunk: kept to few locals and a shallow stack, so that
        MicroPython keeps its frame on the C stack (a frame of more than 11
        words is allocated on the heap at every call: ~160 B counted towards the
        collection threshold per chunk). The magic and version bytes were set
        once in __init__.
        """
        self.buf[2] = kind
        self.buf[4] = req_id & 0xFF
        self.buf[5] = (req_id >> 8) & 0xFF
        self.buf[6] = length & 0xFF
        self.buf[7] = length >> 8
        if pcrc is None:
            pcrc = _crc32(self.mv[HEADER : HEADER + length])
        pcrc = _crc32(self._head, pcrc) & 0xFFFFFFFF
        _pack_into("<I", self.buf, HEADER + length, pcrc)
        self._send(length)

    def _send(self, length):
        # a full frame is the whole buffer: written without a slice (no allocation)
        if length == self.max_payload:
            self._write_all(self.mv)
        else:
            self._write_all(self.mv[: HEADER + length + TRAILER])
        self.frames += 1

    def send_json(self, kind, req_id, obj):
        """Encode `obj` and send it as one frame (PayloadFull if it does not fit).

        json.dump runs in C; into the staging stream (MicroPython) it allocates
        nothing, where json.dumps grows its text piece by piece. A stage grown by
        a longer text is let go (a fresh one is made for the next reply), so it
        holds _STAGE bytes for good. Without a stage json.dumps serves, and when
        the heap has no room for its text the reply is encoded piecewise straight
        into the frame buffer (a Python sink, ten times slower).
        """
        n = self._staged(obj) if _STAGED else -1
        if 0 <= n <= self.max_payload:
            self._stage.seek(0)
            self._stage.readinto(self._sink.view)
        if n > _STAGE:
            self._stage = None  # grown by a long text: a fresh one next time
        if n > self.max_payload:
            raise PayloadFull("message larger than one frame")
        if n < 0:
            n = self._unstaged(obj)
        self.send_prepared(kind, req_id, n)

    def put_pieces(self, pieces):
        """Copy the bytes-likes in `pieces`, one after another, into the payload
        (PayloadFull if they do not fit); their length, for `send_prepared`."""
        n = HEADER
        i = 0
        while i < len(pieces):
            k = len(pieces[i])
            if n + k > HEADER + self.max_payload:
                raise PayloadFull("message larger than one frame")
            self.mv[n : n + k] = pieces[i]
            n += k
            i += 1
        return n - HEADER

    def _staged(self, obj):
        """Encode `obj` into the stage: its length, or -1 when the heap had no room.
        Run for every reply: no locals but its arguments, so that MicroPython keeps
        its frame (a `try` takes six words) on the C stack."""
        try:
            if self._stage is None:
                self._stage = io.BytesIO(_STAGE)
            self._stage.seek(0)
            json.dump(obj, self._stage)
        except MemoryError:
            self._stage = None
            return -1
        return self._stage.tell()

    def _unstaged(self, obj):
        """Encode `obj` into the frame buffer without the stage; its length."""
        try:
            text = json.dumps(obj)
        except MemoryError:
            text = None
        if text is not None:
            data = _utf8(text)
            n = len(data)
            if n > self.max_payload:
                raise PayloadFull("message larger than one frame")
            self.mv[HEADER : HEADER + n] = data
            return n
        sink = self._sink
        sink.n = 0
        json.dump(obj, sink)
        return sink.n

    def send(self, kind, req_id, payload):
        n = len(payload)
        if n > self.max_payload:
            raise ValueError("payload too large")
        self.mv[HEADER : HEADER + n] = payload
        self.send_prepared(kind, req_id, n)

    def _write_all(self, view):
        # The link waits a bounded time for a reader itself; a short write means
        # nobody is reading, and the rest of this response is abandoned.
        n = self.stream.write(view)
        if n is None or n < len(view):
            self.stalled += 1
            raise LinkStalled()


def crc32_pieces(pieces, start, end, crc):
    """`crc` (the CRC-32 of pieces[:start], 0 for none) continued over
    pieces[start:end]. Run per reply: no `for` (its iterator takes four words of
    the frame)."""
    while start < end:
        crc = _crc32(pieces[start], crc)
        start += 1
    return crc


def encode_frame(kind, req_id, payload, version=PROTO_VERSION):
    """One frame as bytes (host side, tests)."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload too large")
    head = struct.pack("<BBBBHH", MAGIC0, MAGIC1, kind, version, req_id & 0xFFFF, len(payload))
    crc = binascii.crc32(head[2:], binascii.crc32(payload)) & 0xFFFFFFFF
    return head + bytes(payload) + struct.pack("<I", crc)


def dumps(obj):
    """JSON bytes of a message, non-ASCII characters as UTF-8.

    Not as \\u escapes (CPython's default): MicroPython's parser makes two
    characters of an escaped surrogate pair (a character beyond U+FFFF), so the
    firmware would read, and check a MAC over, another string than was sent."""
    if _MPY:
        return json.dumps(obj).encode()  # MicroPython escapes no non-ASCII
    try:
        return json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ValueError(
            "a string holds a lone surrogate (not Unicode): it cannot be sent"
        ) from None


def loads(payload):
    """Parse a JSON message; ValueError on anything that is not a JSON object."""
    # One `try`, so that MicroPython keeps this frame on the C stack (run per request).
    try:
        # MicroPython parses a memoryview in place; CPython wants bytes
        obj = json.loads(payload if _MPY else bytes(payload))
    except MemoryError:
        raise
    except Exception:  # MicroPython raises ValueError, CPython also UnicodeDecodeError
        raise ValueError("payload is not JSON")
    if not isinstance(obj, dict):
        raise ValueError("message is not a JSON object")
    return obj


def canon(value):
    """Canonical JSON text (sorted keys, no spaces): what a MAC covers."""
    out = []
    _canon(value, out.append)
    return "".join(out)


# Canonicalisation runs on every signed request. Its pieces go to `put`, one by one:
# the firmware feeds them straight into the MAC's hash (mac_feed), so no list grows
# with the arguments (a boot manifest's list of files made one of 1.8 KB, which a
# fragmented heap could not always give). The type tests build no tuples, and each
# function keeps a frame MicroPython holds on the C stack (a frame of more than 11
# words is allocated on the heap at every call, and counts towards the collection
# threshold): the cases are split up.
def _canon(value, put):
    if isinstance(value, str):
        put(_quote(value))
    elif value is None:
        put("null")
    elif value is True:
        put("true")
    elif value is False:
        put("false")
    elif isinstance(value, int):
        put(str(value))  # what json.dumps gives for an int, on both runtimes
    elif isinstance(value, dict):
        _canon_dict(value, put)
    elif isinstance(value, list) or isinstance(value, tuple):
        _canon_list(value, put)
    else:
        raise ValueError("unsupported value in arguments")


def _canon_dict(value, put):
    keys = sorted(value)
    if not keys:
        put("{}")
        return
    i = 0
    while i < len(keys):
        k = keys[i]
        if not isinstance(k, str):
            raise ValueError("object keys must be strings")
        put("," if i else "{")
        put(_quote(k))
        put(":")
        _canon(value[k], put)
        i += 1
    put("}")


def _canon_list(value, put):
    if not value:
        put("[]")
        return
    i = 0
    while i < len(value):
        put("," if i else "[")
        _canon(value[i], put)
        i += 1
    put("]")


def _quote(s):
    """A JSON string, escaped identically on both runtimes (json.dumps is not:
    CPython escapes non-ASCII, MicroPython does not).

    A string that json.dumps (C) returns only quoted holds nothing to escape
    ('"', '\\', controls are always escaped there, each into more than one
    character), so the loop (`_escape`) runs only for strings that need it."""
    q = json.dumps(s)
    if len(q) == len(s) + 2:  # nothing escaped: exactly '"' + s + '"'
        return q
    return _escape(s)


def _escape(s):
    # Unescaped runs are sliced whole: a long argument (a base64 upload chunk)
    # costs one copy, not a list entry per character.
    out = None
    start = 0
    i = 0
    for ch in s:
        o = ord(ch)
        if o < 0x20 or ch == '"' or ch == "\\":
            if out is None:
                out = []
            if start < i:
                out.append(s[start:i])
            if o >= 0x20:
                out.append("\\" + ch)
            else:
                k = _SHORT_CODES.find(ch)
                out.append("\\" + _SHORT_NAMES[k] if k >= 0 else "\\u%04x" % o)
            start = i + 1
        i += 1
    if out is None:
        return '"' + s + '"'
    out.append(s[start:])
    return '"' + "".join(out) + '"'


_SHORT_CODES = "\b\f\n\r\t"
_SHORT_NAMES = "bfnrt"


def mac_input(serial, nonce, cmd, args):
    """The exact bytes an authenticated request's MAC covers:
    domain, serial, nonce, command (each line-terminated) and canon(args)."""
    out = []
    mac_feed(serial, nonce, cmd, args, out.append)
    return "".join(out).encode()


def mac_feed(serial, nonce, cmd, args, put):
    """mac_input's text, piece by piece to `put(str)` (its UTF-8 is mac_input)."""
    put(_MAC_DOMAIN)
    put(serial)
    put("\n")
    put(nonce)
    put("\n")
    put(cmd)
    put("\n")
    _canon(args or {}, put)

# ruff: noqa: UP031  (%-formatting: this file also runs under MicroPython)
"""Codec and HMAC cases that run unchanged on CPython and inside MicroPython.

CPython: `tests/test_wire.py` runs every `case_*` function.
MicroPython: `micropython -X heapsize=192K tests/wire_cases.py REPO` prints
"PASS name" / "FAIL name: error" per case and "RESULT passed/total".
"""

import binascii
import json
import sys

if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1] + "/firmware")

from bmc import codec  # noqa: E402
from bmc.hmac256 import HmacKey, ct_equal, hmac_sha256  # noqa: E402


def frame(rid, payload, kind=codec.KIND_REQUEST, version=codec.PROTO_VERSION):
    return codec.encode_frame(kind, rid, payload, version)


def parse_all(reader, data, now=0, step=None):
    """Feed `data` (in pieces of `step`) and collect every frame as a tuple with bytes."""
    out = []
    i = 0
    step = step or len(data) or 1
    while i < len(data):
        piece = data[i : i + step]
        while piece:
            k = reader.feed(piece, now)
            piece = piece[k:]
            while True:
                f = reader.next_frame()
                if f is None:
                    break
                out.append((f[0], f[1], f[2], bytes(f[3])))
        i += step
    while True:
        f = reader.next_frame()
        if f is None:
            break
        out.append((f[0], f[1], f[2], bytes(f[3])))
    return out


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def case_roundtrip():
    r = codec.FrameReader()
    data = frame(7, b'{"cmd":"status"}')
    check(len(data) == codec.HEADER + 16 + codec.TRAILER, "frame size")
    got = parse_all(r, data)
    want = [(codec.KIND_REQUEST, codec.PROTO_VERSION, 7, b'{"cmd":"status"}')]
    check(got == want, "roundtrip: %r" % (got,))


def case_frame_bytes_pinned():
    # version 2: the CRC covers the payload first, then header bytes 2..8
    data = codec.encode_frame(codec.KIND_CHUNK, 0x0102, b"racklet")
    want = binascii.unhexlify("b54d0302020107007261636b6c6574769dbfa4")
    check(data == want, "frame bytes: %s" % binascii.hexlify(data).decode())
    crc = binascii.crc32(data[2:8], binascii.crc32(b"racklet")) & 0xFFFFFFFF
    check(data[-4:] == bytes([(crc >> s) & 0xFF for s in (0, 8, 16, 24)]), "crc layout")


def case_version1_frame_counted_not_passed_up():
    # a peer with the old layout (CRC over bytes 2 .. 8+len in wire order)
    head = bytes([0xB5, 0x4D, codec.KIND_RESPONSE, 1, 3, 0, 2, 0])
    crc = binascii.crc32(head[2:] + b"{}") & 0xFFFFFFFF
    old = head + b"{}" + bytes([(crc >> s) & 0xFF for s in (0, 8, 16, 24)])
    r = codec.FrameReader()
    got = parse_all(r, old + frame(4, b"{}"))
    check([g[2] for g in got] == [4], "old frame dropped: %r" % (got,))
    check(r.old_version == 1 and r.bad_crc == 0, "counted: %d %d" % (r.old_version, r.bad_crc))


def case_send_prepared_with_a_known_payload_crc():
    s = _Stream()
    w = codec.FrameWriter(s)
    view = w.payload_view()
    view[0:5] = b"chunk"
    w.send_prepared(codec.KIND_CHUNK, 9, 5, binascii.crc32(b"chunk"))
    check(bytes(s.out) == frame(9, b"chunk", codec.KIND_CHUNK), "reused crc")
    # a stale CRC (the bytes changed since it was computed) makes a bad-CRC frame
    view[0:5] = b"chunK"
    w.send_prepared(codec.KIND_CHUNK, 10, 5, binascii.crc32(b"chunk"))
    r = codec.FrameReader()
    got = parse_all(r, bytes(s.out) + frame(11, b"{}"))
    check([g[2] for g in got] == [9, 11], "stale crc dropped: %r" % (got,))
    check(r.bad_crc == 1, "bad crc counted: %d" % r.bad_crc)


def case_request_id_wraps_to_16_bits():
    got = parse_all(codec.FrameReader(), frame(0x12345, b"x"))
    check(got[0][2] == 0x2345, "id masked")


def case_many_frames_one_feed_and_byte_by_byte():
    data = frame(1, b"a") + frame(2, b"") + frame(3, b"ccc", codec.KIND_CHUNK)
    for step in (None, 1, 3):
        got = parse_all(codec.FrameReader(), data, step=step)
        check([g[2] for g in got] == [1, 2, 3], "ids with step %r: %r" % (step, got))
        check(got[2][0] == codec.KIND_CHUNK and got[2][3] == b"ccc", "chunk")


def case_resync_after_garbage():
    garbage = b"\x00\xff\xb5\xb5\x4d\x09hello\xb5\x4d\x01\x01\x05\x00\xff\xffzz\xb5"
    r = codec.FrameReader()
    got = parse_all(r, garbage + frame(9, b"{}") + garbage + frame(10, b"[]"))
    check([g[2] for g in got] == [9, 10], "resync: %r" % (got,))
    check(r.dropped > 0, "garbage counted")


def case_half_frame_completed_later():
    data = frame(4, b'{"cmd":"hello"}')
    r = codec.FrameReader()
    check(parse_all(r, data[:5]) == [], "header not complete")
    check(parse_all(r, data[5:12]) == [], "payload not complete")
    got = parse_all(r, data[12:])
    check(len(got) == 1 and got[0][2] == 4, "completed: %r" % (got,))


def case_stale_half_frame_is_abandoned():
    big = frame(5, b"y" * 100)
    r = codec.FrameReader()
    parse_all(r, big[:20], now=1000)
    r.expire(1000 + codec.STALE_MS - 10)
    check(r.stale == 0, "not yet stale")
    r.expire(1000 + codec.STALE_MS + 1)
    check(r.stale == 1, "stale counted")
    got = parse_all(r, frame(6, b"ok"), now=1300)
    check([g[2] for g in got] == [6], "after stale: %r" % (got,))


def case_half_frame_then_new_frame_without_expiry():
    # the half frame swallows the start of the next one; the CRC fails and the
    # reader finds the next frame by its magic
    r = codec.FrameReader()
    data = frame(5, b"z" * 40)[:15] + frame(6, b"a") + frame(7, b"b" * 60) + frame(8, b"c")
    got = parse_all(r, data)
    check(8 in [g[2] for g in got], "recovered: %r" % (got,))


def case_crc_error_dropped():
    good = frame(11, b"payload")
    bad = bytearray(good)
    bad[10] ^= 0x01
    r = codec.FrameReader()
    got = parse_all(r, bytes(bad) + frame(12, b"next"))
    check([g[2] for g in got] == [12], "crc: %r" % (got,))
    check(r.bad_crc >= 1, "crc counted")


def case_oversized_length_rejected():
    head = bytearray(frame(13, b""))
    head[6] = 0x00
    head[7] = 0x90  # 36864 bytes claimed
    r = codec.FrameReader()
    got = parse_all(r, bytes(head) + frame(14, b"fine"))
    check([g[2] for g in got] == [14], "oversize: %r" % (got,))
    check(r.oversize >= 1, "oversize counted")
    check(len(r.buf) == codec.MAX_FRAME, "buffer size fixed")


def case_unknown_kind_skipped():
    r = codec.FrameReader()
    got = parse_all(r, frame(15, b"x", kind=9) + frame(16, b"y"))
    check([g[2] for g in got] == [16], "kind: %r" % (got,))


def case_other_version_passed_up():
    got = parse_all(codec.FrameReader(), frame(17, b"{}", version=9))
    check(got == [(codec.KIND_REQUEST, 9, 17, b"{}")], "version: %r" % (got,))


def case_max_payload_and_too_large():
    r = codec.FrameReader()
    data = frame(18, b"m" * codec.MAX_PAYLOAD)
    check(len(data) == codec.MAX_FRAME, "max frame size")
    got = parse_all(r, data)
    check(len(got) == 1 and len(got[0][3]) == codec.MAX_PAYLOAD, "max payload")
    try:
        codec.encode_frame(codec.KIND_REQUEST, 1, b"m" * (codec.MAX_PAYLOAD + 1))
    except ValueError:
        pass
    else:
        raise AssertionError("oversized payload encoded")


def case_flood_never_grows_the_buffer():
    r = codec.FrameReader()
    blob = bytes([(i * 37 + 11) & 0xFF for i in range(5000)]) + b"\xb5\x4d" * 3000
    parse_all(r, blob, step=512)
    check(len(r.buf) == codec.MAX_FRAME, "buffer size fixed")
    r.expire(10**6)
    got = parse_all(r, b"\x00" * codec.MAX_FRAME + frame(19, b"alive"), now=2 * 10**6)
    check([g[2] for g in got] == [19], "alive after flood: %r" % (got,))


class _Stream:
    """A link that takes `room` bytes, then stalls like a host that stopped reading."""

    def __init__(self, room=1 << 20):
        self.out = bytearray()
        self.room = room

    def write(self, view):
        k = min(len(view), self.room)
        self.out += bytes(view[:k])
        self.room -= k
        return k


def case_writer_matches_encode():
    s = _Stream()
    w = codec.FrameWriter(s)
    w.send(codec.KIND_RESPONSE, 21, b'{"ok":true}')
    view = w.payload_view()
    view[0:3] = b"abc"
    w.send_prepared(codec.KIND_CHUNK, 22, 3)
    want = frame(21, b'{"ok":true}', codec.KIND_RESPONSE) + frame(22, b"abc", codec.KIND_CHUNK)
    check(bytes(s.out) == want, "writer bytes")


def case_send_json_replies_short_long_and_too_large():
    # replies of any length in any order come out as json.dumps would send them
    s = _Stream()
    w = codec.FrameWriter(s)
    msgs = [
        {"ok": True, "data": {"n": 1}},
        {"ok": True, "data": {"text": "x" * 1500}},
        {"ok": True, "data": {"n": 2, "list": [1, None, 'q"\n']}},
        {"ok": True, "data": {"text": "y" * 900}},
        {"ok": False, "error": "e"},
    ]
    want = b""
    for i, m in enumerate(msgs):
        w.send_json(codec.KIND_RESPONSE, 30 + i, m)
        want += frame(30 + i, json.dumps(m).encode(), codec.KIND_RESPONSE)
    check(bytes(s.out) == want, "send_json bytes")
    try:
        w.send_json(codec.KIND_RESPONSE, 40, {"text": "z" * codec.MAX_PAYLOAD})
    except codec.PayloadFull:
        pass
    else:
        raise AssertionError("an oversized reply was sent")
    w.send_json(codec.KIND_RESPONSE, 41, {"ok": True})
    check(bytes(s.out) == want + frame(41, b'{"ok": true}', codec.KIND_RESPONSE), "after too large")


def case_writer_gives_up_on_a_stalled_link():
    s = _Stream(room=10)
    w = codec.FrameWriter(s)
    try:
        w.send(codec.KIND_RESPONSE, 5, b"x" * 40)
    except codec.LinkStalled:
        check(w.stalled == 1, "stall counted")
        return
    raise AssertionError("a short write was not reported")


def case_loads_rejects_non_objects():
    for bad in (b"", b"[1]", b"42", b"{", b"\xff\xfe", b'"s"'):
        try:
            codec.loads(bad)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % (bad,))
    check(codec.loads(b'{"a": 1}') == {"a": 1}, "object")


def case_canon_and_mac_input():
    args = {"b": [1, True, None], "a": {"y": "x", "x": 'q"\\'}}
    text = codec.canon(args)
    check(text == '{"a":{"x":"q\\"\\\\","y":"x"},"b":[1,true,null]}', "canon: %s" % text)
    mi = codec.mac_input("SER", "00ff", "power", {"action": "On"})
    check(mi == b'racklet-bmc-v1\nSER\n00ff\npower\n{"action":"On"}', "mac_input: %r" % mi)
    check(codec.mac_input("S", "n", "c", None).endswith(b"\n{}"), "no args")
    for bad in ({"f": 1.5}, {1: 2}):
        try:
            codec.canon(bad)
        except ValueError:
            continue
        raise AssertionError("canon accepted %r" % (bad,))


# RFC 4231 test cases 1-4, 6 and 7 (case 5 is truncated output)
RFC4231 = (
    (
        "0b" * 20,
        "4869205468657265",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    (
        "4a656665",
        "7768617420646f2079612077616e7420666f72206e6f7468696e673f",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    ("aa" * 20, "dd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (
        "0102030405060708090a0b0c0d0e0f10111213141516171819",
        "cd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    (
        "aa" * 131,
        "54657374205573696e67204c6172676572205468616e20426c6f636b2d53697a"
        "65204b6579202d2048617368204b6579204669727374",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        "aa" * 131,
        "5468697320697320612074657374207573696e672061206c6172676572207468"
        "616e20626c6f636b2d73697a65206b657920616e642061206c61726765722074"
        "68616e20626c6f636b2d73697a6520646174612e20546865206b6579206e6565"
        "647320746f20626520686173686564206265666f7265206265696e6720757365"
        "642062792074686520484d414320616c676f726974686d2e",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
)


def case_hmac_rfc4231():
    for key, data, want in RFC4231:
        k = binascii.unhexlify(key)
        d = binascii.unhexlify(data)
        got = binascii.hexlify(hmac_sha256(k, d)).decode()
        check(got == want, "rfc4231 %s: %s" % (want[:8], got))
        hk = HmacKey(k)
        check(hk.mac(d) == hk.mac(d), "key object reusable")


def case_ct_equal():
    check(ct_equal(b"abc", b"abc"), "equal")
    check(not ct_equal(b"abc", b"abd"), "differs")
    check(not ct_equal(b"abc", b"ab"), "length")
    check(ct_equal(b"", b""), "empty")


# arguments whose canonical text must be the same bytes on both sides (else MACs differ)
CANON_SAMPLES = (
    {"s": "caf\u00e9 \u2603 \U0001f600"},
    {"s": "tab\tnl\ncr\r\x01\x1f\x7f"},
    {"s": "\u2028\u2029 </script>"},
    {"n": [-1, 0, 1073741823, -1073741824, 2**40]},
    {"k\u00e9y": {"z": None, "a": [True, False]}},
)


def canon_lines():
    return [
        "CANON %d %s" % (i, binascii.hexlify(codec.canon(v).encode()).decode())
        for i, v in enumerate(CANON_SAMPLES)
    ]


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


def main():
    passed = 0
    for fn in CASES:
        try:
            fn()
            passed += 1
            print("PASS", fn.__name__)
        except Exception as e:
            print("FAIL %s: %s %s" % (fn.__name__, type(e).__name__, e))
    for line in canon_lines():
        print(line)
    print("RESULT %d/%d" % (passed, len(CASES)))
    return passed == len(CASES)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

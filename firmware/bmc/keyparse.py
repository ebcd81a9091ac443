"""Validation of what `inventory-set` carries: the URL and the trust keys, and the
set itself (`set_inventory`).

Loaded for one request and dropped after (`bmc.ondemand`): see bmc.inventory
for the formats.
"""

import binascii
import hashlib
import json

from bmc import errors
from bmc.compat import const
from bmc.inventory import _NAME, ED25519, MAX_KEYS, P256, TUF_ROOT

URL_MAX = const(256)
KEY_TEXT_MAX = const(1536)  # one key or one TUF root, as sent

# DER pieces of SubjectPublicKeyInfo
_OID_ED25519 = b"\x2b\x65\x70"  # 1.3.101.112
_OID_EC_PUBLIC = b"\x2a\x86\x48\xce\x3d\x02\x01"  # 1.2.840.10045.2.1
_OID_P256 = b"\x2a\x86\x48\xce\x3d\x03\x01\x07"  # 1.2.840.10045.3.1.7

# NIST P-256: y^2 = x^3 - 3x + b (mod p)
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
# Ed25519: -x^2 + y^2 = 1 + d x^2 y^2 (mod q)
_Q = (1 << 255) - 19
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555

# what a URL holds unencoded, but "'": u-root's cmdline parser takes it as a quote
_URL_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~:/?#[]@!$&()*+,;=%"
_HEX = "0123456789abcdefABCDEF"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _bad(msg):
    raise errors.CmdError(errors.INVALID, msg)


def hexstr(b):
    return binascii.hexlify(b).decode()


def sha256_hex(b):
    return hexstr(hashlib.sha256(b).digest())


def check_url(url):
    if not isinstance(url, str):
        _bad("url must be a string")
    if len(url) > URL_MAX:
        _bad("url too long: %d characters (at most %d)" % (len(url), URL_MAX))
    if not url.startswith("https://"):
        _bad("url must start with https://")
    host = url[8:]
    for sep in "/?#":
        i = host.find(sep)
        if i >= 0:
            host = host[:i]
    if "@" in host:  # inventory-get is public, and so is the SBC's /proc/cmdline
        _bad("url must not hold a user or password: the inventory is public")
    if not host or host.startswith(":"):
        _bad("url has no host")
    for c in url:
        if c not in _URL_OK:
            _bad("url contains a character that needs percent-encoding: %r" % c)
    for part in url.split("%")[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            _bad("url has a '%' not followed by two hex digits")
    return url


# --- DER -------------------------------------------------------------------


def _tlv(buf, i, end):
    """(tag, value_start, value_end) of the DER element at i; ValueError if malformed."""
    if i + 2 > end:
        raise ValueError("truncated")
    tag = buf[i]
    n = buf[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if k < 1 or k > 2 or i + k > end:
            raise ValueError("bad length")
        n = 0
        for _ in range(k):
            n = (n << 8) | buf[i]
            i += 1
        if n < (0x80 if k == 1 else 0x100):  # DER: the shortest form
            raise ValueError("bad length")
    if i + n > end:
        raise ValueError("truncated")
    return tag, i, i + n


def _spki(der):
    """(type, raw public key) from SubjectPublicKeyInfo DER; CmdError otherwise."""
    try:
        tag, s, e = _tlv(der, 0, len(der))
        if tag != 0x30 or e != len(der):
            raise ValueError("not a SEQUENCE")
        tag, a, ae = _tlv(der, s, e)
        if tag == 0x02:  # INTEGER version first: PKCS#8 / SEC1 private key
            _bad("this is a private key: push the public key only")
        if tag != 0x30:
            raise ValueError("no AlgorithmIdentifier")
        tag, o, oe = _tlv(der, a, ae)
        if tag != 0x06:
            raise ValueError("no algorithm OID")
        oid = bytes(der[o:oe])
        params = None
        if oe < ae:  # the curve's OID, and nothing else
            tag, p, pe = _tlv(der, oe, ae)
            if tag != 0x06 or pe != ae:
                raise ValueError("bad algorithm parameters")
            params = bytes(der[p:pe])
        tag, b, be = _tlv(der, ae, e)
        if tag != 0x03 or be != e or be - b < 2 or der[b] != 0:
            raise ValueError("no public key BIT STRING")
        raw = bytes(der[b + 1 : be])
    except ValueError as ex:
        _bad("malformed public key DER: %s" % ex)
    if oid == _OID_ED25519:
        if params is not None:  # RFC 8410: absent
            _bad("malformed public key DER: Ed25519 takes no algorithm parameters")
        return ED25519, _check_raw(ED25519, raw)
    if oid == _OID_EC_PUBLIC:
        if params != _OID_P256:
            _bad("unsupported EC curve: only P-256 (prime256v1)")
        return P256, _check_raw(P256, raw)
    _bad("unsupported key algorithm: only Ed25519 and ECDSA P-256")


def _check_raw(kind, raw):
    if kind == ED25519:
        if len(raw) != 32:
            _bad("Ed25519 public key must be 32 bytes, got %d" % len(raw))
        # RFC 8032 5.1.3: y < q, and x^2 = u / v has a root (u = y^2 - 1, v = d y^2 + 1,
        # never 0): u v is a square (one exponentiation), or u is 0 and x's sign bit clear
        y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
        yy = y * y % _Q
        u = (yy - 1) % _Q
        if (
            y >= _Q
            or (u == 0 and raw[31] >> 7)
            or (u and pow(u * (_D * yy + 1) % _Q, _Q >> 1, _Q) != 1)
        ):
            _bad("Ed25519 public key is not a point on the curve")
        return raw
    if len(raw) == 33 and raw[0] in (2, 3):
        _bad("compressed P-256 points are not supported: send the uncompressed form")
    if len(raw) != 65 or raw[0] != 4:
        _bad("P-256 public key must be 65 bytes starting with 04, got %d" % len(raw))
    x = int.from_bytes(raw[1:33], "big")
    y = int.from_bytes(raw[33:65], "big")
    if x >= _P or y >= _P or (y * y - (x * x * x - 3 * x + _B)) % _P != 0:
        _bad("P-256 public key is not a point on the curve")
    return raw


def _pem(text):
    """The DER inside a PEM block (the whole text, stripped: one block, no headers, its
    body base64 alone); private-key PEMs are refused."""
    head = "-----BEGIN "
    j = text.find("-----", len(head))
    if not text.startswith(head) or j < 0:
        _bad("malformed PEM")
    label = text[len(head) : j]
    if "PRIVATE" in label or "PRIVATE KEY-----" in text:
        _bad("this is a private key (%s): push the public key only" % label)
    if label != "PUBLIC KEY":
        _bad("unsupported PEM block %r: need PUBLIC KEY" % label)
    tail = "-----END " + label + "-----"
    end = text.find(tail, j)
    if end < 0:
        _bad("PEM block has no END line")
    if end + len(tail) != len(text):
        _bad("text after the PEM block's END line: one key a text")
    body = "".join(text[j + 5 : end].split())
    core = body.rstrip("=")
    if not core or len(body) % 4 or len(body) - len(core) > 2:
        _bad("PEM body is not base64")
    for c in core:
        if c not in _B64:
            _bad("PEM body is not base64 (headers or %r in it)" % c)
    return binascii.a2b_base64(body)


def _unhex(s, what):
    try:
        return binascii.unhexlify(s)
    except Exception:
        _bad("%s is not hex" % what)


def parse_public(text):
    """(type, raw bytes) of one public key given as PEM or hex."""
    t = text.strip()
    if t.startswith("-----"):
        return _spki(_pem(t))
    if len(t) == 64:
        return ED25519, _check_raw(ED25519, _unhex(t, "key"))
    if len(t) == 130:
        return P256, _check_raw(P256, _unhex(t, "key"))
    _bad("key is neither PEM, 64 hex digits (Ed25519) nor 130 (P-256), nor TUF root JSON")


# --- strict JSON ---------------------------------------------------------------
# MicroPython's json.loads takes commas and colons anywhere, unknown escapes, raw
# control characters in strings and numbers like 012, and keeps the last of two equal
# keys; a TUF root is served to the bootstrap as sent (bmc.inventory), so it must be
# JSON (RFC 8259) that every parser reads the same.


def _json_str(b, i):
    """The end of the string token starting at b[i] ('"')."""
    n = len(b)
    i += 1
    while i < n:
        c = b[i]
        if c == 0x22:
            return i + 1
        if c < 0x20:
            raise ValueError("control character in a string")
        if c == 0x5C:
            d = b[i + 1] if i + 1 < n else 0
            if d == 0x75:  # \uXXXX
                h = b[i + 2 : i + 6]
                if len(h) != 4 or any(x not in b"0123456789abcdefABCDEF" for x in h):
                    raise ValueError("bad \\u escape")
                i += 6
                continue
            if d not in b'"\\/bfnrt':
                raise ValueError("bad escape")
            i += 1
        i += 1
    raise ValueError("string not closed")


def _json_digits(b, i):
    while i < len(b) and 0x30 <= b[i] <= 0x39:
        i += 1
    return i


def _json_num(b, i):
    """The end of the number starting at b[i]: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?"""
    n = len(b)
    if b[i] == 0x2D:
        i += 1
    j = _json_digits(b, i)
    if j == i or (b[i] == 0x30 and j > i + 1):
        raise ValueError("bad number")
    i = j
    if i < n and b[i] == 0x2E:
        j = _json_digits(b, i + 1)
        if j == i + 1:
            raise ValueError("bad number")
        i = j
    if i < n and b[i] in b"eE":
        i += 1
        if i < n and b[i] in b"+-":
            i += 1
        j = _json_digits(b, i)
        if j == i:
            raise ValueError("bad number")
        i = j
    return i


def _json_check(b):
    """ValueError unless the bytes b are one JSON value whose objects name each key once.
    A loop with a stack of its own: no recursion, however deep the nesting."""
    n = len(b)
    opened = []  # 0x7B or 0x5B per open object or array
    keys = []  # the keys of each open object so far
    i = 0
    st = 0  # 0 a value, 1 a value or "]", 2 a key or "}", 3 a key, 4 ":", 5 "," or a close
    while True:
        while i < n and b[i] in b" \t\r\n":
            i += 1
        if i == n:
            if st != 5 or opened:
                raise ValueError("ends early")
            return
        c = b[i]
        if opened and c == opened[-1] + 2 and st in (1, 2, 5):  # "]" or "}"
            if opened.pop() == 0x7B:
                keys.pop()
            st = 5
            i += 1
            continue
        if st == 5:
            if c != 0x2C or not opened:
                raise ValueError("unexpected %r at byte %d" % (chr(c), i))
            st = 3 if opened[-1] == 0x7B else 0
            i += 1
            continue
        if st == 4:
            if c != 0x3A:
                raise ValueError("':' expected at byte %d" % i)
            st = 0
            i += 1
            continue
        if st >= 2:
            if c != 0x22:
                raise ValueError("a key expected at byte %d" % i)
            j = _json_str(b, i)
            k = json.loads(b[i:j])
            if k in keys[-1]:
                raise ValueError("key %r given twice" % k[:32])
            keys[-1].append(k)
            st = 4
            i = j
            continue
        if c == 0x22:
            i = _json_str(b, i)
        elif c == 0x7B or c == 0x5B:
            opened.append(c)
            if c == 0x7B:
                keys.append([])
            st = 2 if c == 0x7B else 1
            i += 1
            continue
        elif c in b"tfn":
            for w in (b"true", b"false", b"null"):
                if b[i : i + len(w)] == w:
                    i += len(w)
                    break
            else:
                raise ValueError("unexpected %r at byte %d" % (chr(c), i))
        elif c == 0x2D or 0x30 <= c <= 0x39:
            i = _json_num(b, i)
        else:
            raise ValueError("unexpected %r at byte %d" % (chr(c), i))
        st = 5


def _tuf_root(text):
    try:
        _json_check(text.encode())
        doc = json.loads(text)
    except Exception as e:
        _bad("TUF root is not JSON: %s" % e)
    signed = doc.get("signed") if isinstance(doc, dict) else None
    if not isinstance(signed, dict) or signed.get("_type") != "root":
        _bad('TUF root metadata needs "signed" with "_type": "root"')
    keys = signed.get("keys")
    if not isinstance(keys, dict) or not keys:
        _bad('TUF root needs a non-empty "signed.keys"')
    if not isinstance(signed.get("roles"), dict) or "root" not in signed["roles"]:
        _bad('TUF root needs "signed.roles.root"')
    if not isinstance(doc.get("signatures"), list):
        _bad('TUF root needs "signatures"')
    for kid in keys:
        k = keys[kid]
        kv = k.get("keyval") if isinstance(k, dict) else None
        if not isinstance(kv, dict) or not isinstance(kv.get("public"), str):
            _bad("TUF key %s: needs keyval.public" % kid[:16])
        if "private" in kv:
            _bad("TUF key %s carries a private key" % kid[:16])
        kt = k.get("keytype")
        got = parse_public(kv["public"])[0]
        want = ED25519 if kt == ED25519 else P256
        if kt not in (ED25519, "ecdsa", "ecdsa-sha2-nistp256") or got != want:
            _bad("TUF key %s: keytype %r with a %s key is not supported" % (kid[:16], kt, got))
    return len(keys)


def parse_key(text):
    """Validate one key text; returns the record stored for it."""
    if not isinstance(text, str):
        _bad("each key must be a string")
    if len(text) > KEY_TEXT_MAX:
        _bad("key text too long: %d bytes (at most %d)" % (len(text), KEY_TEXT_MAX))
    t = text.strip()
    if t.startswith("{"):
        n = _tuf_root(t)
        return {"type": TUF_ROOT, "fp": sha256_hex(t.encode()), "root": t, "n": n}
    kind, raw = parse_public(t)
    return {"type": kind, "fp": sha256_hex(raw), "pub": hexstr(raw)}


def set_inventory(inv, url, keys, generation, expect):
    """`Inventory.set`: validate the URL, the generation and every key, then store the
    record (temp file, then rename); CmdError on the first problem, nothing stored."""
    check_url(url)
    if not isinstance(keys, list) or len(keys) > MAX_KEYS:
        _bad("keys must be a list of at most %d keys" % MAX_KEYS)
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
        _bad("generation must be a positive integer")
    cur = inv.generation
    if expect is not None and expect != cur:
        raise errors.CmdError(
            errors.CONFLICT,
            "inventory is at generation %d, not %s" % (cur, expect),
            {"generation": cur},
        )
    if generation <= cur:
        raise errors.CmdError(
            errors.CONFLICT,
            "stale generation %d: the BMC holds generation %d" % (generation, cur),
            {"generation": cur},
        )
    recs = []
    seen = []
    for i in range(len(keys)):
        try:
            r = parse_key(keys[i])
        except errors.CmdError as e:
            raise errors.CmdError(e.code, "key %d: %s" % (i + 1, e.message))
        if r["fp"] in seen:
            _bad("key %d: duplicate of an earlier key" % (i + 1))
        seen.append(r["fp"])
        recs.append(r)
    new = {"gen": generation, "url": url, "keys": recs}
    try:
        inv._store.save(_NAME, new)
    except OSError as e:
        raise errors.CmdError(errors.STORAGE, "could not store the inventory: %s" % e)
    inv.rec = new
    if inv._events is not None:
        inv._events.add("config", "inventory", "generation %d, %d key(s)" % (generation, len(recs)))
    return inv.get()

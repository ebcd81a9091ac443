"""HMAC-SHA256 (RFC 2104) on hashlib alone: MicroPython has no hmac module."""

import hashlib

_BLOCK = 64


class HmacKey:
    """A key with its padded inner and outer blocks computed once."""

    def __init__(self, key):
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        ipad = bytearray(_BLOCK)
        opad = bytearray(_BLOCK)
        for i in range(_BLOCK):
            b = key[i] if i < len(key) else 0
            ipad[i] = b ^ 0x36
            opad[i] = b ^ 0x5C
        self._ipad = bytes(ipad)
        self._opad = bytes(opad)

    def mac(self, msg):
        h = self.begin()
        h.update(msg)
        return self.end(h)

    def begin(self):
        """The inner hash with the key's block taken in: feed it the message
        (`update`, or `feeder(h)` for str pieces), then `end(h)` gives the MAC."""
        return hashlib.sha256(self._ipad)

    def end(self, h):
        outer = hashlib.sha256(self._opad)
        outer.update(h.digest())
        return outer.digest()


try:
    hashlib.sha256().update("")
    _HASHES_STR = True  # MicroPython: a str is read as its UTF-8 bytes, in place
except TypeError:
    _HASHES_STR = False  # CPython: bytes only


def feeder(h):
    """A function that feeds str pieces to hash `h` as their UTF-8 bytes."""
    if _HASHES_STR:
        return h.update
    return lambda s: h.update(s.encode())


def hmac_sha256(key, msg):
    return HmacKey(key).mac(msg)


def ct_equal(a, b):
    """Compare in time that depends only on the lengths."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0

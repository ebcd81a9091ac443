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
        h = hashlib.sha256(self._ipad)
        h.update(msg)
        inner = h.digest()
        h = hashlib.sha256(self._opad)
        h.update(inner)
        return h.digest()


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

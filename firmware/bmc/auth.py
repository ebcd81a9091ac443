"""Keys, nonces and lock-out: who may run which command.

Keys are 32 random bytes in roles (operator, admin); a key's id is the first
8 bytes of its SHA-256 in hex. Keys are stored on flash and never leave the
BMC. A request that needs a role carries a single-use nonce from `nonce`
and an HMAC-SHA256 over `codec.mac_input(...)`.
"""

import binascii
import hashlib
import os

from bmc import codec, errors
from bmc.compat import const
from bmc.dispatch import ADMIN, OPERATOR, PUBLIC, ROLE_RANK
from bmc.hmac256 import HmacKey, ct_equal, feeder

KEY_BYTES = const(32)
NONCE_BYTES = const(16)
NONCE_TTL_MS = const(5000)
_NONCE_SLOTS = const(8)
MAX_KEYS = const(8)
_FREE_FAILURES = const(5)  # failures in a row before back-off starts
_BACKOFF_BASE_MS = const(1000)
_BACKOFF_MAX_MS = const(300000)
KEYS_FILE = "keys"

ROLES = (OPERATOR, ADMIN)
FAIL_REASONS = ("malformed", "unknown_key", "bad_nonce", "expired", "bad_mac", "forbidden")


def key_id(key):
    return binascii.hexlify(hashlib.sha256(key).digest()[:8]).decode()


def parse_key(text):
    """A 64-hex-digit key string to bytes; CmdError(INVALID) otherwise."""
    if not isinstance(text, str) or len(text) != KEY_BYTES * 2:
        raise errors.CmdError(errors.INVALID, "key must be %d hex digits" % (KEY_BYTES * 2))
    try:
        key = binascii.unhexlify(text)
    except ValueError:
        raise errors.CmdError(errors.INVALID, "key must be hex")
    if key == bytes(KEY_BYTES):
        raise errors.CmdError(errors.INVALID, "key must not be all zero")
    return key


class Auth:
    def __init__(self, store, clock, serial, events, bootsel):
        self.store = store  # bmc.store.Store of the data folder
        self.clock = clock
        self.serial = serial
        self.events = events
        self.bootsel = bootsel  # callable: True while BOOTSEL is held
        self.keys = {}  # id -> (role, HmacKey)
        self._stored = []  # [{"id", "role", "key"}] as on flash
        # Times here are the clock's uptime_ms, not ticks: ticks wrap every 2**30 ms
        # (~12 days) on the RP2040, where a nonce or a lock-out left alone for a week
        # would come back to life.
        self._nonces = [None] * _NONCE_SLOTS  # (nonce_hex, issued uptime_ms)
        self._next_slot = 0
        self.failures = {}
        for r in FAIL_REASONS:
            self.failures[r] = 0
        self.successes = 0
        self.in_a_row = 0
        self.lockouts = 0
        self._locked_until = None
        self._load()

    # -- storage --------------------------------------------------------
    def _load(self):
        doc, problem = self.store.load(KEYS_FILE, {"keys": []})
        if problem and problem != "missing":
            self.events.add("store", "keys_file_corrupt", problem[:60])
        entries = doc.get("keys") if isinstance(doc, dict) else None
        self._stored = []
        self.keys = {}
        for e in entries if isinstance(entries, list) else ():
            try:
                role = e["role"]
                key = binascii.unhexlify(e["key"])
                if role not in ROLES or len(key) != KEY_BYTES:
                    raise ValueError
            except Exception:
                self.events.add("store", "keys_entry_invalid", KEYS_FILE)
                continue
            kid = key_id(key)
            self._stored.append({"id": kid, "role": role, "key": e["key"]})
            self.keys[kid] = (role, HmacKey(key))

    def _save(self, stored):
        try:
            self.store.save(KEYS_FILE, {"keys": stored})
        except OSError as e:
            raise errors.CmdError(errors.STORAGE, "could not store keys: %s" % e)
        self._load()

    # -- key management -------------------------------------------------
    def provisioned(self):
        for role, _ in self.keys.values():
            if role == ADMIN:
                return True
        return False

    def list(self):
        return [{"id": e["id"], "role": e["role"]} for e in self._stored]

    def _check_role(self, role):
        if role not in ROLES:
            raise errors.CmdError(errors.INVALID, "role must be one of: %s" % ", ".join(ROLES))

    def provision(self, role, key_hex):
        """First admin key: only while unprovisioned and with BOOTSEL held."""
        if self.provisioned():
            raise errors.CmdError(
                errors.NOT_ALLOWED, "already provisioned: add keys with an admin key"
            )
        if role != ADMIN:
            raise errors.CmdError(errors.INVALID, "the first key must have the admin role")
        if not self.bootsel():
            raise errors.CmdError(
                errors.PRESENCE_REQUIRED, "hold BOOTSEL on the BMC while provisioning"
            )
        return self.add(role, key_hex, "provisioned")

    def add(self, role, key_hex, why="added"):
        self._check_role(role)
        key = parse_key(key_hex)
        kid = key_id(key)
        if kid in self.keys:
            raise errors.CmdError(errors.CONFLICT, "key %s is already installed" % kid)
        if len(self._stored) >= MAX_KEYS:
            raise errors.CmdError(errors.NOT_ALLOWED, "key table full (%d keys)" % MAX_KEYS)
        stored = self._stored + [{"id": kid, "role": role, "key": key_hex.lower()}]
        self._save(stored)
        self.events.add("keys", why, role + " " + kid)
        return kid

    def revoke(self, kid):
        if kid not in self.keys:
            raise errors.CmdError(errors.NOT_FOUND, "no key with id %s" % kid)
        stored = [e for e in self._stored if e["id"] != kid]
        admins = [e for e in stored if e["role"] == ADMIN]
        if not admins:
            raise errors.CmdError(
                errors.NOT_ALLOWED, "refusing to revoke the last admin key: add another first"
            )
        self._save(stored)
        self.events.add("keys", "revoked", kid)

    def erase(self):
        """Factory reset: forget every key (caller checks physical presence)."""
        self._save([])
        self.events.add("keys", "erased")

    # -- nonces -----------------------------------------------------------
    def issue_nonce(self):
        nonce = binascii.hexlify(os.urandom(NONCE_BYTES)).decode()
        self._nonces[self._next_slot] = (nonce, self.clock.uptime_ms())
        self._next_slot = (self._next_slot + 1) % _NONCE_SLOTS
        return nonce

    def _take_nonce(self, nonce):
        """Consume a nonce: "ok", "expired" or "bad_nonce" (unknown or used)."""
        now = self.clock.uptime_ms()
        # A plain comparison: a nonce is no secret (it goes out in the clear to whoever
        # asks, and a sniffer sees it); the MAC is what is compared in constant time.
        nonces = self._nonces
        for i in range(_NONCE_SLOTS):
            slot = nonces[i]
            if slot is not None and slot[0] == nonce:
                nonces[i] = None
                if now - slot[1] > NONCE_TTL_MS:
                    return "expired"
                return "ok"
        return "bad_nonce"

    # -- lock-out ---------------------------------------------------------
    def locked_ms(self):
        """Milliseconds of lock-out left (0 when not locked out)."""
        if self._locked_until is None:
            return 0
        left = self._locked_until - self.clock.uptime_ms()
        if left <= 0:
            self._locked_until = None
            return 0
        return left

    def _fail(self, reason, cmd, message):
        self.failures[reason] += 1
        self.in_a_row += 1
        self.events.add("auth_failure", reason, cmd[:24])
        if self.in_a_row >= _FREE_FAILURES:
            shift = min(self.in_a_row - _FREE_FAILURES, 9)
            wait = min(_BACKOFF_BASE_MS << shift, _BACKOFF_MAX_MS)
            self._locked_until = self.clock.uptime_ms() + wait
            self.lockouts += 1
            self.events.add("lockout", reason, "%d ms" % wait)
        raise errors.CmdError(errors.AUTH_FAILED, message)

    def status(self):
        return {
            "provisioned": self.provisioned(),
            "failures": self.failures,
            "failures_in_a_row": self.in_a_row,
            "lockouts": self.lockouts,
            "locked_out_ms": self.locked_ms(),
        }

    # -- the check --------------------------------------------------------
    def authorize(self, cmd, args, auth, need):
        """(role, key_id) for a request, or CmdError. Nothing else changes on failure."""
        if need == PUBLIC:
            return PUBLIC, None
        left = self.locked_ms()
        if left:
            if isinstance(auth, dict) and isinstance(auth.get("nonce"), str):
                # Spent too: a request refused now must not run when sent again later.
                self._take_nonce(auth["nonce"])
            raise errors.CmdError(
                errors.LOCKED_OUT,
                "locked out after repeated failures; retry in %d ms" % left,
                {"retry_ms": left},
            )
        if auth is None:
            raise errors.CmdError(
                errors.AUTH_REQUIRED, "%s needs the %s role: sign it with a key" % (cmd, need)
            )
        if not isinstance(auth, dict):
            self._fail("malformed", cmd, "auth must be an object")
        kid = auth.get("key")
        nonce = auth.get("nonce")
        mac_hex = auth.get("mac")
        if not (isinstance(kid, str) and isinstance(nonce, str) and isinstance(mac_hex, str)):
            self._fail("malformed", cmd, "auth needs key, nonce and mac strings")
        entry = self.keys.get(kid)
        # Consume the nonce first, whatever else is wrong: a nonce is good for one try.
        taken = self._take_nonce(nonce)
        if entry is None:
            self._fail("unknown_key", cmd, "unknown key")
        if taken != "ok":
            self._fail(
                taken, cmd, "nonce expired" if taken == "expired" else "nonce unknown or used"
            )
        try:
            mac = binascii.unhexlify(mac_hex)
        except ValueError:
            mac = b""
        key = entry[1]
        h = key.begin()
        try:  # the MAC input straight into the hash: no copy of the arguments' text
            codec.mac_feed(self.serial, nonce, cmd, args, feeder(h))
        except (ValueError, RuntimeError):  # a float; lists or objects nested past the stack
            self._fail("malformed", cmd, "arguments cannot be authenticated")
        if not ct_equal(key.end(h), mac):
            self._fail("bad_mac", cmd, "MAC does not verify")
        role = entry[0]
        if ROLE_RANK[role] < ROLE_RANK[need]:
            self.failures["forbidden"] += 1
            self.events.add("auth_failure", "forbidden", cmd[:24])
            raise errors.CmdError(
                errors.FORBIDDEN, "%s needs the %s role; key is %s" % (cmd, need, role)
            )
        self.in_a_row = 0
        self.successes += 1
        return role, kid

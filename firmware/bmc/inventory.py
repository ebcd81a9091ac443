"""Inventory URL and trust keys the SBC's bootstrap uses, held by the BMC.

    inv = Inventory(store, events)
    inv.get()                       # {"url", "generation", "keys": [{"type", "fp"}]}
    inv.set(url, keys, generation, expect=None)   # CmdError on any problem, nothing stored

Keys arrive as text: a PEM "PUBLIC KEY" (SubjectPublicKeyInfo in DER: shortest
lengths, Ed25519 without algorithm parameters, P-256 with its curve alone) holding
an Ed25519 or ECDSA P-256 key (one block and nothing else: no headers, no text
after it, a body of base64 alone), the raw public key in hex (64 hex digits:
Ed25519; 130 starting with 04: uncompressed P-256), or TUF root metadata
(JSON whose "signed" holds "_type": "root" and "keys"; strict JSON, each key
once in an object, since it is served as sent). Each is parsed on the
BMC: a private key, another curve or algorithm, a malformed encoding or a
point not on the curve (P-256, or an Ed25519 key that decodes to none) is
refused. The fingerprint of a key is the
SHA-256 of its raw public key bytes (32 bytes Ed25519, 65 bytes P-256), of a
TUF root the SHA-256 of the metadata text, in hex.

The generation only grows: a write names the new generation (greater than
the stored one) and optionally the one it expects to replace; otherwise it is
refused with `conflict` and nothing changes. The record is written with
`bmc.store` (temp file, then rename).

Generated boot files (served by the boot path, see bmc.bootfiles):
`cmdline_fragment()` -> "racklet.inventory=<url> racklet.keys=<fp>,<fp>" and
`inventory_file()` -> JSON with the URL, the generation and the full keys.
"""

import json

from bmc import ondemand
from bmc.compat import const

MAX_KEYS = const(8)
_NAME = "inventory"

ED25519 = "ed25519"
P256 = "ecdsa-p256"
TUF_ROOT = "tuf-root"


# --- the record ------------------------------------------------------------


class Inventory:
    def __init__(self, store, events=None):
        self._store = store
        self._events = events
        rec, problem = store.load(_NAME, {})
        if problem and problem != "missing" and events is not None:
            events.add("store", "corrupt", "inventory: " + problem)
        if not _valid_record(rec):
            rec = {}
        self.rec = rec

    def forget(self):
        """Factory reset: no inventory."""
        self._store.remove(_NAME)
        self.rec = {}

    @property
    def generation(self):
        return self.rec.get("gen", 0)

    def get(self):
        r = self.rec
        return {
            "url": r.get("url"),
            "generation": r.get("gen", 0),
            "keys": [{"type": k["type"], "fp": k["fp"]} for k in r.get("keys", [])],
        }

    def set(self, url, keys, generation, expect=None):
        """Validate and store a new record (bmc.keyparse.set_inventory, loaded for the
        call: the code runs seldom and would otherwise stay in the heap)."""
        return ondemand.call("keyparse", "set_inventory", self, url, keys, generation, expect)

    # --- generated boot files ----------------------------------------------

    def cmdline_fragment(self):
        r = self.rec
        if not r.get("url"):
            return ""
        fps = ",".join([k["fp"] for k in r.get("keys", [])])
        s = "racklet.inventory=" + r["url"]
        if fps:
            s += " racklet.keys=" + fps
        return s

    def inventory_file(self):
        r = self.rec
        parts = []
        for k in r.get("keys", []):
            if k["type"] == TUF_ROOT:
                body = '"root": ' + k["root"]
            else:
                body = '"public": "' + k["pub"] + '"'
            parts.append('{"type": "%s", "fingerprint": "%s", %s}' % (k["type"], k["fp"], body))
        return (
            '{"version": 1, "url": %s, "generation": %d, "keys": [%s]}\n'
            % (json.dumps(r.get("url")), r.get("gen", 0), ", ".join(parts))
        ).encode()


def _valid_record(r):
    if not isinstance(r, dict) or not r:
        return False
    keys = r.get("keys")
    if not isinstance(r.get("gen"), int) or not isinstance(r.get("url"), str):
        return False
    if not isinstance(keys, list):
        return False
    for k in keys:
        if not isinstance(k, dict) or "type" not in k or "fp" not in k:
            return False
        if ("root" if k["type"] == TUF_ROOT else "pub") not in k:
            return False
    return True

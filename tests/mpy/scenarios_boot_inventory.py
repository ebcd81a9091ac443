"""Inventory URL and trust keys: scenarios on the whole firmware (see boot_helpers)."""

import binascii

from boot_helpers import (
    admin_and_operator,
    causes,
    err,
    fresh,
    hx,
    keys_of,
    ok,
    run_main,
    stored,
)

# -- inventory -----------------------------------------------------------------


def scenario_inventory_roundtrip(root):
    rig = fresh(root)
    k = keys_of(root)
    admin, op = admin_and_operator(rig)
    g = ok(rig.host.call("inventory-get"))
    assert g["generation"] == 0 and g["url"] is None and g["keys"] == [], g
    url = "https://inventory.example.net/racklet/repo"
    keys = [k["ed_pem"], k["ec_pem"], k["tuf_root"]]
    d = ok(rig.host.call("inventory-set", {"url": url, "keys": keys, "generation": 1}, key=admin))
    assert d["generation"] == 1 and d["url"] == url, d
    types = [x["type"] for x in d["keys"]]
    assert types == ["ed25519", "ecdsa-p256", "tuf-root"], types
    # fingerprint = sha256 of the raw public key bytes
    assert d["keys"][0]["fp"] == hx(binascii.unhexlify(k["ed_hex"])), d
    assert d["keys"][1]["fp"] == hx(binascii.unhexlify(k["ec_hex"])), d
    # raw hex keys are the same keys
    d2 = ok(
        rig.host.call(
            "inventory-set",
            {"url": url, "keys": [k["ed_hex"], k["ec_hex"]], "generation": 5, "expect": 1},
            key=admin,
        )
    )
    assert [x["fp"] for x in d2["keys"]] == [x["fp"] for x in d["keys"][:2]], d2
    # survives a BMC restart
    rig.boot("soft")
    g = ok(rig.host.call("inventory-get"))
    assert g["generation"] == 5 and g["url"] == url and len(g["keys"]) == 2, g
    assert "inventory" in causes(rig)


def scenario_inventory_rejections(root):
    rig = fresh(root)
    k = keys_of(root)
    admin, op = admin_and_operator(rig)
    url = "https://inv.example/r"
    ok(
        rig.host.call(
            "inventory-set", {"url": url, "keys": [k["ed_pem"]], "generation": 3}, key=admin
        )
    )
    before = stored(rig)

    def refused(args, code, text, key=admin):
        a = {"url": url, "keys": [k["ed_pem"]], "generation": 4}
        a.update(args)
        err(rig.host.call("inventory-set", a, key=key), code, text)
        assert stored(rig) == before, "something was stored"

    refused({"url": "http://inv.example/r"}, "invalid", "https")
    refused({"url": "https://inv.example/" + "a" * 300}, "invalid", "too long")
    refused({"url": "https://inv.example/a b"}, "invalid", "percent")
    # u-root's cmdline parser takes ' as a quote: racklet.keys= would be swallowed
    refused({"url": "https://inv.example/it's"}, "invalid", "percent")
    # the inventory is public (inventory-get, the SBC's /proc/cmdline)
    refused({"url": "https://deploy:s3cret@inv.example/r"}, "invalid", "password")
    refused({"url": "https://inv.example/a%zz"}, "invalid", "two hex digits")
    refused({"url": "https://inv.example/a%2"}, "invalid", "two hex digits")
    refused({"url": "https://:443/r"}, "invalid", "no host")
    refused({"keys": [k["ed_priv_pem"]]}, "invalid", "private key")
    refused({"keys": [k["ec_priv_pem"]]}, "invalid", "private key")
    refused({"keys": [k["p384_pem"]]}, "invalid", "P-256")
    refused({"keys": [k["ed_hex"][:-2]]}, "invalid", "neither")
    refused({"keys": ["zz" * 32]}, "invalid", "not hex")
    refused({"keys": [k["ec_hex"][:-4] + "0001"]}, "invalid", "not a point")
    bad_pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"
    refused({"keys": [bad_pem]}, "invalid", "malformed")
    refused({"keys": ['{"signed": {"_type": "targets"}}']}, "invalid", "root")
    refused({"keys": [k["ed_pem"], k["ed_hex"]]}, "invalid", "duplicate")
    for what in k["bad"]:
        try:
            refused({"keys": [k["bad"][what]]}, "invalid", "key 1: ")
        except AssertionError as e:
            raise AssertionError("%s: %s" % (what, e)) from None
    refused({"generation": 3}, "conflict", "stale")
    refused({"generation": 2}, "conflict", "stale")
    refused({"expect": 2}, "conflict", "generation 3")
    # without the admin key
    a = {"url": url, "keys": [k["ed_pem"]], "generation": 4}
    err(rig.host.call("inventory-set", a), "auth_required")
    err(rig.host.call("inventory-set", a, key=op), "forbidden")
    assert stored(rig) == before
    assert ok(rig.host.call("inventory-get"))["generation"] == 3


SCENARIOS = [
    scenario_inventory_roundtrip,
    scenario_inventory_rejections,
]


if __name__ == "__main__":
    run_main(SCENARIOS)

"""Helpers of the boot scenarios (scenarios_boot_*.py): real keys, uploads, stored files.

MicroPython and CPython, through the real wire protocol on the fake board of
`app_rig`. Real keys come from `TMP/keys.json`, written by the pytest test
with the `cryptography` package (MicroPython cannot make them):
{"ed_pem", "ed_hex", "ec_pem", "ec_hex", "ed_priv_pem", "ec_priv_pem", "p384_pem", "tuf_root"}.
"""

import binascii
import json

from app_rig import Rig, hexkey, new_key
from unit_rig import hx

_n = [0]


def b64(b):
    return binascii.b2a_base64(b).decode().strip()


def keys_of(root):
    with open(root.rsplit("/", 1)[0] + "/keys.json") as f:
        return json.load(f)


def fresh(root, board="pico-cm4"):
    import gc

    _n[0] += 1
    gc.collect()
    rig = Rig(root + "/b%d" % _n[0], board)
    host_call = rig.host.call

    def call(*a, **kw):
        gc.collect()  # host and BMC share one RP2040-sized heap here: keep it tidy
        return host_call(*a, **kw)

    rig.host.call = call
    return rig


def ok(resp):
    assert resp["ok"], resp
    return resp["data"]


def err(resp, code, text=None):
    assert not resp["ok"], resp
    assert resp["error"] == code, resp
    if text is not None:
        assert text in resp["message"], resp
    return resp


def admin_and_operator(rig):
    admin = new_key()
    rig.board.button = True
    ok(rig.host.call("keys-provision", {"role": "admin", "key": hexkey(admin)}))
    rig.board.button = False
    op = new_key()
    ok(rig.host.call("keys-add", {"role": "operator", "key": hexkey(op)}, key=admin))
    return admin, op


def stored(rig):
    """Every stored file except the event log: what a refusal must not change."""
    import os

    out = {}

    def walk(d, prefix):
        for name in sorted(os.listdir(d)):
            if name.startswith("events"):
                continue
            p = d + "/" + name
            if os.stat(p)[0] & 0x4000:
                walk(p, prefix + name + "/")
            else:
                with open(p, "rb") as f:
                    out[prefix + name] = f.read()

    walk(rig.root + "/data", "")
    return out


def causes(rig):
    return [e["cause"] for e in rig.app.events.entries(0)]


def blob(n, seed):
    b = bytearray(n)
    for i in range(n):
        b[i] = (i * 131 + seed * 7 + (i >> 8)) & 0xFF
    return bytes(b)


def upload(rig, admin, data, manifest=False, upto=None):
    """boot-file-put in 1 KiB chunks (`manifest`: a files list); `upto`: stop after
    that many bytes (an upload left unfinished)."""
    sha = hx(data)
    off = 0
    r = None
    while off < len(data) and (upto is None or off < upto):
        chunk = data[off : off + 1024]
        args = {
            "sha256": sha,
            "size": len(data),
            "offset": off,
            "data": b64(chunk),
            "chunk_sha256": hx(chunk),
        }
        if manifest:
            args["manifest"] = True
        r = ok(rig.host.call("boot-file-put", args, key=admin))
        off += len(chunk)
    if upto is None:
        assert r["complete"] and r["received"] == len(data), r
    return sha


def manifest_of(rig):
    """boot-manifest-get: (its final data, the entries of its JSON lines), the count checked."""
    d = ok(rig.host.call("boot-manifest-get"))
    files = [json.loads(x) for x in b"".join(rig.host.last_chunks).decode().splitlines() if x]
    assert d["count"] == len(files), (d, files)
    return d, files


def read_file(rig, key, name, gen=None, sha=None):
    args = {"name": name}
    if gen is not None:
        args["gen"] = gen
    if sha is not None:
        args["sha256"] = sha
    resp = rig.host.call("boot-file-read", args, key=key)
    return resp, b"".join(rig.host.last_chunks)


def _manifest(files):
    return [{"name": n, "size": len(d), "sha256": hx(d), "src": s} for n, d, s in files]


def run_main(scenarios):
    import gc
    import os
    import sys

    tmp = sys.argv[1]
    only = sys.argv[2] if len(sys.argv) > 2 else None  # one scenario per process: a fresh heap
    failed = 0
    for i, sc in enumerate(scenarios):
        if only is not None and sc.__name__ != only:
            continue
        root = "%s/run%d" % (tmp, i)
        os.mkdir(root)
        gc.collect()
        try:
            sc(root)
            print("PASS", sc.__name__)
        except Exception as e:
            failed += 1
            print("FAIL", sc.__name__ + ":", repr(e))
            sys.print_exception(e)
    sys.exit(1 if failed else 0)

"""One stored file replaced by bytes of every wrong shape: the BMC still boots and answers.

    micropython -X heapsize=320K -m stored_shapes TMPDIR NAME

NAME is a file under the BMC's data folder (`keys.json`, `state.json`, ...), or
`boot-file` / `boot-file.crc` for the stored boot file and its chunk CRCs. The BMC
is set up with keys, a setting, an inventory, a boot manifest with one file on its
flash and the SBC on; then, for each shape, every file is put back, NAME is
overwritten (valid JSON of the wrong type or layout, or not JSON at all), and the
BMC is started, after a power cut and after a soft reset. It must start, keep
running, and answer every command a user would send next without an `internal`
error. Prints "FAIL ..." per problem and "RESULT failures/cases".
"""

import gc
import os
import sys

from boot_helpers import _manifest, admin_and_operator, blob, fresh, ok, upload

SHAPES = (
    b"[]",
    b"{}",
    b"null",
    b"5",
    b'"s"',
    b"true",
    b'{"keys": 5}',
    b'{"keys": [5]}',
    b'{"keys": [{"role": 5, "key": []}]}',
    b'{"a": {"b": []}}',
    b'{"files": 5}',
    b'{"files": [5]}',
    b'{"files": [{"name": 5}]}',
    b'{"gen": "x", "files": []}',
    b'{"url": 5, "keys": 5, "generation": "x"}',
    b'{"boot_count": "x", "sbc_on": 5, "restore": []}',
    b'{"min_off_ms": "x", "restore_policy": 5}',
    b'{"min_off_ms": -5}',
    b'{"x": 1e999}',
    b"\x00\xff",
    b"",
)
RAW_SHAPES = (b"", b"\x00\x00\x00", b"\xff" * 200)  # a boot file and its CRCs are not JSON
CAUSES = ("power_on", "soft")


def setup(root):
    rig = fresh(root)
    admin, _ = admin_and_operator(rig)
    ok(rig.host.call("config-set", {"key": "min_off_ms", "value": 0}, key=admin))
    inv = {"url": "https://inv.example/r", "keys": [], "generation": 1}
    ok(rig.host.call("inventory-set", inv, key=admin))
    boot = blob(3000, 1)
    upload(rig, admin, boot)
    files = _manifest([("bootcode4.bin", boot, "bmc")])
    ok(rig.host.call("boot-manifest-set", {"files": files}, key=admin))
    ok(rig.host.call("power", {"action": "On"}, key=admin))
    for _ in range(50):
        rig.step(20)
    return rig, admin


def stored(d, out):
    for n in os.listdir(d):
        p = d + "/" + n
        if os.stat(p)[0] & 0x4000:
            stored(p, out)
        else:
            with open(p, "rb") as f:
                out[p] = f.read()
    return out


def target(files, data, name):
    for p in files:
        if name == "boot-file" and "/boot/" in p and not p.endswith(".crc"):
            return p
        if name == "boot-file.crc" and "/boot/" in p and p.endswith(".crc"):
            return p
        if p == data + "/" + name:
            return p
    raise AssertionError("no stored file %s among %r" % (name, sorted(files)))


def commands(admin):
    return (
        ("status", {}, None),
        ("metrics", {}, None),
        ("inventory-get", {}, None),
        ("boot-manifest-get", {}, None),
        ("boot-status", {}, None),
        ("keys-list", {}, admin),
        ("config-get", {}, admin),
        ("events", {}, admin),
        ("boot-file-read", {"name": "bootcode4.bin"}, admin),
        ("power", {"action": "ForceOff"}, admin),
    )


def run(root, name):
    rig, admin = setup(root)
    rig.step()  # whatever the BMC holds is written
    data = rig.root + "/data"
    files = stored(data, {})
    path = target(files, data, name)
    shapes = RAW_SHAPES if name.startswith("boot-file") else SHAPES
    cases = failures = 0
    for shape in shapes:
        for cause in CAUSES:
            cases += 1
            for p in files:
                with open(p, "wb") as f:
                    f.write(files[p])
            with open(path, "wb") as f:
                f.write(shape)
            case = "%s=%r %s" % (name, shape[:40], cause)
            rig.app = rig.pc = rig.host = rig.board = None  # the last BMC's heap goes first
            gc.collect()
            try:
                rig.boot(cause)
                for _ in range(3):
                    rig.step(20)
                for cmd, args, key in commands(admin):
                    gc.collect()
                    r = rig.host.call(cmd, args, key=key)
                    if not r["ok"] and r["error"] == "internal":
                        raise AssertionError("%s: internal: %s" % (cmd, r["message"]))
                for _ in range(3):
                    rig.step(20)
            except Exception as e:  # report every case, keep going
                failures += 1
                print("FAIL %s: %s %s" % (case, type(e).__name__, e))
    print("RESULT %d/%d" % (failures, cases))


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])

"""Boot files and the boot manifest: scenarios on the whole firmware (see boot_helpers)."""

import json

from boot_helpers import (
    _manifest,
    admin_and_operator,
    b64,
    blob,
    err,
    fresh,
    hx,
    keys_of,
    ok,
    read_file,
    run_main,
    stored,
    upload,
)

# -- boot files and manifest ---------------------------------------------------------


def scenario_upload_manifest_and_read(root):
    rig = fresh(root)
    k = keys_of(root)
    admin, op = admin_and_operator(rig)
    url = "https://inv.example/r"
    inv = ok(
        rig.host.call(
            "inventory-set",
            {"url": url, "keys": [k["ed_pem"], k["ec_pem"]], "generation": 1},
            key=admin,
        )
    )
    boot = blob(5000, 1)
    start = blob(9000, 2)
    cmdline = b"console=serial0,115200 root=/dev/ram0\n"
    big = blob(3000, 3)  # listed as host-served: the BMC never stores it
    for d in (boot, start, cmdline):
        upload(rig, admin, d)
    m = ok(
        rig.host.call(
            "boot-manifest-set",
            {
                "files": _manifest(
                    [
                        ("bootcode4.bin", boot, "bmc"),
                        ("start4.elf", start, "bmc"),
                        ("cmdline.txt", cmdline, "bmc"),
                        ("kernel8.img", big, "host"),
                    ]
                ),
                "expect": 0,
            },
            key=admin,
        )
    )
    assert m["gen"] == 1, m
    by = {f["name"]: f for f in m["files"]}
    assert by["kernel8.img"]["src"] == "host" and by["cmdline.txt"]["src"] == "gen", by
    assert by["racklet-inventory.json"]["src"] == "gen", by
    # public view of the manifest
    assert ok(rig.host.call("boot-manifest-get"))["files"] == m["files"]
    # reading needs the operator key, streams the exact bytes
    err(rig.host.call("boot-file-read", {"name": "start4.elf"}), "auth_required")
    r, got = read_file(rig, op, "start4.elf", 1, hx(start))
    assert ok(r)["size"] == len(start) and got == start, (len(got), r)
    assert len(rig.host.last_chunks) > 1  # really streamed in chunks
    r, got = read_file(rig, op, "bootcode4.bin")
    assert got == boot
    # generated files carry the URL and the key fingerprints
    r, text = read_file(rig, op, "cmdline.txt", 1, by["cmdline.txt"]["sha256"])
    fps = ",".join([x["fp"] for x in inv["keys"]])
    want = b"console=serial0,115200 root=/dev/ram0 racklet.inventory=" + url.encode()
    want += b" racklet.keys=" + fps.encode() + b"\n"
    assert text == want, text
    assert hx(text) == by["cmdline.txt"]["sha256"] and len(text) == by["cmdline.txt"]["size"]
    r, body = read_file(rig, op, "racklet-inventory.json")
    doc = json.loads(body)
    assert doc["url"] == url and doc["generation"] == 1, doc
    assert [x["public"] for x in doc["keys"]] == [k["ed_hex"], k["ec_hex"]], doc
    assert hx(body) == by["racklet-inventory.json"]["sha256"]
    # host-served files and unlisted names are not streamed by the BMC
    err(read_file(rig, op, "kernel8.img")[0], "not_found", "host cache")
    err(read_file(rig, op, "nothere.bin")[0], "not_found")
    err(read_file(rig, op, "../data/keys.json")[0], "invalid", "..")
    # a stale generation or digest is a conflict
    err(read_file(rig, op, "start4.elf", 0)[0], "conflict")
    err(read_file(rig, op, "start4.elf", 1, hx(b"x"))[0], "conflict")
    # a new inventory changes the generated cmdline
    ok(rig.host.call("inventory-set", {"url": url + "2", "keys": [], "generation": 2}, key=admin))
    r, text = read_file(rig, op, "cmdline.txt")
    assert text.endswith(b"racklet.inventory=" + url.encode() + b"2\n"), text
    # a new manifest without start4.elf removes it from the flash
    ok(
        rig.host.call(
            "boot-manifest-set", {"files": _manifest([("bootcode4.bin", boot, "bmc")])}, key=admin
        )
    )
    names = sorted(stored(rig))
    assert "boot/" + hx(start) not in names and "boot/" + hx(boot) in names, names


def scenario_upload_refusals(root):
    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    data = blob(2500, 4)
    sha = hx(data)
    c0 = data[:1024]
    base = {"sha256": sha, "size": len(data), "offset": 0, "data": b64(c0), "chunk_sha256": hx(c0)}

    def put(args, key=admin):
        a = dict(base)
        a.update(args)
        return rig.host.call("boot-file-put", a, key=key)

    err(put({}, key=op), "forbidden")
    err(put({}, key=None), "auth_required")
    err(put({"chunk_sha256": hx(b"other")}), "invalid", "chunk digest")
    err(put({"offset": 1024}), "conflict", "offset 0")
    ok(put({}))
    err(put({"offset": 2048}), "conflict", "offset 1024")
    c1 = data[1024:2048]
    ok(put({"offset": 1024, "data": b64(c1), "chunk_sha256": hx(c1)}))
    # the last chunk with other bytes: the whole-file digest fails, nothing kept
    wrong = b"\x00" * (len(data) - 2048)
    err(
        put({"offset": 2048, "data": b64(wrong), "chunk_sha256": hx(wrong)}),
        "invalid",
        "whole-file",
    )
    assert not [n for n in stored(rig) if n.startswith("boot/")], stored(rig).keys()
    # too big for the flash
    err(put({"size": 200000}), "invalid", "size")
    # a manifest naming a file that was never uploaded
    m = [{"name": "start4.elf", "size": 10, "sha256": hx(b"0123456789"), "src": "bmc"}]
    err(rig.host.call("boot-manifest-set", {"files": m}, key=admin), "not_found", "upload it")
    m[0]["name"] = "../start4.elf"
    err(rig.host.call("boot-manifest-set", {"files": m}, key=admin), "invalid", "..")
    m[0].update(name="cmdline.txt", src="host")
    err(rig.host.call("boot-manifest-set", {"files": m}, key=admin), "invalid", "cmdline")
    err(rig.host.call("boot-manifest-set", {"files": [], "expect": 7}, key=admin), "conflict")
    err(rig.host.call("boot-manifest-set", {"files": []}, key=op), "forbidden")
    assert ok(rig.host.call("boot-manifest-get"))["gen"] == 0


SCENARIOS = [
    scenario_upload_manifest_and_read,
    scenario_upload_refusals,
]


if __name__ == "__main__":
    run_main(SCENARIOS)

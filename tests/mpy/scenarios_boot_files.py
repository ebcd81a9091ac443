"""Boot files and the boot manifest: scenarios on the whole firmware (see boot_helpers)."""

import json

from bmc import codec
from boot_helpers import (
    _manifest,
    admin_and_operator,
    b64,
    blob,
    err,
    fresh,
    hx,
    keys_of,
    manifest_of,
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
    # the reply is a summary: 4 files, cmdline.txt generated, racklet-inventory.json added
    used = len(boot) + len(start) + len(cmdline)
    assert m == {"gen": 1, "count": 5, "bmc_bytes": used, "bmc_limit": 262144}, m
    # public view of the manifest: streamed, an entry a line
    d, files = manifest_of(rig)
    assert d == m, d
    by = {f["name"]: f for f in files}
    assert [f["name"] for f in files] == [
        "bootcode4.bin",
        "start4.elf",
        "kernel8.img",
        "cmdline.txt",
        "racklet-inventory.json",
    ], files
    assert by["kernel8.img"] == {
        "name": "kernel8.img",
        "size": 3000,
        "sha256": hx(big),
        "src": "host",
    }
    assert by["start4.elf"]["src"] == "bmc" and by["start4.elf"]["sha256"] == hx(start), by
    assert by["cmdline.txt"]["src"] == "gen", by
    assert by["racklet-inventory.json"]["src"] == "gen", by
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


def _pi5(small):
    """32 entries as a Pi 5 / CM5 asks for them (bootcode5.bin, mcb.bin, memsys00..08,
    bootmain, rp1c0fw1.bin, config.txt, boot.img, loose files, overlays): config.txt on
    the BMC, the others from the host cache."""
    names = ["bootcode5.bin", "mcb.bin", "bootmain", "rp1c0fw1.bin", "config.txt", "boot.img"]
    names += ["memsys%02d.bin" % i for i in range(9)]
    names += ["kernel_2712.img", "initramfs8", "bcm2712-rpi-5-b.dtb", "bcm2712-rpi-cm5-cm5io.dtb"]
    names += ["overlays/overlay_map.dtb"] + ["overlays/extra-%02d.dtbo" % i for i in range(12)]
    out = []
    for i in range(len(names)):
        if names[i] == "config.txt":
            out.append(
                {"name": "config.txt", "size": len(small), "sha256": hx(small), "src": "bmc"}
            )
        else:
            out.append(
                {"name": names[i], "size": 1000 + i, "sha256": hx(names[i].encode()), "src": "host"}
            )
    return out


def _state(rig):
    """What a refused set must not change: the manifest and the boot files (not a
    refused files list upload)."""
    files = [n for n in stored(rig) if not n.endswith(".manifest") and n != "boot/upload.tmp"]
    return manifest_of(rig), files


def scenario_manifest_of_32_uploaded(root):
    """32 entries are more than one frame: the files list is uploaded, then set by its
    digest; listed back an entry a line. The upload is never listed, and goes."""
    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    small = b"dtparam=uart0=on\n"
    upload(rig, admin, small)
    files = _pi5(small)
    assert len(files) == 32
    inline = codec.dumps({"cmd": "boot-manifest-set", "args": {"files": files}})
    assert len(inline) > codec.MAX_PAYLOAD, len(inline)  # it cannot go inline
    text = codec.canon(files).encode()
    sha = upload(rig, admin, text, manifest=True)
    assert "boot/" + sha + ".manifest" in stored(rig)
    # the upload is no boot file: not counted, not listable
    listed = [{"name": "m.json", "size": len(text), "sha256": sha, "src": "bmc"}]
    err(rig.host.call("boot-manifest-set", {"files": listed}, key=admin), "not_found")
    # an operator may not set it
    err(rig.host.call("boot-manifest-set", {"files_sha256": sha}, key=op), "forbidden")
    m = ok(rig.host.call("boot-manifest-set", {"files_sha256": sha, "expect": 0}, key=admin))
    assert m == {"gen": 1, "count": 32, "bmc_bytes": len(small), "bmc_limit": 262144}, m
    d, got = manifest_of(rig)
    assert d == m and got == files, got
    assert len(rig.host.last_chunks) >= 2  # more than one frame's worth, streamed
    names = [n for n in stored(rig) if n.startswith("boot/")]
    assert names == ["boot/" + hx(small), "boot/" + hx(small) + ".crc"], names
    r, body = read_file(rig, op, "config.txt", 1, hx(small))
    assert body == small
    err(read_file(rig, op, "m.json")[0], "not_found")
    # the same 32 again, inline: too large for a request frame, and one more is refused
    files.append({"name": "overlays/one-more.dtbo", "size": 1, "sha256": hx(b"1"), "src": "host"})
    sha = upload(rig, admin, codec.canon(files).encode(), manifest=True)
    before = _state(rig)
    err(
        rig.host.call("boot-manifest-set", {"files_sha256": sha}, key=admin),
        "invalid",
        "at most 32",
    )
    assert _state(rig) == before
    # the refused list stays for a retry until the next upload or manifest; after the next
    # manifest no files list is left on the flash
    assert "boot/" + sha + ".manifest" in stored(rig)
    ok(rig.host.call("boot-manifest-set", {"files": []}, key=admin))
    assert not [n for n in stored(rig) if n.startswith("boot/")], stored(rig).keys()
    # restarted, the BMC lists what it stored
    upload(rig, admin, small)
    m = ok(
        rig.host.call(
            "boot-manifest-set",
            {"files_sha256": upload(rig, admin, text, manifest=True)},
            key=admin,
        )
    )
    assert m["count"] == 32 and m["gen"] == 3, m
    rig.boot()
    assert manifest_of(rig)[1] == _pi5(small)


def scenario_manifest_upload_refusals(root):
    """A files list that is not whole, changed on the flash, not JSON, not a list, too
    large, or named with a stale generation: `invalid` (or `conflict`), nothing changes."""
    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    small = b"dtparam=uart0=on\n"
    upload(rig, admin, small)
    files = _pi5(small)
    text = codec.canon(files).encode()
    first = ok(
        rig.host.call(
            "boot-manifest-set",
            {"files_sha256": upload(rig, admin, text, manifest=True)},
            key=admin,
        )
    )
    assert first["gen"] == 1
    before = _state(rig)

    def refused(args, code, what):
        err(rig.host.call("boot-manifest-set", args, key=admin), code, what)
        assert _state(rig) == before, what

    # neither or both ways of giving the files
    refused({}, "invalid", "files_sha256")
    refused({"files": [], "files_sha256": hx(text)}, "invalid", "files_sha256")
    refused({"files_sha256": "zz"}, "invalid", "files_sha256")
    # never uploaded, or an upload left unfinished
    other = codec.canon(files[:31]).encode()
    refused({"files_sha256": hx(other)}, "invalid", "upload it whole first")
    upload(rig, admin, other, manifest=True, upto=1024)
    refused({"files_sha256": hx(other)}, "invalid", "upload it whole first")
    # not JSON; JSON but not a list
    refused({"files_sha256": upload(rig, admin, b"[{]", manifest=True)}, "invalid", "not JSON")
    refused(
        {"files_sha256": upload(rig, admin, b'{"files": []}', manifest=True)},
        "invalid",
        "not a JSON list",
    )
    # a list whose entries are refused (the same checks as inline files)
    bad = codec.canon([{"name": "../x", "size": 1, "sha256": hx(b"x"), "src": "host"}]).encode()
    refused({"files_sha256": upload(rig, admin, bad, manifest=True)}, "invalid", "..")
    # changed on the flash after its upload: the digest the MAC covered no longer matches
    sha = upload(rig, admin, codec.canon(files[:30]).encode(), manifest=True)
    path = rig.root + "/data/boot/" + sha + ".manifest"
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"X")
    refused({"files_sha256": sha}, "invalid", "changed on the flash")
    assert "boot/" + sha + ".manifest" not in stored(rig)  # of no further use: removed
    # too large to upload as a files list
    big = {"sha256": hx(b"big"), "size": 8193, "offset": 0, "manifest": True}
    big.update(data=b64(b"[]"), chunk_sha256=hx(b"[]"))
    err(rig.host.call("boot-file-put", big, key=admin), "invalid", "size")
    # a stale generation: conflict, and the same list goes through with the right one
    sha = upload(rig, admin, codec.canon(files[:31]).encode(), manifest=True)
    refused({"files_sha256": sha, "expect": 0}, "conflict", "generation 1")
    m = ok(rig.host.call("boot-manifest-set", {"files_sha256": sha, "expect": 1}, key=admin))
    assert m["gen"] == 2 and m["count"] == 31, m


def scenario_manifest_upload_outside_the_file_space(root):
    """A files list does not count against the boot files' space: with the flash's boot
    file space full, the manifest can still be replaced."""
    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    small = b"dtparam=uart0=on\n"
    upload(rig, admin, small)
    rig.app.bootfiles.max_total = len(small) + 100  # all but full
    c = blob(2000, 9)
    put = {"sha256": hx(c), "size": len(c), "offset": 0, "data": b64(c[:1024])}
    put["chunk_sha256"] = hx(c[:1024])
    err(rig.host.call("boot-file-put", put, key=admin), "storage", "space full")
    text = codec.canon(_pi5(small)).encode()
    assert len(text) > 100
    m = ok(
        rig.host.call(
            "boot-manifest-set",
            {"files_sha256": upload(rig, admin, text, manifest=True)},
            key=admin,
        )
    )
    assert m["count"] == 32 and m["bmc_bytes"] == len(small), m


def scenario_stream_time_counted(root):
    """The time streams take on the BMC, up to their last chunk, adds up in boot-status
    and in bmc_boot_stream_seconds_total: here a link that takes 1 ms a frame."""
    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    start = blob(9000, 2)  # five chunks: four full, one of 808 bytes
    upload(rig, admin, start)
    ok(
        rig.host.call(
            "boot-manifest-set", {"files": _manifest([("start4.elf", start, "bmc")])}, key=admin
        )
    )
    r, got = read_file(rig, op, "start4.elf")  # the sidecar is written here
    assert got == start, r
    pipe = rig.board.link
    plain = pipe.write

    def slow(data):
        rig.clock.advance(1)
        return plain(data)

    before = ok(rig.host.call("boot-status"))["counters"]
    pipe.write = slow
    for _ in range(2):
        r, got = read_file(rig, op, "start4.elf")
        assert got == start and len(rig.host.last_chunks) == 5, r
    pipe.write = plain
    after = ok(rig.host.call("boot-status"))["counters"]
    assert after["stream_ms"] - before["stream_ms"] == 10, (before, after)
    assert after["bytes_streamed"] - before["bytes_streamed"] == 18000, (before, after)
    ok(rig.host.call("metrics"))
    text = b"".join(rig.host.last_chunks).decode()
    line = [x for x in text.splitlines() if x.startswith("bmc_boot_stream_seconds_total ")]
    assert len(line) == 1 and float(line[0].split()[1]) == after["stream_ms"] / 1000, line


def scenario_empty_files_listed_without_an_upload(root):
    """An empty file (a cmdline.txt of nothing but what the BMC adds, an empty
    config.txt) has nothing to upload (`BmcClient.boot_file_put` sends no chunk, and a
    put takes 1 byte at least): it is listed on the BMC all the same, stores nothing,
    and is served empty; an empty file named with another digest is refused."""
    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    boot = blob(1500, 5)
    upload(rig, admin, boot)
    files = _manifest([("cmdline.txt", b"", "bmc"), ("config.txt", b"", "bmc")])
    files += _manifest([("bootcode4.bin", boot, "bmc")])
    m = ok(rig.host.call("boot-manifest-set", {"files": files, "expect": 0}, key=admin))
    assert m == {"gen": 1, "count": 3, "bmc_bytes": len(boot), "bmc_limit": 262144}, m
    for _ in range(2):  # the same after a restart
        r, body = read_file(rig, op, "config.txt", 1, hx(b""))
        assert ok(r) == {"name": "config.txt", "size": 0, "sha256": hx(b"")} and body == b"", r
        r, body = read_file(rig, op, "cmdline.txt", 1)
        assert ok(r)["size"] == 1 and body == b"\n", (r, body)
        assert read_file(rig, op, "bootcode4.bin")[1] == boot
        assert [n for n in stored(rig) if n.startswith("boot/")] == [
            "boot/" + hx(boot),
            "boot/" + hx(boot) + ".crc",
        ], stored(rig).keys()
        rig.boot()
    files[1]["sha256"] = hx(b"x")
    err(rig.host.call("boot-manifest-set", {"files": files}, key=admin), "invalid", "empty")
    assert manifest_of(rig)[0]["gen"] == 1


SCENARIOS = [
    scenario_upload_manifest_and_read,
    scenario_empty_files_listed_without_an_upload,
    scenario_stream_time_counted,
    scenario_upload_refusals,
    scenario_manifest_of_32_uploaded,
    scenario_manifest_upload_refusals,
    scenario_manifest_upload_outside_the_file_space,
]


if __name__ == "__main__":
    run_main(SCENARIOS)

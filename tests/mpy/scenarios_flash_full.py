"""A full flash: the whole firmware on a small littlefs (MicroPython only).

    micropython -X heapsize=320K -m scenarios_flash_full TMPDIR [SCENARIO]

Each scenario formats an image file in its folder with the simulated board's block
device (`bmc.board.simflash`: MicroPython's littlefs, as on an RP2040) and mounts it at
/flash, where `boot_helpers.fresh` puts the BMC's files. A write the flash has no room
for fails in littlefs with ENOSPC: the BMC must answer it with a clear error, keep what
it stored before, and still start.
"""

import binascii
import hashlib
import os

from app_rig import hexkey, key_id, new_key
from boot_helpers import admin_and_operator, b64, causes, err, fresh, ok, run_main

MNT = "/flash"


def flash(root, blocks):
    """A blank littlefs of `blocks` 4 KiB blocks (an image in `root`), mounted at /flash."""
    import vfs  # MicroPython's: imported here, so CPython can list the scenarios
    from bmc.board import simflash

    try:
        vfs.umount(MNT)
    except OSError:
        pass
    f, _ = simflash.open_image(root + "/flash.img", blocks)
    bdev = simflash.FileBlockDevice(f, block_count=blocks)
    vfs.VfsLfs2.mkfs(bdev, progsize=simflash.PROG_SIZE)
    vfs.mount(vfs.VfsLfs2(bdev, progsize=simflash.PROG_SIZE), MNT)
    return MNT


def fill(mnt):
    """Files `fill<n>` until the flash takes no more: first 64 KiB ones (fill0 is one),
    then smaller ones and empty ones for the room left in the metadata."""
    piece = b"x" * 4096
    n = 0
    for size in (65536, 4096, 600, 100, 0):
        while True:
            try:
                with open("%s/fill%d" % (mnt, n), "wb") as f:
                    left = size
                    while left:
                        left -= f.write(piece[: min(left, 4096)])
            except OSError:
                break
            n += 1
    return n


def unfill(mnt):
    for name in os.listdir(mnt):
        if name.startswith("fill"):
            os.remove(mnt + "/" + name)


def many_keys(rig, admin, n):
    """`n` more operator keys: a keys file too long to live in littlefs's metadata."""
    for _ in range(n):
        ok(rig.host.call("keys-add", {"role": "operator", "key": hexkey(new_key())}, key=admin))


def settle(rig):
    for _ in range(5):
        rig.step()


def scenario_start_on_a_full_flash(root):
    """A BMC starts and answers on a full flash, even when its event log needs the
    rewrite that drops an unreadable line (it raised ENOSPC out of the start); writes
    it has no room for are refused with `storage`, and what was stored stays."""
    mnt = flash(root, 32)
    rig = fresh(mnt)
    admin, op = admin_and_operator(rig)
    many_keys(rig, admin, 5)
    settle(rig)
    with open(rig.root + "/data/events.jsonl", "a") as f:
        f.write("garbage\n")
    fill(mnt)
    rig.boot("soft")
    settle(rig)
    st = ok(rig.host.call("status"))
    assert st["provisioned"] and st["boot_count"] == 2, st
    assert rig.app.events.write_errors > 0  # no room for the rewrite: kept for later
    r = rig.host.call("keys-add", {"role": "operator", "key": hexkey(new_key())}, key=admin)
    err(r, "storage", "could not store keys")
    err(rig.host.call("keys-revoke", {"key_id": key_id(op)}, key=admin), "storage")
    assert len(ok(rig.host.call("keys-list", key=admin))["keys"]) == 7
    unfill(mnt)
    k = new_key()
    ok(rig.host.call("keys-add", {"role": "admin", "key": hexkey(k)}, key=admin))
    settle(rig)
    with open(rig.root + "/data/events.jsonl") as f:
        assert "garbage" not in f.read()  # rewritten once there was room
    rig.boot("soft")
    settle(rig)
    assert len(ok(rig.host.call("keys-list", key=k))["keys"]) == 8
    assert "corrupt" in causes(rig)


def _upload_chunks(rig, admin, count, tag, upto=None):
    """Upload a file of `count` 1 KiB chunks (made as they go: the harness shares the
    heap), or its first `upto`; the first refusal, or None."""

    def chunk(i):
        return (tag + b"%06d" % i) * 128  # tag: 2 bytes

    h = hashlib.sha256()
    for i in range(count):
        h.update(chunk(i))
    sha = binascii.hexlify(h.digest()).decode()
    for i in range(count if upto is None else upto):
        c = chunk(i)
        args = {"sha256": sha, "size": 1024 * count, "offset": 1024 * i, "data": b64(c)}
        args["chunk_sha256"] = binascii.hexlify(hashlib.sha256(c).digest()).decode()
        r = rig.host.call("boot-file-put", args, key=admin)
        if not r["ok"]:
            return r
    return None


def _room(mnt, size):
    """True when a file of `size` bytes still fits on the flash (it is removed again)."""
    path = mnt + "/room"
    try:
        with open(path, "wb") as f:
            for _ in range(size // 1024):
                f.write(b"r" * 1024)
        return True
    except OSError:
        return False
    finally:
        os.remove(path)


def scenario_upload_failing_part_way_frees_its_space(root):
    """An upload the flash runs out of room for is refused with `storage`, and the part
    already written goes with it: it kept the flash full until the next upload began.
    One a BMC restart cut short (it cannot go on) is gone after the start."""
    mnt = flash(root, 32)
    rig = fresh(mnt)
    admin, op = admin_and_operator(rig)
    settle(rig)
    fill(mnt)
    os.remove(mnt + "/fill0")  # 64 KiB free
    assert _room(mnt, 49152)
    err(_upload_chunks(rig, admin, 100, b"up"), "storage", "flash write failed")
    boot = rig.root + "/data/boot"
    assert "upload.tmp" not in os.listdir(boot)
    assert _room(mnt, 49152)
    assert _upload_chunks(rig, admin, 40, b"ab", upto=30) is None
    assert not _room(mnt, 49152)
    rig.boot("soft")
    assert "upload.tmp" not in os.listdir(boot)
    assert _room(mnt, 49152)
    r = _upload_chunks(rig, admin, 40, b"ab")
    assert r is None, r
    assert len([n for n in os.listdir(boot) if not n.endswith(".crc")]) == 1


def scenario_small_uploads_cannot_fill_the_flash(root):
    """Boot files count against max_total by their bytes, but littlefs gives each file
    over 512 bytes blocks of 4 KiB of its own: uploads of small files filled the 1 MiB
    flash at a fifth of max_total, and keys could no longer be added or revoked. The
    number of stored files is bounded too, so the flash keeps room for the rest."""
    mnt = flash(root, 256)  # the simulator's flash
    rig = fresh(mnt)
    admin, op = admin_and_operator(rig)
    many_keys(rig, admin, 5)
    settle(rig)
    r = None
    for i in range(300):  # files of 1 KiB, each a new one: 256 fit max_total
        r = _upload_chunks(rig, admin, 1, bytes([65 + i // 26, 65 + i % 26]))
        if r is not None:
            break
    err(r, "storage", "space full")
    settle(rig)
    # room left for what max_total does not count: an upload's temp file and a files list
    assert _room(mnt, 131072 + 8192)
    ok(rig.host.call("keys-add", {"role": "operator", "key": hexkey(new_key())}, key=admin))
    ok(rig.host.call("keys-revoke", {"key_id": key_id(op)}, key=admin))


def scenario_maintenance_on_a_full_flash(root):
    """No room for the maintenance flag: refused as `storage`, no reboot, no flag left
    to turn a later start into maintenance; with room it is set."""
    mnt = flash(root, 32)
    rig = fresh(mnt)
    admin, _ = admin_and_operator(rig)
    settle(rig)
    fill(mnt)
    fill(rig.root + "/data")  # the flag's folder has a metadata block of its own
    err(rig.host.call("maintenance", key=admin), "storage", "maintenance flag")
    assert not rig.app.reboot_pending
    assert "maintenance.flag" not in os.listdir(rig.root + "/data")
    unfill(mnt)
    unfill(rig.root + "/data")
    try:
        rig.host.call("maintenance", key=admin)
    except SystemExit:  # the rig's board: the reboot that follows the reply
        pass
    assert rig.board.rebooted
    assert "maintenance.flag" in os.listdir(rig.root + "/data")


SCENARIOS = [
    scenario_start_on_a_full_flash,
    scenario_maintenance_on_a_full_flash,
    scenario_upload_failing_part_way_frees_its_space,
    scenario_small_uploads_cannot_fill_the_flash,
]


if __name__ == "__main__":
    run_main(SCENARIOS)

"""A seeded, stateful property test of boot file uploads and manifest sets, on the
whole firmware (see boot_helpers): MicroPython (tests/test_boot_props.py) and CPython.

    micropython -X heapsize=320K -m scenarios_boot_props TMPDIR [SCENARIO]

Random steps by two admins: uploads started, continued in order, out of order, twice,
at wrong offsets, with a wrong chunk digest, past the end, empty, not base64, abandoned
or cut short by a BMC restart; manifest sets inline and from an uploaded files list,
naming files uploaded, never uploaded or half uploaded, with a right or stale
`expect`; empty files (listed, never stored); reads of what is listed and of what is
not; sidecars lost or torn; many small files (the stored-file count). A model on the
side says what each put and set must answer; after every step: no `internal`, the
generation only grows, the listing is the model's, every file stored under a digest is
whole and has it, the bytes stored are counted right and within max_total, a listed
file reads back byte for byte, the counters move as the reads did, and a restart loads
the same manifest. SEED and STEPS are fixed (about 3 s under MicroPython).
"""

import hashlib
import os

from bmc import codec
from boot_helpers import (
    admin_and_operator,
    b64,
    blob,
    fresh,
    hx,
    manifest_of,
    ok,
    read_file,
    run_main,
)

SEED = 11
STEPS = 400
MAX_TOTAL = 12000  # small: the space limit comes up within a few uploads
MAX_STORED = 64
CODES = ("invalid", "conflict", "not_found", "storage")
NAMES = ("bootcode4.bin", "start4.elf", "config.txt", "cmdline.txt", "kernel8.img", "a/b.dtb")


def _boot_dir(rig):
    return rig.root + "/data/boot"


def _on_flash(rig):
    """{name: (size, sha256 hex)} of the boot folder, read a piece at a time."""
    d = _boot_dir(rig)
    out = {}
    buf = bytearray(512)
    for n in os.listdir(d):
        h = hashlib.sha256()
        size = 0
        with open(d + "/" + n, "rb") as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                h.update(buf[:k])
                size += k
        out[n] = (size, hx_digest(h))
    return out


def hx_digest(h):
    import binascii

    return binascii.hexlify(h.digest()).decode()


class Rng:
    """A seeded xorshift32: the same sequence under MicroPython and CPython (MicroPython's
    `random` has no `Random`)."""

    def __init__(self, seed):
        self.s = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

    def randrange(self, a, b=None):
        if b is None:
            a, b = 0, a
        x = self.s
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.s = x
        return a + x % (b - a)

    def random(self):
        return self.randrange(1 << 24) / (1 << 24)

    def choice(self, seq):
        return seq[self.randrange(len(seq))]

    def shuffle(self, seq):
        for k in range(len(seq) - 1, 0, -1):
            j = self.randrange(k + 1)
            seq[k], seq[j] = seq[j], seq[k]


class Model:
    """What the BMC should hold: complete files (sha -> bytes), the upload in
    progress [sha, size, received, manifest, bytes], the manifest (gen, entries) and the
    complete files list upload (sha or None)."""

    def __init__(self):
        self.files = {}
        self.up = None
        self.gen = 0
        self.entries = []
        self.listed = None

    def used(self):
        return sum(len(d) for d in self.files.values())

    def expect_put(self, sha, size, offset, raw, chunk_ok, manifest):
        """(code or None, received) for a put of a file's sha and size; updates the
        model as the BMC should."""
        if (self.listed == sha) if manifest else (sha in self.files):
            return None, size
        if offset == 0:
            if not manifest and (self.used() + size > MAX_TOTAL or len(self.files) >= MAX_STORED):
                return "storage", None
            self.up = [sha, size, 0, manifest, b""]
        else:
            up = self.up
            if up is None or up[0] != sha or up[1] != size or up[2] != offset or up[3] != manifest:
                return "conflict", None
        if not raw or len(raw) > 1024 or offset + len(raw) > size or not chunk_ok:
            return "invalid", None
        up = self.up
        up[2] += len(raw)
        up[4] += raw
        if up[2] < size:
            return None, up[2]
        self.up = None
        if hx(up[4]) != sha:
            return "invalid", None  # whole-file digest mismatch
        if manifest:
            self.listed = sha
        else:
            self.files[sha] = up[4]
        return None, size


def scenario_uploads_and_manifests_hold_their_invariants(root, seed=SEED, steps=STEPS):
    rng = Rng(seed)
    rig = fresh(root)
    admin, op = admin_and_operator(rig)
    from app_rig import hexkey, new_key

    admin2 = new_key()
    ok(rig.host.call("keys-add", {"role": "admin", "key": hexkey(admin2)}, key=admin))
    rig.app.bootfiles.max_total = MAX_TOTAL
    sizes = (1, 300, 1024, 1025, 2048, 2500, 4100, 6000, 7000)
    pool = [blob(sizes[i], 40 + i) for i in range(len(sizes))]
    m = Model()
    # what each admin's upload is sending: [data, next offset, manifest]
    sending = {}
    seen = {}
    gens = [0]

    def call(cmd, args, key=admin):
        r = rig.host.call(cmd, args, key=key)
        assert r["ok"] or r["error"] in CODES, (i, cmd, r)
        return r

    def put(who, data, offset, n, manifest=False, chunk=None, garble=None, text=None):
        """One chunk of `data` at `offset` (n bytes, or `chunk` itself), checked against
        the model."""
        sha = hx(data)
        size = len(data)
        raw = data[offset : offset + n] if chunk is None else chunk
        chunk_sha = hx(raw)
        if garble == "chunk_sha":
            chunk_sha = hx(raw + b"x")
        args = {"sha256": sha, "size": size, "offset": offset, "data": text or b64(raw)}
        args["chunk_sha256"] = chunk_sha
        if manifest:
            args["manifest"] = True
        want, got = m.expect_put(sha, size, offset, raw, garble is None and text is None, manifest)
        r = call("boot-file-put", args, key=who)
        seen[want or "ok"] = seen.get(want or "ok", 0) + 1
        if want is None:
            assert r["ok"], (i, "put", offset, n, size, r, m.up)
            assert r["data"] == {"received": got, "complete": got == size}, (i, r, got)
        else:
            assert not r["ok"] and r["error"] == want, (i, "put", want, offset, n, size, r, m.up)
            if want == "conflict":  # where to go on from
                at = m.up[2] if m.up is not None and m.up[0] == sha else 0
                assert r["data"] == {"offset": at}, (i, r, m.up)
        return r

    tiny = [0]

    def entries_for(k):
        out = []
        names = list(NAMES)
        rng.shuffle(names)
        for name in names[:k]:
            d = b"" if rng.random() < 0.1 else rng.choice(pool)  # empty: listed, not stored
            src = "bmc" if name == "cmdline.txt" or rng.random() < 0.7 else "host"
            out.append({"name": name, "size": len(d), "sha256": hx(d), "src": src})
        return out

    def would_set(files):
        for f in files:
            if f["src"] == "bmc" and f["size"] and f["sha256"] not in m.files:
                return "not_found"
        return None

    def set_done(r, files, expect):
        want = would_set(files)
        if expect is not None and expect != m.gen:
            want = "conflict"
        if want is None:
            assert r["ok"], (i, r, files)
            count = len(files)
            assert r["data"]["gen"] == m.gen + 1 and r["data"]["count"] == count, (i, r, files)
            m.gen += 1
            m.entries = files
            keep = [f["sha256"] for f in files if f["src"] == "bmc"]
            for s in list(m.files):
                if s not in keep:
                    del m.files[s]
            m.listed = None
        else:
            assert not r["ok"] and r["error"] == want, (i, r, want)

    def check():
        st = ok(rig.host.call("boot-status"))
        assert st["gen"] == m.gen and st["gen"] >= gens[0], (i, st["gen"], m.gen)
        gens[0] = st["gen"]
        d, listed = manifest_of(rig)
        assert d["gen"] == m.gen, (i, d, m.gen)
        mine = [(f["name"], f["size"], f["sha256"], f["src"]) for f in listed if f["src"] != "gen"]
        want = [
            (f["name"], f["size"], f["sha256"], f["src"])
            for f in m.entries
            if f["name"] != "cmdline.txt"
        ]
        assert mine == want, (i, mine, want)
        flash = _on_flash(rig)
        boot = [n for n in flash if len(n) == 64]
        # every file stored under a digest is whole and has it: a part is never stored
        for n in boot:
            assert flash[n][1] == n, (i, "stored file is not its digest", n, flash[n][0])
        assert sorted(boot) == sorted(m.files), (i, sorted(boot), sorted(m.files))
        used = sum(flash[n][0] for n in boot)
        assert used == d["bmc_bytes"] and used <= MAX_TOTAL, (i, used, d)
        assert len(boot) <= MAX_STORED
        for n in flash:
            if n.endswith(".crc"):
                assert n[:-4] in flash, (i, "sidecar without its file", n)
        lists_on = [n for n in flash if n.endswith(".manifest")]
        assert len(lists_on) <= 1, (i, lists_on)
        assert lists_on == ([m.listed + ".manifest"] if m.listed else []), (i, lists_on, m.listed)
        for f in m.entries:
            if f["src"] == "bmc" and f["size"]:
                assert f["sha256"] in flash, (i, "listed but not stored", f)

    def read_all():
        gen = m.gen
        c0 = ok(rig.host.call("boot-status"))["counters"]
        sent = 0
        conflicts = 0
        for f in m.entries:
            if f["name"] == "cmdline.txt":  # generated: the stored one's text, stripped
                r, body = read_file(rig, op, f["name"], gen)
                text = m.files[f["sha256"]] if f["size"] else b""
                assert r["ok"] and body == text.strip() + b"\n", (i, r, body)
                sent += len(body)
                continue
            r, body = read_file(rig, op, f["name"], gen, f["sha256"])
            if f["src"] == "bmc":
                want = m.files[f["sha256"]] if f["size"] else b""
                assert r["ok"] and body == want, (i, f, r, len(body))
                assert r["data"] == {"name": f["name"], "size": f["size"], "sha256": f["sha256"]}
                sent += len(body)
            else:
                assert not r["ok"] and r["error"] == "not_found", (i, f, r)
        # a file uploaded (whole or in part) but not listed is never served
        listed = [f["name"] for f in m.entries]
        for name in NAMES:
            if name not in listed:
                r, body = read_file(rig, op, name)
                assert not r["ok"] and r["error"] == "not_found", (i, name, r)
        r, body = read_file(rig, op, "upload.tmp")
        assert not r["ok"], (i, r)
        for f in m.entries:  # a reader with a stale generation or digest is refused
            if f["src"] == "bmc" and f["name"] != "cmdline.txt":
                r, _ = read_file(rig, op, f["name"], gen - 1)
                assert not r["ok"] and r["error"] == "conflict", (i, r)
                r, _ = read_file(rig, op, f["name"], gen, hx(f["sha256"].encode()))
                assert not r["ok"] and r["error"] == "conflict", (i, r)
                conflicts = 2
                break
        c1 = ok(rig.host.call("boot-status"))["counters"]
        assert c1["bytes_streamed"] - c0["bytes_streamed"] == sent, (i, c0, c1, sent)
        assert c1["conflict"] - c0["conflict"] == conflicts, (i, c0, c1)
        for k in c1:
            if k not in ("bytes_streamed", "conflict", "stream_ms"):
                assert c1[k] == c0[k], (i, k, c0, c1)

    i = -1
    check()
    for i in range(steps):
        pick = rng.randrange(16)
        who = admin if rng.random() < 0.7 else admin2
        if pick in (0, 1):  # start an upload
            d = rng.choice(pool)
            n = rng.choice([1024, 1024, 512, 1])
            put(who, d, 0, n)
            sending[who] = [d, min(n, len(d)), False]
        elif pick in (2, 3, 4):  # the next chunk in order
            s = sending.get(who)
            if s is None or s[1] >= len(s[0]):
                continue
            n = rng.choice([1024, 1024, 700])
            put(who, s[0], s[1], n, s[2])
            s[1] = min(s[1] + n, len(s[0]))
        elif pick == 5:  # a chunk gone wrong
            s = sending.get(who) or [rng.choice(pool), 0, False]
            d, off = s[0], s[1]
            how = rng.randrange(7)
            if how == 0:  # twice: the last chunk again
                put(who, d, max(0, off - 1024), 1024, s[2])
            elif how == 1:  # a wrong offset
                put(who, d, rng.randrange(1, len(d) + 1), 100, s[2])
            elif how == 2:  # a wrong chunk digest
                put(who, d, off if off < len(d) else 0, 1024, s[2], garble="chunk_sha")
            elif how == 3:  # past the end
                put(who, d, off, 0, s[2], chunk=b"z" * min(len(d) - off + 1, 1025))
            elif how == 4:  # empty
                put(who, d, off, 0, s[2], chunk=b"")
            elif how == 5:  # other bytes than the file's: the whole-file digest fails
                if off < len(d):
                    bad = bytes([(d[off] + 1) & 0xFF]) + d[off + 1 : off + 1024]
                    put(who, d, off, 0, s[2], chunk=bad)
                    s[1] = min(off + len(bad), len(d))
            else:  # not base64
                put(who, d, off, 0, s[2], chunk=b"", text="!!!")
        elif pick == 6:  # the whole of a file, from the start
            d = rng.choice(pool)
            off = 0
            while off < len(d):
                r = put(who, d, off, 1024)
                if not r["ok"]:
                    break
                off += 1024
            sending.pop(who, None)
        elif pick == 7:  # abandon
            sending.pop(who, None)
        elif pick == 8:  # the BMC restarts
            rig.boot(reset_cause=rng.choice(["watchdog", "power_on"]))
            rig.app.bootfiles.max_total = MAX_TOTAL
            m.up = None
            check()
        elif pick in (9, 10):  # a manifest set, inline
            files = entries_for(rng.randrange(0, 5))
            expect = rng.choice([None, m.gen, m.gen, m.gen - 1, m.gen + 1])
            args = {"files": files}
            if expect is not None:
                args["expect"] = expect
            r = call("boot-manifest-set", args, key=who)
            set_done(r, files, expect)
        elif pick == 11:  # a manifest set from an uploaded files list (whole or in part)
            files = entries_for(rng.randrange(0, 6))
            text = codec.canon(files).encode()
            sha = hx(text)
            upto = len(text) if rng.random() < 0.8 else rng.randrange(1, len(text) + 1)
            off = 0
            while off < upto:
                r = put(who, text, off, 1024, True)
                if not r["ok"]:
                    break
                off += 1024
            expect = rng.choice([None, m.gen, m.gen - 1])
            args = {"files_sha256": sha}
            if expect is not None:
                args["expect"] = expect
            r = call("boot-manifest-set", args, key=who)
            if expect is not None and expect != m.gen:
                assert not r["ok"] and r["error"] == "conflict", (i, r)
            elif m.listed != sha:
                assert not r["ok"] and r["error"] == "invalid", (i, r)
            else:
                set_done(r, files, expect)
        elif pick == 12:  # read back
            read_all()
        elif pick == 14 and m.files:  # a sidecar lost or torn (an older firmware, a reset)
            sha = rng.choice(sorted(m.files))
            path = _boot_dir(rig) + "/" + sha + ".crc"
            try:  # not there when lost before, and not read back since
                if rng.random() < 0.5:
                    os.remove(path)
                else:
                    with open(path, "r+b") as f:
                        f.seek(rng.randrange(4))
                        f.write(b"\xa5")
            except OSError:
                pass
            read_all()
        elif pick == 13:  # many small files: the stored-file count limit
            for _ in range(rng.randrange(5, 25)):
                tiny[0] += 1
                d = blob(1 + tiny[0] % 40, 100 + tiny[0])
                put(who, d, 0, 1024)
        else:  # set the same manifest again: prunes what it does not list
            args = {"files": m.entries, "expect": m.gen}
            r = call("boot-manifest-set", args, key=who)
            set_done(r, m.entries, m.gen)
        check()
    read_all()
    # restarted, the BMC has the same manifest and serves the same bytes
    before = manifest_of(rig)
    rig.boot()
    rig.app.bootfiles.max_total = MAX_TOTAL
    m.up = None
    assert manifest_of(rig) == before
    check()
    read_all()
    # the sequence went through every answer a put can give
    for code in ("ok", "invalid", "conflict", "storage"):
        assert seen.get(code), (code, seen)
    return seen


SCENARIOS = [scenario_uploads_and_manifests_hold_their_invariants]


if __name__ == "__main__":
    run_main(SCENARIOS)

"""The client library and transport against a scripted peer on a PTY (no firmware).

The peer checks MACs with CPython's own `hmac` module, so these tests also prove
that the client signs exactly the bytes docs/protocol.md describes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import select
import stat
import threading
import time
from typing import Any, Callable, Dict, List

import pytest
from bmc import codec
from racklet_host import errors
from racklet_host.client import BmcClient
from racklet_host.keys import Key, load_key, load_or_create, write_new_key
from racklet_host.transport import Link

from tests.fake_bmc import fill_port

SERIAL = "e66038b7133f2a2f"


class Peer:
    """A BMC stand-in on the master side of a PTY, answering with `handler`."""

    def __init__(self, handler: Callable[[int, Dict[str, Any]], List[bytes]]) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        # the slave stays open here as well: with no slave open, the master reads EIO
        self.handler = handler
        self.seen: List[Dict[str, Any]] = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        reader = codec.FrameReader()
        while not self.stop:
            try:
                r, _, _ = select.select([self.master], [], [], 0.05)
                if not r:
                    continue
                data = os.read(self.master, 4096)
            except OSError:
                return
            reader.feed(data)
            while True:
                f = reader.next_frame()
                if f is None:
                    break
                msg = json.loads(bytes(f[3]))
                self.seen.append(msg)
                for out in self.handler(f[2], msg):
                    os.write(self.master, out)

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        os.close(self.master)
        os.close(self.slave)


def resp(rid: int, obj: Dict[str, Any]) -> bytes:
    return codec.encode_frame(codec.KIND_RESPONSE, rid, json.dumps(obj).encode())


@pytest.fixture
def key() -> Key:
    return Key(bytes(range(32)))


def standard(key: Key) -> Callable[[int, Dict[str, Any]], List[bytes]]:
    nonces: List[str] = []

    def handle(rid: int, msg: Dict[str, Any]) -> List[bytes]:
        cmd = msg["cmd"]
        if cmd == "hello":
            return [resp(rid, {"ok": True, "data": {"serial": SERIAL, "proto": 1}})]
        if cmd == "nonce":
            n = os.urandom(8).hex()
            nonces.append(n)
            return [resp(rid, {"ok": True, "data": {"nonce": n, "ttl_ms": 5000}})]
        if cmd == "status":
            # a stale answer to another id and some noise come first
            return [
                resp((rid + 7) & 0xFFFF, {"ok": True, "data": {"power": "stale"}}),
                b"\x00garbage\xb5",
                resp(rid, {"ok": True, "data": {"power": "Off"}}),
            ]
        if cmd == "metrics":
            return [
                codec.encode_frame(codec.KIND_CHUNK, rid, b"a 1\n"),
                codec.encode_frame(codec.KIND_CHUNK, rid, b"# EOF\n"),
                resp(rid, {"ok": True}),
            ]
        if cmd == "power":
            auth = msg.get("auth") or {}
            args = json.dumps(msg["args"], separators=(",", ":"), sort_keys=True)
            text = f"racklet-bmc-v1\n{SERIAL}\n{auth.get('nonce')}\npower\n{args}".encode()
            good = hmac.new(key.secret, text, hashlib.sha256).hexdigest()
            key_id = hashlib.sha256(key.secret).hexdigest()[:16]
            if (
                auth.get("nonce") in nonces
                and auth.get("key") == key_id
                and hmac.compare_digest(good, auth.get("mac", ""))
            ):
                nonces.remove(auth["nonce"])
                return [resp(rid, {"ok": True, "data": {"power": "On"}})]
            return [resp(rid, {"ok": False, "error": "auth_failed", "message": "bad MAC"})]
        if cmd == "quiet":
            return []
        return [
            resp(rid, {"ok": False, "error": "not_allowed", "message": "not now", "data": {"x": 1}})
        ]

    return handle


@pytest.fixture
def peer(key: Key) -> Any:
    p = Peer(standard(key))
    yield p
    p.close()


def test_signed_call_matches_stdlib_hmac(peer: Peer, key: Key) -> None:
    with BmcClient.open(peer.path, key=key) as c:
        assert c.power("On")["power"] == "On"
        sent = peer.seen[-1]
        assert sent["auth"]["key"] == key.key_id
        other = Key(bytes(32))
        with pytest.raises(errors.AuthFailed, match="bad MAC"):
            c.power("On", key=other)


def test_stale_answers_and_noise_are_skipped(peer: Peer) -> None:
    with BmcClient.open(peer.path) as c:
        assert c.status() == {"power": "Off"}
        assert c.status() == {"power": "Off"}


def test_stream_collects_chunks(peer: Peer) -> None:
    with BmcClient.open(peer.path) as c:
        assert c.metrics() == "a 1\n# EOF\n"


def test_error_codes_map_to_classes(peer: Peer) -> None:
    with BmcClient.open(peer.path) as c:
        with pytest.raises(errors.NotAllowed) as ei:
            c.call("whatever")
        assert ei.value.message == "not now"
        assert ei.value.data == {"x": 1}
        assert ei.value.exit_code == errors.EXIT_NOT_ALLOWED


def test_every_wire_code_has_a_class() -> None:
    from bmc import errors as wire

    codes = [v for k, v in vars(wire).items() if k.isupper() and isinstance(v, str)]
    assert codes
    for code in codes:
        exc = errors.from_wire(code, "m")
        assert type(exc) is not errors.BmcError, code
        assert exc.code == code


def test_timeout_when_no_answer(peer: Peer) -> None:
    with BmcClient.open(peer.path, timeout=0.3) as c:
        with pytest.raises(errors.Timeout):
            c.call("quiet")
        assert c.status()["power"] == "Off"  # the link still works afterwards


def test_a_bmc_that_stopped_reading_times_out_within_the_timeout() -> None:
    """The request's write waits no longer than the answer would (`--timeout`)."""
    master, slave = os.openpty()  # nobody reads the master: the BMC is hung
    try:
        link = Link(os.ttyname(slave))
        fill_port(link.fileno())
        with BmcClient(link, timeout=0.3) as c:
            t0 = time.monotonic()
            with pytest.raises(errors.Timeout, match="not reading"):
                c.call("status", auth=False)
            assert time.monotonic() - t0 < 1.5
    finally:
        os.close(master)
        os.close(slave)


def test_second_opener_gets_port_busy(peer: Peer) -> None:
    with Link(peer.path):
        with pytest.raises(errors.PortBusy, match="busy"):
            Link(peer.path)


def test_busy_port_is_waited_for_until_its_holder_closes_it(peer: Peer) -> None:
    holder = Link(peer.path)
    threading.Timer(0.3, holder.close).start()
    with BmcClient.open(peer.path, timeout=2, busy_wait=10) as c:  # waits for its turn
        assert not holder.is_open
        assert c.status()["power"] == "Off"
    with Link(peer.path):  # held for longer than the wait: a clear error
        with pytest.raises(errors.PortBusy, match="busy: another program has held it for 0.2 s"):
            Link(peer.path, busy_wait=0.2)


def test_vanished_device_is_link_gone(key: Key) -> None:
    p = Peer(standard(key))
    c = BmcClient.open(p.path, timeout=2)
    assert c.status()["power"] == "Off"
    p.close()
    with pytest.raises(errors.LinkGone):
        c.status()
    c.close()


def test_missing_port_is_link_gone(tmp_path: Any) -> None:
    with pytest.raises(errors.LinkGone, match="no such device"):
        Link(str(tmp_path / "nope"))


# -- key files ---------------------------------------------------------------


def test_key_file_roundtrip_and_mode(tmp_path: Any) -> None:
    path = str(tmp_path / "admin.key")
    k = write_new_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = open(path).read()
    assert len(text) == 65 and text.endswith("\n")
    assert load_key(path).secret == k.secret
    assert k.key_id == hashlib.sha256(k.secret).hexdigest()[:16]
    again, created = load_or_create(path)
    assert not created and again.secret == k.secret
    assert k.secret.hex() not in repr(k)


def test_key_file_readable_by_others_is_refused(tmp_path: Any) -> None:
    path = str(tmp_path / "k")
    write_new_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(errors.KeyFileError, match="chmod 600"):
        load_key(path)


def test_key_file_others_may_write_is_refused_and_said_so(tmp_path: Any) -> None:
    path = str(tmp_path / "k")
    write_new_key(path)
    os.chmod(path, 0o620)  # a group that may write could put its own key there
    with pytest.raises(errors.KeyFileError, match="read or written by others") as e:
        load_key(path)
    assert "chmod 600" in str(e.value)


def test_key_file_behind_a_symlink_is_refused_and_said_so(tmp_path: Any) -> None:
    target = str(tmp_path / "k")
    write_new_key(target)
    link = str(tmp_path / "link")
    os.symlink(target, link)
    with pytest.raises(errors.KeyFileError, match="is a symbolic link"):
        load_key(link)


@pytest.mark.parametrize("content", ["", "zz" * 32 + "\n", "ab" * 31 + "\n", "ab" * 33])
def test_bad_key_files(tmp_path: Any, content: str) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(errors.KeyFileError):
        load_key(str(path))


def test_missing_key_file(tmp_path: Any) -> None:
    with pytest.raises(errors.KeyFileError, match="does not exist"):
        load_key(str(tmp_path / "none"))


def test_boot_manifest_count_checked() -> None:
    """boot_manifest() parses the streamed JSON lines and checks them against the count the
    BMC reports: an entry lost on the way, or a garbled one, is a ProtocolError."""
    lines = [
        b'{"name":"a.bin","size":1,"sha256":"%s","src":"bmc"}\n' % (b"0" * 64),
        b'{"name":"b.bin","size":2,"sha256":"%s","src":"host"}\n' % (b"1" * 64),
    ]
    answers: Dict[str, List[bytes]] = {"body": lines[0] + lines[1]}
    count = {"n": 2}

    def handle(rid: int, msg: Dict[str, Any]) -> List[bytes]:
        assert msg["cmd"] == "boot-manifest-get" and "auth" not in msg
        summary = {"gen": 4, "count": count["n"], "bmc_bytes": 1, "bmc_limit": 262144}
        return [
            codec.encode_frame(codec.KIND_CHUNK, rid, answers["body"]),
            resp(rid, {"ok": True, "data": summary}),
        ]

    p = Peer(handle)
    try:
        with BmcClient.open(p.path) as c:
            m = c.boot_manifest()
            assert m["gen"] == 4 and m["bmc_bytes"] == 1 and m["bmc_limit"] == 262144
            assert [f["name"] for f in m["files"]] == ["a.bin", "b.bin"]
            count["n"] = 3
            with pytest.raises(errors.ProtocolError, match="3 entries, 2 arrived"):
                c.boot_manifest()
            count["n"] = 2
            answers["body"] = lines[0] + b"{not json\n"
            with pytest.raises(errors.ProtocolError, match="garbled boot manifest entry"):
                c.boot_manifest()
    finally:
        p.close()


def test_arguments_that_cannot_be_signed_or_sent_are_refused_here(peer: Peer, key: Key) -> None:
    """A float (no MAC covers one) or a lone surrogate (from an undecodable command
    line) is refused before anything goes out, and the nonce fetched is kept."""
    with BmcClient.open(peer.path, key=key) as c:
        with pytest.raises(errors.Invalid, match="cannot be signed: a string holds a lone"):
            c.call("console-write", {"data": "\udcff"})
        with pytest.raises(errors.Invalid, match="cannot be signed: a number that is not an"):
            c.call("config-set", {"key": "min_off_ms", "value": 1.5})
        with pytest.raises(errors.Invalid, match="request not sent: a string holds a lone"):
            c.call("status", {"x": "\udcff"}, auth=False)
        assert [m["cmd"] for m in peer.seen] == ["nonce", "hello"]  # hello: the serial
        assert c.power("On")["power"] == "On"  # signed with that nonce
        assert [m["cmd"] for m in peer.seen] == ["nonce", "hello", "power"]


def test_an_answer_that_never_ends_is_cut_off(key: Key) -> None:
    """Each chunk keeps a stream alive, so a BMC sending chunks without end would hold
    the client for ever: past `max_answer` bytes it is a protocol error."""

    def endless(rid: int, msg: Dict[str, Any]) -> List[bytes]:
        if msg["cmd"] == "hello":
            return [resp(rid, {"ok": True, "data": {"serial": SERIAL, "proto": 1}})]
        return [codec.encode_frame(codec.KIND_CHUNK, rid, b"x" * 1000)] * 30

    p = Peer(endless)
    try:
        with BmcClient.open(p.path, key=key) as c:
            c.max_answer = 20_000
            with pytest.raises(errors.ProtocolError, match="passed 20000 bytes without ending"):
                c.call("events", auth=False, on_chunk=lambda chunk: None)
    finally:
        p.close()

"""A boot file streamed from the BMC whose frames arrive damaged, against a scripted peer on a
PTY (no firmware): the client and the relay fail with a clear error, never a silent timeout,
and the link stays usable. End to end (bytes changed on the BMC's flash) in test_boot_e2e.py.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import struct
from typing import Any, Dict, Iterator, List

import pytest
from bmc import codec
from racklet_host import errors
from racklet_host.client import BmcClient
from racklet_host.transport import Link
from racklet_host.usbboot.relay import BmcSource, Entry

from tests.test_client_unit import SERIAL, Peer, resp

DATA = os.urandom(5000)
SHA = hashlib.sha256(DATA).hexdigest()


def chunks(rid: int, data: bytes, damage: int = -1) -> List[bytes]:
    """Chunk frames of `data`; chunk number `damage` with one payload byte changed after
    its CRC was computed (as the BMC sends a chunk whose bytes changed on its flash)."""
    out = []
    for i, off in enumerate(range(0, len(data), codec.MAX_PAYLOAD)):
        frame = bytearray(codec.encode_frame(codec.KIND_CHUNK, rid, data[off : off + 2048]))
        if i == damage:
            frame[codec.HEADER + 100] ^= 0x01
        out.append(bytes(frame))
    return out


def peer_for(damage: int, old_version: bool = False) -> Peer:
    def handle(rid: int, msg: Dict[str, Any]) -> List[bytes]:
        cmd = msg["cmd"]
        if cmd == "hello":
            return [resp(rid, {"ok": True, "data": {"serial": SERIAL, "proto": 2}})]
        if cmd == "boot-file-read":
            done = resp(rid, {"ok": True, "data": {"name": "start4.elf", "size": len(DATA)}})
            if old_version:  # a firmware of protocol version 1: CRC over the header first
                head = struct.pack("<BBBBHH", 0xB5, 0x4D, codec.KIND_RESPONSE, 1, rid, 2)
                crc = binascii.crc32(head[2:] + b"{}") & 0xFFFFFFFF
                return [head + b"{}" + struct.pack("<I", crc)]
            return chunks(rid, DATA, damage) + [done]
        if cmd == "status":
            return [resp(rid, {"ok": True, "data": {"state": "Off"}})]
        return [resp(rid, {"ok": False, "error": "unknown_command", "message": cmd})]

    return Peer(handle)


@pytest.fixture
def whole() -> Iterator[Peer]:
    p = peer_for(-1)
    yield p
    p.close()


@pytest.fixture
def damaged() -> Iterator[Peer]:
    p = peer_for(1)
    yield p
    p.close()


def read(c: BmcClient) -> bytes:
    got: List[bytes] = []
    c.call("boot-file-read", {"name": "start4.elf"}, auth=False, on_chunk=got.append)
    return b"".join(got)


def test_whole_stream_arrives(whole: Peer) -> None:
    with BmcClient(Link(whole.path), timeout=5) as c:
        assert read(c) == DATA
        assert c.link.bad_frames == 0


def test_damaged_chunk_is_a_clear_error_then_the_link_works(damaged: Peer) -> None:
    with BmcClient(Link(damaged.path), timeout=5) as c:
        with pytest.raises(errors.ProtocolError, match=r"1 frame\(s\) of the streamed answer"):
            read(c)
        assert c.link.bad_frames == 1
        assert c.call("status", auth=False) == {"state": "Off"}  # no stale bytes left behind


def test_relay_refuses_a_damaged_stream(damaged: Peer) -> None:
    with BmcClient(Link(damaged.path), timeout=5) as c:
        src = BmcSource(c, None, None)
        src.gen = 1
        data, why = src.fetch(Entry("start4.elf", len(DATA), SHA, "bmc"))
        assert data is None
        assert why.startswith("corrupt stream from the BMC") and "CRC mismatch" in why, why


def test_relay_takes_a_whole_stream(whole: Peer) -> None:
    with BmcClient(Link(whole.path), timeout=5) as c:
        src = BmcSource(c, None, None)
        src.gen = 1
        assert src.fetch(Entry("start4.elf", len(DATA), SHA, "bmc")) == (DATA, "")


def test_firmware_of_protocol_version_1_is_named() -> None:
    p = peer_for(-1, old_version=True)
    try:
        with BmcClient(Link(p.path), timeout=5) as c:
            with pytest.raises(errors.ProtocolError, match="wire protocol version 1"):
                read(c)
    finally:
        p.close()


def test_a_damaged_reply_times_out_saying_so() -> None:
    def handle(rid: int, msg: Dict[str, Any]) -> List[bytes]:
        frame = bytearray(resp(rid, {"ok": True, "data": {"state": "Off"}}))
        frame[codec.HEADER + 2] ^= 0x20
        return [bytes(frame)]

    p = Peer(handle)
    try:
        with BmcClient(Link(p.path), timeout=0.5) as c:
            with pytest.raises(errors.Timeout, match=r"1 frame\(s\) arrived corrupt"):
                c.call("status", auth=False)
    finally:
        p.close()

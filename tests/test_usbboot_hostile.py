"""The usbboot relay against a hostile or broken SBC: the USB device side misbehaves.

A scripted device (a `transport.UsbDevice` in memory, on a `UsbBus` that hands out
the enumerations a run plays) sends, from a fixed seed: file requests with names of
every odd kind (empty, 256 bytes without a NUL, bytes that are not UTF-8, control
characters, `..` anywhere, absolute paths, `*` metadata names, long runs of names
the manifest does not list, one file asked for again and again), unknown command
numbers, requests read short or long, GetFileSize without ReadFile and ReadFile
without GetFileSize; it leaves the bus or times out in the middle of any transfer,
takes fewer bytes than it is given (or none), answers the ROM's return code short,
and re-enumerates (as the ROM without end, stale, as file servers).

Each run must end in time with a summary (reported `done`) or a BootFailed that was
reported to the BMC (`failed`), never another exception; every byte the device
took must be the file (or boot message and bootcode) it asked for, one the BMC
vouched for; the BMC gets at most REPORTED_MAX names; what the relay keeps stays
bounded; and its log lines carry no control character from the SBC.

FUZZ_RUNS=N in the environment plays N runs instead of RUNS.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import struct
import threading
import traceback
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from racklet_host.usbboot import relay as relay_mod
from racklet_host.usbboot.relay import (
    BOOTCODE_TRIES,
    FILE_SERVERS_MAX,
    REPORTED_MAX,
    BootFailed,
    Cache,
    Relay,
)
from racklet_host.usbboot.transport import PRODUCTS, UsbAbsent, UsbDevice, UsbError, UsbGone

from tests.test_usbboot_relay import StandInBmc

SEED = 20261214
RUNS = int(os.environ.get("FUZZ_RUNS", "300"))
DEADLINE = 10.0  # seconds a run may take (the fake device never waits)

GET_FILE_SIZE, READ_FILE, DONE = 0, 1, 2
REQ = struct.Struct("<i256s")

# one action of a device's script: what its next control IN answers
#   ("req", raw bytes)  a file request (or the ROM's return code), raw as given
#   ("gone", "")        the device leaves the bus
#   ("timeout", "")     the transfer times out
Step = Tuple[str, bytes]


def manifest_files() -> Dict[str, Tuple[bytes, str]]:
    r = random.Random(SEED)
    return {
        "bootcode.bin": (r.randbytes(1500), "bmc"),
        "bootcode4.bin": (r.randbytes(3000), "bmc"),
        "bootcode5.bin": (r.randbytes(2500), "bmc"),
        "config.txt": (b"arm_64bit=1\nkernel=kernel8.img\n", "bmc"),
        "start4.elf": (r.randbytes(20000), "bmc"),
        "kernel8.img": (r.randbytes(40000), "host"),  # more than one bulk chunk
        "overlays/a.dtbo": (r.randbytes(700), "host"),
        "cmdline.txt": (b"", "bmc"),
    }


FILES = manifest_files()


def relay_name(raw: bytes) -> str:
    """The name as the relay reads it from a request: up to the NUL, latin-1."""
    return raw.split(b"\0", 1)[0].decode("latin-1")


def odd_name(r: random.Random) -> bytes:
    listed = r.choice(sorted(FILES)).encode()
    kinds: List[Any] = [
        lambda: b"",
        lambda: bytes(r.choice(b"abcxyz./_") for _ in range(256)),  # 256 bytes, no NUL
        lambda: listed + b"A" * (256 - len(listed)),
        lambda: bytes(r.randrange(0x80, 0x100) for _ in range(r.randrange(1, 40))),
        lambda: (
            r.choice([b"\x1b[2J\x1b[31mevil", b"a\nb\rc", b"\x07\x08\x7f", b"\x9b2J", b"\t"])
            + r.choice([b"", b".bin", b"\x1b]0;title\x07"])
        ),
        lambda: r.choice(
            [
                b"..",
                b"../",
                b"/..",
                b"a/../b",
                b"..config.txt",
                b"config.txt..",
                b"....//",
                b"../../etc/shadow",
                b"overlays/../config.txt",
                b"..\x1b[2J",
                b".." + bytes([0xC3, 0x28]),
            ]
        ),
        lambda: r.choice([b"/config.txt", b"/etc/shadow", b"//start4.elf", b"/", b"/dev/zero"]),
        lambda: (
            b"*"
            + r.choice(
                [
                    b"",
                    b"serial*10000000cafe",
                    b"\x1b[2J*x",
                    b"*" * 200,
                    bytes(r.randrange(256) for _ in range(30)).replace(b"\0", b""),
                ]
            )
        ),
        lambda: listed,
        lambda: listed + b"\0\x1b[2Jtrailing",
        lambda: b"./" + listed,
        lambda: listed.upper(),
        lambda: bytes(r.randrange(1, 256) for _ in range(r.randrange(1, 256))),
    ]
    return bytes(r.choice(kinds)())


class Odds:
    """How hostile a run is: the chance of each oddity, per request or transfer."""

    def __init__(self, r: random.Random) -> None:
        self.malformed = r.choice([0.0, 0.0, 0.001, 0.01])  # a request read short or long
        self.unknown = r.choice([0.0, 0.0, 0.001, 0.01])  # an unknown command number
        self.done = r.choice([0.0, 0.001, 0.02])  # Done with a name
        self.fault = r.choice([0.0, 0.0, 0.0002, 0.002, 0.02])  # leaves, or times out
        self.bulk = r.choice(["full", "full", "short", "zero", "short-or-zero"])
        self.return_code = r.choice([0.0, 0.0, 0.1])  # a ROM refusing its bootcode
        self.deny = r.choice([0.0, 0.0, 0.02])  # an open refused


def request(r: random.Random, odds: Odds, name: bytes, cmd: Optional[int] = None) -> Step:
    if cmd is None:
        x = r.random()
        if x < odds.unknown:
            cmd = r.choice([3, -1, 255, 0x7FFFFFFF, -(2**31)])
        elif x < odds.unknown + odds.done:
            cmd = DONE
        else:
            cmd = r.choice([GET_FILE_SIZE, READ_FILE])
    raw = REQ.pack(cmd, name[:256])
    if r.random() < odds.malformed:
        if r.random() < 0.5:
            raw = raw[: r.randrange(REQ.size)]  # short
        else:
            raw = raw + r.randbytes(r.randrange(1, 300))  # oversized
    return ("req", raw)


def fs_script(r: random.Random, odds: Odds) -> List[Step]:
    steps: List[Step] = []
    for _ in range(r.randrange(1, 6)):
        burst = r.randrange(12)
        if burst == 0:  # a long run of names the manifest does not list
            base = r.randrange(10**6)
            run = range(base, base + r.randrange(50, 1500))
            steps += [request(r, odds, b"miss%d.bin" % i) for i in run]
        elif burst == 1:  # one file again and again
            name = r.choice([b"config.txt", b"overlays/a.dtbo", b"cmdline.txt", b"nosuch"])
            cmd = r.choice([GET_FILE_SIZE, READ_FILE])
            steps += [request(r, odds, name, cmd) for _ in range(r.randrange(100, 3000))]
        elif burst == 2:  # GetFileSize and never ReadFile, ReadFile without GetFileSize
            for n in r.sample(sorted(FILES), 4):
                steps.append(request(r, odds, n.encode(), r.choice([GET_FILE_SIZE, READ_FILE])))
        elif burst == 3:  # a well-behaved stretch
            for n in ("config.txt", "start4.elf", "kernel8.img"):
                for cmd in (GET_FILE_SIZE, READ_FILE):
                    steps.append(request(r, odds, n.encode(), cmd))
        else:
            steps += [request(r, odds, odd_name(r)) for _ in range(r.randrange(1, 30))]
    end = r.randrange(6)
    if end == 0:
        steps.append(("req", REQ.pack(DONE, b"")))
    elif end == 1:
        steps.append(("timeout", b""))
    elif end == 2:
        steps.append(("req", REQ.pack(r.choice([0, 1, 2, 7]), b"")))  # empty name
    # else: the script runs out, the device leaves the bus
    return steps


class HostileDevice:
    """One enumeration: answers the relay's transfers from its script and faults."""

    def __init__(
        self,
        r: random.Random,
        odds: Odds,
        ident: str,
        product: int,
        iserial: int,
        script: List[Step],
    ) -> None:
        self.r = r
        self.product_id = product
        self.iserial = iserial
        self.location = "1-1.3"
        self.ident = ident
        self.script = list(script)
        self.odds = odds
        self.fault = odds.fault
        self.bulk = odds.bulk
        self.closed = False
        self.pending: Optional[Tuple[int, str]] = None  # the last request, as the relay reads it
        self.expect = b""  # what the bytes of the write under way must be a prefix of
        self.announced = -1  # the write's length, from its control OUT
        self.took = bytearray()  # what this write took so far
        self.errors: List[str] = []
        self.taken: List[Tuple[str, bytes]] = []  # (what, bytes) of each write, as taken
        if iserial in (0, 3):  # the ROM: a boot message, then the bootcode
            boot = FILES[PRODUCTS[product]][0]
            self.rom_writes = [struct.pack("<i20s", len(boot), b""), boot]

    def _maybe_fault(self) -> None:
        assert not self.closed, "a transfer on a closed device"
        x = self.r.random()
        if x < self.fault / 2:
            raise UsbGone("the device left the bus")
        if x < self.fault:
            raise UsbError("USB transfer timed out")

    def _end_write(self) -> None:
        if self.announced >= 0:
            self.taken.append((self.pending[1] if self.pending else "rom", bytes(self.took)))
        self.announced, self.took = -1, bytearray()

    def control_out(self, value: int, index: int, timeout: float = 1.0) -> None:
        self._maybe_fault()
        n = value | (index << 16)
        self._end_write()
        if self.iserial in (0, 3):
            if not self.rom_writes:
                self.errors.append(f"a third write to the ROM ({n} bytes)")
                return
            self.expect = self.rom_writes.pop(0)
            if n != len(self.expect):
                self.errors.append(f"ROM write of {n} bytes, expected {len(self.expect)}")
            self.announced = n
            return
        if self.pending is None:
            self.errors.append(f"control OUT {n} with no request")
            return
        cmd, name = self.pending
        e = FILES.get(name)
        allowed = e is not None and ".." not in name and not name.startswith("*")
        if name.startswith("*") or not name:
            if n != 0:
                self.errors.append(f"{name!r} acked with {n}, not 0")
        elif cmd == GET_FILE_SIZE:
            if n not in (0, len(e[0]) if allowed and e else 0):
                self.errors.append(f"size {n} for {name!r}")
        elif cmd == READ_FILE:
            if n != 0 and not (allowed and e and n == len(e[0])):
                self.errors.append(f"ReadFile {name!r} announced {n} bytes")
            self.expect = e[0] if allowed and e else b""
            self.announced = n
        else:
            self.errors.append(f"control OUT {n} after command {cmd}")

    def control_in(self, value: int, index: int, length: int, timeout: float = 20.0) -> bytes:
        self._maybe_fault()
        self._end_write()
        if self.iserial in (0, 3):  # the return code, maybe short
            if self.r.random() < self.odds.return_code:
                return b"\1\0\0\0"
            return self.r.choice([b"\0\0\0\0", b"\0\0\0\0", b"", b"\0\0", b"\0" * 6])
        if not self.script:
            raise UsbGone("the device left the bus")
        kind, raw = self.script.pop(0)
        if kind == "gone":
            raise UsbGone("the device left the bus")
        if kind == "timeout":
            raise UsbError("USB transfer timed out")
        self.pending = None
        if len(raw) == REQ.size:
            cmd, fname = REQ.unpack(raw)
            self.pending = (cmd, relay_name(fname))
        return raw

    def bulk_out(self, data: bytes, timeout: float = 5.0) -> int:
        self._maybe_fault()
        if self.announced < 0:
            self.errors.append(f"bulk OUT of {len(data)} bytes without a length")
            return len(data)
        mode = self.bulk
        if mode == "short-or-zero":
            mode = self.r.choice(["short", "zero", "full"])
        k = len(data)
        if mode == "short":
            k = self.r.randrange(1, len(data) + 1)
        elif mode == "zero" and self.r.random() < 0.3:
            k = 0
        self.took += data[:k]
        if len(self.took) > self.announced or not self.expect.startswith(bytes(self.took)):
            self.errors.append(f"bytes for {self.pending} are not the vouched file's")
        return k

    def bulk_in(self, length: int, timeout: float = 5.0) -> bytes:
        self.errors.append("bulk IN")
        return b""

    def close(self) -> None:
        self._end_write()
        self.closed = True


class HostileBus:
    """Hands out the run's enumerations in order; UsbAbsent once they run out."""

    def __init__(self, devices: Iterator[HostileDevice], r: random.Random, deny: float) -> None:
        self.devices = devices
        self.r = r
        self.deny = deny
        self.opened: List[HostileDevice] = []

    def wait_device(self, timeout: float, skip: str = "") -> UsbDevice:
        for dev in self.devices:
            if dev.ident == skip:
                continue  # the stale listing of the enumeration just used
            if self.r.random() < self.deny:
                raise UsbError("opening at 1-1.3: access denied")
            self.opened.append(dev)
            return dev
        raise UsbAbsent(f"no Raspberry Pi in USB boot mode appeared in {timeout:g} s")


def enumerations(r: random.Random, odds: Odds) -> Iterator[HostileDevice]:
    """A run's devices: mostly ROM then file servers, with every oddity in between."""
    product = r.choice(sorted(PRODUCTS))
    address = 1
    plan = r.randrange(10)
    if plan == 0:  # a ROM that re-enumerates without end
        while True:
            yield HostileDevice(r, odds, f"1:{address}", product, r.choice([0, 3]), [])
            address += 1
    if plan == 1:  # a file server from the start, no ROM
        pass
    elif plan == 2:  # the ROM, then file servers without end
        yield HostileDevice(r, odds, "1:1", product, r.choice([0, 3]), [])
        while True:
            address += 1
            yield HostileDevice(r, odds, f"1:{address}", product, 1, fs_script(r, odds)[-3:])
    else:
        yield HostileDevice(r, odds, "1:1", product, r.choice([0, 3]), [])
    for _ in range(r.randrange(1, 5)):
        kind = r.randrange(12)
        if kind == 0:  # the old enumeration still listed
            yield HostileDevice(r, odds, f"1:{address}", product, 1, [])
        elif kind == 1:  # the ROM again
            address += 1
            yield HostileDevice(r, odds, f"1:{address}", product, r.choice([0, 3]), [])
        else:
            address += 1
            serial = r.choice([1, 2, 4, 255])
            yield HostileDevice(r, odds, f"1:{address}", product, serial, fs_script(r, odds))


def control_chars(s: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in s)


def make_bmc(tmp: pathlib.Path) -> StandInBmc:
    cache = Cache(str(tmp / "cache"))
    for data, src in FILES.values():
        if src == "host" and not os.path.exists(cache.path(hashlib.sha256(data).hexdigest())):
            p = tmp / "src"
            p.write_bytes(data)
            cache.add(str(p))
    return StandInBmc(FILES, cache)


def run_relay(relay: Relay, where: str) -> Any:
    """The relay's summary or BootFailed, within DEADLINE; fails on anything else."""
    outcome: List[Any] = []

    def run() -> None:
        try:
            outcome.append(relay.run())
        except BootFailed as e:
            outcome.append(e)
        except BaseException:
            outcome.append(traceback.format_exc())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(DEADLINE)
    assert not t.is_alive(), f"{where}: the relay did not end in {DEADLINE} s"
    assert len(outcome) == 1, where
    assert not isinstance(outcome[0], str), f"{where}: the relay raised\n{outcome[0]}"
    return outcome[0]


def play(seed: int, tmp: pathlib.Path) -> None:
    r = random.Random(seed)
    bmc = make_bmc(tmp)
    odds = Odds(r)
    bus = HostileBus(enumerations(r, odds), r, odds.deny)
    lines: List[str] = []
    relay = Relay(bmc, bus, log=lines.append, wait_timeout=1, stage_timeout=1, grace=1)
    where = f"seed {seed}"
    end = run_relay(relay, where)
    if isinstance(end, BootFailed):
        assert bmc.reports[-1][0] == "failed", f"{where}: {end} not reported"
    else:
        assert bmc.reports[-1][0] == "done", where
    for dev in bus.opened:
        assert dev.closed, f"{where}: {dev.ident} left open"
        assert not dev.errors, f"{where}: {dev.ident}: {dev.errors[:3]}"
        for name, took in dev.taken:
            if took and name != "rom":
                assert ("serve", name, "") in bmc.reports, f"{where}: {name} not vouched"
    named = [(e, n) for e, n, _ in bmc.reports if e in ("missing", "refused")]
    assert len(named) <= REPORTED_MAX and len(set(named)) == len(named), where
    for key in ("missing", "refused", "metadata"):
        assert len(getattr(relay, key)) <= REPORTED_MAX, f"{where}: {key} grows"
    assert len(relay._named) <= REPORTED_MAX, where
    # a name served again in a session is listed once: at most the manifest a session
    assert len(relay.served) <= BOOTCODE_TRIES + len(FILES) * relay.sessions, where
    bad = [line for line in lines if control_chars(line)]
    assert not bad, f"{where}: log lines with control characters: {bad[:3]!r}"


def calm() -> Odds:
    odds = Odds(random.Random(0))
    odds.malformed = odds.unknown = odds.done = odds.fault = odds.return_code = odds.deny = 0.0
    odds.bulk = "full"
    return odds


def test_a_file_read_again_and_again_is_listed_once_a_session(tmp_path: pathlib.Path) -> None:
    """A device reading one file without end must not grow the relay's summary (and
    bmcctl's "served" line) by a name each time."""
    r, odds = random.Random(1), calm()
    again = [request(r, odds, b"config.txt", READ_FILE) for _ in range(5000)]
    script = again + [request(r, odds, b"start4.elf", READ_FILE), ("req", REQ.pack(DONE, b""))]
    devs = [
        HostileDevice(r, odds, "1:1", 0x2711, 3, []),
        HostileDevice(r, odds, "1:2", 0x2711, 1, script),
    ]
    bmc = make_bmc(tmp_path)
    relay = Relay(bmc, HostileBus(iter(devs), r, 0.0), grace=0.1)
    summary = run_relay(relay, "config.txt read 5000 times")
    assert not devs[1].errors and len(devs[1].taken) == 5001
    assert all(took == FILES[name][0] for name, took in devs[1].taken)
    assert summary["served"] == ["bootcode4.bin", "config.txt", "start4.elf"]
    assert bmc.reports[-1] == ("done", "", "3 served")


def test_file_servers_without_end_fail_the_boot(tmp_path: pathlib.Path) -> None:
    """A device that enumerates as a file server again and again (each served, each
    ending with Done) must not keep the relay, and the BMC's boot session, forever."""
    r, odds = random.Random(2), calm()

    def devices() -> Iterator[HostileDevice]:
        yield HostileDevice(r, odds, "1:1", 0x2711, 3, [])
        for address in range(2, 10**6):
            script = [request(r, odds, b"config.txt", READ_FILE), ("req", REQ.pack(DONE, b""))]
            yield HostileDevice(r, odds, f"1:{address}", 0x2711, 1, script)

    bmc = make_bmc(tmp_path)
    end = run_relay(Relay(bmc, HostileBus(devices(), r, 0.0), grace=0.1), "endless file servers")
    assert isinstance(end, BootFailed), end
    assert f"after {FILE_SERVERS_MAX} file servers" in str(end)
    assert bmc.reports[-1][0] == "failed"


def test_a_hostile_sbc_gets_only_vouched_bytes_and_a_clear_end(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_mod, "RETURN_CODE_DELAY", 0.0)
    for i in range(RUNS):
        play(SEED + i, tmp_path)

"""The usbboot relay: serve an SBC in USB device boot exactly what its BMC vouches for.

The BMC holds the boot manifest (name, size, SHA-256, source of every file) and
orchestrates; this relay is only a pipe between the SBC's boot ROM (over a
`transport.UsbBus`) and the BMC (over its CDC link, `BmcClient`):

- stage 1: the bootcode for the ROM's product id (bootcode.bin, bootcode4.bin,
  bootcode5.bin) goes out after a 24-byte boot message; the ROM answers a
  4-byte return code and enumerates again as the file server. The old ROM can
  stay listed for a moment (it is skipped); a ROM that enumerates anew did not
  take the bootcode and gets it again, up to BOOTCODE_TRIES times;
- file-server sessions, one per enumeration (bootcode4.bin's, then
  start4.elf's on a Pi 4): a session ends with Done, an empty name (acked with
  a zero-length write, as usbboot does) or the device leaving the bus while the
  relay waits for its next request; the boot is done when no new file server
  appears within `grace` seconds. For each request, a name the manifest does
  not list gets size 0 (as usbboot does for a missing file), a name with ".."
  is refused (size 0, reported), `*PROPERTY*VALUE` metadata is acked with a
  zero-length write; a listed file is first vouched for by the BMC
  (`boot-report serve` with the manifest generation: a changed manifest stops
  the boot), then read from the BMC (streamed) or from the host's
  content-addressed cache (DIR/sha256/<hex>), and its SHA-256 and size are
  checked before a single byte goes to the SBC.
  A mismatch is refused, reported to the BMC (logged and counted there) and
  the boot fails visibly (`BootFailed`, non-zero exit). Missing and refused names
  are reported once each, at most REPORTED_MAX of them a boot.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from bmc import errors as wire
from bmc.bootadmin import check_sha

from ..client import BmcClient
from ..errors import BmcError, Conflict, LinkGone, NotFound, ProtocolError, Timeout
from ..keys import Key
from .transport import (
    PRODUCTS,
    ROM_SERIALS,
    UsbAbsent,
    UsbBus,
    UsbDevice,
    UsbError,
    UsbGone,
    ep_read,
    ep_write,
)

REQUEST = struct.Struct("<i256s")
GET_FILE_SIZE = 0
READ_FILE = 1
DONE = 2
MAX_FILE = 0x7FFFFFFF
BOOTCODE_TRIES = 3  # sends of the bootcode to a ROM that keeps coming back
# File-server sessions a boot may have: a Pi 4 has two (bootcode4.bin's, start4.elf's);
# a device that enumerates as one again and again must not keep the relay (and the
# BMC's boot session, which each vouching prolongs) forever.
FILE_SERVERS_MAX = 8
RETURN_CODE_DELAY = 1.0  # usbboot waits this long before reading the ROM's return code
# A stage hands over to the next in about 1.5-3 s (usbboot's logs); no new file
# server for this long after a session means the SBC booted.
GRACE = 5.0
# Distinct names a boot reports to the BMC as missing or refused. The firmware asks for
# a few dozen optional files; a device asking for names without end must not fill the
# BMC's event log (and wear its flash) with them. The summary keeps the whole count.
REPORTED_MAX = 64


class BootFailed(Exception):
    """The boot could not go on; the message says why (it was reported to the BMC)."""


class Entry:
    __slots__ = ("name", "size", "sha256", "src")

    def __init__(self, name: str, size: int, sha256: str, src: str) -> None:
        self.name = name
        self.size = size
        self.sha256 = sha256
        self.src = src

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, {self.size}, {self.sha256[:12]}, {self.src})"


def sha256_file(path: str) -> Tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 16)
            if not block:
                break
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


class Cache:
    """Content-addressed boot files on the host: ROOT/sha256/<hex digest>."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, sha: str) -> str:
        """Where the file of digest `sha` is; ValueError unless `sha` is one (64 lowercase
        hex digits): a manifest entry's digest comes from the BMC, and must not name
        a path outside the cache (`/dev/zero`, `../../etc/shadow`)."""
        try:
            check_sha(sha)  # the BMC's own check of the digests a manifest lists
        except wire.CmdError:
            raise ValueError(f"not a SHA-256 digest: {sha[:72]!r}") from None
        return os.path.join(self.root, "sha256", sha)

    def add(self, src: str) -> Tuple[str, int]:
        """Copy a file in (temp file, then rename); its digest and size."""
        sha, size = sha256_file(src)
        dest = self.path(sha)
        if not os.path.exists(dest):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".tmp-")
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, dest)
            except BaseException:
                os.unlink(tmp)
                raise
        return sha, size

    def read(self, sha: str, size: int) -> Tuple[Optional[bytes], str]:
        """(data, "") when the cached file has this digest and size, else (None, why)."""
        try:
            p = self.path(sha)
        except ValueError as e:
            return None, str(e)
        try:
            with open(p, "rb") as f:
                data = f.read(size + 1)
        except FileNotFoundError:
            return None, f"not in the host cache ({p})"
        except OSError as e:
            return None, f"cannot read {p}: {e.strerror}"
        got = hashlib.sha256(data).hexdigest()
        if len(data) != size or got != sha:
            return None, f"digest mismatch in the host cache: {p} has sha256 {got}, {len(data)} B"
        return data, ""


class BmcSource:
    """The BMC's side: its manifest, its vouching, its files, its log."""

    def __init__(self, client: BmcClient, key: Optional[Key], cache: Optional[Cache]) -> None:
        self.client = client
        self.key = key
        self.cache = cache
        self.gen = -1
        self.entries: Dict[str, Entry] = {}
        self.unreachable = False  # a report failed: later ones get one try, not three

    def load_manifest(self) -> None:
        d = self.client.boot_manifest()
        self.gen = d["gen"]
        self.entries = {}
        for f in d["files"]:
            self.entries[f["name"]] = Entry(f["name"], int(f["size"]), f["sha256"], f["src"])

    def vouch(self, e: Entry, event: str = "check") -> None:
        """The BMC confirms this file is in its current manifest; BootFailed if not.

        "check" before reading it, "serve" right before the bytes go to the SBC
        (the BMC counts those).
        """
        try:
            self.client.call(
                "boot-report",
                {"event": event, "name": e.name, "sha256": e.sha256, "gen": self.gen},
                self.key,
            )
        except (Conflict, NotFound) as ex:
            raise BootFailed(f"the BMC no longer vouches for {e.name}: {ex.message}") from None

    def fetch(self, e: Entry) -> Tuple[Optional[bytes], str]:
        """The file's bytes, verified against the manifest; (None, why) on a mismatch."""
        if e.src == "host":
            if self.cache is None:
                return None, "no host cache given (--cache DIR)"
            return self.cache.read(e.sha256, e.size)
        buf = bytearray()

        def sink(chunk: bytes) -> None:
            if len(buf) + len(chunk) > e.size:
                raise BootFailed(f"{e.name}: the BMC sent more than {e.size} bytes")
            buf.extend(chunk)

        try:
            self.client.call(
                "boot-file-read",
                {"name": e.name, "gen": self.gen, "sha256": e.sha256},
                self.key,
                on_chunk=sink,
            )
        except ProtocolError as ex:
            # A chunk whose bytes no longer match the CRC the BMC stored for them
            # (its flash changed under the file) arrives as a bad-CRC frame.
            return None, f"corrupt stream from the BMC ({ex.message})"
        got = hashlib.sha256(buf).hexdigest()
        if len(buf) != e.size or got != e.sha256:
            return None, f"digest mismatch from the BMC: sha256 {got}, {len(buf)} B"
        return bytes(buf), ""

    def report(self, event: str, name: str = "", detail: str = "") -> Optional[str]:
        """Tell the BMC; None when it was told, else why not (the BMC is gone, ...)."""
        args: Dict[str, Any] = {"event": event, "detail": detail[:80]}
        if name:
            args["name"] = name[:72]
        for attempt in range(1 if self.unreachable else 3):
            try:
                self.client.call("boot-report", args, self.key, timeout=3.0)
                self.unreachable = False
                return None
            except (LinkGone, Timeout) as e:
                why = e.message
                if not self.unreachable:
                    time.sleep(0.5 * (attempt + 1))
            except BmcError as e:
                return e.message
        # the boot goes on without the log: the SBC must not wait on a BMC that is gone
        self.unreachable = True
        return why


class Relay:
    def __init__(
        self,
        source: BmcSource,
        bus: UsbBus,
        log: Callable[[str], None] = lambda s: None,
        wait_timeout: float = 60.0,
        stage_timeout: float = 15.0,
        grace: float = GRACE,
    ) -> None:
        self.source = source
        self.bus = bus
        self.log = log
        self.wait_timeout = wait_timeout
        self.stage_timeout = stage_timeout
        self.grace = grace
        self.served: List[str] = []
        self.refused: List[str] = []
        self.missing: List[str] = []
        self.metadata: List[str] = []
        self.unreported = 0  # requests for new names past REPORTED_MAX, counted only
        self._named: Set[str] = set()  # missing and refused names seen
        self.sessions = 0

    # -- the whole boot --------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        """Serve one boot; the summary, or BootFailed (reported to the BMC)."""
        try:
            self.source.load_manifest()
            self.log(f"manifest generation {self.source.gen}: {len(self.source.entries)} files")
            self._serve(self.bus.wait_device(self.wait_timeout))
        except BootFailed as e:
            self._fail(str(e))
        except UsbError as e:
            self._fail(f"USB: {e}")
        except (LinkGone, Timeout) as e:
            self._fail(f"BMC link lost mid-boot: {e.message}")
        except BmcError as e:
            self._fail(f"BMC: {e.message}")
        summary = {
            "served": self.served,
            "missing": self.missing,
            "refused": self.refused,
            "metadata": self.metadata,
            "unreported": self.unreported,
            "gen": self.source.gen,
            "sessions": self.sessions,
        }
        done = f"{len(self.served)} served"
        if self.unreported:
            done += f", {self.unreported} requests for names not reported"
        why = self.source.report("done", detail=done)
        if why:
            self.log(f"could not report done to the BMC: {why}")
        return summary

    def _serve(self, dev: Optional[UsbDevice]) -> None:
        """The ROM stage if it is one, then file-server sessions until none comes."""
        tries = 0
        while dev is not None:
            try:
                if dev.iserial in ROM_SERIALS:
                    if self.sessions:
                        raise BootFailed("the SBC came back as the ROM after a file server")
                    if tries == BOOTCODE_TRIES:
                        raise BootFailed(
                            f"the ROM came back after {tries} sends of the bootcode: "
                            "it did not run (wrong bootcode for this SBC?)"
                        )
                    if tries:
                        self.log(f"the ROM enumerated again: bootcode send {tries} did not take")
                    tries += 1
                    self._stage1(dev)
                    wait, what = self.stage_timeout, "the file server after the bootcode"
                else:
                    if self.sessions == FILE_SERVERS_MAX:
                        raise BootFailed(
                            f"the SBC enumerated as a file server again after "
                            f"{FILE_SERVERS_MAX} file servers: it does not boot"
                        )
                    self.sessions += 1
                    self.log(
                        f"file server {self.sessions} on {dev.location} "
                        f"(product {dev.product_id:#06x})"
                    )
                    self._file_server(dev)
                    wait, what = self.grace, ""
            finally:
                dev.close()
            dev = self._next_device(dev.ident, wait, what)

    def _next_device(self, used: str, timeout: float, what: str) -> Optional[UsbDevice]:
        """The next enumeration (not `used`, which may stay listed a moment).

        None when none came and none was needed (`what` empty): the boot is done.
        """
        try:
            return self.bus.wait_device(timeout, skip=used)
        except UsbAbsent:
            if what:
                raise BootFailed(f"no {what} in {timeout:g} s") from None
        self.log(f"no new file server in {timeout:g} s: the SBC booted")
        return None

    def _fail(self, why: str) -> None:
        self.log(f"boot failed: {why}")
        told = self.source.report("failed", detail=why)
        if told:
            why += f" (and the BMC could not be told: {told})"
        raise BootFailed(why)

    # -- files -------------------------------------------------------------------
    def _prepare(self, name: str) -> Optional[bytes]:
        """Verified bytes of a listed file, None if unlisted; BootFailed on any doubt."""
        e = self.source.entries.get(name)
        if e is None:
            return None
        self.source.vouch(e)
        data, why = self.source.fetch(e)
        if data is None:
            self.source.report("mismatch", name, why)
            raise BootFailed(f"{name} refused: {why}")
        return data

    def _stage1(self, dev: UsbDevice) -> None:
        name = PRODUCTS[dev.product_id]
        self.log(f"ROM {dev.product_id:#06x} on {dev.location}: sending {name}")
        data = self._prepare(name)
        if data is None:
            raise BootFailed(f"{name} is not in the boot manifest: the ROM cannot go on")
        self.source.vouch(self.source.entries[name], "serve")
        ep_write(dev, struct.pack("<i20s", len(data), b""))
        ep_write(dev, data)
        self.served.append(name)
        # as usbboot: give the ROM a moment, and take a failed or short read as no
        # answer (the ROM may already be leaving); what enumerates next decides
        time.sleep(RETURN_CODE_DELAY)
        try:
            raw = ep_read(dev, 4)
        except UsbError as e:
            self.log(f"no return code from the ROM ({e}): waiting for the file server")
            return
        if len(raw) != 4:
            self.log(f"the ROM answered {len(raw)} bytes instead of a return code")
            return
        (code,) = struct.unpack("<i", raw)
        if code != 0:
            raise BootFailed(f"the ROM refused {name}: return code {code}")

    def _file_server(self, dev: UsbDevice) -> None:
        """One session; it ends with Done, an empty name or the device leaving."""
        held: Tuple[str, Optional[bytes]] = ("", None)
        listed: Set[str] = set()  # served in this session: listed once, however often read
        while True:
            try:
                raw = ep_read(dev, REQUEST.size)
            except UsbGone:
                # between requests this is a stage handing over to the next one
                self.log("the file server left the bus")
                return
            if len(raw) != REQUEST.size:
                raise BootFailed(f"short file request ({len(raw)} bytes)")
            cmd, fname = REQUEST.unpack(raw)
            name = fname.split(b"\0", 1)[0].decode("latin-1")
            if not name:
                self._ack_done(dev)
                return
            if cmd == DONE:
                self.log("the SBC is done with the file server")
                return
            if cmd not in (GET_FILE_SIZE, READ_FILE):
                raise BootFailed(f"unknown file server command {cmd}")
            if name.startswith("*"):
                if len(self.metadata) < REPORTED_MAX:
                    self.metadata.append(name[1:])
                ep_write(dev, b"")
                continue
            # an absent file is answered first and logged on the BMC after: the SBC's
            # firmware asks for many optional files and usbboot answers them at once
            if ".." in name:
                self._absent(dev, cmd)
                if self._first(name, self.refused):
                    self.log(f"refused {name!r}: '..' in the name")
                    self.source.report("refused", name, "name with ..")
                continue
            if held[0] != name:
                held = (name, self._prepare(name))
            data = held[1]
            if data is None:
                self._absent(dev, cmd)
                if self._first(name, self.missing):
                    self.source.report("missing", name, "not in the manifest")
                continue
            if cmd == GET_FILE_SIZE:
                n = len(data)
                dev.control_out(n & 0xFFFF, n >> 16)
            else:
                self.source.vouch(self.source.entries[name], "serve")  # still vouched for
                ep_write(dev, data)
                if name not in listed:
                    listed.add(name)
                    self.served.append(name)
                self.log(f"served {name} ({len(data)} bytes)")
                held = ("", None)

    def _first(self, name: str, where: List[str]) -> bool:
        """Whether `name` is new and to be reported (it joins `where`): each name is
        reported once, and at most REPORTED_MAX of them in a boot."""
        if name in self._named:
            return False
        if len(self._named) >= REPORTED_MAX:
            self.unreported += 1
            return False
        self._named.add(name)
        where.append(name)
        return True

    def _ack_done(self, dev: UsbDevice) -> None:
        """usbboot acks an empty name (Done) with a zero-length write; the device
        may already be gone, which is fine."""
        self.log("the SBC is done with the file server")
        try:
            dev.control_out(0, 0)
        except UsbError:
            pass

    @staticmethod
    def _absent(dev: UsbDevice, cmd: int) -> None:
        if cmd == GET_FILE_SIZE:
            dev.control_out(0, 0)
        else:
            ep_write(dev, b"")

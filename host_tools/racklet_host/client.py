"""The typed client library for one BMC: what `bmcctl`, the bridge and other tools use.

    from racklet_host.client import BmcClient
    from racklet_host.keys import load_key

    with BmcClient.open("/dev/ttyACM0", key=load_key("admin.key")) as bmc:
        print(bmc.status()["power"])
        bmc.power("On")

Every method sends one request and waits for its response (after any chunks). A
command that needs a role fetches a nonce first and sends
`HMAC-SHA256(key, codec.mac_input(serial, nonce, cmd, args))`. Errors raise the
classes in `racklet_host.errors` (one per wire error code, plus host-side ones).
A client is safe to share between threads: requests are serialised per link.
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypedDict, Union

from bmc import codec
from bmc import power as _power

from .errors import (
    BmcError,
    Invalid,
    LinkGone,
    NoBmcFound,
    ProtocolError,
    Timeout,
    from_wire,
)
from .keys import Key
from .transport import Link

Args = Dict[str, Any]

# Commands anyone on the hub may send without a key (docs/protocol.md).
PUBLIC_COMMANDS = frozenset(
    {"hello", "nonce", "status", "metrics", "keys-provision", "factory-reset"}
)

# Redfish ComputerSystem.ResetType values the `power` command takes (the firmware's list).
POWER_ACTIONS: Tuple[str, ...] = tuple(_power.ACTIONS)
# Actions that take a running SBC down (bmcctl asks before doing them on several targets).
DISRUPTIVE_ACTIONS = frozenset(
    {"ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "PowerCycle"}
)

DEFAULT_TIMEOUT = 5.0
NONCE_REUSE_S = 2.0  # a nonce from a signed reply is used only this young (the BMC keeps 5 s)
# Bytes of chunks one answer may bring. The largest a BMC sends (its event log, a boot
# file from its flash) are far smaller; a stream past this is a BMC gone wrong, which
# would otherwise hold the client for ever (a stream that moves is alive).
MAX_ANSWER = 16 << 20
# How long opening a port waits while another program (the bridge mid-scrape, another
# bmcctl) holds it, before PortBusy.
DEFAULT_BUSY_WAIT = 3.0
UPLOAD_CHUNK = 256  # raw bytes per boot-file-put (the BMC takes up to 1024; docs/boot.md)
# What a request's `auth` adds at most: key id, nonce and MAC (hex), with their JSON.
_AUTH_ROOM = len(codec.dumps({"auth": {"key": "0" * 16, "nonce": "0" * 32, "mac": "0" * 64}}))


class Hello(TypedDict, total=False):
    proto: int
    fw: str
    board: str
    serial: str
    caps: List[str]
    max_payload: int
    provisioned: bool
    board_error: Optional[str]


class Nonce(TypedDict):
    nonce: str
    ttl_ms: int


class Rail(TypedDict, total=False):
    name: str
    enable: Optional[bool]
    pgood: Optional[bool]


class Status(TypedDict, total=False):
    """What `status` reports (bmc.app.App.status); new fields are kept as they come."""

    state: str  # On, Off, PoweringOn, PoweringOff, Fault, Unknown
    phase: Optional[str]
    last_change: int
    since_ms: int
    cause: Optional[str]
    fault: Optional[str]
    fault_cause: Optional[str]
    rails: List[Rail]
    halted: Optional[bool]
    restore_policy: str
    boot_mode: Optional[str]
    pending_on: Any
    uptime_ms: int
    boot_count: int
    reset_cause: str
    serial: str
    board: Optional[str]
    board_error: Optional[str]
    identify_ms: int
    locked_out_ms: int
    auth_failures_in_a_row: int
    provisioned: bool


class KeyInfo(TypedDict, total=False):
    id: str  # key id: first 8 bytes of sha256(key), hex
    role: str


class BootManifest(TypedDict):
    """What `boot-manifest-get` lists (BmcClient.boot_manifest)."""

    gen: int
    files: List[Args]  # {"name", "size", "sha256", "src"}; src bmc, host or gen
    bmc_bytes: int  # boot files on the BMC's flash
    bmc_limit: int


# The types of the answer fields the host tools read (BmcClient._shaped).
_KINDS = {int: "an integer", str: "a string", list: "a list"}
_NONCE: Dict[str, type] = {"nonce": str, "ttl_ms": int}
_STATUS: Dict[str, type] = {"state": str, "uptime_ms": int, "locked_out_ms": int, "rails": list}
_POSITION: Dict[str, type] = {"next": int, "dropped": int, "lost": int}  # events, console
_KEY_INFO: Dict[str, type] = {"id": str, "role": str}
_INVENTORY: Dict[str, type] = {"generation": int, "url": str, "keys": list}
_INVENTORY_KEY: Dict[str, type] = {"type": str, "fp": str}
_ENTRY: Dict[str, type] = {"name": str, "size": int, "sha256": str, "src": str}
_SUMMARY: Dict[str, type] = {"count": int, "gen": int, "bmc_bytes": int, "bmc_limit": int}


class Streamed:
    """The chunks of a streaming command and its final response data."""

    __slots__ = ("chunks", "data")

    def __init__(self, chunks: List[bytes], data: Args) -> None:
        self.chunks = chunks
        self.data = data

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def __repr__(self) -> str:
        return f"Streamed({len(self.chunks)} chunks, {len(self.body)} bytes, data={self.data!r})"


ChunkSink = Callable[[bytes], None]


class BmcClient:
    """A session with one BMC over one link.

    `resolve` returns the current port path of this BMC (discovery by slot); it is
    used to reopen the link after the device vanished (e.g. `bmc_reboot`). Without
    it the same path is reopened.

    `hold` False: the port is closed after every request and opened again for the
    next, so that between requests the bridge and other programs can use the BMC
    (one command at a time per link, shared). For sessions that last: the usbboot
    relay, `console --follow`.
    """

    def __init__(
        self,
        link: Link,
        *,
        key: Optional[Key] = None,
        timeout: float = DEFAULT_TIMEOUT,
        resolve: Optional[Callable[[], str]] = None,
        name: Optional[str] = None,
    ) -> None:
        self.link = link
        self.key = key
        self.timeout = timeout
        self.max_answer = MAX_ANSWER
        self.name = name or link.path
        self._resolve = resolve
        self.hold = True
        self._lock = threading.RLock()
        self._rid = random.randint(1, 0xFFFF)
        self.info: Optional[Hello] = None
        # The nonce the last signed reply carried, and when it came (see `sign`).
        self._next_nonce: Optional[Tuple[str, float]] = None

    @classmethod
    def open(
        cls,
        path: str,
        *,
        key: Optional[Key] = None,
        timeout: float = DEFAULT_TIMEOUT,
        resolve: Optional[Callable[[], str]] = None,
        name: Optional[str] = None,
        busy_wait: float = DEFAULT_BUSY_WAIT,
    ) -> BmcClient:
        """A client on `path`; a port another program holds is waited for `busy_wait` s."""
        link = Link(path, busy_wait=busy_wait)
        return cls(link, key=key, timeout=timeout, resolve=resolve, name=name)

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> BmcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the generic request ------------------------------------------------

    def _next_rid(self) -> int:
        self._rid = self._rid % 0xFFFF + 1
        return self._rid

    def _ensure_open(self) -> None:
        if not self.link.is_open:
            if self._resolve is not None:
                try:
                    self.link.path = self._resolve()
                except NoBmcFound as e:
                    raise LinkGone(f"{self.name} is gone: {e.message}") from None
            self.link.open()

    def request(
        self,
        msg: Args,
        *,
        timeout: Optional[float] = None,
        on_chunk: Optional[ChunkSink] = None,
    ) -> Args:
        """Send one request message as is and return its response data."""
        try:
            payload = codec.dumps(msg)
        except ValueError as e:  # text that is not Unicode (a lone surrogate)
            raise Invalid(f"{msg.get('cmd')}: request not sent: {e}") from None
        if len(payload) > codec.MAX_PAYLOAD:
            raise ProtocolError(
                f"request too large ({len(payload)} bytes; a request carries at most"
                f" {codec.MAX_PAYLOAD})"
            )
        return self.request_raw(payload, timeout=timeout, on_chunk=on_chunk)

    def request_raw(
        self,
        payload: bytes,
        *,
        timeout: Optional[float] = None,
        on_chunk: Optional[ChunkSink] = None,
    ) -> Args:
        """Send a request frame with this payload; the response data, or raise."""
        wait = self.timeout if timeout is None else timeout
        with self._lock:
            try:
                return self._exchange(payload, wait, on_chunk)
            finally:
                if not self.hold:
                    self.link.close()

    def _exchange(self, payload: bytes, wait: float, on_chunk: Optional[ChunkSink]) -> Args:
        """request_raw's exchange, under the client's lock."""
        self._ensure_open()
        rid = self._next_rid()
        deadline = time.monotonic() + wait
        self.link.send_frame(codec.KIND_REQUEST, rid, payload, deadline)
        bad = self.link.bad_frames
        streamed = 0
        while True:
            frame = self.link.read_frame(deadline)
            if frame.req_id != rid:
                continue  # a late answer to an earlier, timed-out request
            if frame.kind == codec.KIND_CHUNK:
                streamed += len(frame.payload)
                if streamed > self.max_answer:
                    raise ProtocolError(
                        f"{self.name}: the answer passed {self.max_answer} bytes without"
                        " ending: the BMC is not behaving"
                    )
                deadline = time.monotonic() + wait  # a stream that moves is alive
                if on_chunk is not None:
                    on_chunk(frame.payload)
                continue
            if frame.kind != codec.KIND_RESPONSE:
                continue
            msg = _decode(frame.payload, self.name)
            nxt = msg.get("nonce")
            if isinstance(nxt, str):
                self._next_nonce = (nxt, time.monotonic())
            lost = self.link.bad_frames - bad
            if lost and on_chunk is not None:  # a hole in the stream: its data is not whole
                raise ProtocolError(
                    f"{self.name}: {lost} frame(s) of the streamed answer arrived corrupt"
                    " (CRC mismatch): the data is incomplete"
                )
            return _response_data(msg, self.name)

    def call(
        self,
        cmd: str,
        args: Optional[Args] = None,
        key: Optional[Key] = None,
        *,
        auth: Optional[bool] = None,
        timeout: Optional[float] = None,
        on_chunk: Optional[ChunkSink] = None,
    ) -> Args:
        """Run `cmd` with `args` and return the response data.

        `key` (default: the client's key) signs the request; `auth=None` signs every
        command that is not public when a key is at hand, `True` always, `False` never.
        """
        args = dict(args or {})
        msg: Args = {"cmd": cmd, "args": args}
        use = key or self.key
        if auth is None:
            auth = use is not None and cmd not in PUBLIC_COMMANDS
        with self._lock:
            if auth:
                if use is None:
                    raise from_wire("auth_required", f"{cmd} needs a key (--key-file)")
                msg["auth"] = self.sign(use, cmd, args)
            return self.request(msg, timeout=timeout, on_chunk=on_chunk)

    def sign(self, key: Key, cmd: str, args: Args) -> Dict[str, str]:
        """A fresh nonce and the MAC over this command: the request's `auth` object.

        The reply to a signed request carries the next nonce; it is used once, while
        young (NONCE_REUSE_S) and on the link it came over, which saves the `nonce`
        round trip on every signed command after the first. A link that was closed
        since (`hold` False, or the device went away) may lead to a BMC that restarted
        and forgot it, and a refused nonce counts as a failed authentication there.
        """
        cached, self._next_nonce = self._next_nonce, None
        if not self.link.is_open:
            cached = None
        if cached is not None and time.monotonic() - cached[1] < NONCE_REUSE_S:
            nonce, issued = cached
        else:
            nonce, issued = self.nonce()["nonce"], time.monotonic()
        try:
            text = codec.mac_input(self.serial, nonce, cmd, args)
        except ValueError as e:
            self._next_nonce = (nonce, issued)  # not used: good for the next command
            why = "a string holds a lone surrogate (not Unicode)"
            if not isinstance(e, UnicodeEncodeError):  # no MAC covers a float
                why = "a number that is not an integer (numbers must be whole)"
            raise Invalid(f"{cmd}: its arguments cannot be signed: {why}") from None
        mac = key.mac(text)
        return {"key": key.key_id, "nonce": nonce, "mac": mac.hex()}

    def stream(
        self,
        cmd: str,
        args: Optional[Args] = None,
        key: Optional[Key] = None,
        *,
        auth: Optional[bool] = None,
        timeout: Optional[float] = None,
    ) -> Streamed:
        """Run a streaming command; its chunks and final data."""
        chunks: List[bytes] = []
        data = self.call(cmd, args, key, auth=auth, timeout=timeout, on_chunk=chunks.append)
        return Streamed(chunks, data)

    # -- commands -----------------------------------------------------------

    def hello(self) -> Hello:
        data = self.call("hello", {"proto": codec.PROTO_VERSION})
        self.info = Hello(**data)  # type: ignore[typeddict-item]
        return self.info

    @property
    def serial(self) -> str:
        if self.info is None:
            self.hello()
        assert self.info is not None
        serial = self.info.get("serial")
        if not isinstance(serial, str):
            raise ProtocolError(f"{self.name}: hello did not report a serial")
        return serial

    def nonce(self) -> Nonce:
        data = self._shaped("nonce", self.call("nonce", auth=False), _NONCE, ("nonce",))
        return Nonce(nonce=data["nonce"], ttl_ms=data.get("ttl_ms") or 0)

    def status(self) -> Status:
        data = self._shaped("status", self.call("status"), _STATUS)
        return Status(**data)  # type: ignore[typeddict-item]

    def power(self, action: str, key: Optional[Key] = None) -> Status:
        data = self._shaped("power", self.call("power", {"action": action}, key), _STATUS)
        return Status(**data)  # type: ignore[typeddict-item]

    def reset(self, key: Optional[Key] = None) -> Args:
        return self.call("reset", {}, key)

    def identify(self, seconds: int = 15, key: Optional[Key] = None) -> Args:
        return self.call("identify", {"seconds": seconds}, key)

    def events(self, since: int = 0, key: Optional[Key] = None) -> tuple[List[Args], Args]:
        """Event log entries after `since`; (events, data with `next` and `dropped`)."""
        res = self.stream("events", {"since": since}, key)
        events: List[Args] = []
        for line in res.body.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                ev = codec.loads(line.encode())
            except ValueError:
                ev = None
            events.append(ev if isinstance(ev, dict) else {"raw": line})
        return events, self._shaped("events", res.data, _POSITION)

    def console(self, since: int = -1, key: Optional[Key] = None) -> tuple[bytes, Args]:
        """Console bytes from offset `since` (-1: the oldest held); (bytes, data with
        `next`, the offset to ask for next time, and `lost`, bytes overwritten)."""
        res = self.stream("console", {"since": since}, key)
        return res.body, self._shaped("console", res.data, _POSITION)

    def console_write(self, text: str, key: Optional[Key] = None) -> Args:
        """Type `text` into the SBC's console."""
        return self.call("console-write", {"data": text}, key)

    def config_get(self, key: Optional[Key] = None) -> Args:
        return self.call("config-get", {}, key)

    def config_set(self, name: str, value: Any, key: Optional[Key] = None) -> Args:
        return self.call("config-set", {"key": name, "value": value}, key)

    def keys_provision(self, role: str, new_key: Key) -> Args:
        """Install the first key (unprovisioned BMC, BOOTSEL held)."""
        return self.call("keys-provision", {"role": role, "key": new_key.hex()}, auth=False)

    def keys_add(self, role: str, new_key: Key, key: Optional[Key] = None) -> Args:
        return self.call("keys-add", {"role": role, "key": new_key.hex()}, key)

    def keys_revoke(self, key_id: str, key: Optional[Key] = None) -> Args:
        return self.call("keys-revoke", {"key_id": key_id}, key)

    def keys_list(self, key: Optional[Key] = None) -> List[KeyInfo]:
        data = self._shaped("keys-list", self.call("keys-list", {}, key), {"keys": list})
        keys: List[Args] = data.get("keys") or []
        for k in keys:
            self._shaped("keys-list", k, _KEY_INFO, ("id", "role"))
        return [KeyInfo(**k) for k in keys]  # type: ignore[typeddict-item]

    def inventory_get(self) -> Args:
        """The inventory URL, its trust keys (type and fingerprint each) and generation."""
        return self._inventory("inventory-get", self.call("inventory-get", auth=False))

    def inventory_set(
        self, url: str, keys: List[str], generation: int, expect: int, key: Optional[Key] = None
    ) -> Args:
        """Store `url` and `keys` (PEM, hex or TUF root JSON each) as `generation`, if the
        BMC's is `expect` (else Conflict); what is stored now, as `inventory_get`."""
        args = {"url": url, "keys": keys, "generation": generation, "expect": expect}
        return self._inventory("inventory-set", self.call("inventory-set", args, key))

    def _inventory(self, cmd: str, data: Args) -> Args:
        self._shaped(cmd, data, _INVENTORY, ("generation",))
        for k in data.get("keys") or []:
            self._shaped(cmd, k, _INVENTORY_KEY, ("type", "fp"))
        return data

    def factory_reset(self) -> Args:
        return self.call("factory-reset", {}, auth=False)

    def maintenance(self, key: Optional[Key] = None) -> Args:
        return self.call("maintenance", {}, key)

    def boot_manifest(self) -> BootManifest:
        """The BMC's boot manifest: generation, every entry (generated ones included) and
        the BMC's boot file space. The BMC streams the entries, a JSON line each; the
        count it reports after them must match what arrived."""
        res = self.stream("boot-manifest-get", auth=False)
        files: List[Args] = []
        for line in res.body.splitlines():
            if not line.strip():
                continue
            try:
                entry = codec.loads(line)
            except ValueError:
                raise ProtocolError(
                    f"{self.name}: garbled boot manifest entry {line[:80]!r}"
                ) from None
            files.append(self._shaped("boot-manifest-get", entry, _ENTRY, tuple(_ENTRY)))
        d = self._shaped("boot-manifest-get", res.data, _SUMMARY, tuple(_SUMMARY))
        count, gen, used, limit = d["count"], d["gen"], d["bmc_bytes"], d["bmc_limit"]
        if count != len(files):
            raise ProtocolError(
                f"{self.name}: the boot manifest has {count} entries, {len(files)} arrived"
            )
        return BootManifest(gen=gen, files=files, bmc_bytes=used, bmc_limit=limit)

    def boot_file_put(
        self, data: bytes, *, manifest: bool = False, key: Optional[Key] = None
    ) -> str:
        """Upload `data` to the BMC's flash in chunks, each digest-checked (the BMC checks
        the whole file's digest too); its SHA-256 (hex). A file already stored there
        is not sent again. `manifest`: a files list for `boot_manifest_set`."""
        sha = hashlib.sha256(data).hexdigest()
        off = 0
        while off < len(data):
            chunk = data[off : off + UPLOAD_CHUNK]
            args: Args = {
                "sha256": sha,
                "size": len(data),
                "offset": off,
                "data": base64.b64encode(chunk).decode(),
                "chunk_sha256": hashlib.sha256(chunk).hexdigest(),
            }
            if manifest:
                args["manifest"] = True
            r = self.call("boot-file-put", args, key)
            off = len(data) if r.get("complete") else off + len(chunk)
        return sha

    def boot_manifest_set(
        self, files: List[Args], expect: Optional[int] = None, key: Optional[Key] = None
    ) -> Args:
        """Replace the boot manifest with `files` ({"name", "size", "sha256", "src"}; "bmc"
        files uploaded first); with `expect`, only if it is at that generation. A list
        whose request fits one frame goes inline; a longer one is uploaded (its canonical
        JSON, `boot_file_put(manifest=True)`) and set by its SHA-256, which the MAC
        covers. The BMC answers a summary: gen, count (entries, generated ones
        included), bmc_bytes, bmc_limit."""
        args: Args = {"files": files}
        if expect is not None:
            args["expect"] = expect
        msg = {"cmd": "boot-manifest-set", "args": args}
        if len(codec.dumps(msg)) + _AUTH_ROOM > codec.MAX_PAYLOAD:
            blob = codec.canon(files).encode()
            args = {"files_sha256": self.boot_file_put(blob, manifest=True, key=key)}
            if expect is not None:
                args["expect"] = expect
        return self.call("boot-manifest-set", args, key)

    def metrics(self) -> str:
        """The OpenMetrics exposition, streamed in chunks."""
        return self.stream("metrics").body.decode("utf-8", "replace")

    def iter_metrics(self) -> Iterator[bytes]:
        """The metrics chunks as they arrive (collected, then yielded in order)."""
        yield from self.stream("metrics").chunks

    # -- BMC reboot and reconnecting ----------------------------------------

    def bmc_reboot(
        self, key: Optional[Key] = None, *, wait: bool = True, timeout: float = 30.0
    ) -> Args:
        """Restart the BMC (the SBC keeps running); with `wait`, reconnect to it."""
        serial = self.serial
        data = self.call("bmc-reboot", {}, key)
        if wait:
            self.wait_gone(min(timeout, 5.0))
            self.reconnect(timeout, expect_serial=serial)
        return data

    def wait_gone(self, timeout: float) -> bool:
        """Wait until the device closes the link (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.link.is_open and time.monotonic() < deadline:
                try:
                    self.link.read_some(0.05)
                except LinkGone:
                    return True
            self.link.close()
        return False

    def reconnect(self, timeout: float = 30.0, expect_serial: Optional[str] = None) -> Hello:
        """Reopen this BMC's port (as its slot resolves now) and say hello, within `timeout`."""
        deadline = time.monotonic() + timeout
        last: Optional[BmcError] = None
        with self._lock:
            self.link.close()
            while True:
                try:
                    self._ensure_open()
                    info = self.hello_quick(min(2.0, max(deadline - time.monotonic(), 0.1)))
                    if expect_serial is None or info.get("serial") == expect_serial:
                        return info
                    last = LinkGone(f"{self.name} now answers with serial {info.get('serial')}")
                except (LinkGone, Timeout, ProtocolError) as e:
                    last = e
                self.link.close()
                if time.monotonic() >= deadline:
                    msg = last.message if last else "no answer"
                    raise Timeout(f"{self.name} did not come back within {timeout:g} s ({msg})")
                time.sleep(0.1)

    def _shaped(
        self, cmd: str, data: Any, fields: Dict[str, type], required: Tuple[str, ...] = ()
    ) -> Args:
        """`data` when it is an object whose `fields` have their types (an integer is no
        bool; a field may be null or absent unless `required`); else ProtocolError: the
        answer of another firmware, or of a BMC gone wrong, that the caller cannot use."""
        if not isinstance(data, dict):
            raise ProtocolError(f"{self.name}: {cmd} answered {_brief(data)}, not an object")
        for name, kind in fields.items():
            value = data.get(name)
            if value is None:
                if name in required:
                    raise ProtocolError(f"{self.name}: {cmd} answered without {name}")
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ProtocolError(
                    f"{self.name}: {cmd} answered {name}={_brief(value)}, not {_KINDS[kind]}"
                )
        return data

    def hello_quick(self, timeout: float) -> Hello:
        data = self.call("hello", {"proto": codec.PROTO_VERSION}, timeout=timeout)
        self.info = Hello(**data)  # type: ignore[typeddict-item]
        return self.info


def _decode(payload: bytes, name: str) -> Args:
    try:
        msg = codec.loads(payload)
    except ValueError as e:
        raise ProtocolError(f"{name} sent a garbled response ({e})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"{name} sent a response that is not an object: {_brief(msg)}")
    return msg


def _brief(value: Any) -> str:
    """A value from a BMC, short enough for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _response_data(msg: Args, name: str) -> Args:
    ok = msg.get("ok")
    data = msg.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError(f"{name} sent a response whose data is not an object")
    if ok is True:
        return data
    if ok is False:
        code = msg.get("error")
        text = msg.get("message")
        if not isinstance(code, str) or not code:
            raise ProtocolError(f"{name} sent an error without its code: {_brief(msg)}")
        raise from_wire(code, text if isinstance(text, str) and text else code, data)
    raise ProtocolError(f"{name} sent a response without ok")


def open_client(
    target: Union[str, Any],
    *,
    key: Optional[Key] = None,
    timeout: float = DEFAULT_TIMEOUT,
    busy_wait: float = DEFAULT_BUSY_WAIT,
) -> BmcClient:
    """A client for a port path or a `discovery.BmcPort` (reconnects by its slot)."""
    if isinstance(target, str):
        return BmcClient.open(target, key=key, timeout=timeout, busy_wait=busy_wait)
    return BmcClient.open(
        target.path,
        key=key,
        timeout=timeout,
        resolve=target.resolve,
        name=target.name,
        busy_wait=busy_wait,
    )

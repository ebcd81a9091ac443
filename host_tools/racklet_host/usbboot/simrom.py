"""A simulated Raspberry Pi boot ROM: the device side of usbboot, for tests.

    rom = SimBootRom("/tmp/rack/.slot0.usb", product_id=0x2711,
                     files=["config.txt", "start4.elf", "kernel8.img"])
    rom.power_on()            # the SBC powered up in USB device boot mode
    ... run the relay against SimBus(rom.path) ...
    rom.wait(10); rom.received   # {name: bytes} of every file it got whole

It plays the stages the way the real ROM and firmware do: stage 1 takes a
24-byte boot message and the second-stage image via the write primitive and
answers a 4-byte return code, then leaves the bus and enumerates again (a new
address) with another iSerialNumber; then one file-server session per entry of
`sessions` (bootcode4.bin's, then start4.elf's on a Pi 4), each its own
enumeration: metadata, then file by file GetFileSize and (if the size is not 0)
ReadFile, then Done ("done", an empty name, which the host may ack with a
zero-length write) or leaving the bus without it ("disconnect"). Once the last
session ends the SBC runs its OS and the device leaves the bus for good.

What a real SBC also does, on request: the enumeration just left stays listed
for `stale_for` s (its descriptor, then nothing), the first `reject_bootcodes`
bootcodes do not take (the ROM enumerates anew), no return code
(`return_code=False`), the first `deny_opens` opens are refused (udev has not
applied the permissions yet), and the device leaves the bus in the middle of
ReadFile of `vanish_in`.

It records what it received (`received`, `reads` in order) and every failure (a
short file, a host that vanished mid-file, a transfer it did not expect).
`follow(predicate)` powers it on and off with a condition, e.g. "the virtual SBC
has power and boot-select was asserted at power-on".
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from .simbus import ANSWER, DENIED, DESC, MAGIC, MAX_XFER, XFER, recv_exact
from .transport import PRODUCTS, VENDOR_ID, UsbError

GET_FILE_SIZE = 0
READ_FILE = 1
DONE = 2
FS_SERIAL = 1  # iSerialNumber of the file-server stage


class _Protocol(Exception):
    pass


class _Vanish(Exception):
    """The simulated device leaves the bus in the middle of a transfer."""


Session = Tuple[List[str], str]  # names asked for, then "done" or "disconnect"


class SimBootRom:
    def __init__(
        self,
        path: str,
        product_id: int = 0x2711,
        files: Optional[List[str]] = None,
        metadata: Optional[List[str]] = None,
        rom_serial: int = 3,
        sessions: Optional[List[Session]] = None,
        stale_for: float = 0.0,
        reject_bootcodes: int = 0,
        return_code: bool = True,
        deny_opens: int = 0,
        vanish_in: str = "",
    ) -> None:
        if product_id not in PRODUCTS:
            raise ValueError(f"unknown Raspberry Pi boot ROM product id {product_id:#06x}")
        self.path = path
        self.product_id = product_id
        self.rom_serial = rom_serial
        self.files = list(files if files is not None else ["config.txt", "start4.elf"])
        self.metadata = list(metadata if metadata is not None else ["*serial*10000000cafe"])
        self.sessions = list(sessions if sessions is not None else [(self.files, "done")])
        self.stale_for = stale_for
        self.reject_bootcodes = reject_bootcodes
        self.return_code = return_code
        self.deny_opens = deny_opens
        self.vanish_in = vanish_in
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._follower: Optional[threading.Thread] = None
        self._listener: Optional[socket.socket] = None
        self.reset()

    def reset(self) -> None:
        """Forget what was received (a fresh power-on)."""
        self.stage = "rom"
        self.bootcode: Optional[bytes] = None
        self.received: Dict[str, bytes] = {}
        self.sizes: Dict[str, int] = {}
        self.acked_metadata: List[str] = []
        self.failures: List[str] = []
        self.log: List[str] = []
        self.enumerations: List[Tuple[int, int]] = []  # (product, iSerialNumber)
        self.booted = False
        self.session = 0  # index into sessions
        self.reads: List[str] = []  # every file received whole, in order, all sessions
        self.bootcodes = 0  # boot images received (taken or not)
        self.done_acks = 0  # Done requests the host acked with a zero-length write
        self.denied = 0  # opens refused
        self.address = 1  # of the current enumeration
        self._stale: Optional[Tuple[int, int, float]] = None  # serial, address, until
        self._asked: Dict[str, int] = {}  # this session's sizes (kept over a reconnect)

    # -- power --------------------------------------------------------------
    @property
    def powered(self) -> bool:
        return self._thread is not None

    def power_on(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            self.reset()
        self._stop.clear()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(self.path)
        lst.listen(1)
        lst.settimeout(0.1)
        self._listener = lst
        self._thread = threading.Thread(target=self._run, name="simrom", daemon=True)
        self._thread.start()

    def power_off(self) -> None:
        t = self._thread
        if t is None:
            return
        self._stop.set()
        t.join(5)
        self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def follow(self, predicate: Callable[[], bool], interval: float = 0.05) -> None:
        """Power on while `predicate()` holds, off when it stops holding."""

        def loop() -> None:
            while not self._stop_follow.is_set():
                try:
                    want = bool(predicate())
                except Exception:  # the simulated SBC went away: no power
                    want = False
                if want and not self.powered:
                    self.power_on()
                elif not want and self.powered:
                    self.power_off()
                time.sleep(interval)

        self._stop_follow = threading.Event()
        self._follower = threading.Thread(target=loop, name="simrom-follow", daemon=True)
        self._follower.start()

    def close(self) -> None:
        if self._follower is not None:
            self._stop_follow.set()
            self._follower.join(5)
            self._follower = None
        self.power_off()

    def wait(self, timeout: float) -> bool:
        """Wait until booted or failed; True when booted."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.booted and not self.failures:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return self.booted

    # -- the device ------------------------------------------------------------
    def _note(self, text: str, failure: bool = False) -> None:
        with self._changed:
            self.log.append(text)
            if failure:
                self.failures.append(text)
            self._changed.notify_all()

    def _run(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set() and self.stage in ("rom", "fs"):
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(0.2)
                try:
                    if self._enumerate(conn):
                        if self.stage == "rom":
                            self._stage_rom(conn)
                        else:
                            self._stage_fs(conn)
                except _Protocol as e:
                    self._note(f"protocol error in stage {self.stage}: {e}", failure=True)
                except _Vanish as e:
                    self._note(f"left the bus in stage {self.stage}: {e}")
                except (UsbError, ConnectionResetError, BrokenPipeError) as e:
                    # a killed host process resets the socket when it had unread data
                    self._note(f"host went away in stage {self.stage}: {e}", failure=True)
                except OSError as e:
                    self._note(f"link error in stage {self.stage}: {e}", failure=True)
        if self.booted:  # the SBC runs its OS: no boot device on the bus any more
            self._listener.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _enumerate(self, conn: socket.socket) -> bool:
        """Send the descriptor; False when this connection goes no further."""
        serial = self.rom_serial if self.stage == "rom" else FS_SERIAL
        stale = self._stale
        if stale is not None and time.monotonic() < stale[2]:
            # the enumeration just left, still listed: its descriptor, then nothing
            conn.sendall(DESC.pack(MAGIC, VENDOR_ID, self.product_id, stale[0], stale[1], 0))
            return False
        if self.denied < self.deny_opens:
            self.denied += 1
            conn.sendall(DESC.pack(MAGIC, VENDOR_ID, self.product_id, serial, self.address, DENIED))
            self._note("open denied")
            return False
        with self._lock:
            self.enumerations.append((self.product_id, serial))
        conn.sendall(DESC.pack(MAGIC, VENDOR_ID, self.product_id, serial, self.address, 0))
        return True

    def _reenumerate(self, stage: str) -> None:
        """Leave the bus and come back as `stage` with a new address."""
        serial = self.rom_serial if self.stage == "rom" else FS_SERIAL
        if self.stale_for > 0:
            self._stale = (serial, self.address, time.monotonic() + self.stale_for)
        with self._lock:
            self.address += 1
            self.stage = stage
            self._asked = {}

    def _next(self, conn: socket.socket, until: float = 0.0) -> Tuple[bytes, int, int, int, bytes]:
        """The host's next transfer; UsbError when it closes (or by `until`, if set)."""
        while True:
            if self._stop.is_set():
                raise UsbError("powered off")
            try:
                head = conn.recv(XFER.size, socket.MSG_PEEK)
            except socket.timeout:
                if until and time.monotonic() >= until:
                    raise UsbError("no transfer from the host") from None
                continue
            if not head:
                raise UsbError("the host closed the device")
            break
        conn.settimeout(5.0)
        try:
            op, value, index, length = XFER.unpack(recv_exact(conn, XFER.size))
            if length > MAX_XFER:
                raise _Protocol(f"transfer of {length} bytes")
            data = recv_exact(conn, length) if op in (b"O", b"B") else b""
        finally:
            conn.settimeout(0.2)
        return op, value, index, length, data

    def _answer(self, conn: socket.socket, n: int, data: bytes = b"", ok: bool = True) -> None:
        conn.sendall(ANSWER.pack(0 if ok else 1, n) + data)

    def _stall(self, conn: socket.socket, why: str) -> None:
        self._answer(conn, 0, ok=False)
        raise _Protocol(why)

    def _control_out(self, conn: socket.socket, what: str) -> int:
        op, value, index, _, _ = self._next(conn)
        if op != b"O":
            self._stall(conn, f"expected a control OUT ({what}), got {op.decode()}")
        self._answer(conn, 0)
        return value | (index << 16)

    def _write(self, conn: socket.socket, what: str, limit: int) -> bytes:
        """The write primitive from the host: length by control OUT, then bulk."""
        n = self._control_out(conn, what)
        if n > limit:
            raise _Protocol(f"{what}: {n} bytes is more than {limit}")
        buf = bytearray()
        while len(buf) < n:
            op, _, _, _, data = self._next(conn)
            if op != b"B":
                self._stall(conn, f"{what}: expected bulk OUT, got {op.decode()}")
            take = data[: n - len(buf)]
            buf += take
            self._answer(conn, len(take))
        return bytes(buf)

    def _read(self, conn: socket.socket, data: bytes, what: str) -> None:
        """The host's read primitive (control IN): give it `data`."""
        op, value, index, length, _ = self._next(conn)
        want = value | (index << 16)
        if op != b"I" or want != length:
            self._stall(conn, f"expected a control IN for {what}, got {op.decode()}")
        out = data[:length]
        self._answer(conn, len(out), out)

    def _stage_rom(self, conn: socket.socket) -> None:
        msg = self._write(conn, "boot message", 24)
        if len(msg) != 24:
            raise _Protocol(f"boot message is {len(msg)} bytes, not 24")
        (length,) = struct.unpack_from("<i", msg)
        if length <= 0 or length > 4 << 20:
            raise _Protocol(f"boot message announces {length} bytes")
        image = self._write(conn, "second stage", length)
        ok = len(image) == length
        with self._lock:
            self.bootcodes += 1
        if self.return_code:
            self._read(conn, struct.pack("<i", 0 if ok else 1), "return code")
        if not ok:
            raise _Protocol(f"second stage is {len(image)} bytes, boot message said {length}")
        if self.bootcodes <= self.reject_bootcodes:
            self._reenumerate("rom")
            self._note(f"bootcode {length} bytes did not take; the ROM enumerates again")
            return
        with self._lock:
            self.bootcode = image
        self._reenumerate("fs")
        self._note(f"bootcode {length} bytes; re-enumerating as the file server")

    def _request(self, conn: socket.socket, cmd: int, name: str) -> None:
        self._read(conn, struct.pack("<i256s", cmd, name.encode()), f"request {cmd} {name}")

    def _stage_fs(self, conn: socket.socket) -> None:
        for m in self.metadata:
            if m in self.acked_metadata:
                continue
            self._request(conn, GET_FILE_SIZE, m)
            if self._control_out(conn, "metadata ack") != 0:
                raise _Protocol(f"metadata {m} not acked with a zero-length write")
            with self._lock:
                self.acked_metadata.append(m)
        names, end = self.sessions[self.session]
        for name in names:
            if name in self._asked:
                continue  # asked before a reconnect
            if not self._fetch(conn, name):
                return
        if end == "done":
            self._request(conn, DONE, "")
            self._done_ack(conn)
        if self.session + 1 < len(self.sessions):
            self._note(f"file server {self.session + 1} ends ({end}); the next enumerates")
            self._reenumerate("fs")
            with self._lock:
                self.session += 1
            return
        with self._changed:
            self.stage = "booted"
            self.booted = True
            self._changed.notify_all()
        self.log.append(f"done ({end}): booting")

    def _fetch(self, conn: socket.socket, name: str) -> bool:
        """GetFileSize, then ReadFile; False after a short file (a failure)."""
        self._request(conn, GET_FILE_SIZE, name)
        size = self._control_out(conn, f"size of {name}")
        self._asked[name] = size
        if size == 0:
            with self._lock:
                self.sizes[name] = 0
            self._note(f"{name}: not available (size 0)")
            return True
        self._request(conn, READ_FILE, name)
        if name == self.vanish_in:
            self._control_out(conn, f"length of {name}")
            raise _Vanish(f"during ReadFile {name}")
        try:
            data = self._write(conn, f"file {name}", size)
        except UsbError as e:
            raise UsbError(f"during ReadFile {name}: {e}") from None
        if len(data) != size:
            self._note(f"{name}: got {len(data)} bytes, size said {size}", failure=True)
            return False
        with self._lock:
            self.sizes[name] = size
            self.received[name] = data
            self.reads.append(name)
        self._note(f"{name}: {size} bytes")
        return True

    def _done_ack(self, conn: socket.socket) -> None:
        """usbboot acks an empty-name Done with a zero-length write; take it if it comes."""
        try:
            op, value, index, _, _ = self._next(conn, until=time.monotonic() + 0.5)
        except UsbError:
            return  # the host closed or sent nothing: no ack
        self._answer(conn, 0, ok=op == b"O")
        if op == b"O" and value == 0 and index == 0:
            with self._lock:
                self.done_acks += 1

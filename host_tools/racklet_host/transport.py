"""The byte link to one BMC: a serial port (USB CDC, or a PTY in the simulator).

This layer knows about frames (`bmc.codec`) but nothing about commands: it opens a
port exclusively, writes frames, and reads frames with a deadline. A device that
vanishes (USB unplugged, BMC rebooting, the simulator's PTY closed) raises
`LinkGone`; a second opener of the same port gets `PortBusy`, or with
`busy_wait=S` retries the exclusive open every few milliseconds for up to S
seconds first (its turn comes as soon as the holder closes the port: the bridge
holds a port only for one scrape).

Frames that arrive corrupt (CRC mismatch) are dropped by the reader and counted
in `Link.bad_frames`, so a caller can tell a stream with a hole from a whole one;
a wait that ends without an answer says how many were dropped. A peer that frames
with protocol version 1's CRC layout (an older firmware) is a `ProtocolError`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import termios
import time
from typing import List, NamedTuple, Optional

from bmc import codec

from .errors import LinkGone, PortBusy, ProtocolError, Timeout

_READ_SIZE = 65536  # a whole metrics answer (~8 KB) in one read when it is there
_BUSY_POLL = 0.002  # retry interval of a busy open: shorter than any gap between scrapes
_PTY_MAJORS = range(136, 144)  # Linux's device numbers of pseudo-terminal slaves
WRITE_TIMEOUT = 5.0  # seconds a write waits for a port that does not take data


class Frame(NamedTuple):
    kind: int
    version: int
    req_id: int
    payload: bytes


class Link:
    """One open serial port, with a frame reader over it."""

    def __init__(self, path: str, busy_wait: float = 0.0, fd: Optional[int] = None) -> None:
        """Open the port at `path`; or, with `fd`, take over that descriptor of it,
        opened and locked by `open_port`."""
        self.path = path
        self.busy_wait = busy_wait  # seconds an open waits for a port another program holds
        self._port: Optional[int] = None  # file descriptor of the open port
        self._reader = codec.FrameReader()
        self._rx = bytearray()
        self._bad_before = 0  # corrupt frames counted by readers replaced since
        if fd is None:
            self.open()
        else:
            self._adopt(fd)

    # -- opening and closing ------------------------------------------------

    @staticmethod
    def waits_on_device(path: str) -> bool:
        """Whether opening and closing the port at `path` waits on its device.

        A USB CDC port's open raises DTR and its close lowers it, each a control
        transfer to the device that the call waits for (a millisecond or more through
        a hub); a pseudo-terminal's (a simulated BMC) are a few system calls.
        """
        try:
            return os.major(os.stat(path).st_rdev) not in _PTY_MAJORS
        except OSError:
            return True

    def open(self) -> None:
        """Open `self.path` (following a symlink) exclusively, in raw mode.

        A port held by another program is retried until `self.busy_wait` seconds
        have passed, then `PortBusy`.
        """
        self.close()
        self._adopt(self.open_port(self.path, self.busy_wait))

    @classmethod
    def open_port(cls, path: str, busy_wait: float = 0.0) -> int:
        """The port at `path` opened (non-blocking) and locked for this process alone:
        the part of an open that may wait on the device. A port another program holds
        is retried every few ms until `busy_wait` seconds have passed, then `PortBusy`."""
        deadline = time.monotonic() + busy_wait
        while True:
            try:
                return cls._open_locked(path)
            except PortBusy:
                left = deadline - time.monotonic()
                if left <= 0:
                    if busy_wait > 0:
                        raise PortBusy(
                            f"port {path} is busy: another program has held it for {busy_wait:g} s"
                        ) from None
                    raise
                time.sleep(min(_BUSY_POLL, left))

    @staticmethod
    def _open_locked(path: str) -> int:
        """What pyserial's exclusive open does first: a non-blocking open and flock."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            reason = "no such device" if e.errno == errno.ENOENT else (e.strerror or str(e))
            raise LinkGone(f"cannot open {path}: {reason}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
                raise PortBusy(f"port {path} is busy: another program has it open") from None
            raise LinkGone(f"cannot open {path}: {e.strerror or e}") from None
        return fd

    def _adopt(self, fd: int) -> None:
        """Take over an opened, locked port (the bridge opens every port at every scrape,
        so this is a few system calls): raw 8N1 at 115200 baud (set only when the port
        is not so already), DTR and RTS up, stale input dropped."""
        try:
            _raw_mode(fd)
            termios.tcflush(fd, termios.TCIFLUSH)
        except (OSError, termios.error) as e:
            os.close(fd)
            text = e.strerror if isinstance(e, OSError) else e.args[-1]
            raise LinkGone(f"cannot open {self.path}: {text}") from None
        except BaseException:
            os.close(fd)
            raise
        self._port = fd
        self._new_reader()

    def close(self) -> None:
        fd, self._port = self._port, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The open port's file descriptor (to wait on several links with one selector)."""
        return self._fd()

    def _fd(self) -> int:
        if self._port is None:
            raise LinkGone(f"link to {self.path} is closed")
        return self._port

    # -- bytes --------------------------------------------------------------

    def write(self, data: bytes, deadline: Optional[float] = None) -> None:
        """Write all of `data` (a frame or, in tests, any bytes) by `deadline` (a
        `time.monotonic()` value; default WRITE_TIMEOUT from now), else Timeout. A
        device that stopped reading fills the port's buffer (a PTY's holds 20 KB of
        requests that were never read); a deadline already past makes one attempt."""
        fd = self._fd()
        view = memoryview(data)
        if deadline is None:
            deadline = time.monotonic() + WRITE_TIMEOUT
        while len(view):
            try:
                k = os.write(fd, view)
            except BlockingIOError:
                k = 0
            except OSError as e:
                self.close()
                raise LinkGone(f"{self.path} went away while writing ({e.strerror})") from None
            view = view[k:]
            if len(view):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(f"{self.path} does not take data: the BMC is not reading")
                select.select([], [fd], [], min(left, 0.05))

    def read_some(self, timeout: float) -> bytes:
        """Bytes available within `timeout` seconds (b"" if none arrived).

        With no time to wait the port is read at once (it is non-blocking): one system
        call, for callers that already know it is readable.
        """
        fd = self._fd()
        if timeout > 0:
            try:
                ready, _, _ = select.select([fd], [], [], timeout)
            except (OSError, ValueError) as e:
                self.close()
                raise LinkGone(f"{self.path} went away ({e})") from None
            if not ready:
                return b""
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return b""
        except OSError as e:
            self.close()
            raise LinkGone(f"{self.path} went away ({e.strerror})") from None
        if not data:  # readable but empty: the other side closed
            self.close()
            raise LinkGone(f"{self.path} went away (device closed)")
        return data

    def drain_input(self) -> None:
        """Drop whatever is waiting to be read (stale answers, noise)."""
        while self.read_some(0):
            pass
        self._new_reader()

    def _new_reader(self) -> None:
        self._bad_before += self._reader.bad_crc
        self._reader = codec.FrameReader()
        self._rx = bytearray()

    @property
    def bad_frames(self) -> int:
        """Frames dropped for a CRC mismatch since this link was made."""
        return self._bad_before + self._reader.bad_crc

    # -- frames -------------------------------------------------------------

    def send_frame(
        self, kind: int, req_id: int, payload: bytes, deadline: Optional[float] = None
    ) -> None:
        self.write(codec.encode_frame(kind, req_id, payload), deadline)

    def read_frame(self, deadline: float) -> Frame:
        """The next valid frame before `deadline` (a `time.monotonic()` value)."""
        bad = self._reader.bad_crc
        while True:
            frame = self._take_frame()
            if frame is not None:
                return frame
            left = deadline - time.monotonic()
            if left <= 0:
                lost = self._reader.bad_crc - bad
                if lost:
                    raise Timeout(
                        f"no answer from {self.path}: {lost} frame(s) arrived corrupt"
                        " (CRC mismatch) and were dropped"
                    )
                raise Timeout(f"no answer from {self.path}")
            data = self.read_some(min(left, 0.25))
            if data:
                self._rx += data
            else:
                self._reader.expire(int(time.monotonic() * 1000))

    def poll_frames(self) -> List[Frame]:
        """The frames complete with what has arrived, without waiting (one read).

        For callers that wait on many links at once: call it when the port is readable.
        """
        data = self.read_some(0)
        if data:
            self._rx += data
        else:
            self._reader.expire(int(time.monotonic() * 1000))
        frames: List[Frame] = []
        while True:
            frame = self._take_frame()
            if frame is None:
                return frames
            frames.append(frame)

    def _take_frame(self) -> Optional[Frame]:
        """The next valid frame in what has arrived, or None: no reading, no waiting."""
        reader = self._reader
        rx = self._rx
        now = int(time.monotonic() * 1000)
        while True:
            if rx:
                k = reader.feed(rx, now)
                del rx[:k]
            frame = reader.next_frame()
            if reader.old_version:
                raise ProtocolError(
                    f"{self.path} frames with wire protocol version 1 (an older firmware);"
                    f" this host speaks version {codec.PROTO_VERSION}: update the BMC's"
                    " firmware (make deploy, docs/hardware.md)"
                )
            if frame is not None:
                kind, version, rid, payload = frame
                return Frame(kind, version, rid, bytes(payload))
            if not rx:
                return None
            if reader.n >= len(reader.buf):  # cannot happen with a sane reader; never spin
                reader.expire(now + codec.STALE_MS + 1)


_RAW_IFLAG_OFF = (
    termios.INLCR
    | termios.IGNCR
    | termios.ICRNL
    | termios.IGNBRK
    | termios.PARMRK
    | termios.INPCK
    | termios.ISTRIP
    | termios.IXON
    | termios.IXOFF
    | termios.IXANY
)
_RAW_LFLAG_OFF = (
    termios.ICANON
    | termios.ECHO
    | termios.ECHOE
    | termios.ECHOK
    | termios.ECHONL
    | termios.ISIG
    | termios.IEXTEN
)
_RAW_OFLAG_OFF = termios.OPOST | termios.ONLCR | termios.OCRNL
_CFLAG_OFF = termios.CSIZE | termios.PARENB | termios.CSTOPB | termios.CRTSCTS
_CFLAG_ON = termios.CS8 | termios.CLOCAL | termios.CREAD


def _raw_mode(fd: int) -> None:
    """Raw 8N1 at 115200 baud (the baud rate means nothing to USB CDC), DTR and RTS up."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    want = [
        iflag & ~_RAW_IFLAG_OFF,
        oflag & ~_RAW_OFLAG_OFF,
        (cflag & ~_CFLAG_OFF) | _CFLAG_ON,
        lflag & ~_RAW_LFLAG_OFF,
        termios.B115200,
        termios.B115200,
        list(cc),
    ]
    want[6][termios.VMIN] = 1  # as pyserial: a read of a port with nothing waiting is EAGAIN
    want[6][termios.VTIME] = 0
    if want != [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]:
        termios.tcsetattr(fd, termios.TCSANOW, want)
    try:
        lines = struct.pack("I", termios.TIOCM_DTR | termios.TIOCM_RTS)
        fcntl.ioctl(fd, termios.TIOCMBIS, lines)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTTY):  # a PTY has no modem lines
            raise

"""A USB bus over a Unix socket: the relay's side of a simulated SBC.

The simulated boot ROM (`simrom.SimBootRom`) listens on a Unix socket while
its SBC sits in USB boot mode. Each connection is one enumeration: the device
first sends its descriptor, then answers transfers one at a time; closing
the connection is the device leaving the bus (re-enumeration, power off).

    device -> host, on connect:  "RPIB" u16 vendor, u16 product, u8 iSerialNumber,
                                  u8 address (new with each enumeration), u8 flags
                                  (1: opening it is denied, as before udev applied
                                  the permissions; the device then closes)
    host -> device, a transfer:  u8 op, u16 wValue, u16 wIndex, u32 length, [length bytes]
        op "O" control OUT (no data stage in this protocol: length 0)
           "I" control IN (length = wLength)
           "B" bulk OUT (the bytes follow)
           "b" bulk IN (length = bytes wanted)
    device -> host, the answer:  u8 status (0 ok, 1 stall), u32 n, [n bytes for IN]
                                  (for OUT transfers n is the count taken)

A device that left the bus may still be listed for a moment: its descriptor
comes with its old address, and the connection closes.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from typing import Optional

from .transport import (
    ACCESS_HINT,
    BULK_TIMEOUT,
    CONTROL_TIMEOUT,
    PRODUCTS,
    READ_TIMEOUT,
    VENDOR_ID,
    UsbAbsent,
    UsbError,
    UsbGone,
)

DESC = struct.Struct("<4sHHBBB")
DENIED = 1  # descriptor flag: the open fails with access denied
XFER = struct.Struct("<cHHI")
ANSWER = struct.Struct("<BI")
MAGIC = b"RPIB"
MAX_XFER = 1 << 24


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes; UsbGone if the peer closes first."""
    buf = bytearray()
    while len(buf) < n:
        try:
            part = sock.recv(min(n - len(buf), 1 << 16))
        except socket.timeout:
            raise UsbError("USB transfer timed out") from None
        except OSError as e:
            raise UsbGone(f"the device left the bus ({e.strerror or e})") from None
        if not part:
            raise UsbGone("the device left the bus")
        buf += part
    return bytes(buf)


class SimDevice:
    def __init__(self, sock: socket.socket, path: str) -> None:
        self._sock = sock
        self.location = path
        magic, vendor, product, iserial, address, flags = DESC.unpack(recv_exact(sock, DESC.size))
        if magic != MAGIC:
            raise UsbError(f"{path} is not a simulated USB device")
        self.vendor_id = vendor
        self.product_id = product
        self.iserial = iserial
        self.ident = f"{path}#{address}"
        self.denied = bool(flags & DENIED)

    def _xfer(
        self, op: bytes, value: int, index: int, length: int, data: bytes, timeout: float
    ) -> int:
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(XFER.pack(op, value & 0xFFFF, index & 0xFFFF, length) + data)
        except OSError as e:
            raise UsbGone(f"the device left the bus ({e.strerror or e})") from None
        status, n = ANSWER.unpack(recv_exact(self._sock, ANSWER.size))
        if status != 0:
            raise UsbError(f"transfer {op.decode()} stalled by the device")
        return int(n)

    def control_out(self, value: int, index: int, timeout: float = CONTROL_TIMEOUT) -> None:
        self._xfer(b"O", value, index, 0, b"", timeout)

    def control_in(
        self, value: int, index: int, length: int, timeout: float = READ_TIMEOUT
    ) -> bytes:
        n = self._xfer(b"I", value, index, length, b"", timeout)
        if n > length:
            raise UsbError("device sent more than asked")
        return recv_exact(self._sock, n)

    def bulk_out(self, data: bytes, timeout: float = BULK_TIMEOUT) -> int:
        return int(self._xfer(b"B", 0, 0, len(data), bytes(data), timeout))

    def bulk_in(self, length: int, timeout: float = BULK_TIMEOUT) -> bytes:
        n = self._xfer(b"b", 0, 0, length, b"", timeout)
        if n > length:
            raise UsbError("device sent more than asked")
        return recv_exact(self._sock, n)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


class SimBus:
    """The bus as seen through one simulated SBC's socket."""

    def __init__(self, path: str) -> None:
        self.path = path

    def wait_device(self, timeout: float, skip: str = "") -> SimDevice:
        deadline = time.monotonic() + timeout
        last: Optional[str] = None
        failed: Optional[UsbError] = None  # a device that was there but would not open
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.settimeout(2.0)
                s.connect(self.path)
                dev = SimDevice(s, self.path)
                if dev.vendor_id != VENDOR_ID or dev.product_id not in PRODUCTS:
                    dev.close()
                    last = f"device {dev.vendor_id:04x}:{dev.product_id:04x} is not a Pi boot ROM"
                elif dev.ident == skip:
                    dev.close()  # the enumeration just used, still listed
                elif dev.denied:
                    dev.close()
                    failed = UsbError(f"opening: {dev.location}: {ACCESS_HINT}")
                else:
                    return dev
            except OSError as e:
                s.close()
                if e.errno not in (errno.ENOENT, errno.ECONNREFUSED, None):
                    last = str(e)
            except UsbError as e:
                s.close()
                last = str(e)
            if time.monotonic() >= deadline:
                if failed is not None:
                    raise failed
                why = f" ({last})" if last else ""
                raise UsbAbsent(
                    f"no Raspberry Pi in USB boot mode appeared on {self.path} "
                    f"in {timeout:g} s{why}"
                )
            time.sleep(0.05)

"""The USB side of the usbboot relay, behind a small interface.

A `UsbBus` finds a Raspberry Pi boot ROM (vendor 0x0a5c) and returns a
`UsbDevice`; the device offers the four transfers the protocol needs (vendor
control OUT / IN on endpoint 0, bulk OUT / IN) and its `iSerialNumber`
descriptor index, which tells the stage: 0 or 3 = the ROM waits for the
second-stage bootcode, anything else = a file server (the bootcode's, then
start*.elf's). Each stage enumerates anew, with a new bus address, so the relay
asks the bus again after every stage, skipping the enumeration it just used
(`ident`): the old one can stay listed for a moment after the device left.

Implementations: `pyusb_bus.PyUsbBus` (real hardware, the optional `boot`
extra) and `simbus.SimBus` (a Unix socket to `simrom.SimBootRom`, the
simulated SBC used by the tests).

The protocol's two primitives (raspberrypi/usbboot main.c) are here too:
`ep_write` (control OUT with the length in wValue/wIndex, then the bytes in
bulk transfers of at most 16 KiB) and `ep_read` (control IN with the length
in wValue/wIndex).
"""

from __future__ import annotations

from typing import Protocol

VENDOR_ID = 0x0A5C
# product id -> second-stage file the ROM wants
PRODUCTS = {
    0x2763: "bootcode.bin",  # BCM2835/6/7 (Pi Zero .. Pi 3, CM1-3)
    0x2764: "bootcode.bin",
    0x2711: "bootcode4.bin",  # BCM2711: Pi 4, CM4
    0x2712: "bootcode5.bin",  # BCM2712: Pi 5, CM5
}
ROM_SERIALS = (0, 3)  # iSerialNumber of a ROM waiting for the bootcode
BULK_CHUNK = 16 * 1024
CONTROL_TIMEOUT = 1.0
# usbboot's ep_read waits 20 s: a stage may think for seconds before its next request
# (a Pi 5's bootmain sets up SDRAM and RP1 before it asks for config.txt).
READ_TIMEOUT = 20.0
BULK_TIMEOUT = 5.0


class UsbError(Exception):
    """A USB transfer failed (stall, timeout, protocol error)."""


class UsbGone(UsbError):
    """The device disconnected (re-enumeration, power loss, unplug)."""


class UsbUnavailable(UsbError):
    """No USB access at all (pyusb or its backend missing)."""


class UsbAbsent(UsbError):
    """No Raspberry Pi boot device appeared before the deadline."""


# why an open was refused, and what fixes it (the usual first-run problem)
ACCESS_HINT = (
    "access denied: install the udev rule packaging/99-racklet-bmc.rules and add "
    "this user to the racklet group (or run as root)"
)


class UsbDevice(Protocol):
    product_id: int
    iserial: int  # iSerialNumber (the descriptor's string index)
    location: str  # where it is attached, e.g. "1-1.3" (bus-port path) or a socket path
    ident: str  # this enumeration (bus and address): a re-enumerated device has another

    def control_out(self, value: int, index: int, timeout: float = CONTROL_TIMEOUT) -> None:
        """Vendor control OUT, request 0, no data stage."""
        ...

    def control_in(
        self, value: int, index: int, length: int, timeout: float = READ_TIMEOUT
    ) -> bytes:
        """Vendor control IN, request 0, `length` bytes of data stage."""
        ...

    def bulk_out(self, data: bytes, timeout: float = BULK_TIMEOUT) -> int:
        """Bulk OUT; returns the bytes the device took."""
        ...

    def bulk_in(self, length: int, timeout: float = BULK_TIMEOUT) -> bytes: ...

    def close(self) -> None: ...


class UsbBus(Protocol):
    def wait_device(self, timeout: float, skip: str = "") -> UsbDevice:
        """The next Raspberry Pi boot device whose `ident` is not `skip`.

        UsbAbsent when none appeared in time; the open's UsbError (access
        denied, ...) when one appeared but could not be opened by then.
        """
        ...


def ep_write(dev: UsbDevice, data: bytes) -> None:
    """usbboot's write primitive: announce the length, then send the bytes in bulk."""
    n = len(data)
    dev.control_out(n & 0xFFFF, n >> 16)
    view = memoryview(data)
    sent = 0
    while sent < n:
        k = dev.bulk_out(bytes(view[sent : sent + BULK_CHUNK]))
        if k <= 0:
            raise UsbError(f"bulk write stalled after {sent} of {n} bytes")
        sent += k


def ep_read(dev: UsbDevice, n: int) -> bytes:
    """usbboot's read primitive: a vendor control IN carrying the length."""
    return dev.control_in(n & 0xFFFF, n >> 16, n, READ_TIMEOUT)

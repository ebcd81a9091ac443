"""Real hardware: the usbboot transport on pyusb (optional extra `boot`).

pyusb is imported only when a `PyUsbBus` is created, so the rest of the host
tools work without it; without it (or without a libusb backend) the error says
what to install. Every pyusb error comes out as a `UsbError` (`UsbGone` when
the device left the bus), so the relay can report it to the BMC.
"""

from __future__ import annotations

import errno
import time
from typing import Any, Optional, Set

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
    UsbUnavailable,
)

_VENDOR_OUT = 0x40  # host-to-device, vendor, device
_VENDOR_IN = 0xC0
# libusb's NO_DEVICE and IO errors: usbboot takes both as "the device went away"
_GONE = (errno.ENODEV, errno.EIO)


def _import_usb() -> Any:
    try:
        import usb.core
        import usb.util
    except ImportError:
        raise UsbUnavailable(
            "USB boot serving needs pyusb: pip install 'racklet-bmc[boot]' (and libusb-1.0)"
        ) from None
    return usb


def _location(dev: Any) -> str:
    ports = getattr(dev, "port_numbers", None) or ()
    path = ".".join(str(p) for p in ports)
    return f"{dev.bus}-{path}" if ports else str(dev.bus)


def _ident(dev: Any) -> str:
    return f"{dev.bus}:{dev.address}"


def usb_error(what: str, location: str, e: Exception) -> UsbError:
    """A pyusb error as the relay's UsbError, saying what to do where it can."""
    code = getattr(e, "errno", None)
    if code in _GONE or "No such device" in str(e):
        return UsbGone(f"{what}: the device at {location} went away")
    if code == errno.EACCES:
        return UsbError(f"{what} at {location}: {ACCESS_HINT}")
    if code == errno.EBUSY:
        return UsbError(f"{what} at {location}: busy (another program, rpiboot?, has it)")
    return UsbError(f"{what} at {location}: {e}")


class PyUsbDevice:
    def __init__(self, usb: Any, dev: Any) -> None:
        self._usb = usb
        self._dev = dev
        self.product_id = int(dev.idProduct)
        self.iserial = int(dev.iSerialNumber)
        self.location = _location(dev)
        self.ident = _ident(dev)
        try:
            self._open()
        except usb.core.USBError as e:
            self.close()
            raise usb_error("opening", self.location, e) from None

    def _open(self) -> None:
        """Claim the vendor interface as usbboot does; pyusb errors pass through."""
        usb, dev = self._usb, self._dev
        try:
            if dev.is_kernel_driver_active(0):
                dev.detach_kernel_driver(0)
        except NotImplementedError:
            pass
        except usb.core.USBError as e:
            if e.errno in _GONE or e.errno == errno.EACCES:
                raise
        try:
            cfg = dev.get_active_configuration()
        except usb.core.USBError as e:
            if e.errno is not None:
                raise
            # "Configuration not set": usbboot never sets one (the kernel has, and a
            # SET_CONFIGURATION on a configured device is a lightweight reset), so only here
            dev.set_configuration()
            cfg = dev.get_active_configuration()
        # usbboot: interface 0 when the device has one interface, else 1
        intf = cfg[(0, 0)] if cfg.bNumInterfaces == 1 else cfg[(1, 0)]
        usb.util.claim_interface(dev, intf.bInterfaceNumber)
        self._out = usb.util.find_descriptor(
            intf,
            custom_match=lambda e: (
                usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_OUT
            ),
        )
        self._in = usb.util.find_descriptor(
            intf,
            custom_match=lambda e: (
                usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_IN
            ),
        )
        if self._out is None:
            raise UsbError(f"device at {self.location} has no bulk OUT endpoint")

    def _fail(self, what: str, e: Exception) -> UsbError:
        return usb_error(what, self.location, e)

    def control_out(self, value: int, index: int, timeout: float = CONTROL_TIMEOUT) -> None:
        try:
            self._dev.ctrl_transfer(_VENDOR_OUT, 0, value, index, None, int(timeout * 1000))
        except self._usb.core.USBError as e:
            raise self._fail("control OUT", e) from None

    def control_in(
        self, value: int, index: int, length: int, timeout: float = READ_TIMEOUT
    ) -> bytes:
        try:
            data = self._dev.ctrl_transfer(_VENDOR_IN, 0, value, index, length, int(timeout * 1000))
        except self._usb.core.USBError as e:
            raise self._fail("control IN", e) from None
        return bytes(data)

    def bulk_out(self, data: bytes, timeout: float = BULK_TIMEOUT) -> int:
        try:
            return int(self._out.write(data, int(timeout * 1000)))
        except self._usb.core.USBError as e:
            raise self._fail("bulk OUT", e) from None

    def bulk_in(self, length: int, timeout: float = BULK_TIMEOUT) -> bytes:
        if self._in is None:
            raise UsbError(f"device at {self.location} has no bulk IN endpoint")
        try:
            return bytes(self._in.read(length, int(timeout * 1000)))
        except self._usb.core.USBError as e:
            raise self._fail("bulk IN", e) from None

    def close(self) -> None:
        try:
            self._usb.util.dispose_resources(self._dev)
        except self._usb.core.USBError:
            pass


class PyUsbBus:
    """Raspberry Pi boot ROMs on the host's USB; `location` picks one ("1-1.3")."""

    def __init__(self, location: Optional[str] = None, products: Optional[Set[int]] = None):
        self._usb = _import_usb()
        self.location = location
        self.products = products or set(PRODUCTS)
        try:
            self._usb.core.find(idVendor=VENDOR_ID)
        except self._usb.core.NoBackendError:
            raise UsbUnavailable("pyusb found no USB backend: install libusb-1.0") from None
        except self._usb.core.USBError as e:
            raise usb_error("listing USB devices", "the host", e) from None

    def _candidates(self, skip: str) -> Any:
        try:
            found = list(self._usb.core.find(find_all=True, idVendor=VENDOR_ID))
        except self._usb.core.USBError as e:
            raise usb_error("listing USB devices", "the host", e) from None
        for dev in found:
            if int(dev.idProduct) not in self.products or _ident(dev) == skip:
                continue
            if self.location is None or _location(dev) == self.location:
                yield dev

    def wait_device(self, timeout: float, skip: str = "") -> PyUsbDevice:
        deadline = time.monotonic() + timeout
        failed: Optional[UsbError] = None
        while True:
            for dev in self._candidates(skip):
                try:
                    return PyUsbDevice(self._usb, dev)
                except UsbError as e:
                    # right after enumeration udev may not have applied the
                    # permissions yet, or the device is already leaving: retry
                    failed = e
            if time.monotonic() >= deadline:
                if failed is not None:
                    raise failed
                where = f" at {self.location}" if self.location else ""
                raise UsbAbsent(
                    f"no Raspberry Pi in USB boot mode appeared{where} in {timeout:g} s"
                )
            time.sleep(0.2)

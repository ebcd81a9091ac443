"""Finding BMCs: USB CDC devices on the backplane hub, a simulated rack, or one port.

- Real hardware: `serial.tools.list_ports` entries with a Racklet BMC's USB vendor
  and product id. The slot name comes from the USB port path (`location`, e.g.
  `1-1.3:1.0` is port 3 of the hub on root port 1), which is stable across reboots
  and re-enumeration, unlike `/dev/ttyACM*` numbers (`slot_names`).
- A simulated rack (`--rack DIR` or env `BMC_RACK`): `DIR/slot1`, `DIR/slot2`, ...
  are links to the PTYs of `bmc-sim`; they are re-pointed when a BMC restarts.
- `--port PATH`: that device, nothing else.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from .errors import NoBmcFound

ENV_RACK = "BMC_RACK"

# USB ids a Racklet BMC enumerates with: MicroPython's RP2040 ids (Raspberry Pi's
# vendor id 0x2E8A, product 0x0005), which `usb.device` keeps unless the board sets
# its own. Since any MicroPython board has these, a port must also name itself a
# Racklet BMC in its manufacturer or product string. Extra ids may be given as
# "VID:PID,VID:PID" (hex) in BMC_USB_IDS.
USB_IDS: Tuple[Tuple[int, int], ...] = ((0x2E8A, 0x0005),)
ENV_USB_IDS = "BMC_USB_IDS"
ENV_HUB = "BMC_HUB"  # the backplane hub's USB path (`1-1.2`): slots are named below it
USB_NAME = "racklet"

_SLOT_RE = re.compile(r"^slot(\d+)$")
_LOCATION_RE = re.compile(r"^(\d+)-(\d+(?:\.\d+)*)(?::[\d.]+)?$")
_PORTS_RE = re.compile(r"^\d+(?:\.\d+)*$")


class BmcPort:
    """One BMC's port: `name` (slot), `path` (device), `serial` if known without asking."""

    __slots__ = ("name", "path", "serial", "location", "source", "_resolve")

    def __init__(
        self,
        name: str,
        path: str,
        *,
        serial: Optional[str] = None,
        location: Optional[str] = None,
        source: str = "port",
        resolve: Optional[Callable[[], str]] = None,
    ) -> None:
        self.name = name
        self.path = path
        self.serial = serial
        self.location = location
        self.source = source
        self._resolve = resolve

    def resolve(self) -> str:
        """This BMC's port path now (after a re-enumeration it may have changed)."""
        if self._resolve is None:
            return self.path
        self.path = self._resolve()
        return self.path

    @property
    def slot_number(self) -> Optional[int]:
        """N of `slotN` (a simulated rack's slots, a port of the backplane hub); None
        for `slot4.1`, a whole path, or any other name."""
        m = _SLOT_RE.match(self.name)
        return int(m.group(1)) if m else None

    def __repr__(self) -> str:
        return f"BmcPort({self.name!r}, {self.path!r}, serial={self.serial!r})"


# -- simulated rack ----------------------------------------------------------


def rack_ports(rack_dir: str) -> List[BmcPort]:
    """The slots of a simulated rack, in slot order (missing links are skipped)."""
    try:
        names = os.listdir(rack_dir)
    except OSError as e:
        raise NoBmcFound(f"rack directory {rack_dir}: {e.strerror}") from None
    found = []
    for name in names:
        m = _SLOT_RE.match(name)
        if m:
            found.append((int(m.group(1)), name))
    ports = []
    for _, name in sorted(found):
        link = os.path.join(rack_dir, name)
        ports.append(BmcPort(name, link, source="rack", resolve=_rack_resolver(rack_dir, name)))
    return ports


def _rack_resolver(rack_dir: str, name: str) -> Callable[[], str]:
    link = os.path.join(rack_dir, name)

    def resolve() -> str:
        if not os.path.exists(link):
            raise NoBmcFound(f"{name} of rack {rack_dir} is not there")
        return link

    return resolve


# -- USB ---------------------------------------------------------------------


def usb_ids() -> List[Tuple[int, int]]:
    ids = list(USB_IDS)
    for item in os.environ.get(ENV_USB_IDS, "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            vid, pid = item.split(":")
            ids.append((int(vid, 16), int(pid, 16)))
        except ValueError:
            raise NoBmcFound(f"{ENV_USB_IDS}: '{item}' is not VID:PID in hex") from None
    return ids


def check_hub(hub: Optional[str]) -> Optional[str]:
    """A backplane hub's USB path (`1-1.2`) as given, None for none; NoBmcFound if it
    is not one."""
    hub = (hub or "").strip() or None
    if hub is not None and _LOCATION_RE.match(hub) is None:
        raise NoBmcFound(f"{ENV_HUB}: '{hub}' is not a USB hub path such as 1-1.2")
    return hub


def slot_names(locations: Sequence[str], hub: Optional[str] = None) -> List[str]:
    """Slot names for USB port paths (`bus-port.port...`), each made from its own path
    and never from which other BMCs are there, so a slot keeps its name while BMCs
    come and go (a BMC rebooting, one unplugged):

    - below `hub` (the backplane hub's path, `BMC_HUB`): `slot` and the ports below
      it: `1-1.2.3` with hub `1-1.2` is `slot3`, `1-1.2.4.1` (behind a second hub
      chip, as in most 7-port hubs) `slot4.1`;
    - with no `hub`: the ports below the root port: `1-1.3` is `slot3`;
    - anything else, and any name two BMCs would share (two backplanes), the whole
      path: `slot1-1.3`; a location that is not a USB path: `usb-<location>`.
    """
    hub = check_hub(hub)
    full: List[Optional[str]] = []
    short: List[Optional[str]] = []
    for loc in locations:
        m = _LOCATION_RE.match(loc or "")
        if m is None:
            full.append(None)
            short.append(None)
            continue
        path = f"{m.group(1)}-{m.group(2)}"
        full.append(path)
        if hub is not None:
            below = path[len(hub) + 1 :] if path.startswith(hub + ".") else None
        else:
            below = m.group(2).partition(".")[2] or None
        short.append(below)
    taken: Dict[str, int] = {}
    for b in short:
        if b is not None:
            taken[b] = taken.get(b, 0) + 1
    names = []
    for loc, whole, part in zip(locations, full, short):
        if whole is None:
            names.append(f"usb-{loc}")
        elif part is not None and taken[part] == 1:
            names.append(f"slot{part}")
        else:
            names.append(f"slot{whole}")
    return names


def usb_ports(hub: Optional[str] = None) -> List[BmcPort]:
    """BMCs on the USB bus, by vendor/product id, named by hub port (`slot_names`;
    `hub`: the backplane hub's USB path, default `BMC_HUB`)."""
    from serial.tools import list_ports

    ids = set(usb_ids())
    infos = [i for i in list_ports.comports() if _is_bmc(i, ids)]
    infos.sort(key=lambda i: _location_key(i.location or ""))
    names = slot_names([i.location or i.device for i in infos], hub or os.environ.get(ENV_HUB))
    ports = []
    for info, name in zip(infos, names):
        ports.append(
            BmcPort(
                name,
                info.device,
                serial=info.serial_number,
                location=info.location,
                source="usb",
                resolve=_usb_resolver(info.location, info.serial_number),
            )
        )
    return ports


def _is_bmc(info: Any, ids: Set[Tuple[int, int]]) -> bool:
    if (info.vid, info.pid) not in ids:
        return False
    names = f"{info.manufacturer or ''} {info.product or ''}".lower()
    return USB_NAME in names


def _location_key(loc: str) -> List[int]:
    return [int(x) for x in re.findall(r"\d+", loc)]


def _usb_resolver(location: Optional[str], serial: Optional[str]) -> Callable[[], str]:
    def resolve() -> str:
        from serial.tools import list_ports

        ids = set(usb_ids())
        for info in list_ports.comports():
            if not _is_bmc(info, ids):
                continue
            if location and info.location == location:
                return str(info.device)
            if not location and serial and info.serial_number == serial:
                return str(info.device)
        raise NoBmcFound(f"no BMC at USB port {location or serial}")

    return resolve


# -- all together ------------------------------------------------------------


def discover(rack: Optional[str] = None, port: Optional[str] = None) -> List[BmcPort]:
    """The BMCs to talk to: `port` alone, else the rack (`rack` or BMC_RACK), else USB."""
    if port:
        if not os.path.exists(port):
            raise NoBmcFound(f"no such port: {port}")
        return [BmcPort(os.path.basename(port), port, source="port")]
    rack = rack or os.environ.get(ENV_RACK) or None
    if rack:
        ports = rack_ports(rack)
        if not ports:
            raise NoBmcFound(f"no BMC in rack {rack} (is bmc-sim running?)")
        return ports
    ports = usb_ports()
    if not ports:
        raise NoBmcFound("no BMC found on USB (use --rack DIR for a simulated rack)")
    return ports


def select(ports: Sequence[BmcPort], selectors: Sequence[str]) -> List[BmcPort]:
    """The ports the selectors name: `slot3`, `3`, a serial, or a device path.

    Serials not known from USB descriptors are not matched here; see
    `racklet_host.cli` which asks each BMC for its serial when needed.
    """
    chosen: List[BmcPort] = []
    for sel in selectors:
        hit = match(ports, sel)
        if hit is None:
            raise NoBmcFound(f"no BMC matches '{sel}'")
        if hit not in chosen:
            chosen.append(hit)
    return chosen


def same_serial(serial: Optional[str], sel: str) -> bool:
    """A BMC's serial (upper-case hex) as a user may type it: in either case."""
    return serial is not None and serial.upper() == sel.upper()


def match(ports: Sequence[BmcPort], sel: str) -> Optional[BmcPort]:
    want = f"slot{sel}" if _PORTS_RE.match(sel) else sel  # `3`, `4.1`: hub ports
    for p in ports:
        if p.name == want or same_serial(p.serial, sel):
            return p
    real = os.path.realpath(sel) if os.path.exists(sel) else None
    for p in ports:
        if p.path == sel or (real is not None and os.path.realpath(p.path) == real):
            return p
    return None

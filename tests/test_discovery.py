"""USB discovery: which ports are BMCs, and slot names that stay put while BMCs come and go."""

from __future__ import annotations

import itertools
import pathlib
from types import SimpleNamespace
from typing import Any, List

import pytest
from racklet_host import cli, discovery
from racklet_host.errors import NoBmcFound

from tests.fake_bmc import Fakes

# A backplane of 7 ports built, as most are, from two hub chips: ports 1-3 on the
# first, ports 1-4 of the second behind the first's port 4.
CASCADE = ["1-1.1:1.0", "1-1.2:1.0", "1-1.3:1.0", "1-1.4.1:1.0", "1-1.4.2:1.0", "1-1.4.3:1.0"]


def test_each_slot_keeps_its_name_whichever_other_bmcs_are_there() -> None:
    everyone = dict(zip(CASCADE, discovery.slot_names(CASCADE)))
    assert list(everyone.values()) == ["slot1", "slot2", "slot3", "slot4.1", "slot4.2", "slot4.3"]
    for k in range(1, len(CASCADE)):
        for present in itertools.combinations(CASCADE, k):
            names = discovery.slot_names(list(present))
            assert names == [everyone[loc] for loc in present], present


def test_names_below_the_configured_backplane_hub() -> None:
    # a host whose own ports are behind an internal hub (a Raspberry Pi 4: 1-1 is
    # its VL805): the backplane hub is on the host's port 2
    locs = ["1-1.2.1:1.0", "1-1.2.3:1.0", "1-1.2.4.2:1.0", "1-1.3:1.0"]
    assert discovery.slot_names(locs) == ["slot2.1", "slot2.3", "slot2.4.2", "slot3"]
    assert discovery.slot_names(locs, "1-1.2") == [
        "slot1",
        "slot3",
        "slot4.2",
        "slot1-1.3",  # not below the backplane hub: its whole path
    ]
    assert discovery.slot_names(locs[1:2], "1-1.2") == ["slot3"]
    with pytest.raises(NoBmcFound, match="BMC_HUB: 'hub1' is not a USB hub path"):
        discovery.slot_names(locs, "hub1")


def test_two_backplanes_that_share_port_numbers_are_named_by_whole_path() -> None:
    locs = ["1-1.3:1.0", "1-2.3:1.0", "3-1.1:1.0", "1-4:1.0", "COM3"]
    assert discovery.slot_names(locs) == ["slot1-1.3", "slot1-2.3", "slot1", "slot1-4", "usb-COM3"]


def _info(device: str, location: str, product: str = "Racklet BMC", **kw: Any) -> Any:
    fields = dict(vid=0x2E8A, pid=0x0005, manufacturer="Racklet", serial_number="E66" + location)
    fields.update(kw)
    return SimpleNamespace(device=device, location=location, product=product, **fields)


def test_usb_ports_by_id_and_name_with_the_hub_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serial.tools import list_ports

    infos: List[Any] = [
        _info("/dev/ttyACM2", "1-1.2.4.1:1.0"),
        _info("/dev/ttyACM0", "1-1.2.3:1.0"),
        _info("/dev/ttyACM1", "1-1.2.1:1.0", manufacturer="MicroPython", product="Board"),
        _info("/dev/ttyUSB0", "1-1.2.2:1.0", vid=0x0403, pid=0x6001),
    ]
    monkeypatch.setattr(list_ports, "comports", lambda: infos)
    monkeypatch.setenv(discovery.ENV_HUB, "1-1.2")
    ports = discovery.usb_ports()
    assert [(p.name, p.path) for p in ports] == [
        ("slot3", "/dev/ttyACM0"),
        ("slot4.1", "/dev/ttyACM2"),
    ]
    assert discovery.match(ports, "4.1") is ports[1]
    assert (ports[0].slot_number, ports[1].slot_number) == (3, None)
    assert discovery.match(ports, "3") is ports[0]
    assert discovery.match(ports, "E661-1.2.3:1.0") is ports[0]  # by serial
    assert discovery.match(ports, "e661-1.2.3:1.0") is ports[0]  # typed in lower case
    # re-enumerated under another tty: found again at its port
    infos[1] = _info("/dev/ttyACM7", "1-1.2.3:1.0")
    assert ports[0].resolve() == "/dev/ttyACM7"
    monkeypatch.delenv(discovery.ENV_HUB)
    assert [p.name for p in discovery.usb_ports()] == ["slot2.3", "slot2.4.1"]


def test_bmcctl_lists_usb_bmcs_by_slot_with_their_location(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # stand-in BMCs on PTYs, listed as USB ports at hub paths
    from serial.tools import list_ports

    fakes = Fakes(tmp_path / "ptys")
    fakes.rack.mkdir()
    try:
        fakes.start_many([1, 2])
        infos = [
            _info(str(fakes.rack / "slot2"), "1-1.2.4.1:1.0", serial_number="SERIAL02"),
            _info(str(fakes.rack / "slot1"), "1-1.2.3:1.0", serial_number="SERIAL01"),
        ]
        monkeypatch.setattr(list_ports, "comports", lambda: infos)
        monkeypatch.delenv(discovery.ENV_RACK, raising=False)
        monkeypatch.setenv(discovery.ENV_HUB, "1-1.2")
        capsys.readouterr()
        assert cli.main(["list"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[:3] == ["TARGET", "PORT", "LOCATION"]
        assert lines[1].split()[:3] == ["slot3", str(fakes.rack / "slot1"), "1-1.2.3:1.0"]
        assert "SERIAL01" in lines[1]
        assert lines[2].split()[0] == "slot4.1" and "SERIAL02" in lines[2] and "Off" in lines[2]
        assert cli.main(["status", "4.1"]) == 0
        assert "slot4.1" in capsys.readouterr().out
    finally:
        fakes.stop_all()


def test_bridge_scrapes_enumerate_usb_once_and_follow_a_bmc_to_its_new_tty(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An enumeration reads sysfs for every serial port on the host: a scrape makes at
    most one, not one more per BMC, and scrapes within a second (Prometheus probing
    every BMC at once) share it. A BMC that came back as another tty since is looked up
    again and scraped there; one that is gone is down, the others up."""
    from racklet_host.bridge.scrape import Scraper
    from serial.tools import list_ports

    fakes = Fakes(tmp_path / "ptys")
    fakes.rack.mkdir()
    try:
        fakes.start_many([1, 2, 3])
        infos = [
            _info(str(fakes.rack / f"slot{n}"), f"1-1.2.{n}:1.0", serial_number=f"SERIAL0{n}")
            for n in (1, 2, 3)
        ]
        calls = []

        def comports() -> List[Any]:
            calls.append(1)
            return list(infos)

        monkeypatch.setattr(list_ports, "comports", comports)
        monkeypatch.delenv(discovery.ENV_RACK, raising=False)
        monkeypatch.setenv(discovery.ENV_HUB, "1-1.2")
        everyone = [
            ("slot1", True, "SERIAL01"),
            ("slot2", True, "SERIAL02"),
            ("slot3", True, "SERIAL03"),
        ]
        fresh = Scraper(timeout=3.0, usb_listing_age=0.0)
        for _ in range(2):
            assert [(r.slot, r.up, r.serial) for r in fresh.scrape()] == everyone
        assert len(calls) == 2  # one a scrape

        calls.clear()
        scraper = Scraper(timeout=3.0, usb_listing_age=60.0)
        for _ in range(3):
            assert [(r.slot, r.up, r.serial) for r in scraper.scrape()] == everyone
        port = scraper.find("SERIAL02")
        assert port is not None and port.name == "slot2"
        assert len(calls) == 1  # one listing for them all

        # after that listing, slot2 comes back as another tty and slot3 is unplugged
        moved = tmp_path / "ttyACM9"
        (fakes.rack / "slot2").rename(moved)
        infos[1] = _info(str(moved), "1-1.2.2:1.0", serial_number="SERIAL02")
        (fakes.rack / "slot3").unlink()
        del infos[2]
        calls.clear()
        results = scraper.scrape()
        assert [(r.slot, r.up, r.serial) for r in results] == [
            ("slot1", True, "SERIAL01"),
            ("slot2", True, "SERIAL02"),
            ("slot3", False, "SERIAL03"),
        ]
        assert results[2].error == "link_gone" and "no BMC at USB port" in results[2].message
        assert len(calls) == 2  # a look-up for each of the two missing
        assert [(r.slot, r.up) for r in scraper.scrape()] == [
            ("slot1", True),
            ("slot2", True),  # where the look-up found it
            ("slot3", False),
        ]
    finally:
        fakes.stop_all()

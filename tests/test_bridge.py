"""bmc-bridge against stand-in BMCs on PTYs: formats, labels, probe, hung and unplugged BMCs.

The stand-ins (tests/fake_bmc.py) let a test hang (SIGSTOP) or unplug (kill) one
BMC at an exact moment; the real firmware behind the bridge is in
test_metrics_sim.py.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as text004_families
from racklet_host.bridge.server import ConfigError, load_config, parse_listen

from tests import omcheck
from tests.fake_bmc import Fakes, fill_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
OM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)  # what Prometheus 2.x sends
TIMEOUT = 1.5  # the bridge's per-BMC timeout in these tests


@pytest.fixture
def fakes(tmp_path: pathlib.Path) -> Iterator[Fakes]:
    f = Fakes(tmp_path / "rack")
    f.rack.mkdir()
    try:
        f.start_many([1, 2, 3])
        yield f
    finally:
        f.stop_all()


def start_bridge(*args: str) -> Tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "racklet_host.bridge.server", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    line = p.stdout.readline()
    assert "serving http://" in line, line + (p.stderr.read() if p.stderr else "")
    url = line.split("serving ")[1].split("/metrics")[0]
    return p, url


@pytest.fixture
def bridge(fakes: Fakes) -> Iterator[str]:
    p, url = start_bridge("--rack", str(fakes.rack), "--timeout", str(TIMEOUT))
    try:
        yield url
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            raise


def get(url: str, accept: str | None = None, timeout: float = TIMEOUT + 3) -> Tuple[str, str]:
    req = urllib.request.Request(url)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def by_slot(v: Samples, name: str) -> Dict[str, float]:
    return {dict(labels)["slot"]: value for (n, labels), value in v.items() if n == name}


def test_openmetrics_for_prometheus_with_slot_and_serial(bridge: str) -> None:
    ctype, text = get(bridge + "/metrics", OM_ACCEPT)
    assert ctype.startswith("application/openmetrics-text; version=1.0.0")
    assert omcheck.openmetrics(text) == []
    v = samples(text)
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 1}
    for slot in (1, 2, 3):
        key = ("fake_slot", (("serial", f"SERIAL{slot:02d}"), ("slot", f"slot{slot}")))
        assert v[key] == slot
    # the BMC's own serial label agrees with the one the bridge adds
    info = [labels for (n, labels), _ in v.items() if n == "bmc_info"]
    assert all(dict(lb)["serial"] == f"SERIAL{dict(lb)['slot'][-1:].zfill(2)}" for lb in info)
    assert by_slot(v, "fake_scrapes_total") == {"slot1": 1, "slot2": 1, "slot3": 1}
    assert v[("bmc_bridge_targets", ())] == 3
    # families merged: each family's samples of all three BMCs in one block
    assert text.count("# TYPE fake_scrapes counter") == 1


def test_text_004_passes_promtool(bridge: str, tmp_path: pathlib.Path) -> None:
    ctype, text = get(bridge + "/metrics")
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert omcheck.text004(text) == []
    assert "# TYPE fake_scrapes_total counter" in text
    assert 'bmc_temperature_celsius{serial="SERIAL02",slot="slot2"} 30.5' in text
    names = {f.name for f in text004_families(text)}
    assert {"bmc_up", "fake_scrapes", "bmc_info"} <= names
    out = tmp_path / "metrics.txt"
    out.write_text(text)
    with open(out) as f:
        proc = subprocess.run(
            ["promtool", "check", "metrics"], stdin=f, capture_output=True, text=True
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_methods_other_than_get_and_head_are_not_allowed(bridge: str) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        req = urllib.request.Request(bridge + "/metrics", data=b"x=1", method=method)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=TIMEOUT)
        assert e.value.code == 405, method
        assert e.value.headers["Allow"] == "GET, HEAD", method
    req = urllib.request.Request(bridge + "/metrics", method="HEAD")
    with urllib.request.urlopen(req, timeout=TIMEOUT + 3) as resp:
        assert resp.status == 200 and resp.read() == b""
        assert int(resp.headers["Content-Length"]) > 0


def test_probe_one_target_by_slot_or_serial(bridge: str) -> None:
    _, text = get(bridge + "/probe?target=slot2", OM_ACCEPT)
    v = samples(text)
    assert by_slot(v, "bmc_up") == {"slot2": 1}
    assert by_slot(v, "fake_slot") == {"slot2": 2}
    _, text = get(bridge + "/probe?target=3", OM_ACCEPT)
    assert by_slot(samples(text), "fake_slot") == {"slot3": 3}
    _, text = get(bridge + "/probe?target=SERIAL01", OM_ACCEPT)  # serial seen by now
    assert by_slot(samples(text), "fake_slot") == {"slot1": 1}
    _, text = get(bridge + "/probe?target=serial03", OM_ACCEPT)  # as bmcctl takes it
    assert by_slot(samples(text), "fake_slot") == {"slot3": 3}
    with pytest.raises(urllib.error.HTTPError) as e:
        get(bridge + "/probe?target=slot9")
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        get(bridge + "/probe")
    assert e.value.code == 400


def test_hung_bmc_is_down_and_the_others_answer(bridge: str, fakes: Fakes) -> None:
    get(bridge + "/metrics", OM_ACCEPT)
    fakes.procs[2].send_signal(signal.SIGSTOP)
    try:
        # urllib's own timeout fails the test if the scrape waits past the BMC timeout
        _, text = get(bridge + "/metrics", OM_ACCEPT, timeout=TIMEOUT + 2)
        assert omcheck.openmetrics(text) == []
        v = samples(text)
        assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 0, "slot3": 1}
        assert by_slot(v, "fake_scrapes_total") == {"slot1": 2, "slot3": 2}
        # the hung BMC keeps its serial label from before
        assert v[("bmc_up", (("serial", "SERIAL02"), ("slot", "slot2")))] == 0
        errors = {
            dict(k[1])["reason"]: val
            for k, val in v.items()
            if k[0] == "bmc_scrape_errors_total" and dict(k[1])["slot"] == "slot2"
        }
        assert errors == {"timeout": 1}
        # the scrape let go of the hung BMC's link at its deadline: bmcctl can have it
        from racklet_host.transport import Link

        Link(str(fakes.rack / "slot2")).close()  # PortBusy if the bridge still held it
    finally:
        fakes.procs[2].send_signal(signal.SIGCONT)
    # it answers again once it runs (a scrape may first find its old request finishing)
    deadline = time.monotonic() + 10
    while True:
        v = samples(get(bridge + "/metrics", OM_ACCEPT)[1])
        if by_slot(v, "bmc_up")["slot2"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 1}


def test_prometheus_scrape_timeout_header_sets_the_scrape_budget(bridge: str, fakes: Fakes) -> None:
    """Prometheus says how long it waits (X-Prometheus-Scrape-Timeout-Seconds): a hung
    BMC is given up half a second before that. A header that is not a finite number
    ("nan" and "inf" parse as floats) leaves the configured timeout."""

    def scrape(header: str) -> Samples:
        req = urllib.request.Request(bridge + "/metrics")
        req.add_header("Accept", OM_ACCEPT)
        req.add_header("X-Prometheus-Scrape-Timeout-Seconds", header)
        with urllib.request.urlopen(req, timeout=TIMEOUT + 3) as resp:
            text = resp.read().decode()
        assert omcheck.openmetrics(text) == [], header
        return samples(text)

    for header in ("nan", "inf", "-inf", "soon", "-1"):
        assert by_slot(scrape(header), "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 1}
    fakes.procs[1].send_signal(signal.SIGSTOP)
    try:
        v = scrape("0.8")
    finally:
        fakes.procs[1].send_signal(signal.SIGCONT)
    assert by_slot(v, "bmc_up") == {"slot1": 0, "slot2": 1, "slot3": 1}
    # given up at 0.8 - 0.5 s, not at the bridge's own TIMEOUT
    assert by_slot(v, "bmc_scrape_duration_seconds")["slot1"] < TIMEOUT - 0.5


def test_unknown_probe_target_is_named_shortly(bridge: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as ei:
        get(bridge + "/probe?target=" + "x" * 5000)
    assert ei.value.code == 404
    body = ei.value.read().decode()
    assert body.startswith("no BMC matches target 'xxx") and len(body) < 200, body


def test_unplugged_bmc_then_removed_and_a_new_one(bridge: str, fakes: Fakes) -> None:
    get(bridge + "/metrics", OM_ACCEPT)
    fakes.procs[3].kill()
    fakes.procs[3].wait()
    _, text = get(bridge + "/metrics", OM_ACCEPT, timeout=TIMEOUT + 2)
    v = samples(text)
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 0}
    assert by_slot(v, "fake_scrapes_total") == {"slot1": 2, "slot2": 2}
    # gone from the hub: dropped; a new BMC: picked up, without restarting the bridge
    os.unlink(fakes.rack / "slot3")
    fakes.start(4)
    v = samples(get(bridge + "/metrics", OM_ACCEPT)[1])
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot4": 1}
    assert by_slot(v, "fake_slot") == {"slot1": 1, "slot2": 2, "slot4": 4}


def test_port_held_by_another_program_is_waited_for(bridge: str, fakes: Fakes) -> None:
    from racklet_host.transport import Link

    held = Link(str(fakes.rack / "slot1"))  # as bmcctl holds it during a long command
    try:
        v = samples(get(bridge + "/metrics", OM_ACCEPT)[1])
        assert by_slot(v, "bmc_up") == {"slot1": 0, "slot2": 1, "slot3": 1}
        # waited for until just before the scrape's deadline, then reported as such
        assert v[("bmc_scrape_errors_total", (("reason", "port_busy"), ("slot", "slot1")))] == 1
        # held for a moment only (bmcctl's status): the scrape waits for its turn
        threading.Timer(0.3, held.close).start()
        v = samples(get(bridge + "/metrics", OM_ACCEPT)[1])
        assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 1}
    finally:
        held.close()
    v = samples(get(bridge + "/metrics", OM_ACCEPT)[1])
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 1}


def test_a_stop_does_not_wait_for_a_port_another_program_holds(fakes: Fakes) -> None:
    """SIGTERM (systemd's stop) while a scrape waits for a port another program holds:
    the bridge ends at once, not at that scrape's deadline (the timeout, up to 120 s:
    past systemd's stop timeout, which then kills it)."""
    from racklet_host.transport import Link

    held = Link(str(fakes.rack / "slot1"))  # as bmcctl holds it during a long command
    p, url = start_bridge("--rack", str(fakes.rack), "--timeout", "60")
    try:
        threads = pathlib.Path(f"/proc/{p.pid}/task")
        idle = len(list(threads.iterdir()))  # the main thread and the HTTP server's

        def ask() -> None:
            try:
                get(url + "/metrics")
            except OSError:
                pass  # the bridge stopped before it answered

        threading.Thread(target=ask, daemon=True).start()
        deadline = time.monotonic() + 5
        while len(list(threads.iterdir())) < idle + 2:  # the request's and the wait's
            assert time.monotonic() < deadline, "the scrape did not start"
            time.sleep(0.01)
        p.send_signal(signal.SIGTERM)
        try:
            assert p.wait(5) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("the bridge waited for the held port's scrape before it stopped")
        assert p.stderr is not None and "Traceback" not in p.stderr.read()
    finally:
        held.close()
        if p.poll() is None:
            p.kill()
            p.wait()


def test_bad_command_line_and_config(tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "bridge.ini"
    conf.write_text("[bridge]\nlisten = 127.0.0.1:http\n")
    bad = (["--config", str(conf)], ["--listen", "nohost"], ["--timeout", "0"], ["--hub", "hub1"])
    for args in bad:
        proc = subprocess.run(
            [sys.executable, "-m", "racklet_host.bridge.server", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2
        assert proc.stderr.startswith("bmc-bridge: ") and "Traceback" not in proc.stderr
    conf.write_text("[bridge]\nlisten = 127.0.0.1:0\nrack = /nonexistent/rack\nfoo = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "racklet_host.bridge.server", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "unknown setting 'foo'" in proc.stderr


def test_config_files_that_are_not_utf8_or_hold_a_percent_sign(tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "bridge.ini"
    conf.write_bytes(b"[bridge]\nrack = /srv/r\xe4ck\n")  # Latin-1, not UTF-8
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(str(conf))
    conf.write_text("[bridge]\nrack = /srv/rack-100%\ntimeout = 2\n")
    assert load_config(str(conf)) == {"rack": "/srv/rack-100%", "timeout": "2"}


def test_a_listen_address_with_no_host_is_refused_not_every_interface() -> None:
    """`[]:9580` names no host: refused, where binding '' would serve every interface."""
    assert parse_listen("[::1]:9580") == ("::1", 9580)
    assert parse_listen("0.0.0.0:9580") == ("0.0.0.0", 9580)  # every interface, on purpose
    for text in ("[]:9580", ":9580", "[]]:9580"):
        with pytest.raises(ConfigError, match="is not HOST:PORT"):
            parse_listen(text)


def test_an_ipv6_listen_address_is_bound_as_ipv6(tmp_path: pathlib.Path) -> None:
    """`--listen [::1]:PORT` binds an IPv6 socket and says its URL with brackets (only
    bound here: the tests send traffic to 127.0.0.1 alone)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    p, url = start_bridge("--rack", str(tmp_path), "--listen", "[::1]:0")
    try:
        assert url.startswith("http://[::1]:") and int(url.rsplit(":", 1)[1]) > 0, url
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(10)


def test_no_bmcs_yet_is_an_empty_valid_answer(tmp_path: pathlib.Path) -> None:
    rack = tmp_path / "empty"
    rack.mkdir()
    p, url = start_bridge("--rack", str(rack))
    try:
        _, text = get(url + "/metrics", OM_ACCEPT)
        assert omcheck.openmetrics(text) == []
        v = samples(text)
        assert v[("bmc_bridge_targets", ())] == 0
        assert not by_slot(v, "bmc_up")
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(10)


def test_bmc_sending_a_malformed_exposition_is_down_and_the_rest_stays_valid(
    bridge: str, fakes: Fakes
) -> None:
    get(bridge + "/metrics", OM_ACCEPT)  # slot 2 known with its serial
    fakes.procs[2].kill()
    fakes.procs[2].wait()
    fakes.start(2, "--garbage")
    for accept in (OM_ACCEPT, None):
        _, text = get(bridge + "/metrics", accept)
        assert "oops" not in text
        if accept:
            assert omcheck.openmetrics(text) == []
        else:
            assert omcheck.text004(text) == []
    v = samples(get(bridge + "/metrics", OM_ACCEPT)[1])
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 0, "slot3": 1}
    assert v[("bmc_up", (("serial", "SERIAL02"), ("slot", "slot2")))] == 0
    assert v[("bmc_scrape_errors_total", (("reason", "bad_exposition"), ("slot", "slot2")))] == 3
    assert by_slot(v, "fake_slot") == {"slot1": 1, "slot3": 3}


def test_a_bmc_that_never_stops_sending_is_cut_off_at_the_size_limit(
    bridge: str, fakes: Fakes, tmp_path: pathlib.Path
) -> None:
    """A text over expo.MAX_TEXT (a BMC gone wrong) is refused as it comes, not held
    in the bridge's memory until the deadline: that BMC is down, the rest answer."""
    from racklet_host.bridge import expo

    big = tmp_path / "big.txt"  # valid OpenMetrics, every family its own
    n = expo.MAX_TEXT // 40 + 100
    big.write_text("".join(f"# HELP f{i} A\n# TYPE f{i} gauge\nf{i} 1\n" for i in range(n)))
    with big.open("a") as f:
        f.write("# EOF\n")
    assert big.stat().st_size > expo.MAX_TEXT
    fakes.procs[3].kill()
    fakes.procs[3].wait()
    fakes.start(3, "--replay", str(big))
    v = samples(get(bridge + "/metrics", OM_ACCEPT)[1])
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 0}
    reasons = {dict(k[1])["reason"] for k in v if k[0] == "bmc_scrape_errors_total"}
    assert reasons == {"bad_exposition"}


GOOD = """\
# HELP bmc Firmware version, board and serial
# TYPE bmc info
bmc_info{firmware_version="1.0",serial="S1"} 1
# HELP up_seconds Uptime with a \\"quote\\" and a \\\\ in its help
# TYPE up_seconds gauge
# UNIT up_seconds seconds
up_seconds 12.5
# HELP cmds Commands
# TYPE cmds counter
cmds_total{result="ok"} 3
cmds_total{result="bad \\"x\\"\\\\\\n"} 1
# HELP state Power state
# TYPE state stateset
state{state="On"} 1
state{state="Off"} 0
# HELP odd A BMC's own slot label that differs from the bridge's
# TYPE odd gauge
odd{slot="7",a="b"} 1
# EOF
"""


def test_expositions_merged_line_by_line_are_valid_in_both_formats(
    tmp_path: pathlib.Path,
) -> None:
    from racklet_host.bridge import expo

    merger = expo.Merger()
    own = expo.Family("bmc_up", "gauge", "up")
    own.add("bmc_up", {"serial": "S1", "slot": "slot1"}, 1)
    merger.add_family(own)
    merger.add(expo.parse(GOOD), "S1", "slot1")
    merger.add(expo.parse(GOOD.replace('"S1"', '"S2"')), "S2", 'slot"2')
    om = expo.render(merger, True).decode()
    assert omcheck.openmetrics(om) == []
    v = samples(om)
    assert v[("bmc_info", (("firmware_version", "1.0"), ("serial", "S1"), ("slot", "slot1")))] == 1
    assert v[("odd", (("a", "b"), ("exported_slot", "7"), ("serial", "S2"), ("slot", 'slot"2')))]
    assert v[("cmds_total", (("result", 'bad "x"\\\n'), ("serial", "S1"), ("slot", "slot1")))] == 1
    assert om.count("# TYPE cmds counter") == 1 and om.count("# UNIT up_seconds seconds") == 1
    text = expo.render(merger, False).decode()
    assert omcheck.text004(text) == []
    assert "# TYPE cmds_total counter\n" in text and "# TYPE bmc_info gauge\n" in text
    assert '# HELP up_seconds Uptime with a "quote" and a \\\\ in its help\n' in text
    out = tmp_path / "m.txt"
    out.write_text(text)
    with open(out) as f:
        proc = subprocess.run(["promtool", "check", "metrics"], stdin=f, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "bad, why",
    [
        (GOOD[: -len("# EOF\n")], "does not end with # EOF"),
        (GOOD[:-1] + "\n\n", "does not end with # EOF"),
        (GOOD.replace("up_seconds 12.5", "up_seconds 12,5"), "malformed line"),
        (GOOD.replace("up_seconds 12.5", "up_seconds 12.5 1700000000"), "malformed line"),
        (GOOD.replace("up_seconds 12.5", ""), "malformed line"),
        (GOOD.replace('result="ok"', 'result="\\q"'), "malformed line"),
        (GOOD.replace('result="ok"', 'result="bad \\"x\\"\\\\\\n"'), "same labels twice"),
        (GOOD.replace('a="b"', 'a="b",a="c"'), "appears twice"),
        (GOOD.replace('cmds_total{result="ok"} 3', 'cmds_total{result="ok"} -3'), "value"),
        (GOOD.replace('state{state="On"} 1', 'state{state="On"} 2'), "value"),
        (GOOD.replace("# UNIT up_seconds seconds", "# UNIT up_seconds bytes"), "unit"),
        (GOOD.replace("# TYPE cmds counter\n", ""), "outside its family"),
        (GOOD.replace("# HELP cmds Commands\n", ""), "not right after its # HELP"),
        (GOOD.replace("# TYPE state stateset", "# TYPE state histogram"), "TYPE"),
        (GOOD.replace('state{state="On"} 1', "state 1"), "stateset sample without"),
        (GOOD.replace("odd{", "cmds_total{"), "outside its family"),
        (GOOD + "up_seconds 1\n# EOF\n", "# EOF before"),
        (GOOD.replace("# EOF\n", "# HELP cmds again\n# TYPE cmds gauge\n# EOF\n"), "again"),
        (
            GOOD.replace("# EOF\n", "# HELP cmds_total x\n# TYPE cmds_total gauge\n# EOF\n"),
            "line 19: family cmds_total again or clashing",
        ),
        (GOOD.replace('a="b"', 'exported_slot="b"'), "bridge's own"),
        (GOOD.replace("# HELP odd", "# odd"), "malformed line"),
    ],
)
def test_bad_expositions_are_refused(bad: str, why: str) -> None:
    from racklet_host.bridge import expo

    expo.parse(GOOD)  # known: the bad text's good families are not checked again
    with pytest.raises(expo.ExpositionError, match=why):
        expo.parse(bad)
    with pytest.raises(expo.ExpositionError, match=why):
        expo.parse(bad)  # nor is a refused one remembered as good


def test_families_that_stay_the_same_stay_checked_while_changing_ones_come_and_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Changing values fill the cache of checked families; the ones that read the same
    at every scrape are not checked again when it fills (the scrape after would check
    every family of every BMC)."""
    from racklet_host.bridge import expo

    monkeypatch.setattr(expo, "_GENERATION", 8)
    checked: List[str] = []
    check = expo._check_block

    def counting(block: str) -> Optional[expo.Family]:
        checked.append(block.partition(" ")[0])
        return check(block)

    monkeypatch.setattr(expo, "_check_block", counting)
    expo.forget_checked()
    for scrape in range(40):  # uptime changes at every scrape, the rest stays
        expo.parse(GOOD.replace("up_seconds 12.5", f"up_seconds {scrape}"))
    assert checked.count("up_seconds") == 1  # then only its new value (see below)
    assert checked.count("cmds") == 1
    assert checked.count("state") == 1
    assert checked.count("bmc") == 1
    expo.forget_checked()


def test_a_family_with_only_a_new_last_value_has_that_value_checked() -> None:
    """A family that differs from a checked one only in its last sample's value is
    taken with that value checked; a value its type does not allow is still refused."""
    from racklet_host.bridge import expo

    def labelled(text: str) -> str:
        merger = expo.Merger()
        merger.add(expo.parse(text), "S1", "slot1")
        out = expo.render(merger, True).decode()
        assert omcheck.openmetrics(out) == []
        return out

    expo.forget_checked()
    labelled(GOOD)
    last = 'cmds_total{result="bad \\"x\\"\\\\\\n"} 1'
    assert last in GOOD
    moved = labelled(
        GOOD.replace(last, last[:-1] + "7").replace("up_seconds 12.5", "up_seconds 99")
    )
    assert 'cmds_total{serial="S1",slot="slot1",result="bad \\"x\\"\\\\\\n"} 7\n' in moved
    assert 'cmds_total{serial="S1",slot="slot1",result="ok"} 3\n' in moved
    assert 'up_seconds{serial="S1",slot="slot1"} 99\n' in moved
    assert 'state{serial="S1",slot="slot1",state="Off"} 1\n' in labelled(
        GOOD.replace('state{state="Off"} 0', 'state{state="Off"} 1')
    )
    for bad, why in (
        (GOOD.replace(last, last[:-1] + "-7"), "value -7 not allowed in a counter"),
        (GOOD.replace(last, last[:-1] + "NaN"), "value NaN not allowed in a counter"),
        (GOOD.replace("up_seconds 12.5", "up_seconds 1x"), "malformed line"),
        (GOOD.replace('state{state="Off"} 0', 'state{state="Off"} 2'), "in a stateset"),
        (GOOD.replace('serial="S1"} 1', 'serial="S1"} 2'), "in a info"),
    ):
        with pytest.raises(expo.ExpositionError, match=why):
            expo.parse(bad)
    expo.forget_checked()


def test_expositions_cut_anywhere_into_chunks_read_as_whole() -> None:
    """Chunks split lines, families and UTF-8 characters anywhere: same answer or error."""
    from racklet_host.bridge import expo

    text = GOOD.replace("Commands", "Commands \u00e9t\u00e9 \u2713").encode()
    assert len(text) > len(GOOD)  # multi-byte characters to cut through

    def read(cuts: Tuple[int, ...], data: bytes) -> bytes:
        reader = expo.Reader("slot1")
        last = 0
        for cut in (*cuts, len(data)):
            reader.feed(data[last:cut])
            last = cut
        merger = expo.Merger()
        merger.add(reader.finish(), "S1", "slot1")
        return expo.render(merger, True)

    whole = read((), text)
    assert omcheck.openmetrics(whole.decode()) == []
    assert 'cmds_total{serial="S1",slot="slot1",result="ok"} 3\n' in whole.decode()
    for i in range(1, len(text)):
        assert read((i,), text) == whole, i
    for i in range(1, len(text), 7):
        assert read((i, min(i + 5, len(text) - 1), min(i + 40, len(text) - 1)), text) == whole
    bad = text.replace(b"up_seconds 12.5", b"up_seconds 12,5")
    for i in range(1, len(bad), 5):
        with pytest.raises(expo.ExpositionError, match="line 7: malformed line"):
            read((i,), bad)


def test_poll_frames_takes_whole_frames_and_leaves_the_rest_to_the_reader() -> None:
    """Frames read in one go: the valid ones come out in order, a corrupt one is dropped and
    counted, garbage is skipped, and a frame cut short completes with the next read."""
    import tty

    from bmc import codec
    from racklet_host.transport import Link

    master, slave = os.openpty()
    tty.setraw(slave)
    link = Link(os.ttyname(slave))
    try:
        good = [codec.encode_frame(codec.KIND_CHUNK, 5, bytes([65 + i]) * 300) for i in range(4)]
        bad = bytearray(codec.encode_frame(codec.KIND_CHUNK, 5, b"x" * 100))
        bad[20] ^= 1
        last = codec.encode_frame(codec.KIND_RESPONSE, 5, b'{"ok":true}')
        os.write(master, good[0] + good[1] + bytes(bad) + b"junk" + good[2] + good[3][:50])
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            got += link.poll_frames()
        os.write(master, good[3][50:] + last)
        while len(got) < 5 and time.monotonic() < deadline:
            got += link.poll_frames()
        assert [(f.kind, f.req_id, f.payload) for f in got] == [
            (codec.KIND_CHUNK, 5, bytes([65 + i]) * 300) for i in range(4)
        ] + [(codec.KIND_RESPONSE, 5, b'{"ok":true}')]
        assert link.bad_frames == 1
        assert link.poll_frames() == []
    finally:
        link.close()
        os.close(master)
        os.close(slave)


class _SlowLink:
    """Links whose open and close take `delay` seconds (a USB CDC port's: DTR goes up
    or down by a control transfer to the device), counting how many run at once."""

    def __init__(self, delay: float, hang: str = "", hang_s: float = 0.0) -> None:
        self.delay = delay
        self.hang = hang  # a port path whose open takes `hang_s` instead (a wedged device)
        self.hang_s = hang_s
        self.guard = threading.Lock()
        self.now = {"open": 0, "close": 0}
        self.most = {"open": 0, "close": 0}
        self.closed: Dict[str, int] = {}
        counter = self

        from racklet_host.transport import Link

        class Slow(Link):
            @staticmethod
            def waits_on_device(path: str) -> bool:
                return True  # as a USB CDC port's open and close do

            @classmethod
            def open_port(cls, path: str, busy_wait: float = 0.0) -> int:
                counter._run("open", path)
                return super().open_port(path, busy_wait)

            def close(self) -> None:
                if self.is_open:
                    counter._run("close", self.path)
                    with counter.guard:
                        counter.closed[self.path] = counter.closed.get(self.path, 0) + 1
                super().close()

        self.cls = Slow

    def _run(self, what: str, path: str) -> None:
        with self.guard:
            self.now[what] += 1
            self.most[what] = max(self.most[what], self.now[what])
        try:
            time.sleep(self.hang_s if what == "open" and path == self.hang else self.delay)
        finally:
            with self.guard:
                self.now[what] -= 1


def test_slow_opens_and_closes_of_usb_ports_run_at_once(fakes: Fakes) -> None:
    """Opens and closes that wait on the device (as a USB CDC port's do) overlap across
    BMCs instead of queueing, and the next scrape waits for the last one's closes."""
    from racklet_host.bridge.scrape import Scraper

    slow = _SlowLink(0.05)
    scraper = Scraper(rack=str(fakes.rack), timeout=TIMEOUT, link_class=slow.cls)
    for _ in range(3):  # back to back: a scrape starts while the last one's closes run
        results = scraper.scrape()
        assert [(r.slot, r.up, r.error) for r in results] == [
            ("slot1", True, None),
            ("slot2", True, None),
            ("slot3", True, None),
        ]
    assert slow.most["open"] == 3, slow.most
    assert slow.most["close"] >= 2, slow.most
    # every link closed once per scrape, none left open, whoever closed it
    deadline = time.monotonic() + 2
    while sum(slow.closed.values()) < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(slow.closed.values()) == [3, 3, 3]
    from racklet_host.transport import Link

    for slot in (1, 2, 3):
        Link(str(fakes.rack / f"slot{slot}")).close()  # PortBusy if one were still open


def scrape_with_slot2_timed_out(scraper: Any) -> Tuple[List[Any], float]:
    """One scrape of the three stand-ins, slot2 down for a timeout; its results, seconds."""
    t0 = time.monotonic()
    results = scraper.scrape()
    took = time.monotonic() - t0
    assert [(r.slot, r.up, r.error) for r in results] == [
        ("slot1", True, None),
        ("slot2", False, "timeout"),
        ("slot3", True, None),
    ]
    return results, took


def test_an_open_that_hangs_is_one_bmc_down_not_a_late_scrape(fakes: Fakes) -> None:
    """A port whose open hangs past the deadline (a wedged USB device) is that BMC's
    timeout; the scrape answers in time, and the link is closed once the open returns."""
    from racklet_host.bridge.scrape import Scraper

    hung = str(fakes.rack / "slot2")
    slow = _SlowLink(0.0, hang=hung, hang_s=TIMEOUT + 0.5)
    scraper = Scraper(rack=str(fakes.rack), timeout=TIMEOUT, link_class=slow.cls)
    _, took = scrape_with_slot2_timed_out(scraper)
    assert took < TIMEOUT + 0.4  # the deadline, not the hung open, ended it
    # once the open returns, its worker closes the port and hands the BMC back
    from racklet_host.errors import PortBusy
    from racklet_host.transport import Link

    deadline = time.monotonic() + TIMEOUT + 3
    while slow.now["open"] and time.monotonic() < deadline:
        time.sleep(0.02)  # the open still hangs
    assert slow.now["open"] == 0
    while True:
        try:
            Link(hung).close()
            break
        except PortBusy:  # the worker's open returned with the port, not closed yet
            assert time.monotonic() < deadline, "the late-opened port was never closed"
            time.sleep(0.02)
    slow.hang = ""
    results = scraper.scrape()
    assert [(r.slot, r.up) for r in results] == [("slot1", True), ("slot2", True), ("slot3", True)]


def test_a_bmc_that_stopped_reading_is_down_at_once_not_a_late_scrape(fakes: Fakes) -> None:
    """A BMC hung long enough has a port full of requests it never read (a PTY holds
    20 KB: about 500 scrapes'); a request that cannot go out must not hold the others."""
    from racklet_host.bridge.scrape import Scraper

    fakes.procs[2].send_signal(signal.SIGSTOP)
    try:
        fd = os.open(str(fakes.rack / "slot2"), os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            fill_port(fd)
        finally:
            os.close(fd)
        results, took = scrape_with_slot2_timed_out(Scraper(rack=str(fakes.rack), timeout=TIMEOUT))
        assert "not reading" in results[1].message
        assert took < TIMEOUT / 2, took  # not held to the deadline, let alone a write's wait
    finally:
        fakes.procs[2].send_signal(signal.SIGCONT)


def test_a_pty_port_opens_in_the_loop_and_others_on_workers(fakes: Fakes) -> None:
    from racklet_host.transport import Link

    assert Link.waits_on_device(str(fakes.rack / "slot1")) is False  # a simulated BMC's PTY
    assert Link.waits_on_device("/dev/null") is True  # not a PTY: assumed to wait
    assert Link.waits_on_device(str(fakes.rack / "slot9")) is True  # not there (yet)


def test_a_scrape_that_comes_during_another_shares_its_answers(bridge: str, fakes: Fakes) -> None:
    # Two Prometheus servers (or Prometheus and a person with curl) scrape at once:
    # the later one must not find the links taken and call the BMCs down.
    get(bridge + "/metrics", OM_ACCEPT)
    fakes.procs[2].send_signal(signal.SIGSTOP)  # holds the first scrape open
    texts: Dict[str, str] = {}

    def scrape(name: str) -> None:
        texts[name] = get(bridge + "/metrics", OM_ACCEPT, timeout=TIMEOUT + 2)[1]

    first = threading.Thread(target=scrape, args=("first",))
    second = threading.Thread(target=scrape, args=("second",))
    try:
        first.start()
        time.sleep(0.3)
        second.start()
        time.sleep(0.3)
    finally:
        fakes.procs[2].send_signal(signal.SIGCONT)
    first.join()
    second.join()
    for name in ("first", "second"):
        v = samples(texts[name])
        assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 1}, name
        # one request reached each BMC for both answers
        assert by_slot(v, "fake_scrapes_total") == {"slot1": 2, "slot2": 2, "slot3": 2}, name
        assert v[("bmc_bridge_scrapes_total", ())] == 2, name
    # a probe during a scrape of all takes that BMC's answer from it
    fakes.procs[3].send_signal(signal.SIGSTOP)
    try:
        first = threading.Thread(target=scrape, args=("all",))
        first.start()
        time.sleep(0.3)
        probe = threading.Thread(
            target=lambda: texts.update(probe=get(bridge + "/probe?target=slot3", OM_ACCEPT)[1])
        )
        probe.start()
        time.sleep(0.3)
    finally:
        fakes.procs[3].send_signal(signal.SIGCONT)
    first.join()
    probe.join()
    assert by_slot(samples(texts["probe"]), "bmc_up") == {"slot3": 1}
    assert by_slot(samples(texts["probe"]), "fake_scrapes_total") == {"slot3": 3}


def test_requests_for_a_bmc_being_fetched_share_that_fetch(bridge: str, fakes: Fakes) -> None:
    """Two Prometheus servers probing one BMC at once, or a /metrics during a /probe:
    the later request waits for the fetch under way and shares it (one request reaches
    the BMC), rather than calling the BMC down as busy."""
    get(bridge + "/metrics", OM_ACCEPT)  # every fake has answered once
    texts: Dict[str, str] = {}

    def fetch(name: str, path: str) -> None:
        texts[name] = get(bridge + path, OM_ACCEPT, timeout=TIMEOUT + 2)[1]

    fakes.procs[3].send_signal(signal.SIGSTOP)  # holds the first probe's fetch open
    threads = [
        threading.Thread(target=fetch, args=("probe", "/probe?target=slot3")),
        threading.Thread(target=fetch, args=("again", "/probe?target=slot3")),
        threading.Thread(target=fetch, args=("all", "/metrics")),
    ]
    try:
        for t in threads:
            t.start()
            time.sleep(0.2)
    finally:
        fakes.procs[3].send_signal(signal.SIGCONT)
    for t in threads:
        t.join()
    for name in ("probe", "again"):
        v = samples(texts[name])
        assert by_slot(v, "bmc_up") == {"slot3": 1}, name
        assert by_slot(v, "fake_scrapes_total") == {"slot3": 2}, name  # one request
    v = samples(texts["all"])
    assert by_slot(v, "bmc_up") == {"slot1": 1, "slot2": 1, "slot3": 1}
    assert by_slot(v, "fake_scrapes_total") == {"slot1": 2, "slot2": 2, "slot3": 2}
    assert not [k for k in v if k[0] == "bmc_scrape_errors_total"], v


def test_a_scrape_that_failed_leaves_no_fetch_for_later_requests_to_wait_on(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from racklet_host.bridge import scrape

    scraper = scrape.Scraper(rack=str(fakes.rack), timeout=TIMEOUT)
    close = scrape._Loop.close

    def failing_close(self: Any) -> List[Any]:
        close(self)
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(scrape._Loop, "close", failing_close)
    with pytest.raises(RuntimeError):
        scraper.scrape()
    monkeypatch.setattr(scrape._Loop, "close", close)
    t0 = time.monotonic()
    assert [(r.slot, r.up) for r in scraper.scrape()] == [
        ("slot1", True),
        ("slot2", True),
        ("slot3", True),
    ]
    assert time.monotonic() - t0 < TIMEOUT / 2


def test_silent_clients_are_closed_and_connections_are_bounded() -> None:
    import socket

    from racklet_host.bridge import server
    from racklet_host.bridge.scrape import Scraper

    httpd = server.serve("127.0.0.1", 0, Scraper(lister=list), idle_timeout=0.5, max_clients=2)
    worker = threading.Thread(target=httpd.serve_forever, daemon=True)
    worker.start()
    host, port = httpd.server_address[0], int(httpd.server_address[1])
    url = f"http://{host}:{port}"
    try:
        silent = [socket.create_connection((host, port)) for _ in range(2)]
        time.sleep(0.1)
        # both slots taken by clients that send nothing: a third is closed at once
        extra = socket.create_connection((host, port))
        extra.settimeout(2)
        assert extra.recv(1) == b""
        extra.close()
        # the silent ones are closed at the idle timeout, giving their slots back
        t0 = time.monotonic()
        for s in silent:
            s.settimeout(5)
            assert s.recv(1) == b""
            s.close()
        assert time.monotonic() - t0 < 3
        time.sleep(0.1)
        assert "bmc_bridge_targets 0" in get(url + "/metrics")[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_client_that_resets_its_connection_leaves_no_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A client that closes with data unread (curl | head, a killed scraper) resets the
    connection: the bridge, waiting for its next request, just closes it."""
    import socket
    import struct

    from racklet_host.bridge import server
    from racklet_host.bridge.scrape import Scraper

    # one slot: a new connection is served only once the reset one's thread has ended
    httpd = server.serve("127.0.0.1", 0, Scraper(lister=list), max_clients=1)
    worker = threading.Thread(target=httpd.serve_forever, daemon=True)
    worker.start()
    host, port = httpd.server_address[0], int(httpd.server_address[1])
    try:
        s = socket.create_connection((host, port))
        s.settimeout(2)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b"bmc_bridge_targets 0" not in answer:
            got = s.recv(65536)
            assert got, answer
            answer += got
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset, while the bridge waits for the next request on it
        deadline = time.monotonic() + 3
        while True:
            try:
                get(f"http://{host}:{port}/metrics", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the reset connection kept its slot"
                time.sleep(0.02)
    finally:
        httpd.shutdown()
        httpd.server_close()
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


def test_paced_stand_ins_cut_a_text_shorter_than_the_recorded_one() -> None:
    # bench/metrics.py replays a recorded render with a shorter serial in it: cut into
    # the recorded chunk sizes, the text must come out whole (this once looped forever).
    from tests.fake_bmc import _paced_chunks

    def too_slow(signum: int, frame: object) -> None:
        raise TimeoutError("cutting the text did not end")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(5)
    try:
        pace = {"sizes": [60, 60, 10], "offsets_ms": [1.0, 2.0, 3.0], "done_ms": 4.0}
        chunks, offsets = _paced_chunks(b"x" * 100, pace)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert b"".join(chunks) == b"x" * 100
    assert [len(c) for c in chunks] == [60, 40]
    assert offsets == [0.001, 0.002, 0.004]

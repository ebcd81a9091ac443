"""bmc-sim: the real firmware under MicroPython, wired to virtual SBCs that outlive it."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

import pytest
import serial
from racklet_sim.rack import Rack

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def fast_board(tmp: pathlib.Path, name: str = "pico-rpi4") -> str:
    """The board file with no minimum off time, so power-on starts at once."""
    raw = json.loads((ROOT / "boards" / "rp2040" / f"{name}.json").read_text())
    raw["timing"]["min_off_ms"] = 0
    path = tmp / f"{name}-fast.json"
    path.write_text(json.dumps(raw))
    return str(path)


def bmcctl(rack: Rack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BMC_RACK=str(rack.path))
    env.pop("BMC_KEY_FILE", None)
    proc = subprocess.run(
        [str(BIN / "bmcctl"), *args], capture_output=True, text=True, env=env, timeout=60
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"bmcctl {args} -> {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def status(rack: Rack, slot: int = 1) -> Dict[str, Any]:
    out = json.loads(bmcctl(rack, "--json", "status", f"slot{slot}").stdout)
    assert out[0]["ok"], out
    data: Dict[str, Any] = out[0]["data"]
    return data


def wait_for(what: str, pred: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def provision(rack: Rack, tmp: pathlib.Path, slot: int = 1) -> str:
    key = str(tmp / f"admin{slot}.key")
    rack.bootsel(slot, seconds=10)
    bmcctl(rack, "--key-file", key, "keys", "provision", f"slot{slot}", "--role", "admin")
    return key


def power_on(rack: Rack, key: str, slot: int = 1) -> None:
    bmcctl(rack, "--key-file", key, "power", "On", f"slot{slot}")
    wait_for("power On", lambda: status(rack, slot)["state"] == "On")
    wait_for("the SBC to boot", lambda: rack.sbc(slot)["os"] == "running")


def sbc_lines(board: str) -> List[str]:
    """The pins of every line that matters to the SBC (LEDs aside) that the BMC drives."""
    from bmc import boardfile

    defn = boardfile.load(board)
    pins = {str(r["enable"]["pin"]) for r in defn["rails"] if r["enable"] is not None}
    for role, sig in defn["signals"].items():
        if sig["output"] and role not in ("status_led", "identify_led"):
            pins.add(str(sig["pin"]))
    return sorted(pins)


def assert_untouched(before: Dict[str, Any], after: Dict[str, Any], pins: List[str]) -> None:
    """The SBC saw no level change on these lines between the two snapshots."""
    for pin in pins:
        assert after["history"][pin] == before["history"][pin], (pin, before, after)
    assert after["rail_drops"] == before["rail_drops"] == 0
    assert all(r["powered"] and r["pgood"] for r in after["rails"])
    assert after["os"] == "running" and after["boots"] == before["boots"]


def test_sbc_keeps_running_through_a_sigkill_of_its_bmc(tmp_path: pathlib.Path) -> None:
    board = fast_board(tmp_path)
    with Rack(boards=1, board=board) as rack:
        key = provision(rack, tmp_path)
        power_on(rack, key)
        before = rack.sbc(1)
        old = serial.Serial(rack.port(1), timeout=10)
        starts = rack.slot_info(1)["starts"]

        rack.kill(1)
        # The old device is gone, as an unplugged USB CDC device is.
        with pytest.raises(serial.SerialException):
            old.read(1)
        old.close()

        rack.wait_restarted(1, starts)
        st = status(rack)
        assert st["state"] == "On"  # adopted from power-good, not powered again
        assert st["reset_cause"] == "power_on"
        after = rack.sbc(1)
        assert after["bmc_connected"]
        assert_untouched(before, after, sbc_lines(board))


def test_watchdog_resets_a_hung_bmc_and_says_so(tmp_path: pathlib.Path) -> None:
    board = fast_board(tmp_path)
    with Rack(boards=1, board=board) as rack:
        key = provision(rack, tmp_path)
        power_on(rack, key)
        before = rack.sbc(1)
        info = rack.slot_info(1)
        os.kill(info["pid"], signal.SIGSTOP)  # the firmware hangs: nobody feeds the watchdog
        rack.wait_restarted(1, info["starts"], timeout=30)
        st = status(rack)
        assert st["reset_cause"] == "watchdog"
        assert st["state"] == "On"
        assert_untouched(before, rack.sbc(1), sbc_lines(board))


def test_bmc_reboot_comes_back_under_the_same_slot(tmp_path: pathlib.Path) -> None:
    with Rack(boards=2, board=fast_board(tmp_path)) as rack:
        key = provision(rack, tmp_path, slot=2)
        serial_before = status(rack, 2)["serial"]
        starts = rack.slot_info(2)["starts"]
        bmcctl(rack, "--key-file", key, "bmc-reboot", "slot2")
        rack.wait_restarted(2, starts)
        st = status(rack, 2)
        assert st["reset_cause"] == "soft"
        assert st["serial"] == serial_before
        assert st["provisioned"]  # the flash (littlefs image) kept the key
        assert rack.slot_info(1)["starts"] == 1  # the other slot was not touched


def test_bootsel_press_from_the_command_line(tmp_path: pathlib.Path) -> None:
    with Rack(boards=1, board=fast_board(tmp_path)) as rack:
        key = str(tmp_path / "admin.key")
        refused = bmcctl(
            rack, "--key-file", key, "keys", "provision", "slot1", "--role", "admin", check=False
        )
        assert refused.returncode == 5, refused.stdout + refused.stderr
        assert not rack.sbc(1)["bootsel"]

        out = subprocess.run(
            [str(BIN / "bmc-sim"), "bootsel", "--rack", str(rack.path), "1", "--seconds", "1.5"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert rack.sbc(1)["bootsel"]
        bmcctl(rack, "--key-file", key, "keys", "provision", "slot1", "--role", "admin")
        assert status(rack)["provisioned"]
        wait_for("BOOTSEL release", lambda: not rack.sbc(1)["bootsel"], timeout=10)


def test_control_socket_refuses_bad_requests(tmp_path: pathlib.Path) -> None:
    with Rack(boards=1, board=fast_board(tmp_path)) as rack:
        for args, msg in (
            (["bootsel", "--rack", str(rack.path), "7"], "no slot"),
            (["fault", "--rack", str(rack.path), "1", "self_halt"], "not running"),
            (["fault", "--rack", str(rack.path), "1", "pgood_never", "--rail", "12v"], "rail"),
            (["bootsel", "--rack", str(rack.path), "1", "--seconds", "-1"], "seconds"),
        ):
            out = subprocess.run(
                [str(BIN / "bmc-sim"), *args], capture_output=True, text=True, timeout=30
            )
            assert out.returncode == 1, (args, out.stdout, out.stderr)
            assert msg in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert rack.slot_info(1)["running"]
        starts = rack.slot_info(1)["starts"]
        out = subprocess.run(
            [str(BIN / "bmc-sim"), "start", "--rack", str(rack.path), "1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and "already running" in out.stdout, out.stdout
        assert rack.slot_info(1)["starts"] == starts


def test_power_good_lost_while_on_is_a_fault(tmp_path: pathlib.Path) -> None:
    with Rack(boards=1, board=fast_board(tmp_path)) as rack:
        key = provision(rack, tmp_path)
        power_on(rack, key)
        rack.fault(1, "pgood_drop", rail="3v3")
        wait_for("Fault", lambda: status(rack)["state"] == "Fault")
        sbc = rack.sbc(1)
        assert sbc["os"] == "off"
        assert not any(r["powered"] for r in sbc["rails"])  # rails switched off


def test_sbc_console_boot_log_reaches_the_bmc(tmp_path: pathlib.Path) -> None:
    with Rack(boards=1, board=fast_board(tmp_path)) as rack:
        key = provision(rack, tmp_path)
        power_on(rack, key)
        wait_for("login prompt", lambda: "login:" in rack.sbc(1)["console_out"])
        out = bmcctl(rack, "--key-file", key, "console", "slot1").stdout
        assert "Booting Linux" in out and "racklet-slot1 login:" in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])  # SIGHUP: its terminal closed
def test_ctrl_c_stops_everything_and_removes_the_links(
    tmp_path: pathlib.Path, sig: signal.Signals
) -> None:
    rack_dir = tmp_path / "rack"
    proc = subprocess.Popen(
        [str(BIN / "bmc-sim"), "--rack", str(rack_dir), "--boards", "2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for("links", lambda: all((rack_dir / f"slot{i}").exists() for i in (1, 2)))
        pids = [s["pid"] for s in Rack(rack_dir=rack_dir).status()["slots"]]
        proc.send_signal(sig)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(
        p.name.startswith("slot") and not p.name.endswith((".img", ".log"))
        for p in rack_dir.iterdir()
    ), sorted(p.name for p in rack_dir.iterdir())
    assert not (rack_dir / "control.sock").exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_sbc_that_halts_by_itself_is_switched_off_and_stays_off(tmp_path: pathlib.Path) -> None:
    with Rack(boards=1, board=fast_board(tmp_path)) as rack:
        key = provision(rack, tmp_path)
        power_on(rack, key)
        rack.fault(1, "self_halt")  # someone ran `poweroff` on the SBC
        wait_for("Off", lambda: status(rack)["state"] == "Off")
        st = status(rack)
        assert st["cause"] == "os_halt"
        sbc = rack.sbc(1)
        assert sbc["os"] == "off" and not any(r["powered"] for r in sbc["rails"])
        assert "reboot: Power down" in sbc["console_out"]


def test_graceful_shutdown_halts_the_sbc_before_rails_go_off(tmp_path: pathlib.Path) -> None:
    with Rack(boards=1, board=fast_board(tmp_path)) as rack:
        key = provision(rack, tmp_path)
        power_on(rack, key)
        bmcctl(rack, "--key-file", key, "power", "GracefulShutdown", "slot1")
        wait_for("Off", lambda: status(rack)["state"] == "Off")
        sbc = rack.sbc(1)
        assert sbc["os"] == "off"
        out = sbc["console_out"]
        assert out.index("Reached target System Power Off") < out.index("reboot: Power down")


def test_sim_main_rejects_bad_arguments_on_stderr(tmp_path: pathlib.Path) -> None:
    from racklet_sim.rack import micropython_binary, sim_main

    for args, msg in (
        ([], "--slot is required"),
        (["--slot", "1", "--wires", "w", "--image", "i", "--bogus", "x"], "unknown argument"),
        (["--slot", "1", "--wires", "w", "--image", "i", "--reset-cause", "x"], "reset-cause"),
    ):
        out = subprocess.run(
            [micropython_binary(), str(sim_main()), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2 and msg in out.stderr, (args, out.stderr)
        assert out.stdout == ""  # stdout is the USB link: nothing strays onto it


def _sample(metrics: str, family: str, sensor: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'{family}{{sensor="{sensor}"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"no {family} for {sensor} in:\n{metrics}")


@pytest.mark.parametrize(
    ("board", "sensor"), [("pico-rpi4", "sbc_current"), ("pico-cm4", "ina219")]
)
def test_sbc_current_follows_power_through_adc_or_i2c(
    tmp_path: pathlib.Path, board: str, sensor: str
) -> None:
    from racklet_host.client import BmcClient
    from racklet_sim.sbc import CURRENT_RUNNING_A

    with Rack(boards=1, board=fast_board(tmp_path, board)) as rack:
        with BmcClient.open(rack.port(1)) as c:
            assert _sample(c.metrics(), "sbc_current_amperes", sensor) == pytest.approx(0, abs=0.01)
        key = provision(rack, tmp_path)
        power_on(rack, key)
        with BmcClient.open(rack.port(1)) as c:
            m = c.metrics()
        assert _sample(m, "sbc_current_amperes", sensor) == pytest.approx(
            CURRENT_RUNNING_A, rel=0.02
        )
        if sensor == "ina219":
            assert _sample(m, "sbc_voltage_volts", sensor) == pytest.approx(5.0, rel=0.01)


def test_bad_rack_arguments_are_clear_errors(tmp_path: pathlib.Path) -> None:
    from racklet_sim.rack import SimError

    with pytest.raises(SimError, match="unknown board 'pico-nothing'"):
        with Rack(boards=1, board="pico-nothing", rack_dir=tmp_path / "r1"):
            pass
    for args, msg in (
        (["--boards", "0"], "--boards must be 1..64"),
        (["--board", str(tmp_path / "missing.json")], "unknown board"),
    ):
        out = subprocess.run(
            [str(BIN / "bmc-sim"), "--rack", str(tmp_path / "r2"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1 and msg in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    (tmp_path / "a-file").write_text("")
    (tmp_path / "r3" / ".bmc-sim.lock").mkdir(parents=True)
    for rack, msg in (
        (tmp_path / "a-file", "is not a directory"),
        (tmp_path / "a-file" / "rack", "cannot use"),
        (tmp_path / "r3", "cannot lock the rack"),
    ):
        out = subprocess.run(
            [str(BIN / "bmc-sim"), "--rack", str(rack), "--boards", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1 and msg in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_a_second_bmc_sim_on_the_same_rack_is_refused(tmp_path: pathlib.Path) -> None:
    from racklet_sim.rack import SimError

    with Rack(boards=1, board=fast_board(tmp_path)) as rack:
        out = subprocess.run(
            [str(BIN / "bmc-sim"), "--rack", str(rack.path), "--boards", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1 and "another bmc-sim" in out.stderr, out.stderr
        assert os.path.exists(rack.port(1))  # the running rack is untouched
        assert status(rack)["state"] == "Off"
        assert rack.status()["slots"][0]["running"]  # and still takes control requests
        with pytest.raises(SimError, match="another bmc-sim"):  # a test's own Rack too
            with Rack(boards=1, rack_dir=rack.path):
                pass
        assert rack.status()["slots"][0]["running"]


def test_two_bmc_sims_started_together_on_one_rack_one_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    rack_dir = tmp_path / "rack"
    procs = [
        subprocess.Popen(
            [str(BIN / "bmc-sim"), "--rack", str(rack_dir), "--boards", "1"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        refused = None
        deadline = time.monotonic() + 60
        while refused is None and time.monotonic() < deadline:
            refused = next((p for p in procs if p.poll() is not None), None)
            time.sleep(0.05)
        assert refused is not None, "neither bmc-sim was refused"
        assert refused.stderr is not None
        err = refused.stderr.read()
        assert refused.returncode == 1 and "another bmc-sim" in err, err
        assert "Traceback" not in err, err
        (running,) = [p for p in procs if p is not refused]
        Rack(rack_dir=rack_dir).wait_ready(1, 60)  # the other one runs the rack
        assert running.poll() is None
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)


def test_links_left_by_a_killed_bmc_sim_are_cleared_at_the_next_start(
    tmp_path: pathlib.Path,
) -> None:
    rack_dir = tmp_path / "rack"
    proc = subprocess.Popen(
        [str(BIN / "bmc-sim"), "--rack", str(rack_dir), "--boards", "2"],
        stderr=subprocess.DEVNULL,
    )
    try:
        for slot in (1, 2):
            Rack(rack_dir=rack_dir).wait_ready(slot, 60)
        proc.kill()  # SIGKILL: no clean-up; its BMCs exit when their wires close
    finally:
        proc.kill()
        proc.wait()
    assert os.path.islink(rack_dir / "slot2") and (rack_dir / ".slot2.wires").exists()
    with Rack(boards=1, rack_dir=rack_dir) as rack:
        assert os.path.exists(rack.port(1))
        left = sorted(p.name for p in rack_dir.iterdir() if "slot2" in p.name)
        assert left == ["slot2.img", "slot2.log"], left  # no link to a PTY nobody serves


def test_console_follow_goes_on_through_a_bmc_restart(tmp_path: pathlib.Path) -> None:
    """`bmcctl console --follow` keeps following when the BMC restarts (a watchdog, a
    firmware update): it says so, shows the new console from its start, and never
    sends the restarted BMC a nonce it forgot (that would count as a failed login)."""
    import threading

    from racklet_host.client import BmcClient
    from racklet_host.keys import load_key

    with Rack(boards=1, board=fast_board(tmp_path)) as rack:
        key = str(tmp_path / "admin1.key")
        rack.bootsel(1, seconds=1.5)
        bmcctl(rack, "--key-file", key, "keys", "provision", "slot1", "--role", "admin")
        power_on(rack, key)  # takes longer than BOOTSEL is held: a restart is a plain one
        wait_for("login prompt", lambda: "login:" in rack.sbc(1)["console_out"])
        env = dict(os.environ, BMC_RACK=str(rack.path))
        follower = subprocess.Popen(
            [str(BIN / "bmcctl"), "--key-file", key, "console", "--follow", "slot1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        out = bytearray()
        err = bytearray()

        def drain(stream: Any, into: bytearray) -> None:
            for chunk in iter(stream.read1, b""):
                into.extend(chunk)

        readers = [
            threading.Thread(target=drain, args=(follower.stdout, out)),
            threading.Thread(target=drain, args=(follower.stderr, err)),
        ]
        for t in readers:
            t.start()
        try:
            wait_for("the follower to show the boot log", lambda: b"login:" in out)
            starts = rack.slot_info(1)["starts"]
            rack.kill(1)  # restarted by bmc-sim, like a watchdog reset
            wait_for("the BMC back", lambda: rack.slot_info(1)["starts"] > starts)
            wait_for("the SBC still up", lambda: rack.sbc(1)["os"] == "running")
            with BmcClient.open(rack.port(1), key=load_key(key)) as c:
                c.console_write("typed-after-the-restart\r")  # the SBC's tty echoes it
            wait_for("the echo in the follower", lambda: b"typed-after-the-restart" in out)
            with BmcClient.open(rack.port(1)) as c:
                text = c.metrics()
            assert follower.poll() is None, err.decode()
            assert b"the BMC restarted; its console from the start" in err, err.decode()
            failures = [ln for ln in text.splitlines() if ln.startswith("bmc_auth_failures_total{")]
            assert failures and all(ln.endswith(" 0") for ln in failures), failures
        finally:
            follower.send_signal(signal.SIGINT)
            follower.wait(10)
            for t in readers:
                t.join(5)

"""`make demo` (racklet_host.demo): set-up, Ctrl-C and a rack that is already running."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from racklet_sim.rack import Rack


def start_demo(rack: pathlib.Path, boards: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "racklet_host.demo", "--rack", str(rack)]
        + ["--boards", str(boards), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives it
    )


def sim_processes(rack: pathlib.Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", str(rack)], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines() if "pgrep" not in ln]


def test_ctrl_c_during_set_up_stops_without_going_on(tmp_path: pathlib.Path) -> None:
    rack = tmp_path / "demo" / "rack"
    demo = start_demo(rack, boards=2)
    try:
        assert demo.stdout is not None
        assert "Starting 2 simulated BMCs" in demo.stdout.readline()
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C while the BMCs come up
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode == 130, (demo.returncode, out, err)
    assert "Traceback" not in err, err
    assert "The rack is up" not in out and "Provisioned" not in out, out
    assert "Stopping" in out, out
    assert not (tmp_path / "demo" / "admin.key").exists()
    deadline = time.monotonic() + 10
    while sim_processes(rack) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sim_processes(rack)
    assert not [p.name for p in rack.iterdir() if p.is_symlink() or p.is_socket()]


def test_closing_its_terminal_stops_the_demo_and_its_rack(tmp_path: pathlib.Path) -> None:
    rack = tmp_path / "demo" / "rack"
    demo = start_demo(rack)
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 60
        while "The rack is up" not in demo.stdout.readline():
            assert time.monotonic() < deadline and demo.poll() is None, "the demo did not come up"
        demo.send_signal(signal.SIGHUP)
        demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    deadline = time.monotonic() + 10
    while sim_processes(rack) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = sim_processes(rack)
    for line in left:  # bmc-sim runs in a session of its own: end it here, not in the next test
        os.kill(int(line.split()[0]), signal.SIGTERM)
    assert not left, left
    assert not [p.name for p in rack.iterdir() if p.is_symlink() or p.is_socket()]


def test_a_demo_on_a_rack_that_runs_already_is_refused(tmp_path: pathlib.Path) -> None:
    rack_dir = tmp_path / "demo" / "rack"
    with Rack(boards=1, rack_dir=rack_dir) as rack:
        demo = start_demo(rack_dir)
        try:
            out, err = demo.communicate(timeout=60)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
        assert demo.returncode == 1, (out, err)
        assert "already running" in err and "Traceback" not in err, err
        assert "Provisioned" not in out, out
        assert not rack.sbc(1)["bootsel"]  # the other rack's BMCs were left alone
        assert rack.slot_info(1)["running"] and os.path.exists(rack.port(1))

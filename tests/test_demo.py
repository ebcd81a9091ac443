"""`make demo` (racklet_host.demo): set-up and Ctrl-C."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time


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

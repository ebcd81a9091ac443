"""bmcctl as a shell drives it: closed or vanished output streams, stdin that is no
terminal, bad option values, Ctrl-C in the middle of a command on several BMCs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from racklet_host import cli, errors
from racklet_host.client import BmcClient
from racklet_host.discovery import BmcPort
from racklet_host.keys import Key, load_key, write_new_key
from racklet_sim.rack import Rack

from bench.protocol import provision

BMCCTL = str(Path(sys.executable).parent / "bmcctl")


@pytest.fixture(scope="module")
def rack() -> Iterator[Rack]:
    with Rack(boards=2) as r:
        yield r


def run(rack: Rack, *argv: str, shell: str = "", **kw: Any) -> subprocess.CompletedProcess[str]:
    """The installed bmcctl on the rack, with stdout block-buffered as in a shell's pipe
    (no PYTHONUNBUFFERED); `shell`: redirections for `sh -c`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "BMC_KEY_FILE")}
    env["BMC_RACK"] = str(rack.path)
    cmd = [BMCCTL, *argv]
    if shell:
        cmd = ["sh", "-c", f'exec "$0" "$@" {shell}', *cmd]
    return subprocess.run(cmd, text=True, env=env, timeout=60, **kw)


def closed_pipe() -> int:
    """The write end of a pipe whose reader is gone (`| head -1` after it exited)."""
    r, w = os.pipe()
    os.close(r)
    return w


# -- output streams -----------------------------------------------------------------------


def test_a_reader_that_went_away_gives_no_traceback_and_the_commands_code(
    rack: Rack, tmp_path: Path
) -> None:
    w = closed_pipe()
    try:
        p = run(rack, "status", "1", stdout=w, stderr=subprocess.PIPE)
        assert (p.returncode, p.stderr) == (0, "")
        p = run(rack, "--json", "status", "1", "2", stdout=w, stderr=subprocess.PIPE)
        assert (p.returncode, p.stderr) == (0, "")
        # a failed target's code, not 0 (and not the interpreter's 120)
        kf = str(tmp_path / "k")
        p = run(rack, "keys", "provision", "1", "--key-file", kf, stdout=w, stderr=subprocess.PIPE)
        assert p.returncode == errors.EXIT_NOT_ALLOWED and "Traceback" not in p.stderr, p.stderr
        assert "Exception ignored" not in p.stderr
    finally:
        os.close(w)


@pytest.mark.parametrize("argv", [("status", "1"), ("--json", "status", "--all"), ("list",)])
def test_a_closed_stdout_gives_no_traceback(rack: Rack, argv: Tuple[str, ...]) -> None:
    p = run(rack, *argv, shell=">&-", capture_output=True)
    assert (p.returncode, p.stderr) == (0, "")


def test_a_closed_stderr_keeps_the_exit_code(rack: Rack) -> None:
    p = run(rack, "status", "slot42", shell="2>&-", capture_output=True)
    assert p.returncode == errors.EXIT_NO_BMC


# -- confirmation -------------------------------------------------------------------------


def two_bmcs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Two BMCs found (never opened: run_all must not be reached); an admin key file."""
    ports = [BmcPort(f"slot{i}", str(tmp_path / f"slot{i}"), source="rack") for i in (1, 2)]
    monkeypatch.setattr(cli.discovery, "discover", lambda rack=None, port=None: ports)

    def run_all(*a: Any, **kw: Any) -> List[Dict[str, Any]]:
        raise AssertionError("went ahead without asking")

    monkeypatch.setattr(cli, "run_all", run_all)
    kf = tmp_path / "admin.key"
    write_new_key(str(kf))
    return kf


@pytest.mark.parametrize("stdin", ["piped", "closed"])
@pytest.mark.parametrize(
    "argv", [("power", "ForceOff"), ("reset",), ("maintenance",), ("power", "PowerCycle")]
)
def test_a_disruptive_action_on_several_bmcs_without_a_terminal_needs_yes(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stdin: str,
    argv: Tuple[str, ...],
) -> None:
    kf = two_bmcs(monkeypatch, tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n") if stdin == "piped" else None)
    code = cli.main(["--key-file", str(kf), *argv, "--all"])
    err = capsys.readouterr().err
    assert code == errors.EXIT_USAGE, err
    assert err.count("\n") == 1 and "--yes" in err and "slot1, slot2" in err, err


# -- option values ------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["serve", "usb"])
@pytest.mark.parametrize("wait", ["nan", "inf", "-1", "0", "soon"])
def test_boot_wait_must_be_a_positive_number_of_seconds(
    capsys: pytest.CaptureFixture[str], action: str, wait: str
) -> None:
    # nan and inf waited for ever for an SBC that never came; -1 "appeared in -1 s"
    assert cli.main(["boot", action, "--wait", wait, "slot1"]) == errors.EXIT_USAGE
    assert "--wait" in capsys.readouterr().err


# -- Ctrl-C -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin(rack: Rack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both slots provisioned with one admin key."""
    kf = tmp_path_factory.mktemp("keys") / "admin.key"
    key = write_new_key(str(kf))
    for slot in (1, 2):
        rack.bootsel(slot, seconds=3)
        with BmcClient.open(rack.port(slot)) as c:
            provision(c, key)
    return kf


def installed(rack: Rack, key: Key) -> List[List[str]]:
    out = []
    for slot in (1, 2):
        with BmcClient.open(rack.port(slot), key=key) as c:
            out.append([k["id"] for k in c.keys_list()])
    return out


def ctrl_c_on_slot2(monkeypatch: pytest.MonkeyPatch, method: str, key_id: str = "") -> None:
    """Ctrl-C as `method` runs for slot 2 (after slot 1's went through)."""
    real = getattr(BmcClient, method)

    def cut(self: BmcClient, *a: Any, **kw: Any) -> Any:
        if self.name == "slot2" and (not key_id or a[0] == key_id):
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(BmcClient, method, cut)


def test_rotation_interrupted_while_adding_leaves_no_key_nobody_holds(
    rack: Rack, admin: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = load_key(str(admin))
    before = installed(rack, old)
    ctrl_c_on_slot2(monkeypatch, "keys_add")
    new_file = admin.parent / "never-written.key"
    code = cli.main(
        ["--rack", str(rack.path), "--key-file", str(admin), "keys", "rotate", "--all"]
        + ["--new-key-file", str(new_file)]
    )
    err = capsys.readouterr().err
    assert code == 130 and not new_file.exists()
    monkeypatch.undo()
    assert installed(rack, old) == before, err  # slot 1's new key was taken back
    assert "none of them" in err and old.key_id in err, err


def test_rotation_interrupted_while_revoking_says_where_the_keys_are(
    rack: Rack, admin: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = load_key(str(admin))
    ctrl_c_on_slot2(monkeypatch, "keys_revoke", old.key_id)
    new_file = admin.parent / "new.key"
    code = cli.main(
        ["--rack", str(rack.path), "--key-file", str(admin), "keys", "rotate", "--all"]
        + ["--new-key-file", str(new_file)]
    )
    err = capsys.readouterr().err
    monkeypatch.undo()
    new = load_key(str(new_file))
    assert code == 130
    assert [new.key_id in ids for ids in installed(rack, new)] == [True, True]
    assert str(new_file) in err and old.key_id in err and "keys revoke" in err, err


def _has_open(pid: int, path: str) -> bool:
    fds = f"/proc/{pid}/fd"
    try:
        return any(os.path.realpath(os.path.join(fds, fd)) == path for fd in os.listdir(fds))
    except OSError:
        return False


def _asking(argv: List[str], port: str) -> subprocess.Popen[str]:
    """bmcctl started, once it has opened `port` (that BMC asked: the command is under way)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not _has_open(p.pid, port):
        assert time.monotonic() < deadline and p.poll() is None, f"bmcctl never opened {port}"
        time.sleep(0.01)
    return p


def test_ctrl_c_on_several_bmcs_waits_for_those_asked_and_says_what_each_did(
    tmp_path: Path,
) -> None:
    """Ctrl-C while a command runs on several BMCs: the ones already asked may act, so
    bmcctl waits for their answers (each within --timeout) and says what each did."""
    from tests.fake_bmc import Fakes

    fakes = Fakes(tmp_path)
    fakes.start_many([1, 2])
    try:
        fakes.procs[2].send_signal(signal.SIGSTOP)  # a hung BMC: asked, never answers
        hung = os.path.realpath(str(tmp_path / "slot2"))
        argv = [sys.executable, "-m", "racklet_host.cli", "--rack", str(tmp_path)]
        p = _asking(argv + ["--timeout", "2", "status", "--all"], hung)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=10)
        assert p.returncode == errors.EXIT_INTERRUPTED, err
        assert "waiting for the answers of slot2" in err, err
        assert "slot1 done" in err and "slot2 timeout" in err, err
        assert "Traceback" not in err, err

        # Ctrl-C again leaves at once, not when the hung BMC's 60 s are up
        p = _asking(argv + ["--timeout", "60", "status", "--all"], hung)
        deadline = time.monotonic() + 10
        p.send_signal(signal.SIGINT)
        while "waiting for the answers" not in (p.stderr.readline() if p.stderr else ""):
            assert time.monotonic() < deadline and p.poll() is None, "no first interrupt"
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=10)
        finally:
            p.kill()
        assert p.returncode == errors.EXIT_INTERRUPTED and "Traceback" not in err, err
    finally:
        fakes.procs[2].send_signal(signal.SIGCONT)
        fakes.stop_all()

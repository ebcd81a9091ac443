"""bmcctl as a shell drives it: closed or vanished output streams, stdin that is no
terminal, bad option values, Ctrl-C in the middle of a command on several BMCs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest
from racklet_host import errors
from racklet_sim.rack import Rack

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

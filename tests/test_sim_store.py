"""Killing a simulated board at random moments during store writes loses no file.

A MicroPython script saves rounds of new versions of three files through `bmc.store`
on a littlefs image mounted with the simulated board's own flash code
(`bmc.board.simflash`), and is SIGKILLed at random points. After each kill the image is
mounted again: every file must be the last version whose save returned, or the one
being saved when the kill came; never missing, corrupt or torn.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import time
from typing import Dict, Iterator, Optional, Tuple

from racklet_host import fwbuild

from tests.mprun import BUILD, HEAP, micropython_binary

HERE = pathlib.Path(__file__).resolve().parent
NAMES = ("alpha", "beta", "gamma")
KILLS = 25


def start_writer(image: pathlib.Path) -> subprocess.Popen[str]:
    env = dict(os.environ, MICROPYPATH=":".join([".frozen", str(BUILD), str(HERE / "sim_mp")]))
    return subprocess.Popen(
        [micropython_binary(), "-X", f"heapsize={HEAP}", str(HERE / "sim_mp" / "store_writer.py")]
        + [str(image)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def parse_state(line: str) -> Dict[str, str]:
    words = line.split()
    assert words[0] == "state", line
    return dict(w.split("=", 1) for w in words[1:])


def test_files_are_old_or_new_after_kills_during_writes(tmp_path: pathlib.Path) -> None:
    fwbuild.build(BUILD)
    image = tmp_path / "slot.img"
    rng = random.Random(0x5EED)
    known: Dict[str, Optional[int]] = {name: None for name in NAMES}  # on flash for sure
    in_flight: Optional[Tuple[str, int]] = None  # the save the last kill interrupted
    saves = 0
    for cycle in range(KILLS + 1):
        proc = start_writer(image)
        assert proc.stdout is not None
        state = parse_state(proc.stdout.readline())
        for name in NAMES:
            old = "missing" if known[name] is None else str(known[name])
            allowed = {old}
            if in_flight is not None and in_flight[0] == name:
                allowed.add(str(in_flight[1]))
            assert state[name] in allowed, (cycle, name, state, allowed)
            known[name] = None if state[name] == "missing" else int(state[name])
        if cycle == KILLS:
            proc.kill()
            proc.wait()
            break
        time.sleep(rng.uniform(0.02, 0.4))
        proc.send_signal(signal.SIGKILL)
        out = proc.stdout.read()  # not communicate(): it would skip what readline buffered
        proc.wait()
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert proc.returncode == -signal.SIGKILL, err
        # The writer saves rounds top+1, top+2, ... of NAMES in order; after the last
        # acknowledged save, the next one in that order was in flight.
        order = _save_order(max(v or 0 for v in known.values()))
        # A kill can land inside a print (MicroPython writes its parts one by one): a
        # last line without its newline is an acknowledgement cut short, so that save
        # counts as in flight, as one the kill interrupted.
        complete = out[: out.rfind("\n") + 1]
        for line in complete.splitlines():
            parts = line.split()
            assert len(parts) == 3 and parts[0] == "saved", (line, out[-500:], err)
            name, v = parts[1], parts[2]
            assert next(order) == (name, int(v)), line
            known[name] = int(v)
            saves += 1
        in_flight = next(order)
    assert saves > KILLS * 3  # the kills landed in the middle of real work


def _save_order(top: int) -> Iterator[Tuple[str, int]]:
    i = top + 1
    while True:
        for name in NAMES:
            yield name, i
        i += 1

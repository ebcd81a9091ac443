"""bmcctl against a BMC whose answers are wrong in every way: clear errors, no crash.

A firmware of another version, a flaky link or a broken BMC can send anything
that frames correctly. This test records what the real firmware (bmc-sim, under
MicroPython) answers to each bmcctl command, then plays a BMC on a PTY that
answers from those recordings, mutated from a fixed seed: values of other types,
keys missing or added, payloads that are not JSON or not an object, chunks with
bytes that are not UTF-8, chunks dropped, doubled or sent where none belong,
frames of an unknown kind or for another request.

Every bmcctl run must end with a documented exit code and a message, never
`internal error` (an exception bmcctl did not turn into a clear error) nor a
traceback; `--json` rows never say `internal`. And nothing the BMC sent may
reach the terminal as a control character (an escape sequence drives it),
except from `console`, which is the SBC's raw serial console by design.

FUZZ_RUNS=N in the environment plays N runs instead of RUNS.
"""

from __future__ import annotations

import json
import os
import random
import select
import threading
import time
import tty
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from bmc import codec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from racklet_host import cli
from racklet_host.client import BmcClient
from racklet_host.keys import write_new_key
from racklet_host.transport import Link
from racklet_sim.rack import Rack

from bench.protocol import provision
from tests.fake_bmc import frames

SEED = 20261207
RUNS = int(os.environ.get("FUZZ_RUNS", "600"))
TIMEOUT = "0.2"  # seconds: an answer to another request id is waited for this long
DOCUMENTED_EXITS = {0, 1, 3, 4, 5, 6}  # docs: README "exit codes"; 2 is the user's own mistake

Answer = List[Tuple[int, bytes]]  # (frame kind, payload) as the BMC sent them


class PlayedBmc:
    """A PTY linked as RACK/slot1 that answers like a BMC.

    Recording: each request goes on to the real BMC at `upstream` and its answer
    comes back unchanged, kept by command. Playing: each request is answered from
    those recordings, through `mutate`.
    """

    def __init__(self, rack: Path, upstream: str) -> None:
        self.master, self._slave = os.openpty()  # the slave stays open: no EIO between runs
        tty.setraw(self._slave)
        (rack / "slot1").symlink_to(os.ttyname(self._slave))
        self.upstream: Optional[Link] = Link(upstream)
        self.recorded: Dict[str, List[Answer]] = {}
        self.mutate: Callable[[str, Answer], List[bytes]] = lambda cmd, answer: _as_is(answer)
        self.errors: List[str] = []  # what went wrong in the serving thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def play(self, mutate: Callable[[str, Answer], List[bytes]]) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.mutate = mutate

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.upstream is not None:
            self.upstream.close()
        os.close(self.master)
        os.close(self._slave)

    def _serve(self) -> None:
        reader = codec.FrameReader()
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            data = os.read(self.master, 65536)
            try:
                self._answer(reader, data)
            except Exception as e:  # the test fails on it; the PTY keeps being read
                self.errors.append(repr(e))

    def _answer(self, reader: codec.FrameReader, data: bytes) -> None:
        for kind, rid, payload in frames(reader, data):
            if kind != codec.KIND_REQUEST:
                continue
            cmd = str(json.loads(payload).get("cmd"))
            if self.upstream is not None:
                answer = self._forward(rid, payload)
                self.recorded.setdefault(cmd, []).append(answer)
                out = _as_is(answer)
            else:
                known = self.recorded.get(cmd) or [
                    [(codec.KIND_RESPONSE, b'{"ok": false, "error": "unknown_command"}')]
                ]
                out = self.mutate(cmd, known[0])
            for frame in out:
                _write_all(self.master, _with_rid(frame, rid))

    def _forward(self, rid: int, payload: bytes) -> Answer:
        assert self.upstream is not None
        self.upstream.send_frame(codec.KIND_REQUEST, rid, payload)
        answer: Answer = []
        deadline = time.monotonic() + 10
        while True:
            f = self.upstream.read_frame(deadline)
            if f.req_id != rid:
                continue
            answer.append((f.kind, f.payload))
            if f.kind == codec.KIND_RESPONSE:
                return answer


_RID_SLOT = 0xFFFF  # frames are built with this id and given the request's as they go


def _with_rid(frame: bytes, rid: int) -> bytes:
    f = next(frames(codec.FrameReader(), frame), None)
    if f is None:  # not a frame: bytes on the line as they are
        return frame
    kind, got, payload = f
    return codec.encode_frame(kind, rid if got == _RID_SLOT else got, payload)


def _as_is(answer: Answer) -> List[bytes]:
    return [codec.encode_frame(kind, _RID_SLOT, payload) for kind, payload in answer]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while len(view):
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [], 0.05)


class Mutator:
    """Answers changed in one way each, drawn from one seeded generator: one exchange
    of each bmcctl run (`begin`), so that the run gets that far."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.kinds: Dict[str, int] = {}
        self._exchange = 0
        self._target = 0

    def begin(self) -> None:
        """A new bmcctl run: the first few exchanges are hello, nonce, the command."""
        self._exchange = 0
        self._target = self.rng.randrange(4)

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        pick = r.randrange(12)
        if pick == 0:
            return None
        if pick == 1:
            return r.choice([True, False])
        if pick == 2:
            return r.choice([0, -1, 2**53, 2**64, -(2**70), 10**30])
        if pick == 3:
            return r.choice([0.5, -1e308, 1e308, float("inf"), float("nan"), -0.0])
        if pick == 4:
            return ""
        if pick == 5:
            return "y" * r.choice([1, 300, 5000])
        if pick == 6:
            return r.choice(
                ["\x1b[2J\x1b[31m", "a\nb\rc", "\x00\x07\x08", "\u00e9\u4e2d\U0001f600"]
            )
        if pick == 7 and depth < 3:
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        if pick == 8 and depth < 3:
            return {r.choice(["a", "", "state", "ok"]): self.value(depth + 1) for _ in range(3)}
        if pick == 9:
            return r.choice(["On", "Off", "admin", "https://x", "ab" * 32])
        return r.randrange(-3, 5)

    def _nodes(self, tree: Any, path: Tuple[Any, ...] = ()) -> Iterator[Tuple[Any, ...]]:
        yield path
        if isinstance(tree, dict):
            for k, v in tree.items():
                yield from self._nodes(v, path + (k,))
        elif isinstance(tree, list):
            for i, v in enumerate(tree):
                yield from self._nodes(v, path + (i,))

    def _tree(self, msg: Any) -> Any:
        """`msg` with one node replaced, removed or given a new key."""
        r = self.rng
        nodes = list(self._nodes(msg))
        fields = [p for p in nodes if len(p) > 1]  # what the answer carries, in "data"
        path = r.choice(fields if fields and r.random() < 0.85 else nodes)
        if not path:
            return self.value()
        parent = msg
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        op = r.randrange(3)
        if op == 0 or (op == 1 and isinstance(parent, list) and len(parent) < 1):
            parent[last] = self.value()
        elif op == 1:
            del parent[last]
        elif isinstance(parent, dict):  # a new field, its name too may be hostile
            parent[r.choice(["zz", "\x1b]0;zz\x07"]) + str(r.randrange(9))] = self.value()
        else:
            parent.insert(r.randrange(len(parent) + 1), self.value())
        return msg

    def __call__(self, cmd: str, answer: Answer) -> List[bytes]:
        self._exchange += 1
        if self._exchange - 1 != self._target:
            return _as_is(answer)
        while True:  # a mutation that makes a frame too large to send is drawn again
            try:
                return self._mutated(answer)
            except ValueError:
                continue

    def _mutated(self, answer: Answer) -> List[bytes]:
        r = self.rng
        how = r.choice(
            ["tree"] * 6
            + ["payload", "not_utf8", "chunk_bytes", "chunks", "kind", "rid", "noise", "split"]
        )
        self.kinds[how] = self.kinds.get(how, 0) + 1
        frames_ = list(answer)
        kind, payload = frames_[-1]
        if how == "tree":
            try:
                msg = json.loads(payload)
            except ValueError:
                msg = None
            payload = json.dumps(self._tree(msg), allow_nan=True).encode()
        elif how == "payload":
            payload = r.choice(
                [
                    b"",
                    b"[]",
                    b"null",
                    b"3",
                    b'"ok"',
                    b"{",
                    b'{"ok": true',
                    payload[: len(payload) // 2],
                ]
            )
        elif how == "not_utf8":
            payload = b'{"ok": true, "data": {"x": "\xff\xfe"}}'
        elif how == "chunk_bytes":
            frames_ = [
                (k, bytes(r.randrange(256) for _ in range(len(p) or 8)))
                if k == codec.KIND_CHUNK or r.random() < 0.3
                else (k, p)
                for k, p in frames_[:-1]
            ] + [(codec.KIND_CHUNK, b"\xc3(\x1b[2J")]
        elif how == "chunks":
            body = frames_[:-1]
            op = r.randrange(3)
            if op == 0 and body:
                body.pop(r.randrange(len(body)))
            elif op == 1 and body:
                body.insert(r.randrange(len(body)), body[r.randrange(len(body))])
            else:
                body.append((codec.KIND_CHUNK, b"[1, 2]\n\x1b]0;title\x07"))
            frames_ = body + [(kind, payload)]
        out = [codec.encode_frame(k, _RID_SLOT, p) for k, p in frames_[:-1]]
        last = codec.encode_frame(kind, _RID_SLOT, payload)
        if how == "kind":
            out.append(codec.encode_frame(r.choice([0, 9, 200]), _RID_SLOT, payload))
        elif how == "rid":  # the answer is for another request: this one times out
            last = codec.encode_frame(kind, 4242, payload)
        elif how == "noise":
            out.append(bytes(r.randrange(256) for _ in range(r.randrange(1, 300))))
        elif how == "split":  # the answer in two writes: a reader must wait for the rest
            out.append(last[:5])
            last = last[5:]
        return out + [last]


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[PlayedBmc, Dict[str, Path]]]:
    work = tmp_path_factory.mktemp("hostile")
    os.chmod(work, 0o700)
    files = {
        "admin": work / "admin.key",
        "rack": work / "rack",
        "pubkey": work / "inv.pub",
        "files": work,
    }
    files["rack"].mkdir()
    pub = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    files["pubkey"].write_text(raw.hex() + "\n")  # an Ed25519 public key in hex
    with Rack(boards=1, board="pico-cm4") as rack:
        key = write_new_key(str(files["admin"]))
        rack.bootsel(1, seconds=1.5)
        with BmcClient.open(rack.port(1), key=key, timeout=5) as c:
            provision(c, key)
        bmc = PlayedBmc(files["rack"], rack.port(1))
        try:
            yield bmc, files
        finally:
            bmc.close()


def _runs(files: Dict[str, Path], n: int) -> List[List[str]]:
    """Every bmcctl command line the test plays (`n` tells new key files apart)."""
    return [
        ["list"],
        ["status", "slot1"],
        ["power", "On", "slot1"],
        ["power", "PowerCycle", "slot1"],
        ["power", "ForceOff", "slot1"],
        ["reset", "slot1"],
        ["identify", "--seconds", "2", "slot1"],
        ["events", "slot1"],
        ["console", "slot1"],
        ["config", "get", "slot1"],
        ["config", "set", "min_off_ms", "500", "slot1"],
        ["keys", "list", "slot1"],
        [
            "keys",
            "add",
            "--role",
            "operator",
            "--new-key-file",
            str(files["files"] / f"op{n}"),
            "slot1",
        ],
        ["keys", "revoke", "0123456789abcdef", "slot1"],
        ["inventory", "get", "slot1"],
        [
            "inventory",
            "set",
            "--url",
            "https://inv.example/r",
            "--key",
            str(files["pubkey"]),
            "slot1",
        ],
        ["boot", "manifest", "get", "slot1"],
        ["boot", "status", "slot1"],
    ]


def _ctl(
    capsys: pytest.CaptureFixture[str], files: Dict[str, Path], argv: List[str]
) -> Tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(
        ["--rack", str(files["rack"]), "--key-file", str(files["admin"]), "--timeout", TIMEOUT]
        + argv
    )
    out, err = capsys.readouterr()
    return code, out, err


def _control_chars(text: str) -> List[str]:
    """The C0 control characters in `text` but newline and tab: ESC starts every escape
    sequence, CR and BS overwrite a line. (JSON keeps DEL as it is, harmless on a
    terminal.)"""
    return sorted({repr(ch) for ch in text if ord(ch) < 32 and ch not in "\n\t"})


def test_wrong_answers_give_clear_errors_and_never_reach_the_terminal(
    played: Tuple[PlayedBmc, Dict[str, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    bmc, files = played
    # the real firmware's answers to every command line, each run once through the PTY
    for argv in _runs(files, 0):
        for json_flag in ([], ["--json"]):
            code, out, err = _ctl(capsys, files, json_flag + argv)
            assert code in DOCUMENTED_EXITS and "internal" not in out + err, (argv, out, err)
    assert {"hello", "nonce", "status", "power", "events", "boot-status"} <= set(bmc.recorded)

    mutate = Mutator(SEED)
    bmc.play(mutate)
    failures: List[str] = []
    codes: Dict[int, int] = {}
    for i in range(RUNS):
        runs = _runs(files, i + 1)
        argv = mutate.rng.choice(runs)
        if mutate.rng.random() < 0.5:
            argv = ["--json"] + argv
        mutate.begin()
        code, out, err = _ctl(capsys, files, argv)
        codes[code] = codes.get(code, 0) + 1
        what = f"run {i}: bmcctl {' '.join(argv)} -> {code}\n{out[-600:]}{err[-600:]}"
        if "Traceback" in out + err or "internal error" in err or code not in DOCUMENTED_EXITS:
            failures.append(what)
        elif "--json" in argv and '"error": "internal"' in out:
            failures.append(what)
        elif argv[-2:] != ["console", "slot1"] and _control_chars(out + err):
            failures.append(f"{what}\ncontrol characters: {_control_chars(out + err)}")
    assert not bmc.errors, bmc.errors[:5]
    assert not failures, f"{len(failures)} of {RUNS} runs:\n\n" + "\n\n".join(failures[:8])
    # the runs met wrong answers of every kind, and both ends of the outcomes
    assert set(mutate.kinds) == {
        "tree",
        "payload",
        "not_utf8",
        "chunk_bytes",
        "chunks",
        "kind",
        "rid",
        "noise",
        "split",
    }
    assert codes.get(0, 0) > RUNS // 10 and sum(codes.values()) - codes.get(0, 0) > RUNS // 4

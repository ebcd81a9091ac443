"""The wire codec and HMAC: the same cases on CPython and inside MicroPython.

HMAC is also checked against CPython's own `hmac` on random keys and messages.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
from bmc import codec
from bmc.hmac256 import hmac_sha256

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import wire_cases  # noqa: E402  (shared with the MicroPython run)

MICROPYTHON = REPO / ".venv" / "bin" / "micropython"


@pytest.mark.parametrize("case", wire_cases.CASES, ids=lambda f: f.__name__)
def test_cpython(case: Callable[[], None]) -> None:
    case()


@pytest.fixture(scope="module")
def micropython_run() -> str:
    if not MICROPYTHON.exists():
        pytest.fail(f"{MICROPYTHON} missing: run make venv")
    proc = subprocess.run(
        [str(MICROPYTHON), "-X", "heapsize=192K", str(REPO / "tests" / "wire_cases.py"), str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "RESULT" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def micropython_results(micropython_run: str) -> Dict[str, str]:
    results: Dict[str, str] = {}
    for line in micropython_run.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASS", "FAIL"):
            name = rest.split(":")[0]
            results[name] = line
    return results


@pytest.mark.parametrize("case", wire_cases.CASES, ids=lambda f: f.__name__)
def test_micropython(case: Callable[[], None], micropython_results: Dict[str, str]) -> None:
    line = micropython_results.get(case.__name__, "missing from the MicroPython run")
    assert line.startswith("PASS"), line


@pytest.mark.parametrize("index", range(len(wire_cases.CANON_SAMPLES)))
def test_canon_is_the_same_bytes_on_micropython(index: int, micropython_run: str) -> None:
    """A MAC covers canon(args): host and BMC must produce identical bytes."""
    ours = wire_cases.canon_lines()[index]
    theirs = [ln for ln in micropython_run.splitlines() if ln.startswith(f"CANON {index} ")]
    assert theirs == [ours], (
        f"canon({wire_cases.CANON_SAMPLES[index]!r}) differs: "
        f"CPython {bytes.fromhex(ours.split()[2])!r} vs MicroPython "
        f"{bytes.fromhex(theirs[0].split()[2]) if theirs else None!r}"
    )


# reads payloads (hex, a line each) as the firmware does; prints canon(args) of each
_FIRMWARE_PARSE = """
import sys, binascii
sys.path.insert(0, %r)
from bmc import codec
while True:
    line = sys.stdin.readline()
    if not line:
        break
    args = codec.loads(binascii.unhexlify(line.strip()))["args"]
    print(binascii.hexlify(codec.canon(args).encode()).decode())
"""


def test_what_the_host_sends_the_firmware_reads_and_signs_unchanged() -> None:
    """A request's arguments, through the host's codec.dumps and the firmware's
    codec.loads, are the strings the host signed: an emoji escaped as a surrogate
    pair would reach MicroPython as two characters, and its MAC would not verify."""
    samples = wire_cases.CANON_SAMPLES
    lines = "".join(codec.dumps({"cmd": "x", "args": a}).hex() + "\n" for a in samples)
    proc = subprocess.run(
        [str(MICROPYTHON), "-X", "heapsize=192K", "-c", _FIRMWARE_PARSE % str(REPO / "firmware")],
        input=lines,
        capture_output=True,
        text=True,
        timeout=60,
    )
    got = [bytes.fromhex(x).decode("utf-8", "replace") for x in proc.stdout.split()]
    assert got == [codec.canon(a) for a in samples], proc.stderr


def test_a_lone_surrogate_is_refused_before_it_is_sent() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        codec.dumps({"cmd": "console-write", "args": {"data": "\udcff"}})


def test_hmac_matches_stdlib_on_random_inputs() -> None:
    rng = random.Random(4231)
    for n in range(200):
        key = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 32, 63, 64, 65, 200])))
        msg = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
        assert hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest(), n


def test_random_noise_between_frames_never_loses_a_frame() -> None:
    rng = random.Random(7)
    reader = codec.FrameReader()
    sent = []
    stream = bytearray()
    for rid in range(1, 200):
        noise = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        payload = os.urandom(rng.randrange(0, 300))
        stream += noise + codec.encode_frame(3, rid, payload)
        sent.append((rid, payload))
    got = wire_cases.parse_all(reader, bytes(stream), step=97)
    assert [(g[2], g[3]) for g in got] == sent


def test_canon_matches_json_sort_keys() -> None:
    import json

    args: Dict[str, Any] = {"z": [1, {"b": None, "a": "é\n"}], "a": True, "m": -5}
    assert codec.canon(args) == json.dumps(
        args, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))

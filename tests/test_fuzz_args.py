"""Every command, signed by the admin key, with arguments of every wrong shape.

The firmware under MicroPython (bmc-sim, one CM4 carrier) gets a few thousand
requests (signed, but for public commands given a float: a MAC covers no float)
whose arguments are drawn from a fixed seed: missing, null, booleans,
huge and negative numbers, floats, empty, long and non-ASCII strings, traversal
names, nested lists and objects, base64 and key-like text, manifests with wrong
entries. Each must be answered within the client's timeout, ok or refused with a
documented error code, never `internal` (an exception the handler did not turn
into a clear error). Afterwards the BMC has not restarted, still knows its admin
key, has logged no internal fault and counts no `internal` result.

Commands that end the session on purpose (bmc-reboot, maintenance, factory-reset,
keys-provision) are left out; their refusals are tested in test_protocol_e2e.py.
"""

from __future__ import annotations

import base64
import json
import random
import time
from typing import Any, Dict, Iterator, List

import pytest
from bmc import codec
from racklet_host import errors
from racklet_host.client import PUBLIC_COMMANDS, BmcClient
from racklet_host.keys import Key
from racklet_sim.rack import Rack

from bench.protocol import provision

SEED = 20261206
REQUESTS = 2500

# command -> the argument names the firmware reads (docs/protocol.md)
COMMANDS: Dict[str, List[str]] = {
    "hello": ["proto"],
    "nonce": [],
    "status": [],
    "power": ["action"],
    "reset": [],
    "identify": ["seconds"],
    "events": ["since"],
    "console": ["since"],
    "console-write": ["data"],
    "config-get": [],
    "config-set": ["key", "value"],
    "keys-add": ["role", "key"],
    "keys-revoke": ["key_id"],
    "keys-list": [],
    "metrics": [],
    "inventory-get": [],
    "inventory-set": ["url", "keys", "generation", "expect"],
    "boot-manifest-get": [],
    "boot-manifest-set": ["files", "files_sha256", "expect"],
    "boot-file-put": ["sha256", "size", "offset", "data", "chunk_sha256", "manifest"],
    "boot-file-read": ["name", "gen", "sha256"],
    "boot-usb": ["timeout_ms"],
    "boot-report": ["event", "name", "sha256", "gen", "detail"],
    "boot-status": [],
}
# every code a refusal may carry; `internal` is not among them
REFUSALS = {
    "bad_request",
    "unsupported_version",
    "invalid",
    "not_allowed",
    "not_found",
    "conflict",
    "storage",
    "busy",
}
SETTINGS = ["min_off_ms", "restore_policy", "graceful_timeout_ms", "pgood_timeout_ms.5v", "zz"]


class Values:
    """Argument values of every shape, drawn from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def any(self, depth: int = 0) -> Any:
        r = self.rng
        pick = r.randrange(17)
        if pick == 0:
            return None
        if pick == 1:
            return r.choice([True, False])
        if pick == 2:
            return r.choice([0, -1, 1, 2**31, 2**63, -(2**40), 10**30])
        if pick == 3:
            return r.choice([0.5, -1e308, 1e308, 3.0, -0.0])
        if pick == 4:
            return ""
        if pick == 5:
            return "x" * r.choice([1, 100, 700, 1500])
        if pick == 6:
            return r.choice(
                [
                    "..",
                    "../config.txt",
                    "/etc/passwd",
                    "a/b",
                    "\x00",
                    "\u00e9\u4e2d\U0001f600",
                    "https://",
                    "https://" + "a" * 300 + ".example",
                    "http://example.org/inv",
                    "On",
                    "ForceOff",
                    "GracefulRestart",
                    "admin",
                    "operator",
                    "bmc",
                    "host",
                    "gen",
                    "check",
                    "serve",
                    "missing",
                    "refused",
                    "mismatch",
                    "failed",
                    "done",
                ]
            )
        if pick == 7:
            return "".join(
                r.choice("0123456789abcdef") for _ in range(r.choice([8, 16, 63, 64, 65]))
            )
        if pick == 8 and depth < 3:
            return [self.any(depth + 1) for _ in range(r.randrange(4))]
        if pick == 9 and depth < 3:
            keys = ["name", "size", "sha256", "src", "x", ""]
            return {r.choice(keys): self.any(depth + 1) for _ in range(r.randrange(4))}
        if pick == 10:
            return base64.b64encode(r.randbytes(r.randrange(0, 1100))).decode()
        if pick == 11:
            body = "MCowBQYDK2VwAyEA" + "A" * r.randrange(30, 50)
            return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"
        if pick == 12 and depth < 2:
            return [self.entry(depth + 2) for _ in range(r.randrange(1, 4))]
        if pick == 13:
            return r.randrange(-5, 70000)
        if pick == 14:
            return r.choice(["start4.elf", "config.txt", "cmdline.txt", "kernel8.img"])
        if pick == 15:
            return r.choice(SETTINGS)
        return "abc"

    def entry(self, depth: int) -> Dict[str, Any]:
        r = self.rng
        out = {
            "name": self.any(depth) if r.random() < 0.5 else f"f{r.randrange(5)}.bin",
            "size": self.any(depth) if r.random() < 0.5 else r.randrange(0, 5000),
            "sha256": self.any(depth) if r.random() < 0.5 else r.randbytes(32).hex(),
            "src": r.choice(["bmc", "host", "gen", 5, None]),
        }
        if r.random() < 0.2:
            del out[r.choice(list(out))]
        return out

    def args(self, names: List[str]) -> Dict[str, Any]:
        out = {name: self.any() for name in names if self.rng.random() < 0.75}
        if self.rng.random() < 0.15:
            out[self.rng.choice(["zz", "", "\u00e9"])] = self.any()
        return out


@pytest.fixture(scope="module")
def bmc() -> Iterator[BmcClient]:
    with Rack(boards=1, board="pico-cm4") as rack:
        key = Key.generate()
        rack.bootsel(1, seconds=1.5)
        client = BmcClient.open(rack.port(1), key=key, timeout=5)
        try:
            provision(client, key)
            time.sleep(1.6)  # BOOTSEL let go: nothing below runs with presence
            yield client
        finally:
            client.close()


def _internal_results(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("bmc_commands_total{") and 'result="internal"' in line:
            return float(line.rpartition(" ")[2])
    return 0.0


def test_wrong_arguments_get_clear_refusals_and_leave_the_bmc_whole(bmc: BmcClient) -> None:
    before = bmc.status()
    values = Values(SEED)
    names = sorted(COMMANDS)
    answered = refused = 0
    codes: Dict[str, int] = {}
    for _ in range(REQUESTS):
        cmd = values.rng.choice(names)
        args = values.args(COMMANDS[cmd])
        if len(codec.dumps({"cmd": cmd, "args": args})) > codec.MAX_PAYLOAD - 200:
            continue  # room for the auth object: a too-large request is the client's error
        try:
            codec.canon(args)
            signed = True
        except ValueError:  # a float: no MAC covers it, so only public commands take one
            if cmd not in PUBLIC_COMMANDS:
                continue
            signed = False
        shown = json.dumps(args)[:300]
        try:
            bmc.call(cmd, args, auth=signed, on_chunk=lambda chunk: None)
            answered += 1
        except errors.Timeout:
            pytest.fail(f"{cmd} {shown}: no answer")
        except errors.BmcError as e:
            assert e.code in REFUSALS, f"{cmd} {shown}: {e.code}: {e.message}"
            assert e.message, f"{cmd} {shown}: a refusal without a message"
            codes[e.code] = codes.get(e.code, 0) + 1
            refused += 1
    # the draw reaches both sides of the argument checks
    assert answered > REQUESTS // 10 and refused > REQUESTS // 3, (answered, refused, codes)
    assert codes.get("invalid", 0) > REQUESTS // 5, codes

    after = bmc.status()
    assert after["serial"] == before["serial"]
    assert after["boot_count"] == before["boot_count"], "the BMC restarted"
    assert after["uptime_ms"] > before["uptime_ms"]
    assert after["provisioned"] is True
    assert bmc.config_get()  # the admin key still signs
    events, _ = bmc.events()
    faults = [e for e in events if e.get("cause") == "internal"]
    assert not faults, faults
    assert _internal_results(bmc.metrics()) == 0


def test_arguments_nested_past_the_stack_are_refused_clearly(bmc: BmcClient) -> None:
    """The MAC's canonical text is made by recursion: nesting deeper than the BMC's
    stack allows (less deep on an RP2040 than here) is refused, not an internal error."""
    deep: Any = "x"
    for _ in range(200):  # the unix port's stack takes some 60 levels of it, not 100
        deep = [deep]
    with pytest.raises(errors.AuthFailed, match="arguments cannot be authenticated"):
        bmc.call("identify", {"seconds": 1, "deep": deep})
    assert bmc.status()["auth_failures_in_a_row"] == 1
    assert bmc.identify(0) == {"seconds": 0}  # a good MAC ends the run of failures
    assert bmc.status()["auth_failures_in_a_row"] == 0
    assert _internal_results(bmc.metrics()) == 0

"""The whole firmware (bmc.app.App) on a fake board, driven frame by frame.

MicroPython and CPython. The link is an in-memory pipe; `Host` speaks the
protocol through the real codec and HMAC, as bmcctl does.
"""

import binascii
import os

import fakes
from bmc import app, codec
from bmc.hmac256 import HmacKey
from fakes import FakeBoard


class Pipe:
    """Both directions of a USB CDC link, in memory."""

    def __init__(self):
        self.to_bmc = bytearray()
        self.from_bmc = bytearray()
        self.room = None  # bytes the host will still read; None: no limit

    def readinto(self, buf):
        n = min(len(buf), len(self.to_bmc))
        if not n:
            return None
        buf[:n] = self.to_bmc[:n]
        self.to_bmc = self.to_bmc[n:]
        return n

    def write(self, data):
        n = len(data) if self.room is None else min(len(data), self.room)
        self.from_bmc.extend(data[:n])
        if self.room is not None:
            self.room -= n
        return n


class AppBoard(FakeBoard):
    def __init__(self, wires, clock, root, reset_cause="power_on"):
        super().__init__(wires, clock, root, reset_cause)
        self.link = Pipe()
        self.button = False
        self.rebooted = False
        self.wdt_ms = None
        self.feeds = 0

    def wait(self, timeout_ms):
        pass

    def bootsel(self):
        return self.button

    def unique_id(self):
        return b"\xe6\x61\x41\x04\x03\x2a\x7b\x2c"

    def uart(self, uart_id, tx, rx, baud):
        return None

    def adc(self, channel):
        return None

    def wdt_start(self, ms):
        self.wdt_ms = ms

    def wdt_feed(self):
        self.feeds += 1

    def reboot(self):
        self.rebooted = True
        raise SystemExit("reboot")


def write_board_file(root, name="pico-rpi4"):
    # Source runs from tests/mpy; compiled runs from the repo root (cwd).
    here = __file__.rsplit("/", 1)[0]
    for base in (here + "/../..", "."):
        try:
            with open(base + "/boards/rp2040/" + name + ".json") as f:
                text = f.read()
            break
        except OSError:
            continue
    try:
        os.mkdir(root)
    except OSError:
        pass
    with open(root + "/board.json", "w") as f:
        f.write(text)


class Rig(fakes.Rig):
    """The whole App on the fake board and SBC; runs and waits as `fakes.Rig` does."""

    def __init__(self, root, board_name="pico-rpi4"):
        from bmc import boardfile

        write_board_file(root, board_name)
        defn = boardfile.load(root + "/board.json")
        super().__init__(defn, root, start=(1 << 30) - 3000)  # crosses the 32-bit wrap early on

    def boot(self, reset_cause="power_on", settings=None):
        self.boots += 1
        self.board = AppBoard(self.wires, self.clock, self.root, reset_cause)
        self.app = app.App(self.board)
        self.pc = self.app.power
        self.sbc.update()
        self.host = Host(self)

    def step(self, ms=5):
        self.clock.advance(ms)
        self.sbc.update()
        self.app.step()
        self.sbc.update()


class Host:
    """The host's side of the protocol over the rig's pipe."""

    def __init__(self, rig):
        self.rig = rig
        self.reader = codec.FrameReader()
        self.rid = 0
        self.serial = None

    def send_raw(self, data):
        self.rig.board.link.to_bmc.extend(data)

    def exchange(self, max_steps=50):
        """Step the BMC until a response arrives; returns (chunks, response)."""
        chunks = []
        for _ in range(max_steps):
            self.rig.app.step()
            link = self.rig.board.link
            while True:
                if link.from_bmc:  # the reader takes at most one frame's worth at a time
                    k = self.reader.feed(bytes(link.from_bmc))
                    link.from_bmc = link.from_bmc[k:]
                f = self.reader.next_frame()
                if f is None:
                    break
                kind, _, rid, payload = f
                if kind == codec.KIND_CHUNK:
                    chunks.append(bytes(payload))
                elif kind == codec.KIND_RESPONSE:
                    return chunks, codec.loads(payload), rid
        raise AssertionError("no response")

    def call(self, cmd, args=None, key=None, nonce=None, mac_args=None):
        self.rid = (self.rid + 1) & 0xFFFF
        msg = {"cmd": cmd, "args": args or {}}
        if key is not None:
            if nonce is None:
                nonce = self.call("nonce")["data"]["nonce"]
            serial = self.rig.app.serial
            mac = HmacKey(key).mac(
                codec.mac_input(
                    serial, nonce, cmd, mac_args if mac_args is not None else msg["args"]
                )
            )
            msg["auth"] = {
                "key": key_id(key),
                "nonce": nonce,
                "mac": binascii.hexlify(mac).decode(),
            }
        self.last_msg = msg
        self.send_raw(codec.encode_frame(codec.KIND_REQUEST, self.rid, codec.dumps(msg)))
        chunks, resp, rid = self.exchange()
        assert rid == self.rid, "response id %d for request %d" % (rid, self.rid)
        self.last_chunks = chunks
        return resp


def key_id(key):
    from bmc.auth import key_id as kid

    return kid(key)


def new_key():
    return os.urandom(32)


def hexkey(key):
    return binascii.hexlify(key).decode()


_made = [0, None]  # rigs made so far, the current one


def fresh(tmp, prefix="app"):
    """A new BMC on the rig, in a folder of its own under `tmp`."""
    import gc

    _made[0] += 1
    _made[1] = None  # let the previous BMC's heap go before the next one starts
    gc.collect()
    rig = Rig("%s/%s%d" % (tmp, prefix, _made[0]))
    _made[1] = rig
    return rig


def provision(rig):
    """An admin key given with BOOTSEL held; the key."""
    key = new_key()
    rig.board.button = True
    r = rig.host.call("keys-provision", {"role": "admin", "key": hexkey(key)})
    rig.board.button = False
    assert r["ok"], r
    return key


def scenario_names(namespace):
    """The scenario_* functions of a scenarios module (its globals()), sorted."""
    return [n for n in sorted(namespace) if n.startswith("scenario_")]


def run_scenarios(namespace):
    """Run every scenario of a module (its globals()) on TMPDIR (argv[1]): PASS or FAIL
    and the traceback for each; exit 1 when any failed."""
    import sys

    tmp = sys.argv[1]
    failed = 0
    for n in scenario_names(namespace):
        try:
            namespace[n](tmp)
            print("PASS", n)
        except Exception as e:
            failed += 1
            print("FAIL", n + ":", repr(e))
            sys.print_exception(e)
    sys.exit(1 if failed else 0)

# The firmware's own cost per request, under MicroPython: bench/requests.py runs this.
#
# The whole App on the test rig's fake board (tests/mpy/app_rig.py), its link swapped
# for one that hands over a prepared frame and takes the reply without copying, so
# only the firmware's work is timed. Per request: the time `Dispatcher.poll` takes to
# read, parse, run and answer it, and the bytes it allocates (micropython.mem_total:
# every allocation, freed heap frames included, as the collection threshold counts
# them). One JSON line per command on stdout.
import binascii
import gc
import json
import sys
import time

import micropython
from app_rig import Rig, key_id, new_key
from bmc import codec
from bmc.hmac256 import HmacKey

ROUNDS = 200  # power actions: a quarter of that (each waits for its rest state)


class Link:
    """One prepared request in, the reply's length out."""

    def __init__(self):
        self.src = None
        self.out = 0

    def readinto(self, buf):
        s = self.src
        if s is None:
            return None
        self.src = None
        buf[: len(s)] = s
        return len(s)

    def write(self, data):
        self.out += len(data)
        return len(data)


def main(root):
    rig = Rig(root)
    rig.boot()
    rig.step()
    app = rig.app
    key = new_key()
    rig.board.button = True
    r = rig.host.call("keys-provision", {"role": "admin", "key": binascii.hexlify(key).decode()})
    rig.board.button = False
    if not r["ok"]:
        print("provisioning failed: %r" % (r,))
        raise SystemExit(1)
    r = rig.host.call("config-set", {"key": "min_off_ms", "value": 0}, key=key)
    if not r["ok"]:  # so On may follow ForceOff at once
        print("config-set failed: %r" % (r,))
        raise SystemExit(1)
    mac_key = HmacKey(key)
    d = app.dispatch
    rig_link = d.link
    link = Link()

    def frame(cmd, args, signed):
        msg = {"cmd": cmd, "args": args}
        if signed:
            nonce = app.auth.issue_nonce()
            mac = mac_key.mac(codec.mac_input(app.serial, nonce, cmd, args))
            msg["auth"] = {
                "key": key_id(key),
                "nonce": nonce,
                "mac": binascii.hexlify(mac).decode(),
            }
        return codec.encode_frame(codec.KIND_REQUEST, 9, codec.dumps(msg))

    def settle():
        # back on the rig's link: the SBC's rails follow the power machine
        d.link = d.writer.stream = rig_link
        for _ in range(400):
            if app.power.state in ("On", "Off"):
                break
            rig.step(5)
        d.link = d.writer.stream = link

    def measure(name, make, rounds, between=None):
        times = []
        total = 0
        replies = 0
        for _ in range(rounds):
            if between is not None:
                between()
            fr = make()
            gc.collect()  # each request starts from the same heap
            link.src = fr
            link.out = 0
            m0 = micropython.mem_total()
            t = time.ticks_us()
            d.poll()
            t = time.ticks_diff(time.ticks_us(), t)
            total += micropython.mem_total() - m0
            times.append(t)
            replies += link.out
            if b'"ok": true' not in bytes(d.writer.buf[: link.out]):
                print("%s refused: %r" % (name, bytes(d.writer.buf[: link.out])))
                raise SystemExit(1)
        times.sort()
        print(
            json.dumps(
                {
                    "request": name,
                    "n": rounds,
                    "median_us": times[rounds // 2],
                    "p90_us": times[rounds * 9 // 10],
                    "alloc_bytes": total // rounds,
                    "reply_bytes": replies // rounds,
                }
            )
        )

    d.link = d.writer.stream = link
    measure("status", lambda: frame("status", {}, False), ROUNDS)
    measure("nonce", lambda: frame("nonce", {}, False), ROUNDS)
    measure("signed identify", lambda: frame("identify", {"seconds": 0}, True), ROUNDS)

    def power():
        return frame("power", {"action": "ForceOff" if app.power.state == "On" else "On"}, True)

    measure("signed power action", power, ROUNDS // 4, settle)


main(sys.argv[1])

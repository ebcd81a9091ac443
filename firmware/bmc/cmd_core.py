"""The hot commands, resident: hello, nonce, status, power, reset, bmc-reboot,
identify, boot-file-read (a USB boot reads file after file; the stream itself is
`BootFiles.stream`). The others are loaded per request (see bmc.commands).

The status reply (status, and power and reset answer with it) is sent as JSON text
that is encoded again only when it changes. Hosts poll status more than anything,
and MicroPython's JSON encoder writes a string a character at a time: encoding the
~600 B reply was a third of the firmware's work for the request. Four fields change
with every call and are formatted into the text's tail (_TAIL); the rest changes
with a power transition, a setting or a key. Two dicts take turns being filled, so
each reply compares its values with the previous reply's (a dict comparison, in C)
without copying either: when they are the same the kept text is sent (encoded the
first time), when not the dict itself, the live fields added (taken out again
before the next comparison).
"""

import json

from bmc import VERSION, codec, errors
from bmc.auth import NONCE_TTL_MS
from bmc.dispatch import OPERATOR, PUBLIC, arg

MAX_IDENTIFY_S = 3600
_TAIL = b', "uptime_ms": %d, "since_ms": %d, "identify_ms": %d, "locked_out_ms": %d}'


def register(app):
    d = app.dispatch
    # the status reply: [the dict filled last, the other one, the text of their values
    # (None: not encoded yet), the last reply was the dict itself (live fields in it)]
    memo = [None, None, None, False]

    def status_reply():
        # one function (each costs resident heap), three locals: MicroPython keeps its
        # frame on the C stack
        prev = memo[0]
        if memo[3]:  # compared below without them
            memo[3] = False
            del prev["uptime_ms"], prev["since_ms"], prev["identify_ms"], prev["locked_out_ms"]
        st = {"state": "Unknown"} if app.power is None else app.power.fill(memo[1])
        st["boot_count"] = app.persist.boot_count
        st["reset_cause"] = app.persist.reset_cause
        st["serial"] = app.serial
        st["board"] = app.board_name()
        st["board_error"] = app.board_error
        st["auth_failures_in_a_row"] = app.auth.in_a_row
        st["provisioned"] = app.auth.provisioned()
        memo[0] = st
        memo[1] = prev
        live = (
            app.clock.uptime_ms(),
            app.power.since_ms() if app.power is not None else 0,
            app.indicators.identify_left_ms(),
            app.auth.locked_ms(),
        )
        if st == prev:
            if memo[2] is None:
                memo[2] = json.dumps(st)[:-1].encode()  # without the closing brace
            return (memo[2], _TAIL % live)
        memo[2] = None
        st["uptime_ms"], st["since_ms"], st["identify_ms"], st["locked_out_ms"] = live
        memo[3] = True
        return st

    def hello(req):
        proto = arg(req.args, "proto", int, codec.PROTO_VERSION)
        if proto != codec.PROTO_VERSION:
            raise errors.CmdError(
                errors.UNSUPPORTED_VERSION,
                # str()[:12]: a number of a frame's length would not fit the answer's frame
                "host speaks protocol %s, this BMC speaks %d"
                % (str(proto)[:12], codec.PROTO_VERSION),
            )
        return {
            "proto": codec.PROTO_VERSION,
            "fw": VERSION,
            "board": app.board_name(),
            "serial": app.serial,
            "caps": sorted(d.commands),
            "max_payload": codec.MAX_PAYLOAD,
            "provisioned": app.auth.provisioned(),
            "board_error": app.board_error,
        }

    def nonce(req):
        return {"nonce": app.auth.issue_nonce(), "ttl_ms": NONCE_TTL_MS}

    def status(req):
        return status_reply()

    def power(req):
        action = arg(req.args, "action", str, required=True)
        app.power_action(action)
        return status_reply()

    def reset(req):
        app.power_action("ForceRestart")
        return status_reply()

    def bmc_reboot(req):
        app.events.add("bmc", "reboot_requested", req.key_id or "")
        app.reboot_pending = True
        return {"rebooting": True}

    def identify(req):
        seconds = arg(req.args, "seconds", int, 15)
        if not 0 <= seconds <= MAX_IDENTIFY_S:
            raise errors.CmdError(errors.INVALID, "seconds must be 0..%d" % MAX_IDENTIFY_S)
        app.indicators.identify(seconds * 1000)
        return {"seconds": seconds}

    def boot_file_read(req):
        a = req.args
        return app.bootfiles.stream(
            arg(a, "name", str, required=True), arg(a, "gen", int), arg(a, "sha256", str), req
        )

    d.register("hello", PUBLIC, hello)
    d.register("nonce", PUBLIC, nonce)
    d.register("status", PUBLIC, status)
    d.register("power", OPERATOR, power)
    d.register("reset", OPERATOR, reset)
    d.register("bmc-reboot", OPERATOR, bmc_reboot)
    d.register("identify", OPERATOR, identify)
    d.register("boot-file-read", OPERATOR, boot_file_read)

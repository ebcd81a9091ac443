"""The hot commands, resident: hello, nonce, status, power, reset, bmc-reboot,
identify, boot-file-read (a USB boot reads file after file; the stream itself is
`BootFiles.stream`). The others are loaded per request (see bmc.commands)."""

from bmc import VERSION, codec, errors
from bmc.auth import NONCE_TTL_MS
from bmc.dispatch import OPERATOR, PUBLIC, arg

MAX_IDENTIFY_S = 3600


def register(app):
    d = app.dispatch

    def hello(req):
        proto = arg(req.args, "proto", int, codec.PROTO_VERSION)
        if proto != codec.PROTO_VERSION:
            raise errors.CmdError(
                errors.UNSUPPORTED_VERSION,
                "host speaks protocol %d, this BMC speaks %d" % (proto, codec.PROTO_VERSION),
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
        return app.status()

    def power(req):
        action = arg(req.args, "action", str, required=True)
        app.power_action(action)
        return app.status()

    def reset(req):
        app.power_action("ForceRestart")
        return app.status()

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

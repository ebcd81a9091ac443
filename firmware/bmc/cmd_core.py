"""Core commands: hello, nonce, status, power, reset, bmc-reboot, identify,
events, console, config."""

import json

from bmc import VERSION, codec, errors
from bmc.dispatch import ADMIN, OPERATOR, PUBLIC, arg

MAX_IDENTIFY_S = 3600
MAX_CONSOLE_WRITE = 256


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
        from bmc.auth import NONCE_TTL_MS

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

    def events(req):
        since = arg(req.args, "since", int, 0)
        view = req.chunk_view()
        used = 0
        sent = 0
        nxt = since
        for entry in app.events.entries(since - 1):  # entries(n) gives seq > n
            line = (json.dumps(entry) + "\n").encode()
            if used + len(line) > len(view):
                req.chunk_prepared(used)
                view = req.chunk_view()
                used = 0
            view[used : used + len(line)] = line
            used += len(line)
            sent += 1
            nxt = entry["seq"] + 1
        if used:
            req.chunk_prepared(used)
        return {"count": sent, "next": nxt, "dropped": app.events.dropped}

    def console(req):
        since = arg(req.args, "since", int, -1)
        con = app.console
        if since < 0:
            since = con.start()
        lost_total = 0
        first = True
        while True:
            n, lost = con.read_into(since, req.chunk_view())
            if first:
                lost_total = lost
                since += lost
                first = False
            if not n:
                break
            req.chunk_prepared(n)
            since += n
        return {"next": since, "lost": lost_total}

    def console_write(req):
        data = arg(req.args, "data", str, required=True)
        if len(data) > MAX_CONSOLE_WRITE:
            raise errors.CmdError(errors.INVALID, "at most %d characters" % MAX_CONSOLE_WRITE)
        if app.console.uart is None:
            raise errors.CmdError(errors.NOT_ALLOWED, "this board has no console UART")
        app.console.write(data.encode())
        return {"written": len(data)}

    def config_get(req):
        return app.config.get()

    def config_set(req):
        key = arg(req.args, "key", str, required=True)
        if "value" not in req.args:
            raise errors.CmdError(errors.INVALID, "missing argument: value")
        try:
            app.config.set(key, req.args["value"])
        except ValueError as e:
            raise errors.CmdError(errors.INVALID, str(e))
        except OSError as e:
            raise errors.CmdError(errors.STORAGE, "could not store config: %s" % e)
        return app.config.get()

    d.register("hello", PUBLIC, hello)
    d.register("nonce", PUBLIC, nonce)
    d.register("status", PUBLIC, status)
    d.register("power", OPERATOR, power)
    d.register("reset", OPERATOR, reset)
    d.register("bmc-reboot", OPERATOR, bmc_reboot)
    d.register("identify", OPERATOR, identify)
    d.register("events", OPERATOR, events)
    d.register("console", OPERATOR, console)
    d.register("console-write", OPERATOR, console_write)
    d.register("config-get", OPERATOR, config_get)
    d.register("config-set", ADMIN, config_set)

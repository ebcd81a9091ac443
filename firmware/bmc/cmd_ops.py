"""Operator tools, loaded per request (bmc.commands): events, console,
console-write, config-get, config-set."""

import json

from bmc import errors
from bmc.dispatch import arg

MAX_CONSOLE_WRITE = 256
_LINE_MAX = 1536  # bytes of an events line (the log writes ~800 at most)
_UNREADABLE = (
    b'{"seq": %d, "boot": 0, "uptime_ms": 0, "kind": "store", "cause": "corrupt", '
    b'"detail": "unreadable"}\n'
)


def events(app, req):
    since = arg(req.args, "since", int, 0)
    sent = 0
    nxt = since
    # one entry at a time from flash to a line: the log is never whole in RAM
    for entry in app.events.iter_entries(since - 1):  # seq > since - 1
        line = (json.dumps(entry) + "\n").encode()
        if len(line) > _LINE_MAX:  # a line the flash mangled, longer encoded (raw controls)
            line = _UNREADABLE % entry["seq"]
        req.line(line)
        sent += 1
        nxt = entry["seq"] + 1
    req.end_lines()
    return {"count": sent, "next": nxt, "dropped": app.events.dropped}


def console(app, req):
    since = arg(req.args, "since", int, -1)
    con = app.console
    if since < 0:
        since = con.start()
    elif since > con.end:  # an offset this boot never reached: the reader's BMC restarted
        since = con.end  # `next` below `since` tells the reader so
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


def console_write(app, req):
    data = arg(req.args, "data", str, required=True)
    if len(data) > MAX_CONSOLE_WRITE:
        raise errors.CmdError(errors.INVALID, "at most %d characters" % MAX_CONSOLE_WRITE)
    if app.console.uart is None:
        raise errors.CmdError(errors.NOT_ALLOWED, "this board has no console UART")
    raw = data.encode()
    sent = app.console.write(raw)
    if sent < len(raw):  # the UART's transmit buffer is full: the SBC does not read
        raise errors.CmdError(
            errors.BUSY,
            "console busy: %d of %d bytes sent; retry the rest" % (sent, len(raw)),
            {"written_bytes": sent},
        )
    return {"written": len(data)}


def config_get(app, req):
    return app.config.get()


def config_set(app, req):
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

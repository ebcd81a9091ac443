"""Boot manifest, boot files and USB boot commands, loaded per request: see bmc.bootfiles
(boot-file-read, the stream, is resident: bmc.cmd_core).

| command | role | args |
| boot-manifest-get | public | | (chunks: a JSON line an entry)
| boot-manifest-set | admin | files [{name, size, sha256, src}] or files_sha256, expect |
| boot-file-put | admin | sha256, size, offset, data (base64), chunk_sha256, manifest |
| boot-usb | operator | timeout_ms |
| boot-report | operator | event, name, sha256, gen, detail |
| boot-status | public | |
"""

from bmc import bootfiles, errors
from bmc.dispatch import arg

_DETAIL_MAX = 80


def manifest_get(app, req):
    bf = app.bootfiles
    return bf.send_manifest(req)


def manifest_set(app, req):
    bf = app.bootfiles
    a = req.args
    files = arg(a, "files", list)
    files_sha = arg(a, "files_sha256", str)
    if (files is None) == (files_sha is None):
        raise errors.CmdError(
            errors.INVALID, "give files, or files_sha256 of the uploaded files list"
        )
    expect = arg(a, "expect", int)
    # Out of the request's args, and no local keeps it: the list (a few KB for a Pi 5's
    # files) is garbage once the new manifest is made, when the summary opens a file.
    files = None
    return bf.set_manifest(a.pop("files", None), expect, files_sha)


def file_put(app, req):
    bf = app.bootfiles
    a = req.args
    return bf.put(
        arg(a, "sha256", str, required=True),
        arg(a, "size", int, required=True),
        arg(a, "offset", int, required=True),
        arg(a, "data", str, required=True),
        arg(a, "chunk_sha256", str, required=True),
        arg(a, "manifest", bool, False),
    )


def usb(app, req):
    bf = app.bootfiles
    ms = arg(req.args, "timeout_ms", int, bootfiles.TIMEOUT_DEFAULT_MS)
    if ms < 1000 or ms > bootfiles.TIMEOUT_MAX_MS:
        raise errors.CmdError(
            errors.INVALID, "timeout_ms must be 1000..%d" % bootfiles.TIMEOUT_MAX_MS
        )
    return bf.usb_start(ms)


def report(app, req):
    bf = app.bootfiles
    a = req.args
    event = arg(a, "event", str, required=True)
    if event not in bootfiles.REPORT_EVENTS:
        raise errors.CmdError(
            errors.INVALID, "event must be one of: " + ", ".join(bootfiles.REPORT_EVENTS)
        )
    name = arg(a, "name", str, "")
    return bf.report(
        event,
        name[: bootfiles.NAME_MAX + 8],
        arg(a, "sha256", str),
        arg(a, "gen", int),
        arg(a, "detail", str, "")[:_DETAIL_MAX],
    )


def status(app, req):
    bf = app.bootfiles
    return bf.status()

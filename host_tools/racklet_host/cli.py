"""bmcctl: drive the BMCs on the backplane hub (or a simulated rack) from a shell."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import threading
import time
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    List,
    Optional,
    Sequence,
    TextIO,
    Tuple,
    TypeVar,
    cast,
)

from . import cli_boot, discovery
from .client import DEFAULT_TIMEOUT, DISRUPTIVE_ACTIONS, POWER_ACTIONS, BmcClient, open_client
from .discovery import BmcPort
from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    BmcError,
    KeyFileError,
    LinkGone,
    NoBmcFound,
    NotFound,
    PortBusy,
    PresenceRequired,
    Timeout,
)
from .keys import ENV_KEY_FILE, Key, key_file_path, load_key, load_or_create, write_key

Row = Dict[str, Any]
Action = Callable[[BmcClient], Any]

EPILOG = f"""\
targets: slot names (slot3 or 3), serial numbers or port paths; several at once, or --all.
  With no target, the only BMC found is used. On USB a slot is the BMC's port on the
  backplane hub: set $BMC_HUB to the hub's path (`bmcctl list` shows LOCATION) when
  it is not on a root port of this host (see the README).
keys: only from --key-file F or ${ENV_KEY_FILE}; the file holds 64 hex digits and must
  have mode 0600. Never put a key on the command line.
exit codes:
  0  every target succeeded
  1  some target failed (see its row)
  2  usage error, or a missing or unsafe key file
  3  no BMC found, or a target matches none
  4  authentication refused, role too low, or locked out
  5  not allowed in the BMC's current state, or BOOTSEL must be held
  6  timeout, device gone, or port busy
  130  interrupted (Ctrl-C); with several targets, once the BMCs already asked have
     answered, it says which of them acted (Ctrl-C again leaves at once)
  With several targets, the code is the failures' common code, else 1.
"""


class UsageError(BmcError):
    code = "usage"
    exit_code = EXIT_USAGE


# -- argument parsing ---------------------------------------------------------


def _add_global_options(p: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes, before or after its own words.

    On the top-level parser they carry the defaults; on every subcommand's parser
    they default to SUPPRESS, so a value given after the command overrides and an
    absent one leaves the top-level value alone.
    """

    def d(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    p.add_argument(
        "--rack", metavar="DIR", default=d(None), help="a simulated rack (default: $BMC_RACK)"
    )
    p.add_argument(
        "--port", metavar="PATH", default=d(None), help="talk to this serial device only"
    )
    p.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
    p.add_argument(
        "--yes",
        "-y",
        action="store_true",
        default=d(False),
        help="do not ask for confirmation (needed without a terminal)",
    )
    p.add_argument(
        "--key-file", metavar="F", default=d(None), help=f"key file (default: ${ENV_KEY_FILE})"
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=d(DEFAULT_TIMEOUT),
        metavar="S",
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT:g})",
    )


def _seconds(text: str) -> float:
    """A timeout: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it also takes the global options (and so do its own subcommands)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_global_options(self, top=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bmcctl",
        description="Manage Racklet BMCs on the backplane USB hub or in a simulated rack.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    sub.required = True

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        return sp

    def targets(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("targets", nargs="*", metavar="TARGET", help="slot, serial or port")
        sp.add_argument("--all", "-a", action="store_true", help="every BMC found")

    cmd("list", "list the BMCs found, with serial, board and power state")
    targets(cmd("status", "power state, rails, cause, fault, uptime, lock-out"))
    sp = cmd("power", "a power action: " + ", ".join(POWER_ACTIONS))
    sp.add_argument("action", metavar="ACTION", help=", ".join(POWER_ACTIONS))
    targets(sp)
    targets(cmd("reset", "ForceRestart of the SBC"))
    sp = cmd("bmc-reboot", "restart the BMC itself (the SBC keeps running)")
    targets(sp)
    sp.add_argument("--no-wait", action="store_true", help="do not wait for it to come back")
    sp = cmd("identify", "blink the identify LED")
    sp.add_argument("--seconds", type=int, default=15, metavar="N", help="0 stops (default 15)")
    targets(sp)
    sp = cmd("events", "read the event log")
    sp.add_argument("--since", type=int, default=0, metavar="SEQ", help="entries after SEQ")
    targets(sp)
    sp = cmd("console", "read the SBC's console")
    sp.add_argument("--since", type=int, default=-1, metavar="OFFSET", help="from this offset")
    sp.add_argument("--follow", "-f", action="store_true", help="keep reading (one target)")
    targets(sp)
    sp = cmd("config", "runtime settings")
    csub = sp.add_subparsers(dest="action", metavar="ACTION")
    csub.required = True
    targets(csub.add_parser("get", help="show the settings"))
    cs = csub.add_parser("set", help="change one setting (VALUE is JSON, or else a string)")
    cs.add_argument("name", metavar="KEY")
    cs.add_argument("value", metavar="VALUE")
    targets(cs)
    sp = cmd("keys", "provision, add, rotate, revoke and list keys")
    ksub = sp.add_subparsers(dest="action", metavar="ACTION")
    ksub.required = True
    kp = ksub.add_parser(
        "provision",
        help="install the first admin key (unprovisioned BMC, BOOTSEL held)",
        description="Writes a new random key to --key-file when the file does not exist, "
        "and uses the key in it when it does. Hold BOOTSEL on the BMC meanwhile "
        "(simulator: bmc-sim bootsel --rack DIR SLOT).",
    )
    kp.add_argument("targets", nargs=1, metavar="SLOT")
    kp.add_argument("--role", default="admin", choices=["admin"])
    kp.set_defaults(all=False)
    ka = ksub.add_parser("add", help="add a key (new file, mode 0600) for a role")
    ka.add_argument("--role", required=True, choices=["operator", "admin"])
    ka.add_argument("--new-key-file", required=True, metavar="F2", help="created, or reused")
    targets(ka)
    kr = ksub.add_parser(
        "rotate",
        help="replace the key in --key-file by a new one of the same role",
        description="Adds a new key for the same role, writes it to --new-key-file (default: "
        "replaces --key-file), then revokes the old key.",
    )
    kr.add_argument("--new-key-file", metavar="F2")
    targets(kr)
    kv = ksub.add_parser("revoke", help="revoke a key by its id")
    kv.add_argument("key_id", metavar="KEY_ID")
    targets(kv)
    targets(ksub.add_parser("list", help="key ids and roles (never the keys)"))
    targets(
        cmd("maintenance", "reboot into maintenance mode: REPL, firmware off, until a hard reset")
    )
    targets(cmd("factory-reset", "forget keys and settings (BOOTSEL held)"))
    cli_boot.add_parsers(sub, targets)
    return p


# -- targets ------------------------------------------------------------------


def find_targets(args: argparse.Namespace, timeout: float) -> List[BmcPort]:
    ports = discovery.discover(rack=args.rack, port=args.port)
    sels: List[str] = list(getattr(args, "targets", []) or [])
    if getattr(args, "all", False) or args.command == "list":
        if sels:
            raise UsageError("give targets or --all, not both")
        return ports
    if not sels:
        if len(ports) == 1:
            return ports
        names = ", ".join(p.name for p in ports)
        raise UsageError(f"{len(ports)} BMCs found ({names}): name targets or use --all")
    hits = [discovery.match(ports, sel) for sel in sels]
    if None in hits:
        # maybe serial numbers the ports do not advertise: ask the BMCs
        _ask_serials([p for p in ports if p.serial is None], timeout)
        hits = [discovery.match(ports, sel) for sel in sels]
    chosen: List[BmcPort] = []
    for sel, hit in zip(sels, hits):  # in the order given
        if hit is None:
            raise NoBmcFound(f"no BMC matches '{sel}'")
        if hit not in chosen:
            chosen.append(hit)
    return chosen


def _ask_serials(ports: Sequence[BmcPort], timeout: float) -> None:
    def one(port: BmcPort) -> None:
        try:
            with open_client(port, timeout=timeout) as c:
                port.serial = c.hello().get("serial")
        except BmcError:
            pass

    jobs = _Jobs(one, ports, 16)
    for i in range(len(ports)):
        jobs.result(i)


_I = TypeVar("_I")
_O = TypeVar("_O")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a command on several BMCs, raised once the requests already sent
    were answered or timed out: `rows` says what each target did."""

    def __init__(self, rows: List[Row]) -> None:
        super().__init__()
        self.rows = rows


def run_all(
    ports: Sequence[BmcPort], action: Action, key: Optional[Key], timeout: float
) -> List[Row]:
    """Run `action` on every target in parallel; one row per target, in target order."""

    def one(port: BmcPort) -> Row:
        row: Row = {"target": port.name, "port": port.path}
        try:
            with open_client(port, key=key, timeout=timeout) as c:
                row["data"] = action(c)
                row["ok"] = True
        except BmcError as e:
            row.update(ok=False, error=e.code, message=e.message, exit_code=e.exit_code)
            if e.data:
                row["data"] = e.data
        except Exception as e:  # a bug must still give one line per target
            row.update(ok=False, error="internal", message=repr(e), exit_code=EXIT_FAILED)
        return row

    if len(ports) == 1:
        return [one(ports[0])]
    jobs = _Jobs(one, ports, 16)
    try:
        return [jobs.result(i) for i in range(len(ports))]
    except KeyboardInterrupt:
        # What was asked may have been done: wait for those answers (each within the
        # timeout), so that the user learns which BMCs acted. Ctrl-C again leaves.
        started = jobs.stop()
        asked = [p.name for i, p in enumerate(ports[:started]) if not jobs.finished(i)]
        if asked:
            sys.stderr.write(
                f"bmcctl: interrupted; waiting for the answers of {', '.join(asked)}"
                f" (at most {timeout:g} s; Ctrl-C again to leave without them)\n"
            )
        rows = []
        for i, p in enumerate(ports):
            row, err = jobs.wait(i) if i < started else (None, None)
            if row is None:
                why = "not asked" if i >= started else f"interrupted before its answer: {err!r}"
                row = {"target": p.name, "port": p.path, "ok": False, "error": "interrupted"}
                row.update(message=why, exit_code=EXIT_INTERRUPTED)
            rows.append(row)
        raise Interrupted(rows) from None


class _Jobs(Generic[_I, _O]):
    """`fn` over `items` on at most `workers` daemon threads: leaving (a second Ctrl-C)
    never waits for a BMC that does not answer, as an executor's threads make it."""

    def __init__(self, fn: Callable[[_I], _O], items: Sequence[_I], workers: int) -> None:
        self._fn = fn
        self._items = list(items)
        self._out: List[Optional[_O]] = [None] * len(self._items)
        self._err: List[Optional[BaseException]] = [None] * len(self._items)
        self._done = [threading.Event() for _ in self._items]
        self._next = 0
        self._stopped = False
        self._lock = threading.Lock()
        for _ in range(min(workers, len(self._items))):
            threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._stopped or self._next >= len(self._items):
                    return
                i = self._next
                self._next += 1
            try:
                self._out[i] = self._fn(self._items[i])
            except BaseException as e:  # handed to the caller of result()
                self._err[i] = e
            self._done[i].set()

    def stop(self) -> int:
        """Start no more; how many were started (the first ones)."""
        with self._lock:
            self._stopped = True
            return self._next

    def finished(self, i: int) -> bool:
        return self._done[i].is_set()

    def wait(self, i: int) -> Tuple[Optional[_O], Optional[BaseException]]:
        """Item `i`'s result or what it raised, once it ended (a Ctrl-C here raises)."""
        self._done[i].wait()
        return self._out[i], self._err[i]

    def result(self, i: int) -> _O:
        out, err = self.wait(i)
        if err is not None:
            raise err
        return cast(_O, out)


def exit_code(rows: Sequence[Row]) -> int:
    codes = {r["exit_code"] for r in rows if not r.get("ok")}
    if not codes:
        return EXIT_OK
    if len(codes) == 1:
        return int(codes.pop())
    return EXIT_FAILED


# -- output -------------------------------------------------------------------


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _safe(text: str, lines: bool = False) -> str:
    """Text from a BMC (and, through its event log, from an SBC) for a terminal: control
    characters as escapes, so that a name or message cannot move the cursor, retitle
    the window, or add a line that looks like another event (`lines`: keep newlines).
    (`console` prints the SBC's bytes as they are, as any serial console does.)"""
    pattern = _CONTROL_BUT_NEWLINE if lines else _CONTROL
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _rails(rails: Any) -> str:
    if not isinstance(rails, list):
        return "-"
    out = []
    for r in rails:
        if isinstance(r, dict):
            pg = r.get("pgood")
            out.append(f"{r.get('name')}:{'ok' if pg else 'off' if pg is False else '?'}")
    return " ".join(out) or "-"


def _duration(ms: Any) -> str:
    if not isinstance(ms, int):
        return "-"
    s = ms // 1000
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def status_columns(d: Dict[str, Any]) -> Dict[str, str]:
    lock = d.get("locked_out_ms") or 0
    return {
        "state": _fmt(d.get("state")),
        "rails": _rails(d.get("rails")),
        "cause": _fmt(d.get("cause")),
        "fault": _fmt(d.get("fault")),
        "uptime": _duration(d.get("uptime_ms")),
        "locked": f"{lock // 1000}s" if lock else "no",
    }


def generic_columns(d: Any) -> Dict[str, str]:
    if not isinstance(d, dict):
        return {"result": _fmt(d)}
    return {k: _fmt(v) for k, v in d.items()}


def print_table(rows: Sequence[Row], columns: Callable[[Any], Dict[str, str]], out: TextIO) -> None:
    header = ["target"]
    cells: List[Dict[str, str]] = []
    for r in rows:
        if r.get("ok"):
            c = columns(r.get("data"))
        else:
            c = {"error": f"{r['error']}: {r['message']}"}
        c["target"] = r["target"]
        c = {_safe(k): _safe(v) for k, v in c.items()}  # names too: a BMC's fields
        for k in c:
            if k not in header:
                header.append(k)
        cells.append(c)
    if "error" in header:  # errors last
        header.remove("error")
        header.append("error")
    widths = {h: max([len(h)] + [len(c.get(h, "")) for c in cells]) for h in header}
    out.write("  ".join(h.upper().ljust(widths[h]) for h in header).rstrip() + "\n")
    for c in cells:
        out.write("  ".join(c.get(h, "").ljust(widths[h]) for h in header).rstrip() + "\n")


def emit(
    args: argparse.Namespace,
    rows: List[Row],
    columns: Callable[[Any], Dict[str, str]] = generic_columns,
) -> int:
    if args.json:
        clean = [{k: v for k, v in r.items() if k != "exit_code"} for r in rows]
        json.dump(clean, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print_table(rows, columns, sys.stdout)
    return exit_code(rows)


# -- commands -----------------------------------------------------------------


def need_key(args: argparse.Namespace) -> Key:
    path = key_file_path(args.key_file)
    if path is None:
        raise KeyFileError(f"this command needs a key: --key-file F or ${ENV_KEY_FILE}")
    return load_key(path)


def confirm(args: argparse.Namespace, what: str, ports: Sequence[BmcPort]) -> None:
    """Ask on the terminal before `what` on several BMCs; with no terminal to ask on
    (a script, a closed stdin), only --yes goes ahead."""
    if args.yes or len(ports) < 2:
        return
    names = ", ".join(p.name for p in ports)
    if sys.stdin is None or not sys.stdin.isatty():
        raise UsageError(
            f"{what} on {len(ports)} BMCs ({names}): stdin is not a terminal to ask on;"
            " add --yes to go ahead"
        )
    sys.stderr.write(f"{what} on {len(ports)} BMCs ({names})? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise UsageError("cancelled")


def cmd_list(args: argparse.Namespace) -> int:
    ports = find_targets(args, args.timeout)

    def action(c: BmcClient) -> Dict[str, Any]:
        h = c.hello()
        st = c.status()
        return {
            "serial": h.get("serial"),
            "board": h.get("board"),
            "fw": h.get("fw"),
            "provisioned": h.get("provisioned"),
            "state": st.get("state"),
        }

    rows = run_all(ports, action, None, args.timeout)
    for r, p in zip(rows, ports):
        r["port"] = os.path.realpath(p.path) if p.source == "rack" else p.path
        if p.location:
            r["location"] = p.location

    def columns(d: Dict[str, Any]) -> Dict[str, str]:
        return {k: _fmt(d.get(k)) for k in ("serial", "board", "fw", "provisioned", "state")}

    if not args.json:
        # the port is worth showing in a listing, and on USB its location: the path
        # the slot is named from (BMC_HUB)
        usb = any("location" in r for r in rows)
        for r in rows:
            if r.get("ok"):
                where = {"port": r["port"]}
                if usb:
                    where["location"] = r.get("location")
                r["data"] = {**where, **r["data"]}

        def columns2(d: Dict[str, Any]) -> Dict[str, str]:
            where = {"port": _fmt(d.get("port"))}
            if usb:
                where["location"] = _fmt(d.get("location"))
            return {**where, **columns(d)}

        return emit(args, rows, columns2)
    return emit(args, rows, columns)


def simple(
    args: argparse.Namespace,
    action: Action,
    *,
    key: bool = True,
    columns: Callable[[Any], Dict[str, str]] = generic_columns,
    confirm_what: Optional[str] = None,
) -> int:
    k = need_key(args) if key else None
    ports = find_targets(args, args.timeout)
    if confirm_what:
        confirm(args, confirm_what, ports)
    rows = run_all(ports, action, k, args.timeout)
    return emit(args, rows, columns)


def cmd_power(args: argparse.Namespace) -> int:
    action = args.action
    match = {a.lower(): a for a in POWER_ACTIONS}.get(action.lower())
    if match is None:
        raise UsageError(f"unknown power action {action}; one of: {', '.join(POWER_ACTIONS)}")
    what = f"power {match}" if match in DISRUPTIVE_ACTIONS else None
    return simple(args, lambda c: c.power(match), columns=status_columns, confirm_what=what)


def cmd_events(args: argparse.Namespace) -> int:
    key = need_key(args)
    ports = find_targets(args, args.timeout)

    def action(c: BmcClient) -> Dict[str, Any]:
        events, data = c.events(args.since)
        return {"events": events, **data}

    rows = run_all(ports, action, key, args.timeout)
    if args.json:
        return emit(args, rows)
    for r in rows:
        prefix = f"{r['target']}  " if len(rows) > 1 else ""
        if not r.get("ok"):
            print(_safe(f"{r['target']}: {r['error']}: {r['message']}"))
            continue
        for ev in r["data"]["events"]:
            print(event_line(prefix, ev))
        if r["data"].get("dropped"):
            print(f"{prefix}({r['data']['dropped']} older events dropped)")
    return exit_code(rows)


def event_line(prefix: str, ev: Dict[str, Any]) -> str:
    """One event as `bmcctl events` prints it."""
    return _safe(
        f"{prefix}{ev.get('seq', '-'):>5} boot {ev.get('boot', '-')} "
        f"{_duration(ev.get('uptime_ms')):>6}  {ev.get('kind', '-')}/"
        f"{ev.get('cause', '-')}  {ev.get('detail', '')}".rstrip()
    )


def cmd_console(args: argparse.Namespace) -> int:
    key = need_key(args)
    ports = find_targets(args, args.timeout)
    if args.follow:
        if len(ports) != 1:
            raise UsageError("--follow takes exactly one target")
        with open_client(ports[0], key=key, timeout=args.timeout) as c:
            c.hold = False  # the port is the bridge's and the admins' between polls
            follow(c, ports[0].name, args.since)

    def action(c: BmcClient) -> Dict[str, Any]:
        body, data = c.console(args.since)
        return {"text": body.decode("utf-8", "replace"), **data}

    rows = run_all(ports, action, key, args.timeout)
    if args.json:
        return emit(args, rows)
    for r in rows:
        if not r.get("ok"):
            print(_safe(f"{r['target']}: {r['error']}: {r['message']}"))
            continue
        if len(rows) > 1:
            print(f"==> {r['target']} <==")
        sys.stdout.write(r["data"]["text"])
        if r["data"]["text"] and not r["data"]["text"].endswith("\n"):
            sys.stdout.write("\n")
    return exit_code(rows)


def follow(c: BmcClient, name: str, since: int) -> None:
    """`console --follow`: poll the console for ever (Ctrl-C ends it), through the
    BMC restarting or going away for a while, each said once on stderr. A BMC that
    restarted holds a new console: its `next` comes back below the offset asked for,
    and the new console is shown from its start."""
    gone = ""
    while True:
        try:
            body, data = c.console(since)
        except (LinkGone, Timeout, PortBusy) as e:
            if not gone:
                gone = e.message
                sys.stderr.write(f"[{name}: {_safe(gone)}; waiting for it]\n")
            time.sleep(0.5)
            continue
        if gone:
            sys.stderr.write(f"[{name}: back]\n")
            gone = ""
        nxt = data.get("next")
        if nxt is None:
            nxt = since
        if since >= 0 and nxt < since:
            sys.stderr.write(f"[{name}: the BMC restarted; its console from the start]\n")
            since = -1
            continue
        if data.get("lost"):
            sys.stderr.write(f"[{data['lost']} console bytes lost]\n")
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
        since = nxt
        time.sleep(0.3)


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_config(args: argparse.Namespace) -> int:
    key = need_key(args)
    ports = find_targets(args, args.timeout)
    if args.action == "get":
        rows = run_all(ports, lambda c: c.config_get(), key, args.timeout)
    else:
        value = parse_value(args.value)
        rows = run_all(ports, lambda c: c.config_set(args.name, value), key, args.timeout)
    if args.json:
        return emit(args, rows)
    # one line per setting: settings are many, targets few
    lines: List[Tuple[str, str, str]] = []
    for r in rows:
        if not r.get("ok"):
            lines.append((r["target"], "error", f"{r['error']}: {r['message']}"))
            continue
        for name in sorted(r["data"]):
            lines.append((r["target"], name, _fmt(r["data"][name])))
    w0 = max([6] + [len(t) for t, _, _ in lines])
    w1 = max([7] + [len(n) for _, n, _ in lines])
    print(f"{'TARGET'.ljust(w0)}  {'SETTING'.ljust(w1)}  VALUE")
    for t, n, v in lines:
        print(_safe(f"{t.ljust(w0)}  {n.ljust(w1)}  {v}"))
    return exit_code(rows)


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action == "provision":
        return keys_provision(args)
    if args.action == "add":
        new, created = load_or_create(args.new_key_file)
        if not args.json and created:
            sys.stderr.write(f"wrote a new {args.role} key to {args.new_key_file}\n")
        return simple(args, lambda c: c.keys_add(args.role, new))
    if args.action == "rotate":
        return keys_rotate(args)
    if args.action == "revoke":
        return simple(args, lambda c: c.keys_revoke(args.key_id))

    def columns(d: Dict[str, Any]) -> Dict[str, str]:
        keys = d.get("keys") or []
        return {"keys": " ".join(f"{k.get('id')}:{k.get('role')}" for k in keys) or "-"}

    return simple(args, lambda c: {"keys": c.keys_list()}, columns=columns)


def keys_provision(args: argparse.Namespace) -> int:
    path = key_file_path(args.key_file)
    if path is None:
        raise KeyFileError(f"keys provision needs --key-file F (or ${ENV_KEY_FILE})")
    ports = find_targets(args, args.timeout)
    if len(ports) != 1:
        raise UsageError("keys provision takes exactly one target")
    key, created = load_or_create(path)
    if not args.json:
        how = "wrote a new key to" if created else "using the key in"
        sys.stderr.write(
            f"{how} {path} (id {key.key_id}); hold BOOTSEL on {ports[0].name} now"
            f"{_bootsel_hint(args, ports[0])}\n"
        )
    rows = run_all(ports, lambda c: c.keys_provision(args.role, key), None, args.timeout)
    for r in rows:
        if r.get("error") == PresenceRequired.code:
            r["message"] += _bootsel_hint(args, ports[0]) + ", and run this again"
    return emit(args, rows)


def _bootsel_hint(args: argparse.Namespace, port: BmcPort) -> str:
    if port.source == "rack":
        rack = args.rack or os.environ.get(discovery.ENV_RACK, "DIR")
        return f" (simulator: bmc-sim bootsel --rack {rack} {port.name})"
    return ""


def keys_rotate(args: argparse.Namespace) -> int:
    old = need_key(args)
    ports = find_targets(args, args.timeout)
    new = Key.generate()

    # 1. find the old key's role and add the new key with it, everywhere
    def add(c: BmcClient) -> Dict[str, Any]:
        role = next((k.get("role") for k in c.keys_list() if k.get("id") == old.key_id), None)
        if role is None:
            raise KeyFileError(f"key {old.key_id} is not installed on this BMC")
        c.keys_add(str(role), new)
        return {"role": role}

    try:
        rows = run_all(ports, add, old, args.timeout)
    except KeyboardInterrupt:
        _take_back_interrupted(ports, old, new, args.timeout)
        raise
    if not all(r.get("ok") for r in rows):
        # undo where it worked; the old key stays in force everywhere
        done = [p for p, r in zip(ports, rows) if r.get("ok")]
        run_all(done, lambda c: c.keys_revoke(new.key_id), old, args.timeout)
        for r in rows:
            if r.get("ok"):
                r.update(ok=False, error="aborted", exit_code=EXIT_FAILED)
                r["message"] = "rotation aborted: another target failed; old key kept"
        return emit(args, rows)
    # 2. store the new key before the old one stops working
    target = args.new_key_file or old.path
    assert target is not None
    try:
        write_key(target, new, replace=args.new_key_file is None)
    except (KeyFileError, OSError):
        # nobody would hold the new key: remove it again; the old key stays in force
        run_all(ports, lambda c: c.keys_revoke(new.key_id), old, args.timeout)
        raise
    # 3. revoke the old key with the new one
    try:
        rows = run_all(ports, lambda c: c.keys_revoke(old.key_id), new, args.timeout)
    except KeyboardInterrupt:
        names = " ".join(p.name for p in ports)
        sys.stderr.write(
            f"bmcctl: interrupted while revoking the old key {old.key_id}: the new key"
            f" {new.key_id} is in {target} and works on {names}; the old key may still"
            f" work on some of them: bmcctl keys revoke {old.key_id} {names}\n"
        )
        raise
    for r in rows:
        if r.get("ok"):
            r["data"] = {"old": old.key_id, "new": new.key_id, "key_file": target}
        else:
            r["message"] += f" (the new key {new.key_id} is in {target}; old key still valid)"
    return emit(args, rows)


def _take_back_interrupted(ports: Sequence[BmcPort], old: Key, new: Key, timeout: float) -> None:
    """`keys rotate` interrupted while adding the new key, which is stored nowhere yet:
    revoke it wherever it may have been added, and say where it may be left."""
    sys.stderr.write(
        f"bmcctl: interrupted while adding the new key {new.key_id}, which is saved nowhere;"
        " revoking it again (Ctrl-C again leaves it)\n"
    )
    rows = run_all(ports, lambda c: c.keys_revoke(new.key_id), old, timeout)
    left = [r for r in rows if not r.get("ok") and r.get("error") != NotFound.code]
    for r in left:
        sys.stderr.write(
            _safe(
                f"bmcctl: {r['target']}: the new key {new.key_id} may still be installed"
                f" ({r['error']}: {r['message']}): bmcctl keys revoke {new.key_id}"
                f" {r['target']}"
            )
            + "\n"
        )
    if not left:
        sys.stderr.write(
            f"bmcctl: the new key is on none of them; the old key {old.key_id} works\n"
        )


def cmd_bmc_reboot(args: argparse.Namespace) -> int:
    wait = not args.no_wait
    limit = max(30.0, args.timeout)

    def action(c: BmcClient) -> Dict[str, Any]:
        c.bmc_reboot(wait=wait, timeout=limit)
        return {"rebooted": True, "back": wait}

    return simple(args, action)


def cmd_maintenance(args: argparse.Namespace) -> int:
    def action(c: BmcClient) -> Dict[str, Any]:
        data = c.maintenance()
        c.wait_gone(min(args.timeout, 5.0))
        return {**data, "next": "REPL on this port after the reboot; use mpremote"}

    return simple(
        args, action, confirm_what="maintenance mode (REPL and firmware off until a hard reset)"
    )


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "list": cmd_list,
    "status": lambda a: simple(a, lambda c: c.status(), key=False, columns=status_columns),
    "power": cmd_power,
    "reset": lambda a: simple(
        a, lambda c: c.reset(), columns=status_columns, confirm_what="reset (ForceRestart)"
    ),
    "bmc-reboot": cmd_bmc_reboot,
    "identify": lambda a: simple(a, lambda c: c.identify(a.seconds)),
    "events": cmd_events,
    "console": cmd_console,
    "config": cmd_config,
    "keys": cmd_keys,
    "maintenance": cmd_maintenance,
    "factory-reset": lambda a: simple(a, lambda c: c.factory_reset(), key=False),
    **cli_boot.COMMANDS,
}


def _closed_streams_to_devnull() -> None:
    """A stdout or stderr the shell closed (`bmcctl ... >&-`) is None in Python: what
    would go there goes nowhere, and the exit code still tells how the command went."""
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")


def _drop_stdout() -> None:
    """The reader of stdout went away (`| head -1`): what is still buffered goes nowhere,
    so that the interpreter's own flush at exit raises nothing either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a file descriptor (tests capture it)
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    _closed_streams_to_devnull()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage line
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    code = EXIT_OK
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader gone shows here when the output fit the buffer
    except Interrupted as e:
        done = ", ".join(
            f"{r['target']} done" if r.get("ok") else f"{r['target']} {r['error']}: {r['message']}"
            for r in e.rows
        )
        sys.stderr.write(_safe(f"bmcctl: interrupted; {done}") + "\n")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        sys.stderr.write("bmcctl: interrupted\n")
        return EXIT_INTERRUPTED
    except BmcError as e:
        sys.stderr.write(f"bmcctl: {_safe(e.message, lines=True)}\n")
        return e.exit_code
    except BrokenPipeError:  # the rest of the output is not wanted; the command's code
        _drop_stdout()
        return code
    except Exception as e:  # never a traceback
        sys.stderr.write(f"bmcctl: internal error: {e!r}\n")
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())

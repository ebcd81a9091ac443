"""bmcctl subcommands for the inventory and USB boot (hooked into cli.py).

bmcctl inventory get [TARGET...|--all]
bmcctl --key-file admin.key inventory set TARGET... --url URL --key FILE [--key FILE ...]
bmcctl boot manifest get [TARGET...]
bmcctl --key-file admin.key boot manifest set TARGET... [--file [NAME=]PATH ...] [--dir DIR ...]
                                             [--chip SOC] [--on-bmc-max BYTES] [--cache DIR]
bmcctl boot status [TARGET...]
bmcctl --key-file op.key boot usb SLOT [--cache DIR] [--usb-port 1-1.3 | --usb-sim SOCKET]
bmcctl --key-file op.key boot serve SLOT ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

from .client import BmcClient
from .errors import BmcError, Conflict

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "racklet", "boot")
ON_BMC_MAX = 64 * 1024  # files up to this size go to the BMC's flash by default
BUNDLE = "bootfiles.bin"  # usbboot's tar of boot firmware, a folder per SoC
BUNDLE_CHIPS = ("2710", "2711", "2712")

# seconds a relay's request waits for the BMC's port while another program (the
# bridge, for one scrape of at most its timeout) has it
RELAY_BUSY_WAIT = 15.0

# a key file is read up to this: a TUF root, compacted, must fit one request (2048 bytes)
KEY_FILE_MAX = 64 * 1024


def add_parsers(sub: Any, targets: Callable[[argparse.ArgumentParser], None]) -> None:
    from .cli import _seconds  # a positive, finite number: nan or inf waited for ever

    sp = sub.add_parser("inventory", help="inventory URL and trust keys the SBC boots with")
    isub = sp.add_subparsers(dest="action", metavar="ACTION")
    isub.required = True
    targets(isub.add_parser("get", help="URL, key fingerprints and generation (no key needed)"))
    s = isub.add_parser("set", help="push the URL and keys (admin key)")
    s.add_argument("--url", required=True, help="https URL of the inventory repository")
    s.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="FILE",
        help="public key (PEM or hex; Ed25519 or ECDSA P-256) or TUF root.json; repeatable",
    )
    targets(s)

    sp = sub.add_parser("boot", help="boot manifest and USB device boot of the SBC")
    bsub = sp.add_subparsers(dest="action", metavar="ACTION")
    bsub.required = True
    m = bsub.add_parser("manifest", help="the boot manifest on the BMC")
    msub = m.add_subparsers(dest="manifest_action", metavar="ACTION")
    msub.required = True
    targets(msub.add_parser("get", help="files, sizes, digests and sources"))
    ms = msub.add_parser("set", help="replace the manifest with these files (admin key)")
    ms.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="a boot file; small ones go to the BMC's flash, large ones to the host cache",
    )
    ms.add_argument(
        "--dir",
        action="append",
        default=[],
        metavar="DIR",
        help="every file under DIR (a boot folder), named by its path there "
        "(overlays/dwc2.dtbo); names starting with '.' are left out. A usbboot "
        "folder with bootfiles.bin gives its files for --chip, as rpiboot serves them",
    )
    ms.add_argument(
        "--chip",
        choices=BUNDLE_CHIPS,
        help="the SBC's SoC, for a --dir with bootfiles.bin: 2711 (Pi 4, CM4), 2712 (Pi 5, CM5)",
    )
    ms.add_argument("--on-bmc-max", type=int, default=ON_BMC_MAX, metavar="BYTES")
    ms.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR", help="host cache")
    targets(ms)
    targets(bsub.add_parser("status", help="USB boot state and counters"))
    for name, what in (
        ("usb", "put the SBC into USB device boot and serve it (operator key)"),
        ("serve", "serve an SBC already waiting in USB boot (operator key)"),
    ):
        b = bsub.add_parser(name, help=what)
        b.add_argument("targets", nargs=1, metavar="SLOT", help="slot, serial or port")
        b.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR", help="host cache")
        b.add_argument("--usb-port", metavar="BUS-PORTS", help="the SBC's USB location (1-1.3)")
        b.add_argument("--usb-sim", metavar="SOCKET", help="a simulated SBC's USB socket")
        b.add_argument("--wait", type=_seconds, default=60.0, metavar="S", help="for the SBC")
        b.add_argument("--boot-timeout", type=int, default=120, metavar="S", help="on the BMC")


# -- helpers --------------------------------------------------------------------------


def _once(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """An object whose keys are all different: the BMC refuses a key given twice, and
    compacting here must not quietly keep the last one instead."""
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} given twice in an object")
        out[k] = v
    return out


def read_key_files(paths: List[str]) -> List[str]:
    from .cli import UsageError

    out = []
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                text = f.read(KEY_FILE_MAX + 1)
        except UnicodeDecodeError:
            raise UsageError(
                f"key file {p} is not text (PEM, hex or TUF root JSON); a DER key becomes "
                f"PEM with: openssl pkey -pubin -inform DER -in {p} -outform PEM"
            ) from None
        except OSError as e:
            raise UsageError(f"cannot read key file {p}: {e.strerror}") from None
        if len(text) > KEY_FILE_MAX:
            raise UsageError(f"key file {p} is too large (over {KEY_FILE_MAX} characters)")
        text = text.strip()
        if text.startswith("{"):
            try:  # TUF root metadata: compact, so it fits one request
                text = json.dumps(json.loads(text, object_pairs_hook=_once), separators=(",", ":"))
            except ValueError as e:
                raise UsageError(f"{p} is not valid JSON: {e}") from None
        out.append(text)
    return out


def inventory_set(c: BmcClient, url: str, keys: List[str]) -> Dict[str, Any]:
    """Push with the next generation; one retry if someone else got there first."""
    for _ in range(2):
        cur: int = c.inventory_get()["generation"]
        try:
            return c.inventory_set(url, keys, cur + 1, cur)
        except Conflict:
            continue
    raise Conflict("the inventory changed twice while pushing: try again")


def parse_files(specs: List[str]) -> List[Tuple[str, str]]:
    """`[NAME=]PATH` specs as (name, path)."""
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = os.path.basename(spec), spec
        out.append(_boot_file(name, path))
    return out


def _checked_name(name: str, where: str = "") -> str:
    """`name` if the BMC would take it (the firmware's own check,
    bmc.bootfiles.check_name), else a usage error, before anything is uploaded."""
    from bmc import errors as wire
    from bmc.bootfiles import check_name

    from .cli import UsageError

    try:
        return str(check_name(name))
    except wire.CmdError as e:
        raise UsageError(where + e.message) from None


def _boot_file(name: str, path: str) -> Tuple[str, str]:
    from .cli import UsageError

    _checked_name(name)
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path}")
    return name, path


def parse_dirs(
    dirs: List[str], chip: Optional[str] = None, unpack_to: Optional[str] = None
) -> List[Tuple[str, str]]:
    """Every regular file under each of `dirs` as (its path there, with '/', its path),
    in name order; names starting with '.' (.DS_Store, ._* from macOS) left out.

    A folder with usbboot's bootfiles.bin (a tar with a folder per SoC: 2711/, 2712/)
    gives what rpiboot serves from it for `chip`: `DIR/<chip>/<name>` first, then
    `<chip>/<name>` from the tar (unpacked into `unpack_to`), then `DIR/<name>`.
    """
    from .cli import UsageError

    out: List[Tuple[str, str]] = []
    for i, top in enumerate(dirs):
        if not os.path.isdir(top):
            raise UsageError(f"no such folder: {top}")
        bundle = os.path.join(top, BUNDLE)
        if not os.path.isfile(bundle):
            out += [_boot_file(n, p) for n, p in sorted(_walk(top, ()).items())]
            continue
        if chip is None or unpack_to is None:
            raise UsageError(
                f"{top} has {BUNDLE}, boot firmware for several SoCs: "
                "name the SBC's with --chip 2711 or 2712"
            )
        found = _walk(top, BUNDLE_CHIPS)
        found.pop(BUNDLE, None)
        found.update(_unpack(bundle, chip, os.path.join(unpack_to, str(i))))
        found.update(_walk(os.path.join(top, chip), ()))
        out += [_boot_file(n, p) for n, p in sorted(found.items())]
    return out


def _walk(top: str, skip: Tuple[str, ...]) -> Dict[str, str]:
    """name -> path of every file under `top` (none if it is not there), leaving out
    dotfiles and the top-level folders `skip`."""
    found: Dict[str, str] = {}
    for here, subdirs, names in os.walk(top):
        at_top = os.path.samefile(here, top)
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and not (at_top and d in skip)]
        for n in names:
            path = os.path.join(here, n)
            if not n.startswith(".") and os.path.isfile(path):
                found[os.path.relpath(path, top).replace(os.sep, "/")] = path
    return found


def _unpack(bundle: str, chip: str, dest: str) -> Dict[str, str]:
    """The files of `bundle`'s `<chip>/` folder, written under `dest`: name -> path.
    Names are checked as the BMC checks them before anything is written."""
    import tarfile

    from .cli import UsageError

    found: Dict[str, str] = {}
    try:
        with tarfile.open(bundle) as tar:
            for m in tar.getmembers():
                name = m.name[2:] if m.name.startswith("./") else m.name
                if not m.isfile() or not name.startswith(chip + "/"):
                    continue
                name = _checked_name(name[len(chip) + 1 :], f"{bundle}: ")
                f = tar.extractfile(m)
                if f is None:
                    continue
                path = os.path.join(dest, *name.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with f, open(path, "wb") as out:
                    shutil.copyfileobj(f, out)
                found[name] = path
    except (tarfile.TarError, OSError) as e:
        raise UsageError(f"{bundle} is not a readable tar archive: {e}") from None
    if not found:
        raise UsageError(f"{bundle} has no files for {chip}")
    return found


def manifest_files(
    file_specs: List[str],
    dirs: List[str],
    chip: Optional[str] = None,
    unpack_to: Optional[str] = None,
) -> List[Tuple[str, str]]:
    """The files of `--file` and `--dir`, each name once and no more than the BMC holds:
    a usage error before anything is uploaded."""
    from bmc.bootfiles import MAX_FILES

    from .cli import UsageError

    files = parse_files(file_specs) + parse_dirs(dirs, chip, unpack_to)
    seen: Dict[str, str] = {}
    for name, path in files:
        if name in seen:
            raise UsageError(f"{name} given twice: {seen[name]} and {path}")
        seen[name] = path
    if len(files) > MAX_FILES:
        raise UsageError(f"{len(files)} files: the BMC's boot manifest holds at most {MAX_FILES}")
    return files


def manifest_set(
    c: BmcClient, files: List[Tuple[str, str]], on_bmc_max: int, cache_dir: str
) -> Dict[str, Any]:
    """Upload the small files to the BMC, copy the others into the host cache, then
    replace the manifest (`BmcClient.boot_manifest_set`); the BMC's summary."""
    from .cli import UsageError
    from .usbboot.relay import Cache

    cache = Cache(cache_dir)
    entries = []
    for name, path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None
        if len(data) <= on_bmc_max or name == "cmdline.txt":
            sha = c.boot_file_put(data)
            src = "bmc"
        else:
            try:
                sha, _ = cache.add(path)
            except OSError as e:
                raise UsageError(
                    f"cannot copy {path} into the host cache {cache_dir}: {e.strerror}"
                ) from None
            src = "host"
        entries.append({"name": name, "size": len(data), "sha256": sha, "src": src})
    return c.boot_manifest_set(entries)


def print_manifests(rows: List[Dict[str, Any]]) -> None:
    """`boot manifest get`: a line per file (a Pi 5 lists 30 and more), after a line
    with each target's generation and flash use; a failed target's error instead."""
    from .cli import _safe

    head = ("TARGET", "FILE", "SRC", "SIZE", "SHA256")

    def cells_of(r: Dict[str, Any]) -> List[Tuple[str, ...]]:
        if not r.get("ok"):
            return []
        return [
            (r["target"], f["name"], f["src"], str(f["size"]), f["sha256"][:16])
            for f in r["data"]["files"]
        ]

    files = [cells_of(r) for r in rows]
    every = [head] + [c for fs in files for c in fs]
    widths = [max(len(c[i]) for c in every) for i in range(4)]

    def line(cells: Tuple[str, ...]) -> str:
        return _safe("  ".join([c.ljust(w) for c, w in zip(cells, widths)] + [cells[4]]).rstrip())

    print(line(head))
    for r, cells in zip(rows, files):
        target = r["target"].ljust(widths[0])
        if not r.get("ok"):
            print(_safe(f"{target}  error: {r['error']}: {r['message']}"))
            continue
        d = r["data"]
        print(
            _safe(
                f"{target}  generation {d['gen']}, {d['bmc_bytes']}/{d['bmc_limit']} B on the BMC"
            )
        )
        for c in cells:
            print(line(c))


def summary_columns(d: Any) -> Dict[str, str]:
    """What `boot manifest set` shows: the BMC's summary of the new manifest."""
    if not isinstance(d, dict):
        return {"gen": "-", "files": "-", "on_bmc": "-"}
    return {
        "gen": str(d.get("gen")),
        "files": str(d.get("count")),
        "on_bmc": f"{d.get('bmc_bytes')}/{d.get('bmc_limit')} B",
    }


# boot-status counters as `bmcctl boot status` shows them, in the order of a boot
_COUNTERS = (
    ("boots_started", "started"),
    ("boots_done", "done"),
    ("boots_failed", "failed"),
    ("boots_timed_out", "timed out"),
    ("files_served", "served"),
    ("missing", "missing"),
    ("refused", "refused"),
    ("digest_mismatch", "mismatch"),
    ("conflict", "conflict"),
)


def boot_status_columns(d: Any) -> Dict[str, str]:
    """The session in a line: state and detail, time left and files while it runs,
    the counters in words, and the heap's high-water mark of the last stream."""
    from .cli import _fmt

    if not isinstance(d, dict):
        return {"state": _fmt(d)}
    out = {"state": _fmt(d.get("state")), "gen": _fmt(d.get("gen"))}
    if "left_ms" in d:
        out["session"] = f"{_fmt(d.get('files'))} files, {_fmt(d.get('left_ms'))} ms left"
    counters = d.get("counters")
    if isinstance(counters, dict):
        out["counters"] = ", ".join(
            f"{counters[k]} {word}" for k, word in _COUNTERS if counters.get(k) is not None
        )
    if d.get("heap_peak"):
        out["heap_peak"] = f"{_fmt(d.get('heap_peak'))}/{_fmt(d.get('heap_size'))} B"
    out["detail"] = _fmt(d.get("detail") or None)
    return out


def inventory_columns(d: Any) -> Dict[str, str]:
    keys = (d.get("keys") if isinstance(d, dict) else None) or []
    return {
        "generation": str(d.get("generation")),
        "url": str(d.get("url") or "-"),
        "keys": " ".join(f"{k['type']}:{k['fp'][:16]}" for k in keys) or "-",
    }


# -- commands -------------------------------------------------------------------------


def cmd_inventory(args: argparse.Namespace) -> int:
    from . import cli

    if args.action == "get":
        return cli.simple(
            args,
            lambda c: c.inventory_get(),
            key=False,
            columns=inventory_columns,
        )
    keys = read_key_files(args.key)
    return cli.simple(args, lambda c: inventory_set(c, args.url, keys), columns=inventory_columns)


def cmd_boot(args: argparse.Namespace) -> int:
    from . import cli

    if args.action == "manifest":
        if args.manifest_action == "get":
            ports = cli.find_targets(args, args.timeout)
            rows = cli.run_all(ports, lambda c: c.boot_manifest(), None, args.timeout)
            if args.json:
                return cli.emit(args, rows)
            print_manifests(rows)
            return cli.exit_code(rows)
        with tempfile.TemporaryDirectory(prefix="bmcctl-bootfiles-") as unpacked:
            files = manifest_files(args.file, args.dir, args.chip, unpacked)
            return cli.simple(
                args,
                lambda c: manifest_set(c, files, args.on_bmc_max, args.cache),
                columns=summary_columns,
            )
    if args.action == "status":
        return cli.simple(
            args,
            lambda c: c.call("boot-status", auth=False),
            key=False,
            columns=boot_status_columns,
        )
    return serve(args, start=args.action == "usb")


def serve(args: argparse.Namespace, start: bool) -> int:
    from . import cli
    from .client import open_client
    from .usbboot.relay import BmcSource, BootFailed, Cache, Relay
    from .usbboot.transport import UsbBus, UsbError

    key = cli.need_key(args)
    ports = cli.find_targets(args, args.timeout)
    bus: UsbBus
    if args.usb_sim:
        from .usbboot.simbus import SimBus

        bus = SimBus(args.usb_sim)
    else:
        from .usbboot.pyusb_bus import PyUsbBus

        try:
            bus = PyUsbBus(args.usb_port)
        except UsbError as e:
            sys.stderr.write(f"bmcctl: {e}\n")
            return 1

    def log(line: str) -> None:  # BMC messages and SBC file names in it: escaped
        sys.stderr.write(cli._safe(f"{ports[0].name}: {line}") + "\n")
        sys.stderr.flush()

    with open_client(ports[0], key=key, timeout=args.timeout) as c:
        # a boot takes a minute or more: the BMC's port is the bridge's and the
        # admins' too between the relay's requests, each of which waits its turn
        c.hold = False
        c.link.busy_wait = RELAY_BUSY_WAIT
        source = BmcSource(c, key, Cache(args.cache))
        if start:
            c.call("boot-usb", {"timeout_ms": args.boot_timeout * 1000})
            log("boot-select asserted, SBC power-cycled into USB boot")
        relay = Relay(source, bus, log=log, wait_timeout=args.wait)
        try:
            summary = relay.run()
        except BootFailed as e:
            sys.stderr.write(cli._safe(f"bmcctl: USB boot of {ports[0].name} failed: {e}") + "\n")
            return 1
        except BmcError as e:
            sys.stderr.write(cli._safe(f"bmcctl: {e.message}") + "\n")
            return e.exit_code
    if args.json:
        json.dump(summary, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(cli._safe(f"{ports[0].name}: booted, served {', '.join(summary['served'])}"))
    return 0


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "inventory": cmd_inventory,
    "boot": cmd_boot,
}

"""Merging BMC expositions and writing them out in either text format, line by line.

A BMC's OpenMetrics text is checked and split into families in one pass over
its lines (`parse`): no metric objects, each sample kept as its name, its label
text and its value text. The bridge passes on the subset of OpenMetrics 1.0
that the firmware's renderer produces, and refuses a whole exposition
(`ExpositionError`, the BMC then shows `bmc_up 0`) that leaves it:

- UTF-8 lines ending in `\\n`, `# EOF` last and only there, no blank lines and
  no comments other than `# HELP`, `# TYPE`, `# UNIT`;
- every family starts with `# HELP` and `# TYPE` (`counter`, `gauge`, `info`,
  `stateset` or `unknown`; at most one of each, before its samples), names
  never repeat (families never interleave), a `# UNIT` matches the name's
  `_<unit>` suffix and is not on an info or stateset;
- sample names fit their family (`_total` for a counter, `_info` for an info);
  label names valid and not repeated, label values with the escapes `\\\\`,
  `\\"`, `\\n` only; values are numbers, `NaN` or `+Inf`/`-Inf`; counters are
  never negative or NaN, info samples are 1, stateset samples 0 or 1 and carry
  the label named after the family; no label set twice in a family;
- no timestamps or exemplars (the BMC has no wall clock; 0.0.4 has no
  exemplars), no `_created` samples, no `exported_slot`/`exported_serial`
  label (the bridge's own).

The families of all BMCs are merged by name (`Merger`): a family's samples of
every BMC stay together, each sample gets the BMC's `serial` and `slot` labels
put in front of its own. A BMC's own label of the same name and another value
is kept as `exported_<name>` (Prometheus' honor_labels=false convention).
`render` writes OpenMetrics 1.0.0, or Prometheus text 0.0.4 with the usual
munging (a counter's family is `x_total`, an info's `x_info`, info and
stateset are gauges, unknown is untyped, no `# UNIT`, no `# EOF`). Label
values are escaped the same way in both formats, so label text passes through
unchanged.
"""

from __future__ import annotations

import math
import re
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT_004 = "text/plain; version=0.0.4; charset=utf-8"

# Labels the bridge adds, in the order they are written.
TARGET_LABELS = ("serial", "slot")

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LNAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LVALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_LABEL = _LNAME + "=" + _LVALUE
_NUMBER = r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|NaN|[+-]Inf"
_SAMPLE_RE = re.compile(
    rf"({_NAME})(?:\{{((?:{_LABEL}(?:,{_LABEL})*)?)\}})? ({_NUMBER})\Z", re.ASCII
)
_PAIR_RE = re.compile(rf"({_LNAME})=({_LVALUE})", re.ASCII)
_META_RE = re.compile(rf"# (HELP|TYPE|UNIT) ({_NAME}) (.*)\Z", re.ASCII | re.DOTALL)
_HELP_RE = re.compile(r'(?:[^\\\n]|\\[\\"n])*\Z')
_UNIT_RE = re.compile(r"[a-zA-Z0-9_:]*\Z", re.ASCII)

# sample-name suffixes each family type allows (no _created: see the docstring)
_SUFFIXES: Dict[str, Tuple[str, ...]] = {
    "counter": ("_total",),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
# names a family reserves against other families (the OpenMetrics parser's "clashing name")
_RESERVED: Dict[str, Tuple[str, ...]] = {
    "counter": ("", "_total", "_created"),
    "gauge": ("",),
    "info": ("", "_info"),
    "stateset": ("",),
    "unknown": ("",),
}
_TYPE_004 = {"counter": "counter", "gauge": "gauge", "info": "gauge", "stateset": "gauge"}
_RENAMED = ("slot", "serial", "exported_slot", "exported_serial")


class ExpositionError(ValueError):
    """A BMC's metrics text that is not valid OpenMetrics (or leaves the subset passed on)."""


# A sample: (name, label text inside the braces or "", value text,
#            (label name, quoted value) pairs when a label needs renaming, else None)
Sample = Tuple[str, str, str, Optional[Tuple[Tuple[str, str], ...]]]


class Family:
    """One family: metadata and samples as text (label values stay escaped)."""

    __slots__ = ("name", "type", "unit", "help", "samples")

    def __init__(self, name: str, typ: str, help_text: str, unit: str = "") -> None:
        self.name = name
        self.type = typ
        self.unit = unit
        self.help = help_text  # escaped as in OpenMetrics (\\, \n, \")
        self.samples: List[Sample] = []

    def add(self, name: str, labels: Mapping[str, str], value: float) -> None:
        """A sample from Python values (the bridge's own families)."""
        inner = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
        self.samples.append((name, inner, number(value), None))


class Exposition:
    """One BMC's families, checked; `text` is what the BMC sent."""

    __slots__ = ("families", "text")

    def __init__(self, families: List[Family], text: str) -> None:
        self.families = families
        self.text = text

    def label(self, family: str, label: str) -> Optional[str]:
        """A label value (unescaped) of the first sample of `family` (e.g. the serial in `bmc`)."""
        for fam in self.families:
            if fam.name == family:
                for _, inner, _, _ in fam.samples:
                    for k, v in _PAIR_RE.findall(inner):
                        if k == label:
                            return unescape(v[1:-1])
                return None
        return None


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


# Family blocks already checked (the text from `# HELP` to the last sample, no final
# newline) -> their Family. Most of a BMC's families read the same at every scrape
# and on every BMC (metadata, states, counters still at 0): those are checked once.
# The Family objects are shared, so nothing may change them after `parse`.
_BLOCKS: Dict[str, Family] = {}
_BLOCKS_MAX = 8192  # about 2 MB; emptied when full (values that change make new blocks)


def parse(text: str) -> Exposition:
    """Check one BMC's OpenMetrics text and split it into families; ExpositionError if bad."""
    if text.endswith("# EOF\n"):
        body = text[:-6]
    elif text.endswith("# EOF"):
        body = text[:-5]
    else:
        raise ExpositionError("exposition does not end with # EOF (truncated?)")
    if body and not body.endswith("\n"):
        raise ExpositionError("exposition does not end with # EOF on a line of its own")
    if not body.startswith("# HELP "):
        return Exposition(_families(body), text)
    # Family by family (a line that starts with "# HELP " starts a family: help text has
    # no newline, and no other line starts like that), known blocks from the cache; the
    # family names are checked against each other here. Anything wrong: the whole text
    # again line by line, for the error with its line number.
    families: List[Family] = []
    names: Set[str] = set()
    cache = _BLOCKS
    for block in body[7:-1].split("\n# HELP "):
        fam = cache.get(block)
        if fam is None:
            try:
                found = _families("# HELP " + block + "\n")
            except ExpositionError:
                return Exposition(_families(body), text)
            if len(found) != 1:
                return Exposition(_families(body), text)
            fam = found[0]
            if len(cache) >= _BLOCKS_MAX:
                cache.clear()
            cache[block] = fam
        name = fam.name
        if name in names:
            return Exposition(_families(body), text)
        for suffix in _RESERVED[fam.type]:
            if name + suffix in names:
                return Exposition(_families(body), text)
            names.add(name + suffix)
        families.append(fam)
    return Exposition(families, text)


def _families(body: str) -> List[Family]:
    """The line-by-line check of `body` (lines ending in a newline, no `# EOF`)."""
    families: List[Family] = []
    names: Set[str] = set()  # every family name and the sample names it reserves
    fam: Optional[Family] = None
    allowed: Tuple[str, ...] = ()
    seen: Set[Tuple[str, str]] = set()
    sample_re = _SAMPLE_RE.match
    for n, line in enumerate(body.split("\n")[:-1] if body else (), 1):
        m = sample_re(line)
        if m is not None:
            name, inner, value = m.group(1, 2, 3)
            if fam is None or name not in allowed:
                raise ExpositionError(f"line {n}: sample {name} outside its family's block")
            inner = inner or ""
            pairs: Optional[Tuple[Tuple[str, str], ...]] = None
            key = inner
            if "," in inner or "slot" in inner or "serial" in inner or fam.type == "stateset":
                found = tuple(_PAIR_RE.findall(inner))
                lnames = [k for k, _ in found]
                if len(set(lnames)) != len(lnames):
                    raise ExpositionError(f"line {n}: a label appears twice in {name}")
                if any(k in _RENAMED for k in lnames):
                    if "exported_slot" in lnames or "exported_serial" in lnames:
                        raise ExpositionError(f"line {n}: label exported_* is the bridge's own")
                    pairs = found
                if fam.type == "stateset" and fam.name not in lnames:
                    raise ExpositionError(f"line {n}: stateset sample without label {fam.name}")
                key = ",".join(sorted(f"{k}={v}" for k, v in found))
            if (name, key) in seen:
                raise ExpositionError(f"line {n}: {name} with the same labels twice")
            seen.add((name, key))
            if fam.type != "gauge" and fam.type != "unknown":
                _check_value(fam.type, value, n)
            fam.samples.append((name, inner, value, pairs))
            continue
        m = _META_RE.match(line)
        if m is None:
            if line == "# EOF":
                raise ExpositionError(f"line {n}: # EOF before the end")
            raise ExpositionError(f"line {n}: malformed line {line[:80]!r}")
        kind, name, rest = m.group(1, 2, 3)
        if kind == "HELP":
            if name in names:
                raise ExpositionError(f"line {n}: family {name} again or clashing with another")
            if not _HELP_RE.match(rest):
                raise ExpositionError(f"line {n}: bad escape in the HELP of {name}")
            fam = Family(name, "", rest)
            families.append(fam)
            allowed = ()
            seen = set()
            continue
        if fam is None or name != fam.name or fam.samples:
            raise ExpositionError(f"line {n}: # {kind} {name} not right after its # HELP")
        if kind == "TYPE":
            if fam.type or rest not in _SUFFIXES:
                raise ExpositionError(f"line {n}: # TYPE {rest!r} twice or not passed on")
            fam.type = rest
            allowed = tuple(name + s for s in _SUFFIXES[rest])
            for s in _RESERVED[rest]:
                if name + s in names:
                    raise ExpositionError(f"line {n}: family {name} clashes with {name + s}")
                names.add(name + s)
        else:  # UNIT
            if not fam.type or fam.unit or not _UNIT_RE.match(rest):
                raise ExpositionError(f"line {n}: # UNIT of {name} misplaced, twice or bad")
            if fam.type in ("info", "stateset") or not name.endswith("_" + rest):
                raise ExpositionError(f"line {n}: unit {rest!r} does not fit {name}")
            fam.unit = rest
    for f in families:
        if not f.type:
            raise ExpositionError(f"family {f.name} without # TYPE")
    return families


def _check_value(typ: str, value: str, n: int) -> None:
    v = float(value)
    if typ == "counter":
        ok = not (v < 0 or math.isnan(v))
    elif typ == "info":
        ok = v == 1
    else:  # stateset
        ok = v == 0 or v == 1
    if not ok:
        raise ExpositionError(f"line {n}: value {value} not allowed in a {typ}")


class _Merged:
    __slots__ = ("family", "parts")

    def __init__(self, family: Family) -> None:
        self.family = family
        # (serial, slot, samples): serial/slot None for the bridge's own families
        self.parts: List[Tuple[Optional[str], Optional[str], List[Sample]]] = []


class Merger:
    """Families from several sources, merged by name, in order of first appearance."""

    def __init__(self) -> None:
        self._families: Dict[str, _Merged] = {}
        self._names: Dict[str, str] = {}  # reserved sample/family name -> family
        self.conflicts: List[Tuple[str, str]] = []  # (family, why) dropped

    def _take(self, fam: Family) -> Optional[_Merged]:
        have = self._families.get(fam.name)
        if have is not None:
            if have.family.type != fam.type or have.family.unit != fam.unit:
                h = have.family
                why = f"{h.type}/{h.unit or '-'} vs {fam.type}/{fam.unit or '-'}"
                self.conflicts.append((fam.name, why))
                return None
            return have
        for s in _RESERVED[fam.type]:
            other = self._names.get(fam.name + s)
            if other is not None:
                self.conflicts.append((fam.name, f"clashes with family {other}"))
                return None
        for s in _RESERVED[fam.type]:
            self._names[fam.name + s] = fam.name
        have = self._families[fam.name] = _Merged(fam)
        return have

    def add(self, exposition: Exposition, serial: str, slot: str) -> None:
        """One BMC's families, each sample labelled with `serial` and `slot`."""
        for fam in exposition.families:
            have = self._take(fam)
            if have is not None:
                have.parts.append((serial, slot, fam.samples))

    def add_family(self, family: Family) -> None:
        """A family the bridge produced itself (labels complete). Add these first: they win."""
        have = self._take(family)
        if have is not None:
            have.parts.append((None, None, family.samples))

    def families(self) -> Iterator[Family]:
        for merged in self._families.values():
            yield merged.family

    def lines(self, openmetrics: bool) -> Iterator[str]:
        for merged in self._families.values():
            fam = merged.family
            yield _metadata(fam, openmetrics)
            for serial, slot, samples in merged.parts:
                if serial is None or slot is None:
                    for name, inner, value, _ in samples:
                        yield f"{name}{{{inner}}} {value}\n" if inner else f"{name} {value}\n"
                    continue
                prefix = f'serial="{escape(serial)}",slot="{escape(slot)}"'
                quoted = {"serial": f'"{escape(serial)}"', "slot": f'"{escape(slot)}"'}
                for name, inner, value, pairs in samples:
                    if pairs is not None:
                        inner = _relabel(pairs, quoted)
                    if inner:
                        yield f"{name}{{{prefix},{inner}}} {value}\n"
                    else:
                        yield f"{name}{{{prefix}}} {value}\n"
        if openmetrics:
            yield "# EOF\n"


def _relabel(pairs: Sequence[Tuple[str, str]], quoted: Mapping[str, str]) -> str:
    out = []
    for k, v in pairs:
        mine = quoted.get(k)
        if mine is None:
            out.append(f"{k}={v}")
        elif mine != v:
            out.append(f"exported_{k}={v}")
    return ",".join(out)


def _metadata(fam: Family, openmetrics: bool) -> str:
    if openmetrics:
        unit = f"# UNIT {fam.name} {fam.unit}\n" if fam.unit else ""
        return f"# HELP {fam.name} {fam.help}\n# TYPE {fam.name} {fam.type}\n{unit}"
    name = fam.name
    if fam.type == "counter":
        name += "_total"
    elif fam.type == "info":
        name += "_info"
    help_text = _HELP_004_RE.sub(_help_004, fam.help) if '\\"' in fam.help else fam.help
    typ = _TYPE_004.get(fam.type, "untyped")
    return f"# HELP {name} {help_text}\n# TYPE {name} {typ}\n"


_HELP_004_RE = re.compile(r"\\(.)")


def _help_004(m: re.Match[str]) -> str:
    return '"' if m.group(1) == '"' else m.group(0)  # 0.0.4 help escapes only \\ and \n


def render(merger: Merger, openmetrics: bool) -> bytes:
    return "".join(merger.lines(openmetrics)).encode()


def wants_openmetrics(accept: Optional[str]) -> bool:
    """Content negotiation: OpenMetrics when the Accept header prefers it to plain text.

    `application/openmetrics-text` (version 1.0.0, 0.0.1 or none) competes by its
    q value with `text/plain` and `*/*`; on a tie OpenMetrics wins, as Prometheus
    lists it first. No Accept header: text 0.0.4.
    """
    if not accept:
        return False
    best_om = -1.0
    best_text = -1.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        version = None
        for f in fields[1:]:
            key, _, value = f.partition("=")
            key = key.strip().lower()
            value = value.strip().strip('"')
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif key == "version":
                version = value
        if media == "application/openmetrics-text":
            if version in (None, "1.0.0", "0.0.1"):
                best_om = max(best_om, q)
        elif media in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, q)
    return best_om > 0 and best_om >= best_text

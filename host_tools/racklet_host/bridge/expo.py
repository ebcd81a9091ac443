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
from itertools import chain
from operator import attrgetter
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, cast

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
# A BMC's render is about 9 KB; a text this much larger is a BMC gone wrong (a chunk
# sent over and over), which would otherwise fill the bridge's memory until the deadline.
MAX_TEXT = 1 << 20


class ExpositionError(ValueError):
    """A BMC's metrics text that is not valid OpenMetrics (or leaves the subset passed on)."""


# A sample: (name, label text inside the braces or "", value text,
#            (label name, quoted value) pairs when a label needs renaming, else None)
Sample = Tuple[str, str, str, Optional[Tuple[Tuple[str, str], ...]]]


class Family:
    """One family: metadata and its sample lines as text (label values stay escaped).

    `text` holds the sample lines exactly as the BMC sent them (each ending in a
    newline). `samples` splits them per sample; only the line-by-line check makes
    it (families checked by the block check never need it, see `labelled`).
    """

    __slots__ = ("name", "type", "unit", "help", "text", "samples", "_parts", "_meta", "_reserved")

    def __init__(self, name: str, typ: str, help_text: str, unit: str = "", text: str = "") -> None:
        self.name = name
        self.type = typ
        self.unit = unit
        self.help = help_text  # escaped as in OpenMetrics (\\, \n, \")
        self.text = text
        self.samples: Optional[List[Sample]] = None
        self._parts: Optional[List[str]] = None
        self._meta: Optional[Tuple[str, str]] = None
        self._reserved: Optional[Tuple[str, ...]] = None

    def reserved(self) -> Tuple[str, ...]:
        """The family's name and the sample names it keeps from other families."""
        r = self._reserved
        if r is None:
            r = self._reserved = tuple(self.name + s for s in _RESERVED[self.type])
        return r

    def add(self, name: str, labels: Mapping[str, str], value: float) -> None:
        """A sample from Python values (the bridge's own families)."""
        inner = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
        line = f"{name}{{{inner}}} {number(value)}\n" if inner else f"{name} {number(value)}\n"
        self.text += line

    def labelled(self, prefix: str, quoted: Mapping[str, str]) -> str:
        """The sample lines with `prefix` (the target labels) in front of their own labels.

        All samples of a BMC family share one name, so a template cut where the
        prefix goes is made once per family (families are shared by the check cache)
        and joined with the prefix: one C call per family and BMC. Samples with a
        label the bridge renames (a BMC's own `slot` or `serial`) go one by one.
        """
        parts = self._parts
        if parts is None:
            parts = self._parts = self._template()
        if parts:
            return prefix.join(parts)
        out = []
        for name, inner, value, pairs in self._sample_list():
            if pairs is not None:
                inner = _relabel(pairs, quoted)
            out.append(
                f"{name}{{{prefix},{inner}}} {value}\n"
                if inner
                else f"{name}{{{prefix}}} {value}\n"
            )
        return "".join(out)

    def _template(self) -> List[str]:
        """The sample text split where the target labels go; [] when samples go one by one."""
        text = self.text
        if not text:
            return [""]
        if "\x00" in text or "{}" in text or "slot" in text or "serial" in text:
            return []
        sample = self.name + _SUFFIXES[self.type][0]
        marked = ("\n" + text).replace("\n" + sample + "{", "\n" + sample + "{\x00,")
        marked = marked.replace("\n" + sample + " ", "\n" + sample + "{\x00} ")
        return marked[1:].split("\x00")

    def _sample_list(self) -> List[Sample]:
        if self.samples is None:
            self.samples = _families(_metadata(self, True) + self.text)[0].samples or []
        return self.samples

    def metadata(self, openmetrics: bool) -> str:
        meta = self._meta
        if meta is None:
            meta = self._meta = (_metadata(self, True), _metadata(self, False))
        return meta[0] if openmetrics else meta[1]


class Exposition:
    """One BMC's families, checked; `text` is what the BMC sent."""

    __slots__ = ("families", "_data", "_labelled")

    def __init__(self, families: List[Family], data: List[bytes]) -> None:
        self.families = families
        self._data = data
        # (prefix, one labelled text per family) made while the text arrived
        self._labelled: Optional[Tuple[str, List[str]]] = None

    @property
    def text(self) -> str:
        return b"".join(self._data).decode("utf-8")

    def label(self, family: str, label: str) -> Optional[str]:
        """A label value (unescaped) of the first sample of `family` (e.g. the serial in `bmc`)."""
        for fam in self.families:
            if fam.name == family:
                return _first_label(fam, label)
        return None

    def labelled(self, serial: str, slot: str) -> List[str]:
        """Every family's sample lines labelled with `serial` and `slot`, in order."""
        prefix, quoted = _target(serial, slot)
        have = self._labelled
        if have is not None and have[0] == prefix and len(have[1]) == len(self.families):
            return have[1]
        texts = [fam.labelled(prefix, quoted) for fam in self.families]
        self._labelled = (prefix, texts)
        return texts


def _first_label(fam: Family, label: str) -> Optional[str]:
    if fam.samples is not None:
        inner = fam.samples[0][1] if fam.samples else ""
    else:
        m = _SAMPLE_RE.match(fam.text.partition("\n")[0])
        inner = (m.group(2) or "") if m is not None else ""
    for k, v in _PAIR_RE.findall(inner):
        if k == label:
            return unescape(v[1:-1])
    return None


def _target(serial: str, slot: str) -> Tuple[str, Dict[str, str]]:
    quoted = {"serial": f'"{escape(serial)}"', "slot": f'"{escape(slot)}"'}
    return f"serial={quoted['serial']},slot={quoted['slot']}", quoted


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


# Family blocks already checked (the text after `# HELP ` to the last sample, no final
# newline) -> their Family. Most of a BMC's families read the same at every scrape
# and on every BMC (metadata, states, counters still at 0): those are checked once.
# The Family objects are shared, so nothing may change them after the check (their
# lazily made template and metadata are the same for every user).
# Values that change make new blocks at every scrape (a rack of 32 BMCs: ~200), so
# the cache is kept in two generations: when the young one is full it becomes the
# old one, and a block found there moves back. Emptied at once instead, the scrape
# after would check every block of every BMC again.
_BLOCKS: Dict[str, Family] = {}
_OLD_BLOCKS: Dict[str, Family] = {}
_GENERATION = 4096  # blocks per generation: both together about 2 MB

# The block check: one regular expression over a whole family block (C speed) for
# the common shape, then a few whole-block string operations. Whatever it is not
# sure about goes to the line-by-line check (`_families`), which decides.
_HELP_TEXT = r'[^\\\n]*(?:\\[\\"n][^\\\n]*)*'
_FAST_LVALUE = r'"[^"\\\n]*(?:\\[\\"n][^"\\\n]*)*"'
_FAST_LABEL = _LNAME + "=" + _FAST_LVALUE
_BLOCK_RE = re.compile(
    rf"({_NAME}) ({_HELP_TEXT})\n# TYPE \1 (counter|gauge|info|stateset|unknown)\n"
    rf"(?:# UNIT \1 ([a-zA-Z0-9_:]*)\n)?"
    rf"((?:{_NAME}(?:\{{{_FAST_LABEL}(?:,{_FAST_LABEL})*\}})? (?:{_NUMBER})\n)*)",
    re.ASCII,
)
_INNER_RE = re.compile(r"\{(.*)\} ")
# a sample value (the line's last field) the family's type does not allow, or may not
_BAD_VALUE = {
    "counter": re.compile(r" (?:-|NaN)[^ \n]*\n"),
    "info": re.compile(r" (?!1\n)[^ \n]*\n"),
    "stateset": re.compile(r" (?![01]\n)[^ \n]*\n"),
}


def _check_block(block: str) -> Optional[Family]:
    """The Family of one block (`# HELP ` cut off, no final newline) if surely valid, else None."""
    m = _BLOCK_RE.fullmatch(block + "\n")
    if m is None:
        return None
    name, help_text, typ, unit, samples = m.group(1, 2, 3, 4, 5)
    if unit is not None and (typ == "info" or typ == "stateset" or not name.endswith("_" + unit)):
        return None
    if samples:
        if "," in samples or "{}" in samples or "slot" in samples or "serial" in samples:
            return None  # several labels, an empty set, labels the bridge renames: line by line
        if "\x00" in samples:
            return None
        sample = name + _SUFFIXES[typ][0]
        lines = "\n" + samples
        n = samples.count("\n")
        labelled = lines.count("\n" + sample + "{")
        bare = lines.count("\n" + sample + " ")
        if labelled + bare != n or bare > 1:
            return None  # a sample outside its family, or one without labels twice
        if labelled:
            keys = _INNER_RE.findall(samples)  # one label each (no comma anywhere)
            if len(set(keys)) != len(keys):
                return None
            if typ == "stateset" and lines.count("\n" + sample + "{" + name + '="') != n:
                return None
        elif typ == "stateset":
            return None
        bad = _BAD_VALUE.get(typ)
        if bad is not None and bad.search(samples):
            return None
    return Family(name, typ, help_text, unit or "", samples)


_get_reserved = attrgetter("_reserved")
_get_parts = attrgetter("_parts")


# A block that differs from a checked one only in its last sample's value (an uptime,
# a counter that moved: most of what changes between scrapes) needs only that value
# checked. Everything before the value -> (the checked Family, the value's length).
_HEADS: Dict[str, Tuple[Family, int]] = {}
_HEADS_MAX = 4096  # distinct heads stay few (one per family and label set): a bound
_VALUE_RE = re.compile(rf"(?:{_NUMBER})\Z", re.ASCII)


def _revalued(block: str) -> Optional[Family]:
    """The Family of `block` if a checked block differs from it only in the last value
    and that value is valid for the family's type; else None (check it in full)."""
    head, _, value = block.rpartition(" ")
    hit = _HEADS.get(head)
    if hit is None or _VALUE_RE.match(value) is None:
        return None
    proto, old = hit
    typ = proto.type
    if typ == "counter" and (value[0] == "-" or value[:3] == "NaN"):
        return None  # as _BAD_VALUE: a counter is never negative or NaN
    if (typ == "info" and value != "1") or (typ == "stateset" and value not in ("0", "1")):
        return None
    cut = -old - 1  # the old value and the line's newline
    fam = Family(proto.name, typ, proto.help, proto.unit, proto.text[:cut] + value + "\n")
    fam._reserved = proto._reserved
    fam._meta = proto._meta
    parts = cast(List[str], proto._parts)
    fam._parts = parts[:-1] + [parts[-1][:cut] + value + "\n"]
    return fam


def _remember_head(block: str, fam: Family) -> None:
    """Let blocks that differ from `block` only in the last value take `_revalued`."""
    parts = fam._parts
    if not parts or not fam.text:
        return  # no samples, or samples relabelled one by one
    head, _, value = block.rpartition(" ")
    end = " " + value + "\n"
    if fam.text.endswith(end) and parts[-1].endswith(end):
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[head] = (fam, len(value))


def _checked(block: str) -> Optional[Family]:
    """A block not in the young cache: from the old one, as a known block with a new
    last value, or checked (None if invalid); cached with its template."""
    global _BLOCKS, _OLD_BLOCKS
    fam = _OLD_BLOCKS.get(block)
    if fam is None:
        fam = _revalued(block)
    if fam is None:
        fam = _check_block(block)
        if fam is None:
            try:
                found = _families("# HELP " + block + "\n")
            except ExpositionError:
                return None
            if len(found) != 1:
                return None
            fam = found[0]
        fam.reserved()
        fam._parts = fam._template()
        _remember_head(block, fam)
    if len(_BLOCKS) >= _GENERATION:
        _OLD_BLOCKS, _BLOCKS = _BLOCKS, {}
    _BLOCKS[block] = fam
    return fam


def forget_checked() -> None:
    """Empty the cache of checked blocks (the next texts are checked anew)."""
    _BLOCKS.clear()
    _OLD_BLOCKS.clear()
    _HEADS.clear()


class Reader:
    """One BMC's text, checked and split into families as its chunks arrive.

    Complete family blocks (a line starting with `# HELP ` starts a family: help
    text has no newline, and no other line starts like that) are checked at once,
    from the cache or by the block check; the rest waits for the next chunk. The
    family names are checked against each other as they come. With `slot` (and the
    serial from the `bmc` family, once it came) every family is labelled as soon as
    it is checked, so little work is left when the last chunk arrives. Anything
    wrong: `finish` checks the whole text again line by line, for the error with
    its line number. A text over MAX_TEXT is refused as it comes.
    """

    def __init__(self, slot: Optional[str] = None) -> None:
        self._data: List[bytes] = []
        self._size = 0
        self._rest = b""
        self._whole = False  # give up on blocks: `finish` checks the whole text
        self._started = False
        self.families: List[Family] = []
        self._names: Set[str] = set()
        self._slot = slot
        self.serial: Optional[str] = None
        self._prefix: Optional[Tuple[str, Dict[str, str]]] = None
        self._labelled: List[str] = []

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_TEXT:
            raise ExpositionError(f"exposition larger than {MAX_TEXT >> 20} MiB: refused")
        self._data.append(data)
        if self._whole:
            return
        buf = self._rest + data if self._rest else data
        if not self._started:
            if len(buf) < 7:
                self._rest = buf
                return
            if not buf.startswith(b"# HELP "):
                self._whole = True
                return
            self._started = True
        i = buf.rfind(b"\n# HELP ")
        if i < 0:
            self._rest = buf
            return
        self._rest = buf[i + 1 :]
        try:
            text = buf[7:i].decode("utf-8")
        except UnicodeDecodeError:
            self._whole = True
            return
        self._blocks(text.split("\n# HELP "))

    def _blocks(self, blocks: List[str]) -> None:
        # map/chain/attrgetter keep the per-family work in C: a BMC sends ~50 families
        new: List[Optional[Family]] = list(map(_BLOCKS.get, blocks))
        if None in new:
            for i, fam in enumerate(new):
                if fam is None:
                    fam = new[i] = _checked(blocks[i])
                    if fam is None:
                        self._whole = True
                        return
        fams = cast(List[Family], new)
        # names never repeat or clash, across families and against earlier chunks
        reserved = list(chain.from_iterable(map(_get_reserved, fams)))
        names = self._names
        if len(set(reserved)) != len(reserved) or not names.isdisjoint(reserved):
            self._whole = True
            return
        names.update(reserved)
        start = len(self.families)
        self.families.extend(fams)
        if self.serial is None:
            for fam in fams:
                if fam.name == "bmc":
                    self.serial = _first_label(fam, "serial") or ""
                    break
        if self._slot is not None and self.serial is not None:
            prefix = self._prefix
            if prefix is None:
                prefix = self._prefix = _target(self.serial, self._slot)
            done = self._labelled
            if len(done) == start:
                parts = list(map(_get_parts, fams))
                if all(parts):
                    done.extend(map(prefix[0].join, parts))
                else:  # a family labelled sample by sample (the `bmc` info: its serial label)
                    join = prefix[0].join
                    done.extend(
                        [join(p) if p else f.labelled(*prefix) for f, p in zip(fams, parts)]
                    )
            else:  # the serial came late
                done.extend(f.labelled(*prefix) for f in self.families[len(done) :])

    def finish(self) -> Exposition:
        """The checked exposition; ExpositionError if the text is not valid."""
        if not self._whole and self._started:
            rest = self._rest
            if rest.endswith(b"\n# EOF\n"):
                body = rest[:-6]
            elif rest.endswith(b"\n# EOF"):
                body = rest[:-5]
            else:
                body = b""
            if body.startswith(b"# HELP "):
                try:
                    self._blocks([body[7:-1].decode("utf-8")])
                except UnicodeDecodeError:
                    self._whole = True
                if not self._whole:
                    exp = Exposition(self.families, self._data)
                    if self._prefix is not None and len(self._labelled) == len(self.families):
                        exp._labelled = (self._prefix[0], self._labelled)
                    return exp
        return _parse_whole(self._data)


def parse(text: str) -> Exposition:
    """Check one BMC's OpenMetrics text and split it into families; ExpositionError if bad."""
    reader = Reader()
    reader.feed(text.encode("utf-8"))
    return reader.finish()


def _parse_whole(data: List[bytes]) -> Exposition:
    """The whole text checked line by line (for a text the block check did not take)."""
    raw = b"".join(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExpositionError(f"not UTF-8 at byte {e.start}") from None
    if text.endswith("# EOF\n"):
        body = text[:-6]
    elif text.endswith("# EOF"):
        body = text[:-5]
    else:
        raise ExpositionError("exposition does not end with # EOF (truncated?)")
    if body and not body.endswith("\n"):
        raise ExpositionError("exposition does not end with # EOF on a line of its own")
    return Exposition(_families(body), [raw])


def _families(body: str) -> List[Family]:
    """The line-by-line check of `body` (lines ending in a newline, no `# EOF`)."""
    families: List[Family] = []
    names: Set[str] = set()  # every family name and the sample names it reserves
    fam: Optional[Family] = None
    samples: List[Sample] = []
    lines: List[str] = []
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
            samples.append((name, inner, value, pairs))
            lines.append(line)
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
            if fam is not None:
                _close(fam, samples, lines)
            fam = Family(name, "", rest)
            samples = []
            lines = []
            families.append(fam)
            allowed = ()
            seen = set()
            continue
        if fam is None or name != fam.name or samples:
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
    if fam is not None:
        _close(fam, samples, lines)
    for f in families:
        if not f.type:
            raise ExpositionError(f"family {f.name} without # TYPE")
    return families


def _close(fam: Family, samples: List[Sample], lines: List[str]) -> None:
    fam.samples = samples
    fam.text = "".join(line + "\n" for line in lines)


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
        self.parts: List[str] = []  # sample lines, labelled, of every source in order


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
        texts = exposition.labelled(serial, slot)
        known = self._families
        for fam, text in zip(exposition.families, texts):
            have = known.get(fam.name)
            if have is None or have.family is not fam:  # new, or another object: compare
                have = self._take(fam)
            if have is not None:
                have.parts.append(text)

    def add_family(self, family: Family) -> None:
        """A family the bridge produced itself (labels complete). Add these first: they win."""
        have = self._take(family)
        if have is not None:
            have.parts.append(family.text)

    def families(self) -> Iterator[Family]:
        for merged in self._families.values():
            yield merged.family

    def pieces(self, openmetrics: bool) -> List[str]:
        """The exposition as a list of strings, to be joined once."""
        out: List[str] = []
        for merged in self._families.values():
            out.append(merged.family.metadata(openmetrics))
            out.extend(merged.parts)
        if openmetrics:
            out.append("# EOF\n")
        return out


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
    return "".join(merger.pieces(openmetrics)).encode()


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

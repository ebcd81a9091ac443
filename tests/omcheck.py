"""Strict checks of exposition text, for what prometheus_client's parser lets through.

`openmetrics(text)` runs `prometheus_client.openmetrics.parser` over the text and
then the project's own line-level checks (bad escapes such as `\\q`, duplicate
label sets, metadata repeated or after samples, interleaved families, unit
suffixes, counter suffixes, `# EOF` last). `text004(text)` checks Prometheus text
0.0.4 for what it must not contain and for duplicate series. Both return a list
of problems (empty: clean).
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Set, Tuple

from prometheus_client.openmetrics.parser import text_string_to_metric_families

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_VALUE = re.compile(r"^(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|NaN|[+-]Inf)$")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "stateset": ("",),
    "info": ("_info",),
    "unknown": ("",),
}


def parse_sample(line: str) -> Tuple[str, Tuple[Tuple[str, str], ...], str, List[str]]:
    """(name, labels, value text, problems) of one sample line, escapes checked strictly."""
    problems: List[str] = []
    m = _NAME.match(line)
    if not m:
        return "", (), "", [f"no metric name: {line!r}"]
    name = m.group(0)
    i = m.end()
    labels: List[Tuple[str, str]] = []
    if i < len(line) and line[i] == "{":
        i += 1
        while i < len(line) and line[i] != "}":
            lm = _LABEL.match(line, i)
            if not lm:
                return name, (), "", [f"bad label name at {i}: {line!r}"]
            key = lm.group(0)
            i = lm.end()
            if line[i : i + 2] != '="':
                return name, (), "", [f'label {key} without =": {line!r}']
            i += 2
            value = []
            while True:
                if i >= len(line):
                    return name, (), "", [f"unterminated label value: {line!r}"]
                c = line[i]
                if c == "\\":
                    nxt = line[i + 1 : i + 2]
                    if nxt not in ("\\", '"', "n"):
                        problems.append(f"bad escape \\{nxt} in label {key}: {line!r}")
                    value.append({"n": "\n"}.get(nxt, nxt))
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                value.append(c)
                i += 1
            if any(k == key for k, _ in labels):
                problems.append(f"label {key} twice: {line!r}")
            labels.append((key, "".join(value)))
            if i < len(line) and line[i] == ",":
                i += 1
        i += 1
    rest = line[i:]
    if not rest.startswith(" "):
        problems.append(f"no space before the value: {line!r}")
    parts = rest.split()
    if not parts or len(parts) > 2:
        problems.append(f"bad value/timestamp part: {line!r}")
        return name, tuple(sorted(labels)), "", problems
    if not _VALUE.match(parts[0]):
        problems.append(f"bad value {parts[0]!r}: {line!r}")
    return name, tuple(sorted(labels)), parts[0], problems


def openmetrics(text: str) -> List[str]:
    problems: List[str] = []
    try:
        list(text_string_to_metric_families(text))
    except ValueError as e:
        problems.append(f"prometheus_client parser: {e}")
    if not text.endswith("# EOF\n"):
        problems.append("does not end with '# EOF\\n'")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if "# EOF" in lines[:-1]:
        problems.append("# EOF before the end")
    families: Dict[str, Dict[str, str]] = {}
    closed: Set[str] = set()
    current: Optional[str] = None
    has_samples: Set[str] = set()
    seen: Set[Tuple[str, Tuple[Tuple[str, str], ...]]] = set()

    def enter(fam: str) -> None:
        nonlocal current
        if fam != current:
            if fam in closed or fam in families and fam != current:
                problems.append(f"family {fam} interleaves with another")
            if current is not None:
                closed.add(current)
            current = fam
        families.setdefault(fam, {})

    for line in lines:
        if line == "# EOF":
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) < 3 or parts[1] not in ("HELP", "TYPE", "UNIT"):
                problems.append(f"bad comment line {line!r}")
                continue
            kind, fam = parts[1], parts[2]
            value = parts[3] if len(parts) > 3 else ""
            enter(fam)
            meta = families[fam]
            if kind in meta:
                problems.append(f"# {kind} twice for {fam}")
            if fam in has_samples:
                problems.append(f"# {kind} for {fam} after its samples")
            meta[kind] = value
            if kind == "UNIT" and value and not fam.endswith("_" + value):
                problems.append(f"family {fam} has unit {value} but does not end in _{value}")
            if kind == "HELP" and not re.fullmatch(r'(?:[^\\]|\\[\\n"])*', value):
                problems.append(f"bad escape in HELP of {fam}")
            continue
        name, labels, _, p = parse_sample(line)
        problems.extend(p)
        if not name:
            continue
        fam = _family_of(name, families, current)
        enter(fam)
        has_samples.add(fam)
        typ = families[fam].get("TYPE", "unknown")
        if name[len(fam) :] not in _SUFFIXES.get(typ, ("",)):
            problems.append(f"sample {name} does not fit {typ} family {fam}")
        key = (name, labels)
        if key in seen:
            problems.append(f"duplicate label set: {line!r}")
        seen.add(key)
    for fam, meta in families.items():
        if "TYPE" not in meta:
            problems.append(f"family {fam} without # TYPE")
        if "HELP" not in meta:
            problems.append(f"family {fam} without # HELP")
    return problems


def _family_of(name: str, families: Dict[str, Dict[str, str]], current: Optional[str]) -> str:
    if current is not None and name.startswith(current):
        suffix = name[len(current) :]
        typ = families[current].get("TYPE", "unknown")
        if suffix in _SUFFIXES.get(typ, ("",)):
            return current
    for suffix in ("_total", "_created", "_info"):
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return name[: -len(suffix)]
    return name


def text004(text: str) -> List[str]:
    problems: List[str] = []
    seen: Set[Tuple[str, Tuple[Tuple[str, str], ...]]] = set()
    typed: Dict[str, str] = {}
    for line in text.splitlines():
        # lines of their own: help text may mention them
        if line.startswith("# EOF"):
            problems.append("0.0.4 text contains # EOF")
        if line.startswith("# UNIT"):
            problems.append("0.0.4 text contains # UNIT")
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            if typ not in ("counter", "gauge", "histogram", "summary", "untyped"):
                problems.append(f"type {typ} is not a 0.0.4 type")
            if name in typed:
                problems.append(f"# TYPE twice for {name}")
            typed[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        name, labels, _, p = parse_sample(line)
        problems.extend(p)
        if (name, labels) in seen:
            problems.append(f"duplicate series {line!r}")
        seen.add((name, labels))
    return problems

"""Merging BMC expositions and writing them out in either text format.

Each BMC's OpenMetrics text is parsed with `prometheus_client`'s OpenMetrics
parser (strict: a malformed exposition is refused as a whole). The families of
all BMCs are merged by name, every sample labelled with the BMC's `slot` and
`serial`, so that a family's samples stay together (families never
interleave). The result is written as OpenMetrics 1.0.0 or as Prometheus text
0.0.4 (`prometheus_client` does the format's own munging: counters' `_total`,
info and stateset as gauges, no `# UNIT`, no `# EOF`).
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from prometheus_client import exposition
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT_004 = "text/plain; version=0.0.4; charset=utf-8"

# Labels the bridge adds; a BMC's own label of the same name and another value
# is kept as exported_<name> (Prometheus' honor_labels=false convention).
TARGET_LABELS = ("slot", "serial")


class ExpositionError(ValueError):
    """A BMC's metrics text that is not valid OpenMetrics."""


def parse(text: str) -> List[Metric]:
    """The families of one OpenMetrics text; ExpositionError if it is not valid."""
    if not text.endswith("# EOF\n") and not text.endswith("# EOF"):
        raise ExpositionError("exposition does not end with # EOF (truncated?)")
    try:
        return list(text_string_to_metric_families(text))
    except ValueError as e:
        raise ExpositionError(str(e)) from None


def info_label(families: Iterable[Metric], family: str, label: str) -> Optional[str]:
    """A label of the first sample of `family` (e.g. the serial in `bmc_info`)."""
    for m in families:
        if m.name == family:
            for s in m.samples:
                value = s.labels.get(label)
                if value is not None:
                    return str(value)
    return None


def _relabel(labels: Mapping[str, str], extra: Mapping[str, str]) -> Dict[str, str]:
    out = dict(extra)
    for k, v in labels.items():
        if k in out and out[k] != v:
            out["exported_" + k] = v
        else:
            out[k] = v
    return out


class Merger:
    """Families from several sources, merged by name, in order of first appearance."""

    def __init__(self) -> None:
        self._families: Dict[str, Metric] = {}
        self.conflicts: List[Tuple[str, str]] = []  # (family, why) dropped

    def add(self, families: Iterable[Metric], labels: Mapping[str, str]) -> None:
        for m in families:
            have = self._families.get(m.name)
            if have is None:
                have = Metric(m.name, m.documentation, m.type, m.unit)
                self._families[m.name] = have
            elif have.type != m.type or have.unit != m.unit:
                why = f"{have.type}/{have.unit or '-'} vs {m.type}/{m.unit or '-'}"
                self.conflicts.append((m.name, why))
                continue
            for s in m.samples:
                have.samples.append(
                    Sample(s.name, _relabel(s.labels, labels), s.value, s.timestamp, s.exemplar)
                )

    def add_family(self, family: Metric) -> None:
        """A family the bridge itself produced (no labels added); it wins over a BMC's."""
        if family.name in self._families:
            self.conflicts.append((family.name, "also produced by the bridge"))
            del self._families[family.name]
        self._families[family.name] = family

    def collect(self) -> Iterator[Metric]:
        yield from self._families.values()


def render(merger: Merger, openmetrics: bool) -> bytes:
    if openmetrics:
        return om_exposition.generate_latest(merger)  # type: ignore[arg-type]
    return exposition.generate_latest(merger)  # type: ignore[arg-type]


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

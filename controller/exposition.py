"""Prometheus text exposition (format 0.0.4) for gridctl's own metric families.

``prometheus_client.generate_latest`` validates and escapes every metric and
label name on every sample and formats label sets afresh each time: 2–8 ms for
the service's ~450 lines, one loop step long enough to reach into the fast
task's next wait. Our families are few and their names fixed, and their label
sets are bounded (per bus, per task, never per meter), so this writer escapes
each name once, caches each formatted label set, and otherwise writes the same
bytes as ``generate_latest`` (a test holds the two equal).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

# Types that generate_latest renames for the 0.0.4 text format.
_TYPE_NAMES = {
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
    "unknown": "untyped",
}
_NAME_SUFFIX = {"counter": "_total", "info": "_info"}
# Samples that exist only in OpenMetrics; none of our families has them.
_OM_ONLY = ("_created", "_gsum", "_gcount")
LABEL_CACHE_LIMIT = 10_000
_LEGAL_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _escape_label_value(v: str) -> str:
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


def _checked_label_name(k: str) -> str:
    if not _LEGAL_NAME.fullmatch(k) or ":" in k:
        raise ValueError(f"{k!r}: not a legal Prometheus label name")
    return k


class TextExposition:
    """Renders metric families to bytes; keeps the formatted label sets between scrapes."""

    def __init__(self) -> None:
        self._labels: dict[tuple[tuple[str, str], ...], str] = {}
        self._names: set[str] = set()  # metric names already checked

    def _labelstr(self, labels: dict[str, str]) -> str:
        if not labels:
            return ""
        key = tuple(labels.items())
        text = self._labels.get(key)
        if text is None:
            text = (
                "{"
                + ",".join(
                    f'{_checked_label_name(k)}="{_escape_label_value(v)}"'
                    for k, v in sorted(labels.items())
                )
                + "}"
            )
            if len(self._labels) < LABEL_CACHE_LIMIT:
                self._labels[key] = text
        return text

    def render(self, families: Iterable[Metric]) -> bytes:
        out: list[str] = []
        append = out.append
        labelstr = self._labelstr
        for metric in families:
            if metric.name not in self._names:
                if not _LEGAL_NAME.fullmatch(metric.name):
                    raise ValueError(f"{metric.name!r}: not a legal Prometheus metric name")
                self._names.add(metric.name)
            mtype = metric.type
            mname = metric.name + _NAME_SUFFIX.get(mtype, "")
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            append(f"# HELP {mname} {doc}\n# TYPE {mname} {_TYPE_NAMES.get(mtype, mtype)}\n")
            om_names = {metric.name + suffix for suffix in _OM_ONLY}
            for s in metric.samples:
                if s.name in om_names:
                    raise ValueError(f"{s.name}: OpenMetrics-only sample, not rendered here")
                ts = "" if s.timestamp is None else f" {int(float(s.timestamp) * 1000):d}"
                append(f"{s.name}{labelstr(s.labels)} {floatToGoString(s.value)}{ts}\n")
        return "".join(out).encode()

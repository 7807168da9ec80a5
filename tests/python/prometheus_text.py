"""Reading samples out of a Prometheus text exposition (GET /metrics)."""

from __future__ import annotations

import re

SAMPLE_RE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)", re.MULTILINE)
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(exposition: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of series `name`: its labels and value."""
    return [
        (dict(LABEL_RE.findall(labels or "")), float(value))
        for n, labels, value in SAMPLE_RE.findall(exposition)
        if n == name
    ]


def total(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for have, v in samples(exposition, name) if all(have.get(k) == w for k, w in labels.items()))

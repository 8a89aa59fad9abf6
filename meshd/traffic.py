"""The traffic snapshot meshd serves on GET /traffic and ``meshctl top`` reads, typed.

One module both sides import (as ``meshd.stats`` is for /stats): meshd's
metrics consumer builds a ``Traffic`` from the very counters /metrics renders
(``meshd.telemetry.metrics.Metrics.traffic``) and the admin API serves
``to_json()``; meshctl reads it back with ``Traffic.from_json``.

Every number is cumulative since ``started`` (when meshd's counters began):
a reader computes rates from the deltas of two snapshots, and starts over
when ``started`` changes or a counter shrinks (meshd restarted). ``latency``
holds the request count per histogram bucket (not cumulative across
buckets): ``len(buckets) + 1`` entries, the last for slower than the last
bound. ``classes`` holds the request count per status class ("1xx".."5xx",
"none": no response), only the classes seen. ``bytes_in`` is what the client
side of the edge sent, ``bytes_out`` what it was sent (open connections
included, as their bytes pass). ``source``/``destination`` are the metric labels' names.

``from_json`` is lenient, as ``Stats.from_json`` is: an unknown field is
ignored, a missing or mistyped one takes its default, and an entry that is
not an object is skipped. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

VERSION = 1
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
Json = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class HttpEdge:
    """Requests on one (direction, source, destination): by status class and latency bucket."""

    direction: str
    source: str
    destination: str
    classes: Mapping[str, int]
    latency: tuple[int, ...]
    latency_sum: float

    @property
    def requests(self) -> int:
        return sum(self.classes.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "source": self.source,
            "destination": self.destination,
            "classes": dict(self.classes),
            "latency": list(self.latency),
            "latency_sum": self.latency_sum,
        }

    @classmethod
    def from_json(cls, doc: Json) -> HttpEdge:
        classes = doc.get("classes")
        latency = doc.get("latency")
        return cls(
            _str(doc, "direction"),
            _str(doc, "source"),
            _str(doc, "destination"),
            {k: v for k, v in classes.items() if k in STATUS_CLASSES and _is_int(v)}
            if isinstance(classes, Mapping)
            else {},
            tuple(v for v in latency if _is_int(v)) if isinstance(latency, list) else (),
            _float(doc, "latency_sum"),
        )


@dataclass(frozen=True, slots=True)
class TcpEdge:
    """Connections on one (direction, source, destination): opened, open now, bytes."""

    direction: str
    source: str
    destination: str
    opened: int
    open: int
    bytes_in: int
    bytes_out: int

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "source": self.source,
            "destination": self.destination,
            "opened": self.opened,
            "open": self.open,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }

    @classmethod
    def from_json(cls, doc: Json) -> TcpEdge:
        return cls(
            _str(doc, "direction"),
            _str(doc, "source"),
            _str(doc, "destination"),
            _int(doc, "opened"),
            _int(doc, "open"),
            _int(doc, "bytes_in"),
            _int(doc, "bytes_out"),
        )


@dataclass(frozen=True, slots=True)
class Traffic:
    """One meshd's traffic counters at ``taken`` (Unix time), counted since ``started``."""

    host: str
    taken: float
    started: float
    buckets: tuple[float, ...]
    http: tuple[HttpEdge, ...] = ()
    tcp: tuple[TcpEdge, ...] = ()
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "host": self.host,
            "taken": self.taken,
            "started": self.started,
            "buckets": list(self.buckets),
            "http": [e.to_json() for e in self.http],
            "tcp": [e.to_json() for e in self.tcp],
        }

    @classmethod
    def from_json(cls, doc: Json) -> Traffic:
        buckets = doc.get("buckets")
        return cls(
            host=_str(doc, "host"),
            taken=_float(doc, "taken"),
            started=_float(doc, "started"),
            buckets=tuple(float(b) for b in buckets if _is_number(b))
            if isinstance(buckets, list)
            else (),
            http=tuple(HttpEdge.from_json(e) for e in _objects(doc, "http")),
            tcp=tuple(TcpEdge.from_json(e) for e in _objects(doc, "tcp")),
            version=_int(doc, "version") or VERSION,
        )


def _objects(doc: Json, key: str) -> list[Json]:
    value = doc.get(key)
    return [e for e in value if isinstance(e, Mapping)] if isinstance(value, list) else []


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str(doc: Json, key: str) -> str:
    value = doc.get(key)
    return value if isinstance(value, str) else ""


def _int(doc: Json, key: str) -> int:
    value = doc.get(key)
    return value if _is_int(value) else 0


def _float(doc: Json, key: str) -> float:
    value = doc.get(key)
    return float(value) if _is_number(value) else 0.0

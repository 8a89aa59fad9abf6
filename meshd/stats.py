"""What meshd's admin API serves and meshctl reads, typed: one module both sides import.

meshd builds a ``Stats`` (``meshd.daemon``) and serves ``to_json()`` on
/stats; meshctl (``AdminClient.stats``: ``meshctl status``, the wait after a
registry push) and ``meshd reload`` (``meshd.host.reloading``) read it back
with ``Stats.from_json``. Nothing else reads /stats by its keys. The document
kinds the admin API takes (``KINDS``) live here too; /traffic's payload, which
``meshctl top`` reads, lives in ``meshd.traffic``.

A fleet runs several meshd versions, so ``from_json`` is lenient both ways:
a field it does not know (a newer meshd) is ignored, and a field that is
missing or of another type (an older meshd) takes its default. Defaults:
None where a reader must tell "not reported" from a value (``version``,
``pid``, ``uptime_seconds``, ``registry_version``, ``ipv6``, ``certificate``,
``reload``); ``UNREPORTED`` for ``synced_registry_version``, whose None
already means "no meshd sync since boot"; False for ``ready`` and
``draining``; zero, "" or empty for the rest. Pure: no I/O.

To add a field: declare it here with its default, write it in ``to_json``
and read it in ``from_json`` (the round-trip test fails until both are
done), set it in ``meshd.daemon``'s ``_Backend.stats``, and read it in
meshctl as an attribute.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")
D = TypeVar("D")
Json = Mapping[str, Any]

# documents: GET and PUT /<kind> (trust: the roots alone, for a CA rollover; issuer: this
# host's issuer CA)
KINDS = ("registry", "config", "policy", "certs", "trust", "issuer")


class Unreported(enum.Enum):
    """A field the meshd that answered does not send, where None has a meaning of its own."""

    UNREPORTED = "unreported"


UNREPORTED = Unreported.UNREPORTED


@dataclass(frozen=True)
class CertificateSource:
    """Which certificate meshd runs, the files' or a pushed one, and why."""

    layer: Literal["files", "pushed", "renewed"]
    version: int | None  # of the pushed certs document, when that is the one
    reason: str

    def describe(self) -> str:
        where = {
            "files": "the files",
            "pushed": f"pushed certs version {self.version}",
            "renewed": "renewal",
        }[self.layer]
        return f"certificate from {where}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "version": self.version, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: Json) -> CertificateSource | None:
        layer = doc.get("layer")
        if layer not in ("files", "pushed", "renewed"):
            return None
        return cls(layer, _int(doc, "version"), _get(doc, "reason", str, ""))


@dataclass(frozen=True)
class RenewalReport:
    """How meshd's own certificate renewal goes; ``meshctl status`` warns on ``failing``.

    ``state``: "ok" (renewed, or not due yet), "failing" (the last attempt failed;
    meshd keeps its certificate and retries at ``next_at``), "off" (no issuer
    in the registry). Times are ISO 8601 UTC ("" when none).
    """

    state: str = "off"
    last_renewed: str = ""
    next_at: str = ""
    failures: int = 0  # attempts failed in a row
    last_error: str = ""
    issuer: str = ""  # the host that signed the running certificate, if renewal did
    renewals: int = 0  # since start

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "last_renewed": self.last_renewed,
            "next_at": self.next_at,
            "failures": self.failures,
            "last_error": self.last_error,
            "issuer": self.issuer,
            "renewals": self.renewals,
        }

    @classmethod
    def from_json(cls, doc: Json) -> RenewalReport | None:
        return cls(
            state=_get(doc, "state", str, "off"),
            last_renewed=_get(doc, "last_renewed", str, ""),
            next_at=_get(doc, "next_at", str, ""),
            failures=_count(doc, "failures"),
            last_error=_get(doc, "last_error", str, ""),
            issuer=_get(doc, "issuer", str, ""),
            renewals=_count(doc, "renewals"),
        )


@dataclass(frozen=True)
class IssuerReport:
    """This host as an issuer: its CA's life and what it signed or refused since start."""

    not_after: str = ""  # ISO 8601 UTC of the issuer CA certificate ("" when none yet)
    signed: int = 0
    refused: int = 0
    pending_key: bool = False  # a key made for ``POST /issuer/csr``, not yet signed

    def to_json(self) -> dict[str, Any]:
        return {
            "not_after": self.not_after,
            "signed": self.signed,
            "refused": self.refused,
            "pending_key": self.pending_key,
        }

    @classmethod
    def from_json(cls, doc: Json) -> IssuerReport | None:
        return cls(
            not_after=_get(doc, "not_after", str, ""),
            signed=_count(doc, "signed"),
            refused=_count(doc, "refused"),
            pending_key=doc.get("pending_key") is True,
        )


@dataclass(frozen=True)
class ReloadReport:
    """How the last reload went (generation 0: the start); ``meshd reload`` waits for it."""

    generation: int
    ok: bool
    message: str
    at: str = ""  # ISO 8601, UTC, milliseconds

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "ok": self.ok,
            "message": self.message,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, doc: Json) -> ReloadReport | None:
        generation = _int(doc, "generation")
        if generation is None:
            return None
        ok = doc.get("ok") is True
        return cls(generation, ok, _get(doc, "message", str, ""), _get(doc, "at", str, ""))


@dataclass(frozen=True)
class SetAside:
    """A stored document meshd no longer runs: why, and where the file went."""

    version: int | None  # None when the file could not be read as a document
    reason: str
    kept: str | None  # the file it was moved to, if any
    at: float  # when, in epoch seconds

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "reason": self.reason, "kept": self.kept, "at": self.at}

    @classmethod
    def from_json(cls, doc: Json) -> SetAside:
        kept, at = _get(doc, "kept", str, None), _float(doc, "at") or 0.0
        return cls(_int(doc, "version"), _get(doc, "reason", str, ""), kept, at)


@dataclass(frozen=True)
class LinkOut:
    """A link this meshd dialled: the peer's mesh port and the streams on it."""

    peer: str
    streams: int

    def to_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "streams": self.streams}

    @classmethod
    def from_json(cls, doc: Json) -> LinkOut:
        return cls(_get(doc, "peer", str, ""), _count(doc, "streams"))


@dataclass(frozen=True)
class LinkIn:
    """A link a peer dialled: its host identity, where from, and the streams on it."""

    peer: str
    address: str
    streams: int

    def to_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "address": self.address, "streams": self.streams}

    @classmethod
    def from_json(cls, doc: Json) -> LinkIn:
        peer, address = _get(doc, "peer", str, ""), _get(doc, "address", str, "")
        return cls(peer, address, _count(doc, "streams"))


@dataclass(frozen=True)
class Counts:
    """Named counters, all integers (``HandshakeCounts``, ``HeapCounts``)."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls: type[C], doc: Json) -> C:
        return cls(**{name: _count(doc, name) for name in cls.__dataclass_fields__})


C = TypeVar("C", bound=Counts)


@dataclass(frozen=True)
class EventCounts:
    """Events on the bus, and those dropped for each consumer that fell behind."""

    published: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)  # consumer -> events

    def to_json(self) -> dict[str, Any]:
        return {"published": self.published, "dropped": dict(self.dropped)}

    @classmethod
    def from_json(cls, doc: Json) -> EventCounts:
        return cls(_count(doc, "published"), _mapping(doc, "dropped", _whole))


@dataclass(frozen=True)
class HandshakeCounts(Counts):
    """The mesh port's peers not yet known (``meshd.tls.gate``)."""

    mesh: int = 0  # TLS handshakes in flight
    mesh_silent: int = 0  # accepted sockets whose peer has not spoken yet
    mesh_evicted: int = 0
    mesh_turned_away: int = 0


@dataclass(frozen=True)
class HeapCounts(Counts):
    free_bytes: int = 0
    trims: int = 0  # times free memory went back to the kernel


@dataclass(frozen=True)
class Stats:
    """The /stats payload; the module docstring says what a missing field becomes."""

    version: str | None = None  # meshd's own
    pid: int | None = None  # what ``meshd reload`` signals
    host: str = ""
    identities: tuple[str, ...] = ()
    certificate_not_after: str = ""  # ISO 8601
    certificate: CertificateSource | None = None  # whose certificate runs, and why
    certificate_serial: str = ""  # upper-case hex, as a peer's getpeercert() spells it
    renewal: RenewalReport | None = None
    issuer: IssuerReport | None = None  # None: this host is no issuer
    uptime_seconds: float | None = None
    ready: bool = False
    draining: bool = False
    active_connections: int = 0
    documents: Mapping[str, int] = field(default_factory=dict)  # kind -> version
    # stored documents that no longer validate on this host's files: meshd runs without
    documents_set_aside: Mapping[str, SetAside] = field(default_factory=dict)
    reload: ReloadReport | None = None
    registry_version: int | None = None
    # the registry whose rules and /etc/hosts names meshd-sync.service put in place
    synced_registry_version: int | Unreported | None = UNREPORTED
    mtls: str = ""
    links_out: tuple[LinkOut, ...] = ()
    links_in: tuple[LinkIn, ...] = ()
    events: EventCounts = EventCounts()
    listeners: Mapping[str, str] = field(default_factory=dict)  # name -> bound address
    handshakes: HandshakeCounts = HandshakeCounts()
    heap: HeapCounts = HeapCounts()
    ipv6: str | None = None  # "served", or why not

    def to_json(self) -> dict[str, Any]:
        doc = {
            "version": self.version,
            "pid": self.pid,
            "host": self.host,
            "identities": list(self.identities),
            "certificate_not_after": self.certificate_not_after,
            "certificate": _opt(self.certificate),
            "certificate_serial": self.certificate_serial,
            "renewal": _opt(self.renewal),
            "issuer": _opt(self.issuer),
            "uptime_seconds": self.uptime_seconds,
            "ready": self.ready,
            "draining": self.draining,
            "active_connections": self.active_connections,
            "documents": dict(self.documents),
            "documents_set_aside": {k: v.to_json() for k, v in self.documents_set_aside.items()},
            "reload": _opt(self.reload),
            "registry_version": self.registry_version,
            "synced_registry_version": self.synced_registry_version,
            "mtls": self.mtls,
            "links_out": [link.to_json() for link in self.links_out],
            "links_in": [link.to_json() for link in self.links_in],
            "events": self.events.to_json(),
            "listeners": dict(self.listeners),
            "handshakes": self.handshakes.to_json(),
            "heap": self.heap.to_json(),
            "ipv6": self.ipv6,
        }
        if self.synced_registry_version is UNREPORTED:
            del doc["synced_registry_version"]
        return doc

    @classmethod
    def from_json(cls, doc: Json) -> Stats:
        return cls(
            version=_get(doc, "version", str, None),
            pid=_int(doc, "pid"),
            host=_get(doc, "host", str, ""),
            identities=tuple(_items(doc, "identities", _text)),
            certificate_not_after=_get(doc, "certificate_not_after", str, ""),
            certificate=_nested(doc, "certificate", CertificateSource.from_json),
            certificate_serial=_get(doc, "certificate_serial", str, ""),
            renewal=_nested(doc, "renewal", RenewalReport.from_json),
            issuer=_nested(doc, "issuer", IssuerReport.from_json),
            uptime_seconds=_float(doc, "uptime_seconds"),
            ready=doc.get("ready") is True,
            draining=doc.get("draining") is True,
            active_connections=_count(doc, "active_connections"),
            documents=_mapping(doc, "documents", _whole),
            documents_set_aside=_mapping(doc, "documents_set_aside", _object(SetAside.from_json)),
            reload=_nested(doc, "reload", ReloadReport.from_json),
            registry_version=_int(doc, "registry_version"),
            synced_registry_version=_synced(doc),
            mtls=_get(doc, "mtls", str, ""),
            links_out=tuple(_items(doc, "links_out", _object(LinkOut.from_json))),
            links_in=tuple(_items(doc, "links_in", _object(LinkIn.from_json))),
            events=EventCounts.from_json(_json(doc.get("events"))),
            listeners=_mapping(doc, "listeners", _text),
            handshakes=HandshakeCounts.from_json(_json(doc.get("handshakes"))),
            heap=HeapCounts.from_json(_json(doc.get("heap"))),
            ipv6=_get(doc, "ipv6", str, None),
        )


# -- reading leniently: what does not fit is as if it were missing ----------------------------


def _get(doc: Json, key: str, kind: type[T], default: D) -> T | D:
    value = doc.get(key)
    if isinstance(value, bool) and kind is not bool:  # JSON true is no number
        return default
    return value if isinstance(value, kind) else default


def _int(doc: Json, key: str) -> int | None:
    return _whole(doc.get(key))


def _count(doc: Json, key: str) -> int:
    return _whole(doc.get(key)) or 0


def _float(doc: Json, key: str) -> float | None:
    value = doc.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _synced(doc: Json) -> int | Unreported | None:
    if "synced_registry_version" not in doc:  # a meshd from before ``meshd sync``
        return UNREPORTED
    return _int(doc, "synced_registry_version")


def _json(value: object) -> Json:
    return value if isinstance(value, dict) else {}


def _nested(doc: Json, key: str, read: Callable[[Json], T | None]) -> T | None:
    value = doc.get(key)
    return read(value) if isinstance(value, dict) else None


def _object(read: Callable[[Json], T]) -> Callable[[object], T | None]:
    return lambda value: read(value) if isinstance(value, dict) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _items(doc: Json, key: str, read: Callable[[object], T | None]) -> list[T]:
    values = doc.get(key)
    parsed = [read(v) for v in values] if isinstance(values, list) else []
    return [v for v in parsed if v is not None]


def _mapping(doc: Json, key: str, read: Callable[[object], T | None]) -> dict[str, T]:
    values = _json(doc.get(key))
    parsed = {k: read(v) for k, v in values.items() if isinstance(k, str)}
    return {k: v for k, v in parsed.items() if v is not None}


def _opt(
    value: CertificateSource | ReloadReport | RenewalReport | IssuerReport | None,
) -> dict[str, Any] | None:
    return None if value is None else value.to_json()

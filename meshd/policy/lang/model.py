"""What a checked policy document is: frozen rules over one selector vocabulary (§2.1-2.2).

Values here are already valid: ``validate`` builds them only from a document
without errors, so the evaluator trusts every field. Sources are stored
resolved (``"web"`` becomes the SPIFFE ID of the document's trust domain), so
comparing a peer's verified identity is a string test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

ANY_PEER = "*"  # any peer that completed mTLS
UNAUTHENTICATED = "unauthenticated"  # a plaintext peer (permissive mTLS only)
ANY_SERVICE = "*"

Mode = Literal["strict", "permissive"]
Default = Literal["deny", "allow", "audit"]
Bucket = Literal["shared", "per-source"]


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """One ``headers`` entry: ``name`` (lower-case) and exactly one of the three matchers."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    present: bool | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """One ``from`` entry, resolved: ``text`` as written (for messages), and how it matches.

    ``kind``: "exact" (``value`` is a SPIFFE ID), "prefix" (``value`` ends in
    "/": any ID that starts with it), "any" (``*``) or "unauthenticated".
    """

    text: str
    kind: Literal["exact", "prefix", "any", "unauthenticated"]
    value: str = ""


@dataclass(frozen=True, slots=True)
class Selector:
    """The shared selector fields; None: the field is not set (matches anything)."""

    to: str  # a service name, or "*"
    sources: tuple[Source, ...] | None = None
    ports: tuple[tuple[int, int], ...] | None = None  # inclusive ranges; 8080 is (8080, 8080)
    methods: frozenset[str] | None = None
    paths: tuple[str, ...] | None = None  # patterns, already valid (§2.2)
    headers: tuple[HeaderMatch, ...] | None = None

    @property
    def http_only(self) -> bool:
        """Whether it sets a field only an HTTP request has (methods, paths, headers)."""
        return self.methods is not None or self.paths is not None or self.headers is not None


@dataclass(frozen=True, slots=True)
class Rule:
    """An ``[[allow]]`` or ``[[deny]]`` entry; ``id`` is ``<document>/<kind>/<name>``."""

    id: str
    kind: Literal["allow", "deny"]
    name: str
    selector: Selector
    audit: bool = False  # deny only: a dry run, logged as would-deny
    line: int = 0  # where it starts in its file (0: not known, e.g. a pushed document)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A ``[[rate_limit]]`` entry: ``limit`` units per ``per_ms``, bucket capacity ``burst``."""

    id: str
    name: str
    selector: Selector
    limit: int
    per_ms: int
    burst: int
    bucket: Bucket = "shared"
    line: int = 0

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.limit * 1000.0 / self.per_ms


@dataclass(frozen=True, slots=True)
class Setting:
    """A value set by a document (``mtls.mode``, ``authz.services.api``, ...), with its rule id."""

    value: str
    id: str  # e.g. "zero-trust/authz/default", "base/mtls/services/api"
    line: int = 0


@dataclass(frozen=True, slots=True)
class Document:
    """One checked policy document (one file). ``data`` is its TOML-shaped form: what is
    stored, diffed and pushed to hosts (meshd checks it again with the same validator)."""

    name: str
    trust_domain: str
    description: str = ""
    mtls_mode: Setting | None = None
    mtls_services: Mapping[str, Setting] = field(default_factory=dict)
    authz_default: Setting | None = None
    authz_services: Mapping[str, Setting] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    data: Mapping[str, object] = field(default_factory=dict)

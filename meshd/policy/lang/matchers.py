"""Selectors compiled once into matchers a request is tested against (§2.2).

A ``Matcher`` splits a selector into its L4 part (``from``, ``ports``: known
when a connection is accepted) and its HTTP part (``methods``, ``paths``,
``headers``). Sources become a set lookup plus prefixes, ports a set plus
ranges, and path patterns one of three shapes (exact, subtree, segment-wise),
so a request is matched by string comparisons, never by a regex.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshd.policy.lang.model import HeaderMatch, Selector

Headers = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class PathPattern:
    """One pattern: ``kind`` "all" (``/**``), "exact", "subtree" (``/a/**``: ``text`` is
    ``/a``) or "segments" (``*`` in it: ``segments`` and whether it ends in ``**``)."""

    kind: str
    text: str = ""
    segments: tuple[str, ...] = ()
    rest: bool = False

    @classmethod
    def compile(cls, pattern: str) -> PathPattern:
        if pattern == "/**":
            return cls("all")
        parts = tuple(pattern[1:].split("/"))
        rest = parts[-1] == "**"
        if rest:
            parts = parts[:-1]
        if "*" in parts:
            return cls("segments", pattern, parts, rest)
        if rest:
            return cls("subtree", "/" + "/".join(parts))
        return cls("exact", pattern)

    def matches(self, path: str, segments: Sequence[str]) -> bool:
        """``path`` has its trailing "/" removed; ``segments`` is ``path[1:].split("/")``."""
        kind = self.kind
        if kind == "exact":
            return path == self.text
        if kind == "subtree":
            text = self.text
            return path.startswith(text) and (len(path) == len(text) or path[len(text)] == "/")
        if kind == "all":
            return True
        return self._segments_match(segments)

    def _segments_match(self, segments: Sequence[str]) -> bool:
        want = self.segments
        if len(segments) != len(want) and not (self.rest and len(segments) >= len(want)):
            return False
        for have, pattern in zip(segments, want, strict=False):
            if pattern == "*":
                if not have:
                    return False
            elif have != pattern:
                return False
        return True


def header_value(headers: Headers, name: str) -> str | None:
    """Every value of header ``name`` (lower-case) joined with "," in arrival order (§2.2)."""
    values = [value for key, value in headers if key.lower() == name]
    return ",".join(values) if values else None


def header_matches(match: HeaderMatch, headers: Headers) -> bool:
    value = header_value(headers, match.name)
    if match.present is not None:
        return (value is not None) is match.present
    if value is None:
        return False
    if match.exact is not None:
        return value == match.exact
    return match.prefix is not None and value.startswith(match.prefix)


class Matcher:
    """One compiled selector; ``id`` is the rule's, for ordering and reporting."""

    __slots__ = (
        "any_source",
        "exact_sources",
        "headers",
        "http_only",
        "id",
        "methods",
        "paths",
        "port_ranges",
        "ports",
        "prefix_sources",
        "segmented",
        "unauthenticated",
    )

    def __init__(self, rule_id: str, selector: Selector) -> None:
        self.id = rule_id
        self._compile_sources(selector)
        self._compile_ports(selector)
        self.methods = selector.methods
        self.paths = (
            None
            if selector.paths is None
            else tuple(PathPattern.compile(p) for p in selector.paths)
        )
        self.headers = selector.headers
        self.http_only = selector.http_only
        self.segmented = any(p.kind == "segments" for p in self.paths or ())

    def _compile_sources(self, selector: Selector) -> None:
        sources = selector.sources
        self.any_source = sources is None  # no `from`: any peer, plaintext included
        self.unauthenticated = sources is None
        exact: set[str] = set()
        prefixes: list[str] = []
        for source in sources or ():
            if source.kind == "exact":
                exact.add(source.value)
            elif source.kind == "prefix":
                prefixes.append(source.value)
            elif source.kind == "any":
                self.any_source = True
            else:
                self.unauthenticated = True
        self.exact_sources = frozenset(exact)
        self.prefix_sources = tuple(prefixes)

    def _compile_ports(self, selector: Selector) -> None:
        if selector.ports is None:
            self.ports: frozenset[int] | None = None
            self.port_ranges: tuple[tuple[int, int], ...] = ()
            return
        self.ports = frozenset(lo for lo, hi in selector.ports if lo == hi)
        self.port_ranges = tuple((lo, hi) for lo, hi in selector.ports if lo != hi)

    def source_matches(self, source: str | None) -> bool:
        if source is None:
            return self.unauthenticated
        if self.any_source or source in self.exact_sources:
            return True
        return any(source.startswith(p) for p in self.prefix_sources)

    def port_matches(self, port: int) -> bool:
        if self.ports is None or port in self.ports:
            return True
        return any(lo <= port <= hi for lo, hi in self.port_ranges)

    def l4(self, source: str | None, port: int) -> bool:
        """Whether ``from`` and ``ports`` match (``to`` was settled by indexing)."""
        return self.port_matches(port) and self.source_matches(source)

    def http(self, method: str, path: str, segments: Sequence[str], headers: Headers) -> bool:
        """Whether ``methods``, ``paths`` and ``headers`` match an HTTP request."""
        # Plain loops: this runs per request, and generators cost an allocation each.
        if self.methods is not None and method not in self.methods:
            return False
        if self.paths is not None:
            for pattern in self.paths:
                if pattern.matches(path, segments):
                    break
            else:
                return False
        if self.headers is not None:
            for match in self.headers:
                if not header_matches(match, headers):
                    return False
        return True

"""The checks of single fields (§2.2, §2.7, §2.12): a raw TOML value in, a model value out.

Each check reports every problem it finds through a ``Report`` and returns the
parsed value, or None when the field is wrong (the document then has errors
and no ``Document`` is built). ``Where`` carries both spellings of a field's
place: the path tuple of ``lines`` and the ``kind."name".field[i]`` text.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from meshd.errors import ConfigError
from meshd.identity import SpiffeId
from meshd.policy.lang.lines import Lines, Path
from meshd.policy.lang.model import (
    ANY_PEER,
    ANY_SERVICE,
    UNAUTHENTICATED,
    Source,
)
from meshd.policy.lang.problems import Problem, Severity

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
MAX_COUNT = 1_000_000_000
SERVICE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_PORT_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")
_DURATION = re.compile(r"([0-9]{1,9})(ms|s|m|h)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Where:
    """A field's place: ``path`` for its line, ``field`` for the message."""

    path: Path
    field: str

    def key(self, key: str) -> Where:
        return Where((*self.path, key), f"{self.field}.{key}" if self.field else key)

    def item(self, index: int) -> Where:
        return Where((*self.path, index), f"{self.field}[{index}]")

    def quoted(self, key: str) -> Where:
        return Where((*self.path, key), f'{self.field}."{key}"')


class Report:
    """Collects the problems of one file, with lines from its scan."""

    def __init__(self, file: str, lines: Lines) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []

    def add(self, code: str, where: Where, message: str, severity: Severity = "error") -> None:
        line = self.lines.line(where.path)
        self.problems.append(Problem(self.file, line, code, where.field, message, severity))

    @property
    def failed(self) -> bool:
        return any(problem.severity == "error" for problem in self.problems)


def every(found: list[T | None]) -> tuple[T, ...] | None:
    """All items, or None when one of them was wrong (and reported)."""
    kept = tuple(item for item in found if item is not None)
    return kept if len(kept) == len(found) else None


def type_name(value: object) -> str:
    """TOML's words for Python's types, for P003 messages."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return "datetime"
    return type(value).__name__


def wrong_type(report: Report, where: Where, expected: str, value: object) -> None:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    report.add("P003", where, f"expected {expected}, got {type_name(value)} {shown}")


def suggest(word: str, known: Collection[str]) -> str:
    """`` (did you mean 'methods'?)`` when a known word is close, else a list of them."""
    # difflib is quadratic: a pushed document's keys are not worth seconds of CPU
    close = difflib.get_close_matches(word[:64], list(known), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return "; known fields: " + ", ".join(known)


def unknown_keys(
    report: Report, where: Where, table: Mapping[str, Any], known: Collection[str]
) -> None:
    for key in table:
        if key not in known:
            report.add("P002", where.key(key), f"unknown field '{key}'{suggest(key, known)}")


def text(report: Report, where: Where, value: object, example: str = "") -> str | None:
    if isinstance(value, str):
        return value
    wrong_type(report, where, f"a string{example}", value)
    return None


def integer(report: Report, where: Where, value: object, example: str) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    wrong_type(report, where, f"an integer, e.g. {example}", value)
    return None


def flag(report: Report, where: Where, value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    wrong_type(report, where, "true or false", value)
    return None


def table(report: Report, where: Where, value: object, example: str) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    wrong_type(report, where, f"a table, e.g. {example}", value)
    return None


def array(
    report: Report, where: Where, value: object, example: str, of: str = "strings"
) -> list[Any] | None:
    """A non-empty array: an empty one would match nothing, which is never what was meant."""
    if not isinstance(value, list):
        wrong_type(report, where, f"an array of {of}, e.g. {example}", value)
        return None
    if not value:
        report.add("P003", where, f"an empty array matches nothing: list a value, e.g. {example}")
        return None
    return value


def enum(report: Report, where: Where, value: object, allowed: tuple[str, ...]) -> str | None:
    found = text(report, where, value)
    if found is None:
        return None
    if found not in allowed:
        listed = ", ".join(f'"{choice}"' for choice in allowed)
        report.add("P008", where, f"'{found}' is not one of {listed}")
        return None
    return found


def service_name(report: Report, where: Where, name: str) -> bool:
    if SERVICE_NAME.fullmatch(name):
        return True
    report.add(
        "P006",
        where,
        f"invalid service name '{name}': use 1-63 of a-z, 0-9, '-', "
        "starting and ending with a letter or digit",
    )
    return False


def to(report: Report, where: Where, value: object) -> str | None:
    found = text(report, where, value, ', e.g. "api"')
    if found is None:
        return None
    if found == ANY_SERVICE or SERVICE_NAME.fullmatch(found):
        return found
    report.add(
        "P010",
        where,
        f"'{found}' is not a service name or \"*\" (every service); "
        "a service name is 1-63 of a-z, 0-9, '-'",
    )
    return None


def sources(
    report: Report, where: Where, value: object, trust_domain: str
) -> tuple[Source, ...] | None:
    items = array(report, where, value, '["web"]')
    if items is None:
        return None
    found = [source(report, where.item(i), item, trust_domain) for i, item in enumerate(items)]
    return every(found)


def source(report: Report, where: Where, value: object, trust_domain: str) -> Source | None:
    """One ``from`` entry resolved against the document's trust domain (§2.2)."""
    found = text(report, where, value, ', e.g. "web"')
    if found is None:
        return None
    if found == ANY_PEER:
        return Source(found, "any")
    if found == UNAUTHENTICATED:
        return Source(found, "unauthenticated")
    if found.startswith("spiffe://"):
        return _spiffe_source(report, where, found)
    if "*" in found:
        report.add("P010", where, _partial(found, trust_domain))
        return None
    kind, slash, name = found.partition("/")
    if slash and kind == "host" and SERVICE_NAME.fullmatch(name):
        return Source(found, "exact", f"spiffe://{trust_domain}/host/{name}")
    if not slash and SERVICE_NAME.fullmatch(found):
        return Source(found, "exact", f"spiffe://{trust_domain}/svc/{found}")
    report.add(
        "P010",
        where,
        f'\'{found}\' is not a source: use a service name ("web"), "host/NAME", '
        'a SPIFFE ID, "spiffe://<trust domain>/svc/*", "*" or "unauthenticated"',
    )
    return None


def _partial(found: str, trust_domain: str) -> str:
    return (
        f"partial wildcards are not supported ('{found}'); use \"*\" for any authenticated peer "
        f'or "spiffe://{trust_domain}/svc/*" for every service'
    )


def _spiffe_source(report: Report, where: Where, found: str) -> Source | None:
    head, slash, last = found.rpartition("/")
    wildcard = last == "*" and "*" not in head
    if "*" in found and not wildcard:
        report.add("P010", where, _partial(found, head[len("spiffe://") :].split("/")[0]))
        return None
    try:
        SpiffeId.parse(head + "/x" if wildcard else found)
    except ConfigError as error:
        report.add("P010", where, error.message)
        return None
    if wildcard:
        return Source(found, "prefix", head + slash)
    return Source(found, "exact", found)


def ports(report: Report, where: Where, value: object) -> tuple[tuple[int, int], ...] | None:
    items = array(report, where, value, '[8080, "9000-9100"]', of="ports")
    if items is None:
        return None
    found = [port(report, where.item(i), item) for i, item in enumerate(items)]
    return every(found)


def port(report: Report, where: Where, value: object) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value) if _port_ok(report, where, value) else None
    if not isinstance(value, str):
        wrong_type(report, where, 'a port (8080) or a range ("9000-9100")', value)
        return None
    match = _PORT_RANGE.fullmatch(value)
    if not match:
        report.add(
            "P011",
            where,
            f"invalid port range '{value}': write a port as 8080 or a range as \"9000-9100\"",
        )
        return None
    low, high = int(match[1]), int(match[2])
    if not (_port_ok(report, where, low) and _port_ok(report, where, high)):
        return None
    if low > high:
        report.add("P011", where, f"empty port range '{value}': write the lower port first")
        return None
    return (low, high)


def _port_ok(report: Report, where: Where, number: int) -> bool:
    if 1 <= number <= 65535:
        return True
    report.add("P011", where, f"{number} is out of range [1, 65535]")
    return False


def methods(report: Report, where: Where, value: object) -> frozenset[str] | None:
    items = array(report, where, value, '["GET"]')
    if items is None:
        return None
    found = [method(report, where.item(i), item) for i, item in enumerate(items)]
    kept = every(found)
    return None if kept is None else frozenset(kept)


def method(report: Report, where: Where, value: object) -> str | None:
    found = text(report, where, value, ', e.g. "GET"')
    if found is None:
        return None
    if found in METHODS:
        return found
    if found.upper() in METHODS:
        report.add(
            "P012", where, f'method "{found}" must be upper-case (did you mean "{found.upper()}"?)'
        )
        return None
    close = difflib.get_close_matches(found[:64].upper(), METHODS, n=1, cutoff=0.6)
    hint = f' (did you mean "{close[0]}"?)' if close else ": use one of " + ", ".join(METHODS)
    report.add("P012", where, f'unknown method "{found}"{hint}')
    return None


def duration_ms(report: Report, where: Where, value: object) -> int | None:
    found = text(report, where, value, ', a duration, e.g. "1s"')
    if found is None:
        return None
    match = _DURATION.fullmatch(found)
    if not match:
        report.add(
            "P030",
            where,
            f'invalid duration "{found}": use an integer and one unit '
            '(ms, s, m, h), e.g. "250ms" or "5s"',
        )
        return None
    millis = int(match[1]) * _UNIT_MS[match[2]]
    if millis < 1:
        report.add("P030", where, f'duration "{found}" must be at least 1ms')
        return None
    return millis


def count(report: Report, where: Where, value: object) -> int | None:
    """A rate-limit number (``limit``, ``burst``): an integer in [1, 10^9] (P031)."""
    found = integer(report, where, value, "50")
    if found is None:
        return None
    if not 1 <= found <= MAX_COUNT:
        report.add("P031", where, f"{found} is out of range [1, {MAX_COUNT}]")
        return None
    return found

"""Reading validated values out of parsed TOML/JSON documents.

One small reader shared by every config and document parser of the mesh, so
all of them report problems the same way: ``SOURCE: field.path: problem``;
and ``read_toml``, which every TOML they read goes through.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from meshd.errors import ConfigError

T = TypeVar("T")
N = TypeVar("N", int, float)

# Document versions are integers every JSON reader gets back exactly (JavaScript's safe range)
MAX_VERSION = 2**53 - 1


TOO_DEEP = "nested too deeply to read"


def read_toml(text: str, source: str) -> dict[str, Any]:
    """``text`` as a TOML document; ConfigError naming ``source`` when it is not one.

    tomllib recurses per level of nesting: deep arrays or inline tables from
    an operator or a peer raise RecursionError, which must be a refusal too.
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: {e}") from e
    except RecursionError:
        raise ConfigError(f"{source}: {TOO_DEEP}") from None


@dataclass(frozen=True)
class Fields:
    """Typed access to one table of a document, with the path for messages."""

    data: dict[str, Any]
    source: str
    path: str = ""

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self._at(key)}: {problem}")

    def checked(self, key: str, value: T, check: Callable[[T], object]) -> T:
        """``value`` if ``check`` accepts it; its ConfigError, placed at ``key``, if not."""
        try:
            check(value)
        except ConfigError as e:
            raise self.fail(key, e.message) from None
        return value

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def table(self, key: str, required: bool = True) -> Fields:
        value = self.data.get(key)
        if value is None and not required:
            return Fields({}, self.source, self._at(key))
        if not isinstance(value, dict):
            raise ConfigError(f"{self.source}: [{self._at(key)}]: missing table")
        return Fields(value, self.source, self._at(key))

    def tables(self, key: str) -> list[Fields]:
        """An array of tables (``[[key]]``); empty when absent."""
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, "expected an array of tables")
        return [Fields(v, self.source, f"{self._at(key)}[{i}]") for i, v in enumerate(value)]

    def get(self, key: str, kind: type[T], default: T | None = None) -> T:
        if key not in self.data:
            if default is not None:
                return default
            raise self.fail(key, "missing field")
        value = self.data[key]
        # bool is a subclass of int: a port of `true` must not pass as 1
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            raise self.fail(key, f"expected {kind.__name__}, got {brief(value)}")
        return value

    def optional(self, key: str, kind: type[T]) -> T | None:
        return self.get(key, kind) if key in self.data else None

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in allowed:
            raise self.fail(key, f"{value!r} is not one of {', '.join(allowed)}")
        return value

    def version(self, key: str = "version") -> int:
        """A document version: an integer from 0 to ``MAX_VERSION``."""
        value = self.data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_VERSION:
            return value
        raise self.fail(key, f"expected an integer from 0 to {MAX_VERSION}, got {brief(value)}")

    def port(self, key: str, default: int | None = None) -> int:
        value = self.get(key, int, default)
        if not 1 <= value <= 65535:
            raise self.fail(key, f"{value} is not a port number (1-65535)")
        return value

    def positive(self, key: str, kind: type[N], default: N) -> N:
        value = self.get(key, kind, default)
        if not value > 0 or not _finite(value):  # ``not >``: NaN compares false to everything
            raise self.fail(key, f"must be greater than 0, got {brief(value)}")
        return value

    def bounded(self, key: str, kind: type[N], default: N, low: N, high: N) -> N:
        """An int or a finite float from ``low`` to ``high`` (NaN and infinities are refused)."""
        value = self.get(key, kind, default)
        if not (_finite(value) and low <= value <= high):
            what = "an integer" if kind is int else "a number"
            raise self.fail(
                key, f"must be {what} from {_number(low)} to {_number(high)}, got {brief(value)}"
            )
        return value

    def address(self, key: str, default: str | None = None) -> tuple[str, int]:
        """A ``host:port`` listen or connect address."""
        text = self.get(key, str, default)
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            number = int(port)
        except ValueError:
            raise self.fail(key, f"{text!r} is not an IP:port address") from None
        if not sep or not 0 <= number <= 65535:
            raise self.fail(key, f"{text!r} is not an IP:port address")
        return host, number

    def unknown(self, known: set[str]) -> None:
        """Refuse keys this version does not understand (typos must not pass silently)."""
        extra = sorted(set(self.data) - known)
        if extra:
            raise self.fail(extra[0], "unknown field")


def _finite(value: float) -> bool:
    return not isinstance(value, float) or math.isfinite(value)  # an int of any size is


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def brief(value: object, limit: int = 40) -> str:
    """``repr(value)``, shortened: messages quote what was sent without echoing all of it."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"  # repr of a huge int is slow, or refused
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNITS = (86400, 3600, 60, 1)


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``"24h"``, ``"30d"``, ``"1h30m"`` or ``"90s"``.

    Units in the order d, h, m, s, each at most once; ConfigError otherwise.
    """
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not text or match is None or not any(match.groups()):
        raise ConfigError(
            f"{brief(text)} is not a duration",
            hint='write it like "24h", "30d", "1h30m" or "90s"',
        )
    return sum(int(g) * unit for g, unit in zip(match.groups(), _UNITS, strict=True) if g)


def format_duration(seconds: int) -> str:
    """The shortest text ``parse_duration`` reads back as ``seconds`` (``"1h30m"``)."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, name in zip(_UNITS, "dhms", strict=True):
        count, seconds = divmod(seconds, unit)
        if count:
            parts.append(f"{count}{name}")
    return "".join(parts)

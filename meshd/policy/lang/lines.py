"""Where each key of a TOML text sits: the stdlib scanner of POLICY.md §2.13.

``tomllib`` gives values without positions, so one pass over the text records
the line of every ``[table]`` and ``[[array]]`` header (with the index of each
array-of-tables element), every ``key =`` (dotted and quoted keys included)
and every array element, keyed by the path tuples the validator uses:
``("allow", 0)`` for the first ``[[allow]]``, ``("allow", 0, "methods", 1)``
for its second method, ``("mtls", "services", "api")``.

It runs only on text ``tomllib`` accepted, so it skips values instead of
checking them; on anything it does not expect it stops, keeping what it found.
"""

from __future__ import annotations

import bisect
import contextlib
import tomllib
from dataclasses import dataclass, field

Path = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}#\n\r")


@dataclass(frozen=True, slots=True)
class Lines:
    """The line (1-based) of every path found; ``line`` falls back to the nearest parent.

    ``default`` is the line of what is nowhere in the text (a missing top-level
    field): 1 for a scanned file, 0 for data that never was text.
    """

    lines: dict[Path, int] = field(default_factory=dict)
    default: int = 0

    def line(self, path: Path) -> int:
        """The line of ``path``, else of its longest known prefix, else 0 (not known)."""
        for end in range(len(path), 0, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return self.default


def scan(text: str) -> Lines:
    """Record where every header, key and array element of ``text`` starts."""
    scanner = _Scanner(text)
    # on text tomllib did not accept, keep the lines found so far
    with contextlib.suppress(IndexError, ValueError, tomllib.TOMLDecodeError):
        scanner.document()
    return Lines(scanner.lines, default=1)


class _Scanner:
    """A cursor over the text; ``lines`` fills in as it goes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]
        self.lines: dict[Path, int] = {}
        self.arrays: dict[Path, int] = {}  # array-of-tables path -> elements seen so far
        self.table: Path = ()

    def line_at(self, pos: int) -> int:
        return bisect.bisect_right(self.starts, pos)

    def record(self, path: Path, pos: int) -> None:
        self.lines.setdefault(path, self.line_at(pos))

    def peek(self, ahead: int = 0) -> str:
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else ""

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces (and newlines and comments when ``newlines``)."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self.pos += 1
            elif char == "#" and newlines:
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def document(self) -> None:
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return
            if self.peek() == "[":
                self.header()
            else:
                self.key_value(self.table)

    def header(self) -> None:
        start = self.pos
        double = self.peek(1) == "["
        self.pos += 2 if double else 1
        keys = self.keys()
        self.pos += 2 if double else 1
        path = self.resolve(keys[:-1]) + keys[-1:]
        if double:
            self.record(path, start)
            index = self.arrays.get(path, 0)
            self.arrays[path] = index + 1
            path = (*path, index)
        self.record(path, start)
        self.table = path

    def resolve(self, keys: tuple[str, ...]) -> Path:
        """A header's dotted keys with the current index of each array of tables inserted."""
        path: Path = ()
        for key in keys:
            path = (*path, key)
            count = self.arrays.get(path)
            if count is not None:
                path = (*path, count - 1)
        return path

    def key_value(self, table: Path) -> None:
        start = self.pos
        path = (*table, *self.keys())
        self.record(path, start)
        self.skip_blank(newlines=False)
        if self.peek() != "=":
            raise ValueError("expected '='")
        self.pos += 1
        self.skip_blank(newlines=False)
        self.value(path)

    def keys(self) -> tuple[str, ...]:
        """A dotted key: bare, "basic" or 'literal' parts."""
        parts: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            parts.append(self.key())
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return tuple(parts)
            self.pos += 1

    def key(self) -> str:
        char = self.peek()
        if char in "\"'":
            start = self.pos
            self.string()
            return _decode(self.text[start : self.pos])
        start = self.pos
        while self.peek() and self.peek() in _BARE:
            self.pos += 1
        if self.pos == start:
            raise ValueError("expected a key")
        return self.text[start : self.pos]

    def value(self, path: Path) -> None:
        char = self.peek()
        if char == "[":
            self.array(path)
        elif char == "{":
            self.inline_table(path)
        elif char in "\"'":
            self.string()
        else:
            while self.peek() and self.peek() not in _SCALAR_END:
                self.pos += 1

    def array(self, path: Path) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "]":
                self.pos += 1
                return
            self.record((*path, index), self.pos)
            self.value((*path, index))
            index += 1
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.pos += 1

    def inline_table(self, path: Path) -> None:
        self.pos += 1
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "}":
                self.pos += 1
                return
            self.key_value(path)
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.pos += 1

    def string(self) -> None:
        """Move past one string of any of TOML's four kinds."""
        quote = self.peek()
        if self.text.startswith(quote * 3, self.pos):
            end = self.text.index(quote * 3, self.pos + 3)
            end = self.multiline_end(end, quote)
            self.pos = end + 3
            return
        index = self.pos + 1
        while self.text[index] != quote:
            index += 2 if quote == '"' and self.text[index] == "\\" else 1
        self.pos = index + 1

    def multiline_end(self, end: int, quote: str) -> int:
        """Up to two quotes may close the content right before the closing three."""
        while self.text.startswith(quote, end + 3) and end + 3 < len(self.text):
            end += 1
        if quote == '"':
            while _escaped(self.text, end):
                end = self.text.index(quote * 3, end + 1)
        return end


def _escaped(text: str, pos: int) -> bool:
    """Whether the character at ``pos`` follows an odd run of backslashes."""
    count = 0
    while pos - count - 1 >= 0 and text[pos - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def _decode(quoted: str) -> str:
    """A quoted key's text, escapes resolved (tomllib does it the way TOML says)."""
    return str(tomllib.loads(f"k = {quoted}")["k"])

"""``meshctl top``'s busiest request paths: meshd's live tap (``GET /tap``) in, ``PathRow``s out.

Pure: no sockets, no clock (the caller passes ``now``, Unix time).

- ``Dechunker`` and ``Lines`` undo the tap's framing: a chunked body of
  ndjson lines (``docs/tap.md``), bounded whatever a host sends (a chunk
  size past ``MAX_CHUNK`` or a malformed size line ends the stream; a line
  past ``MAX_LINE`` is skipped whole).
- ``read_event`` reads one line into a ``TapEvent``, or None for anything
  that is not a well-formed request line (``{"dropped": N}`` among them:
  what meshd lost for us is not shown): every field checked for type and
  bounded (method up to 16 characters, path up to ``MAX_PATH``, status
  0..999, latency 0..1 h, a finite time), so a hostile or broken meshd
  costs a skipped line at most.
- ``PathWindow`` keeps the events of the last ``window`` seconds (by each
  event's ``time``, meshd's clock: the hosts' clocks and the operator's are
  taken to agree, as NTP keeps them; an event stamped more than a window
  ahead of ``now`` is not counted) and yields the rows. Only server-side
  events (direction ``inbound``) are counted, as services are: a request
  through two meshd shows on both taps (``outbound`` on the caller's,
  ``inbound`` on the server's) and is counted once. Memory is bounded:
  at most ``MAX_EVENTS`` events (the oldest go first) and ``MAX_PATHS``
  distinct (method, path) in the window (an event of yet another path is
  left out and counted in ``overflow``).

A row groups the window's events by (method, path): count, success (the
share neither 5xx nor unanswered, status 0: the services' success rate),
best/worst latency and the latency of the last one (the newest ``time``);
busiest first, then by method and path.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from meshctl.traffic import PathRow

MAX_CHUNK = 4 * 1024 * 1024  # meshd sends at most 1024 lines of ~400 bytes in a chunk
MAX_LINE = 4096
MAX_METHOD = 16
MAX_PATH = 256  # meshd cuts paths at 200 characters (escaped)
MAX_LATENCY_MS = 3_600_000.0
MAX_EVENTS = 20_000  # in the window, over every host
MAX_PATHS = 1_000  # distinct (method, path) in the window
SCREEN_ROWS = 10
JSON_ROWS = 50

PathKey = tuple[str, str]  # method, path


class FramingError(ValueError):
    """The tap's body is not a chunked body we can follow: the stream is given up."""


class Dechunker:
    """A chunked HTTP body, fed as it comes; ``feed`` returns the body bytes so far and
    ``done`` tells the last chunk came. Chunk extensions and trailers are ignored."""

    def __init__(self) -> None:
        self.buffer = b""
        self.left = 0  # bytes of the current chunk still to come
        self.crlf = False  # the CRLF after a chunk's data is still to come
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buffer = self.buffer + data
        pos, out = 0, []  # read by index: slicing what is left per chunk was quadratic
        while pos < len(buffer) and not self.done:
            if self.left:
                taken = buffer[pos : pos + self.left]
                pos += len(taken)
                self.left -= len(taken)
                out.append(taken)
                self.crlf = self.left == 0
            elif self.crlf:
                if len(buffer) - pos < 2:
                    break
                if buffer[pos : pos + 2] != b"\r\n":
                    raise FramingError("a chunk does not end with CRLF")
                pos, self.crlf = pos + 2, False
            else:
                read = self._size_line(buffer, pos)
                if read < 0:
                    break
                pos = read
        self.buffer = buffer[pos:]
        return b"".join(out)

    def _size_line(self, buffer: bytes, pos: int) -> int:
        """Where the chunk size line at ``pos`` ends (its size read), or -1 if it is not
        all here yet."""
        end = buffer.find(b"\r\n", pos, pos + 66)
        if end < 0:
            if len(buffer) - pos > 64:
                raise FramingError("a chunk size line is too long")
            return -1
        size = buffer[pos:end].partition(b";")[0].strip()
        if not size or len(size) > 8 or any(c not in b"0123456789abcdefABCDEF" for c in size):
            raise FramingError(f"bad chunk size {size[:16]!r}")
        self.left = int(size, 16)
        if self.left > MAX_CHUNK:
            raise FramingError(f"a chunk of {self.left} bytes, more than {MAX_CHUNK}")
        self.done = self.left == 0
        return end + 2


class Lines:
    """Bytes in, complete lines out; a line longer than ``MAX_LINE`` is skipped whole."""

    def __init__(self) -> None:
        self.partial = b""
        self.skipping = False  # inside a line too long: drop up to its end

    def feed(self, data: bytes) -> list[bytes]:
        *lines, rest = (self.partial + data).split(b"\n")
        if self.skipping and lines:
            lines, self.skipping = lines[1:], False
        lines = [line for line in lines if len(line) <= MAX_LINE]
        if len(rest) > MAX_LINE:
            rest, self.skipping = b"", True
        self.partial = b"" if self.skipping else rest
        return lines


@dataclass(frozen=True, slots=True)
class TapEvent:
    """One request as a tap line told it (latency in seconds)."""

    time: float
    inbound: bool
    method: str
    path: str
    status: int
    latency: float

    @property
    def key(self) -> PathKey:
        return (self.method, self.path)

    @property
    def ok(self) -> bool:
        return 0 < self.status < 500 or self.status > 599


def _json(line: bytes) -> object:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        return None


def read_event(line: bytes) -> TapEvent | None:
    """The request ``line`` tells of, or None if it is not a well-formed request line."""
    if not line.startswith(b'{"'):  # an empty line, or not an object: no parsing for it
        return None
    doc = _json(line)
    if not isinstance(doc, dict):
        return None
    when, method, path = doc.get("time"), doc.get("method"), doc.get("path")
    status, latency = doc.get("status"), doc.get("latency_ms")
    if not (
        _number(when, 0.0, math.inf)
        and isinstance(method, str)
        and 0 < len(method) <= MAX_METHOD
        and method.isprintable()
        and isinstance(path, str)
        and len(path) <= MAX_PATH
        and type(status) is int
        and 0 <= status <= 999
        and _number(latency, 0.0, MAX_LATENCY_MS)
    ):
        return None
    inbound = doc.get("direction") == "inbound"
    return TapEvent(float(when), inbound, method, path, status, float(latency) / 1000.0)  # type: ignore[arg-type]


def _number(value: object, low: float, high: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


@dataclass(slots=True)
class _Row:
    """One path's events summed (a scratch accumulator, never returned)."""

    count: int = 0
    ok: int = 0
    best: float = math.inf
    worst: float = 0.0
    last: float = 0.0
    last_time: float = -math.inf

    def add(self, event: TapEvent) -> None:
        self.count += 1
        self.ok += event.ok
        self.best = min(self.best, event.latency)
        self.worst = max(self.worst, event.latency)
        if event.time >= self.last_time:
            self.last, self.last_time = event.latency, event.time


class PathWindow:
    """The server-side tap events of the last ``window`` seconds (see the module docstring)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.events: deque[TapEvent] = deque()  # in arrival order
        self.paths: dict[PathKey, int] = {}  # events kept per path
        self.overflow = 0  # events left out: too many distinct paths

    def add(self, events: Iterable[TapEvent]) -> None:
        """Keep ``events`` (those of the client side are not kept: see the docstring)."""
        for event in events:
            if not event.inbound:
                continue
            key = event.key
            if key not in self.paths and len(self.paths) >= MAX_PATHS:
                self.overflow += 1
                continue
            if len(self.events) >= MAX_EVENTS:
                self._forget()
            self.events.append(event)
            self.paths[key] = self.paths.get(key, 0) + 1

    def _forget(self) -> None:
        key = self.events.popleft().key
        left = self.paths[key] - 1
        if left:
            self.paths[key] = left
        else:
            del self.paths[key]

    def rows(self, now: float, limit: int = SCREEN_ROWS) -> tuple[PathRow, ...]:
        """The ``limit`` busiest paths of the events in (now - window, now + window]."""
        start = now - self.window
        while self.events and self.events[0].time <= start:
            self._forget()  # arrival order is about time order: the rest is filtered below
        rows: dict[PathKey, _Row] = {}
        for event in self.events:
            if start < event.time <= now + self.window:  # far in the future: a wrong clock
                rows.setdefault(event.key, _Row()).add(event)
        busiest = sorted(rows.items(), key=lambda kv: (-kv[1].count, kv[0]))[: max(0, limit)]
        return tuple(
            PathRow(method, path, r.count, r.ok / r.count, r.best, r.worst, r.last)
            for (method, path), r in busiest
        )

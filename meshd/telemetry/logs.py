"""Log lines a peer can cause: its text escaped, and their number limited.

Anything a peer sends may end up in a log line (a reset reason, a refused
name, an error message that quotes it). ``clean`` makes such text safe for
one line: control characters and non-ASCII are escaped, so a peer can never
start a line of its own (meshctl and operators read meshd's journal).

A prober can also cause thousands of identical warnings a second (a failed
handshake, a refused stream). ``Throttle`` lets the first ``burst`` lines of
each kind through per ``interval`` and counts the rest; the next line of that
kind after the interval, or ``flush`` (the daemon calls it every few
seconds), says how many were left out. The metrics count every event anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_TEXT = 200  # characters of peer text kept in a log line


def clean(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` as one printable ASCII line: escapes for anything else, cut at ``limit``."""
    value = str(text)
    if value.isascii() and value.isprintable() and len(value) <= limit:
        return value  # the usual case, without building a new string
    escaped = value[:limit].encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped)
    return escaped + ("..." if len(value) > limit else "")


@dataclass
class _Kind:
    start: float
    logged: int = 0
    left_out: int = 0


class Throttle:
    """At most ``burst`` lines per kind and ``interval``; the rest are counted, then summed up."""

    def __init__(
        self,
        interval: float = 10.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self._kinds: dict[tuple[str, str], _Kind] = {}

    def log(
        self, logger: logging.Logger, level: int, kind: str, message: str, *args: object
    ) -> None:
        """Log ``message % args`` unless this kind already had its lines for this interval."""
        now = self.clock()
        state = self._kinds.get((logger.name, kind))
        if state is None:
            state = self._kinds[(logger.name, kind)] = _Kind(now)
        elif now - state.start >= self.interval:
            self._summary(logger, kind, state)
            state.start, state.logged = now, 0
        if state.logged < self.burst:
            state.logged += 1
            logger.log(level, message, *args)
        else:
            state.left_out += 1

    def flush(self) -> None:
        """Say how many lines were left out in intervals that have ended; forget quiet kinds."""
        now = self.clock()
        for key, state in list(self._kinds.items()):
            if now - state.start < self.interval:
                continue
            self._summary(logging.getLogger(key[0]), key[1], state)
            del self._kinds[key]

    def _summary(self, logger: logging.Logger, kind: str, state: _Kind) -> None:
        if state.left_out:
            logger.warning(
                "%d more %s in the last %.0fs were not logged (the metrics count them all)",
                state.left_out,
                kind,
                self.interval,
            )
            state.left_out = 0


# the daemon's one throttle for lines that peers can cause (flushed by the daemon)
peer_lines = Throttle()

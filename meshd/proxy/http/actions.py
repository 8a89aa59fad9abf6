"""What an HTTP exchange asks of the connection that carries it, as small frozen values.

Two vocabularies. Request hooks (``plan.RequestHook``) look at a request head
and return *request actions*: ``SetHeader``, ``AddHeader``, ``SetTarget``,
``Answer`` (and, later, ``Replay``); the exchange applies the edits itself. The
exchange returns a *verdict* per chunk of bytes to whoever carries the
connection (``Stream``, ``PipeEnd``): ``FORWARD`` (the chunk goes on as it
is, the exchange keeps following), ``GIVE_UP`` (it goes on as it is, and the
exchange follows this connection no more), or a tuple of *stream actions*
carried out in order, in place of the chunk: ``Send`` these bytes,
``HoldHead`` (nothing to send yet), ``Answer`` the client (and close, unless
the answer keeps the connection alive),
``Close`` without an answer, ``StopFollowing``.

``FORWARD`` and ``GIVE_UP`` are the bools ``True`` and ``False``, not objects:
a relayed request that no hook changes allocates no action at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, Literal

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_TARGET = re.compile(r"/[\x21-\x7e]*")  # origin form: no space, control or non-ASCII byte


def check_header(name: str, value: str) -> None:
    """ValueError unless ``name: value`` makes one well-formed header line (no CR, LF, NUL).

    A value with a line break would smuggle a header, or a second request.
    """
    if _TOKEN.fullmatch(name) is None:
        raise ValueError(f"not a header name: {name!r}")
    if _FIELD_VALUE.fullmatch(value) is None:
        raise ValueError(f"header {name}: the value holds a control character: {value!r}")


@dataclass(frozen=True, slots=True)
class Send:
    """Send these bytes on, in the direction of the chunk they replace."""

    data: bytes


@dataclass(frozen=True, slots=True)
class HoldHead:
    """A request head is being gathered (held by the exchange): nothing to send yet."""


@dataclass(frozen=True, slots=True)
class SetHeader:
    """Replace every request header called ``name`` (any case) by one, or add it."""

    name: str
    value: str

    def __post_init__(self) -> None:
        check_header(self.name, self.value)


@dataclass(frozen=True, slots=True)
class AddHeader:
    """Add a request header, keeping any already there."""

    name: str
    value: str

    def __post_init__(self) -> None:
        check_header(self.name, self.value)


@dataclass(frozen=True, slots=True)
class SetTarget:
    """Replace the request target (the app receives this one: a normalised path and query)."""

    target: str

    def __post_init__(self) -> None:
        if _TARGET.fullmatch(self.target) is None:
            raise ValueError(f"not an origin-form request target: {self.target!r}")


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer the request here: it never reaches the server.

    By default the connection closes after the answer (``Connection: close``):
    what the client sent after this request is dropped, not parsed on. With
    ``keep_alive`` the exchange reads the request's body and drops it, and
    the connection carries on with the next request; it still closes where it
    cannot (a body of unknown length, an answer that has to wait for the
    responses to pipelined requests, an upgrade: see ``exchange``).
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    keep_alive: bool = False

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"an answer's status must be final (200-599), not {self.status}")
        for name, value in self.headers:
            check_header(name, value)

    def encode(self) -> bytes:
        """The response on the wire (HTTP/1.1, with Content-Length; Connection: close unless
        it keeps the connection alive)."""
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = ""
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines.append(f"Content-Length: {len(self.body)}")
        lines += ["", ""] if self.keep_alive else ["Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1") + self.body

    def closing(self) -> Answer:
        """The same answer, closing the connection after it."""
        return Answer(self.status, self.headers, self.body) if self.keep_alive else self


@dataclass(frozen=True, slots=True)
class Replay:
    """Placeholder: send the request again on a new stream (retries, not carried out yet).

    Retries will need the request kept until its response starts (bounded), a
    response hook deciding from the status or a reset, and the stream's
    carrier dialling a new stream to another endpoint. The exchange refuses
    it today (``TypeError``) rather than ignore it.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection both ways without an answer (the exchange cannot go on safely)."""

    reason: str


@dataclass(frozen=True, slots=True)
class StopFollowing:
    """Follow this connection no more: the rest of it is relayed as opaque bytes."""


RequestAction = SetHeader | AddHeader | SetTarget | Answer | Replay
StreamAction = Send | HoldHead | Answer | Close | StopFollowing
Verdict = bool | tuple[StreamAction, ...]

FORWARD: Final[Literal[True]] = True
GIVE_UP: Final[Literal[False]] = False
HOLD: Final[tuple[StreamAction, ...]] = (HoldHead(),)
DROP: Final[tuple[StreamAction, ...]] = ()  # after an answer: what the client sends goes nowhere
STOP: Final = StopFollowing()

"""Request heads as bytes: how a body is framed, and the head rewritten by header edits.

Pure functions over what the exchange gathered (the head's raw bytes, its
headers as the parser reported them); no parsing of the request line here.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshd.proxy.http.actions import AddHeader, SetHeader, SetTarget

CHUNKED = -2  # a body framing: chunked transfer coding (a length is >= 0)


def framing(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    """A request body's length, CHUNKED, or None when the headers do not say.

    Only called for a request whose head did not end it (the parser said so):
    the parser checked the headers' syntax; the exchange checks that the body
    ends where this says.
    """
    length = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return CHUNKED if value.rsplit(b",", 1)[-1].strip().lower() == b"chunked" else None
        if lowered == b"content-length" and value.strip().isdigit():
            length = int(value)
    return length


Edit = SetHeader | AddHeader | SetTarget


def rewrite(head: bytes, edits: Sequence[Edit]) -> bytes:
    """``head`` (request line, header lines, empty line) with ``edits`` applied in order.

    SetHeader replaces the first header of that name where it stands and drops
    the others (or adds one at the end); AddHeader adds one at the end;
    SetTarget replaces the request line's target (the parser checked the line:
    method, one space, target, one space, version).
    """
    lines = head.lstrip(b"\r\n").split(b"\r\n")[:-2]  # without the empty line that ends it
    for edit in edits:
        if isinstance(edit, SetTarget):
            method, _, rest = lines[0].partition(b" ")
            version = rest.rpartition(b" ")[2]
            lines[0] = b"%s %s %s" % (method, edit.target.encode("ascii"), version)
            continue
        line = f"{edit.name}: {edit.value}".encode("latin-1")
        lines = _set(lines, edit.name, line) if isinstance(edit, SetHeader) else [*lines, line]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _set(lines: list[bytes], name: str, line: bytes) -> list[bytes]:
    wanted = name.lower().encode("latin-1")
    kept, placed = [lines[0]], False
    for old in lines[1:]:
        if old.split(b":", 1)[0].strip().lower() != wanted:
            kept.append(old)
        elif not placed:
            kept.append(line)
            placed = True
    return kept if placed else [*kept, line]

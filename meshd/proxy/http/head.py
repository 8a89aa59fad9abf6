"""Request heads as bytes: their parts, how a body is framed, the head rewritten by edits.

Pure functions over a head the exchange gathered and the parser accepted
(so its syntax is checked: these only split it where the parser found it
well formed): its target and header lines, each header's name and value,
the body's framing, and the head rewritten by ``SetHeader``/``AddHeader``/
``SetTarget``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from meshd.proxy.http.actions import AddHeader, SetHeader, SetTarget

CHUNKED = -2  # a body framing: chunked transfer coding (a length is >= 0)
NOTED_PATH = 256  # bytes of a target's path a listener is shown (the tap cuts it further)
NOTED_ID = 128  # bytes of an x-request-id a listener is shown
_REQUEST_ID = b"\nx-request-id:"


def header_lines(fields: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Each header line of a head's ``fields`` (the lines between its request line and its
    empty line, as the parser checked them: ``name ":" value``, no folded lines), split
    into name and value, the value without the blanks around it."""
    for line in fields.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            yield name, value.strip(b" \t")


def split_head(head: bytes) -> tuple[bytes, bytes] | None:
    """A parsed head's target and header lines (``fields``), or None when its request
    line is not ``method SP target SP version CRLF`` (the parser lets extra blanks by,
    and a versionless line ended by a bare LF, after which it reads headers: cut at
    the first CRLF, such a head would hide its first header from the hooks)."""
    start = len(head) - len(head.lstrip(b"\r\n"))  # empty lines before it, as llhttp skips
    end = head.find(b"\n", start)
    if head[end - 1] != 13:  # a bare LF: llhttp reads header lines after a versionless one
        return None
    parts = head[start : end - 1].split()
    if len(parts) != 3:
        return None
    return parts[1], head[end + 1 : -2]


def target_path(target: bytes) -> str:
    """A target's path (up to its query), at most ``NOTED_PATH`` bytes, as sent."""
    return target.partition(b"?")[0][:NOTED_PATH].decode("latin-1")


def request_id(fields: bytes, lowered: bytes = b"") -> str:
    """The value of the first x-request-id header among ``fields`` (name in any case,
    value as sent, at most ``NOTED_ID`` bytes), or ""; ``lowered``: ``fields.lower()``,
    where the caller has it already."""
    lowered = lowered or fields.lower()
    if lowered.startswith(_REQUEST_ID[1:]):  # the first line
        at = 0
    else:
        at = lowered.find(_REQUEST_ID) + 1  # after a line's end
        if at == 0:
            return ""
    end = fields.find(b"\n", at)
    value = fields[at + len(_REQUEST_ID) - 1 : end if end >= 0 else len(fields)]
    return value.strip(b" \t\r")[:NOTED_ID].decode("latin-1")


def framing(fields: bytes) -> int | None:
    """A request body's length, CHUNKED, or None when the header lines do not say.

    Only called for a request whose head did not end it (the parser said so):
    the parser checked the headers' syntax; the exchange checks that the body
    ends where this says.
    """
    length = None
    for name, value in header_lines(fields):
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return CHUNKED if value.rsplit(b",", 1)[-1].strip().lower() == b"chunked" else None
        if lowered == b"content-length" and value.isdigit():
            # llhttp takes any number of leading zeros (and refuses more than 64 bits);
            # int() refuses over 4300 digits: a peer must not make it raise
            length = int(value.lstrip(b"0") or b"0")
    return length


def expects_continue(fields: bytes) -> bool:
    """Does the head ask for a 100 Continue before its body is sent?"""
    return any(
        name.lower() == b"expect" and value.lower() == b"100-continue"
        for name, value in header_lines(fields)
    )


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

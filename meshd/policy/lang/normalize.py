"""A request target to the path policy matches and the target the app receives (§2.3).

One function, ``normalize``, runs the steps of §2.3 in their order and
returns either ``Normalized`` (the path policy matches, and the path plus the
untouched query that is forwarded) or ``Rejected`` (the 400 reason, whose
rule id is ``normalize/<reason>``). Most requests are clean: a few substring
tests prove that no step can change the target, and it is returned as is.
"""

from __future__ import annotations

from dataclasses import dataclass

# The fast path (_clean): if none of "%", "//", "/.", "\\", "#", ";." occurs and
# the path is printable ASCII without a space, no step of §2.3 can change or
# reject it: it is already normal.
_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ENCODED_SLASH = frozenset(("2F", "5C"))


@dataclass(frozen=True, slots=True)
class Normalized:
    """``path``: the normalised path, no query (policy ignores one trailing "/" of it);
    ``target``: ``path`` plus the original query, what the application receives."""

    path: str
    target: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A 400: ``reason`` is one of the §2.3 names ("fragment", "encoded-slash", ...)."""

    reason: str

    @property
    def rule(self) -> str:
        return "normalize/" + self.reason


def normalize(method: str, target: str) -> Normalized | Rejected:
    """Run §2.3 steps 0-6 on ``method`` and the raw request-target."""
    if not method.isupper() and method != method.upper():
        return Rejected("method-not-uppercase")
    cut = target.find("?")
    path = target if cut < 0 else target[:cut]
    if _clean(target, path):
        return Normalized(path, target)
    return normalize_target(target)


def normalize_target(target: str) -> Normalized | Rejected:
    """Steps 1-6 the long way, whatever the target (the fast path must agree with it)."""
    if "#" in target:
        return Rejected("fragment")
    cut = target.find("?")
    path = target if cut < 0 else target[:cut]
    if not path.startswith("/"):
        return Rejected("not-origin-form")
    problem = _scan(path)
    if problem:
        return Rejected(problem)
    path = "/".join(_merge_slashes(_decode(path).split("/")))
    segments = path.split("/")
    if any(_dot_with_params(segment) for segment in segments):
        return Rejected("dot-segment-with-params")
    path = _remove_dots(segments)
    return Normalized(path, path if cut < 0 else path + target[cut:])


def _clean(target: str, path: str) -> bool:
    """Whether no step can change or reject the target (the fast path; unrolled, as a
    generator over the suspects would cost more than the tests themselves)."""
    if path[:1] != "/" or not path.isascii() or not path.isprintable() or " " in path:
        return False
    return not (
        "%" in target
        or "//" in target
        or "/." in target
        or "\\" in target
        or "#" in target
        or ";." in target
    )


def _scan(path: str) -> str:
    """Step 2: the first problem in the path, left to right ("" if none)."""
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == "%":
            pair = path[i + 1 : i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                return "bad-percent-encoding"
            if pair == "00":
                return "encoded-nul"
            if pair.upper() in _ENCODED_SLASH:
                return "encoded-slash"
            i += 3
            continue
        if c == "\\":
            return "backslash"
        if c <= " " or c >= "\x7f":
            return "invalid-character"
        i += 1
    return ""


def _decode(path: str) -> str:
    """Step 3: decode escapes of unreserved characters, upper-case the hex of the others."""
    if "%" not in path:
        return path
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:  # _scan guaranteed two hex digits after every "%"
        char = chr(int(part[:2], 16))
        out.append(char if char in _UNRESERVED else "%" + part[:2].upper())
        out.append(part[2:])
    return "".join(out)


def _merge_slashes(segments: list[str]) -> list[str]:
    """Step 4: drop the empty segments a run of "/" leaves (not the first, nor the last)."""
    last = len(segments) - 1
    return [s for i, s in enumerate(segments) if s or i in (0, last)]


def _dot_with_params(segment: str) -> bool:
    """Step 5: a "." or ".." segment carrying ";params" (the Tomcat ``..;/`` trick)."""
    return ";" in segment and segment.split(";", 1)[0] in (".", "..")


def _remove_dots(segments: list[str]) -> str:
    """Step 6 (RFC 3986 §5.2.4) on the segments of an absolute path; ".." stops at the root."""
    out: list[str] = []
    trailing = False
    last = len(segments) - 1
    for i, segment in enumerate(segments[1:], start=1):
        if segment in (".", ".."):
            if segment == ".." and out:
                out.pop()
            trailing = i == last
        else:
            out.append(segment)
            trailing = False
    return "/" + "/".join(out) + ("/" if trailing and out else "")

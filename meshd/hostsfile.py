"""The managed block of ``/etc/hosts`` that makes ``<service>.mesh`` resolve to its virtual IP.

Pure text in, text out. Everything between our two marker lines is ours and
is replaced whole; everything else in the file is left exactly as it was.
"""

from __future__ import annotations

BEGIN = "# BEGIN meshd: service names (managed by meshctl, do not edit)"
END = "# END meshd"
SUFFIX = ".mesh"


def render_block(vips: dict[str, str]) -> str:
    """The block for ``vips`` (service name -> virtual IP), sorted, newline-terminated."""
    lines = [BEGIN] + [f"{vip}\t{name}{SUFFIX}" for name, vip in sorted(vips.items())] + [END]
    return "\n".join(lines) + "\n"


def without_block(text: str) -> str:
    """``text`` with our block (if any) taken out."""
    lines = text.splitlines(keepends=True)
    if BEGIN + "\n" not in lines:
        return text
    start = lines.index(BEGIN + "\n")
    end = next(
        (i for i in range(start, len(lines)) if lines[i].rstrip("\n") == END), len(lines) - 1
    )
    return "".join(lines[:start] + lines[end + 1 :])


def with_block(text: str, vips: dict[str, str]) -> str:
    """``text`` with our block replaced (or appended) for ``vips``; removed when empty."""
    rest = without_block(text)
    if not vips:
        return rest
    if rest and not rest.endswith("\n"):
        rest += "\n"
    return rest + render_block(vips)

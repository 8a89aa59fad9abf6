"""Exit codes and the one place where errors are shown to the operator."""

from __future__ import annotations

import enum
import traceback

from rich.console import Console
from rich.markup import escape

from meshd.errors import (
    CertificateError,
    ConfigError,
    ConnectError,
    MeshError,
    PolicyError,
    ProvisionError,
)


class ExitCode(enum.IntEnum):
    """Every exit status meshctl can return."""

    OK = 0
    ERROR = 1
    USAGE = 2
    CONFIG = 3
    CONNECT = 4
    PROVISION = 5
    POLICY = 6
    CERTIFICATE = 7
    PARTIAL = 8
    INTERRUPTED = 130


_CODES: tuple[tuple[type[MeshError], ExitCode], ...] = (
    (ConfigError, ExitCode.CONFIG),
    (ConnectError, ExitCode.CONNECT),
    (ProvisionError, ExitCode.PROVISION),
    (PolicyError, ExitCode.POLICY),
    (CertificateError, ExitCode.CERTIFICATE),
)


def exit_code_for(error: MeshError) -> ExitCode:
    """The exit code that stands for ``error``'s class."""
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return ExitCode.ERROR


def render_error(console: Console, error: BaseException, debug: bool) -> None:
    """One red line saying what failed, one line saying what to do next."""
    if debug:
        console.print(escape("".join(traceback.format_exception(error))), end="")
    message = error.message if isinstance(error, MeshError) else f"{type(error).__name__}: {error}"
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    hint = error.hint if isinstance(error, MeshError) else None
    if hint is None and not isinstance(error, MeshError):
        hint = "this is a bug in meshctl; run again with --debug and report the traceback"
    if hint:
        console.print(f"[yellow]hint:[/] {escape(hint)}", soft_wrap=True)

"""The injectable context every command runs with.

Consoles, environment, clock, prompt and workspace location come from here,
and how multi-host commands reach hosts (SSH, meshd's admin API) and get
meshd's bundle, so tests run commands in-process with recorded consoles, a
fixed clock, scripted hosts and a scripted admin API.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from meshctl.admin_client import AdminClient
from meshctl.bundle import DEFAULT_CACHE
from meshctl.fleet import AdminConnector, Connector, ssh_connect
from meshctl.provision.guard import ROLLBACK_DEADLINE
from meshctl.provision.rollout import BundleBuilder, build_bundle
from meshctl.workspace import Workspace
from meshd.errors import ConfigError

PASSPHRASE_ENV = "MESHCTL_CA_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
DEFAULT_WORKSPACE = Path("mesh")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _prompt(text: str, confirm: bool) -> str:
    value: str = typer.prompt(text, hide_input=True, confirmation_prompt=confirm, err=True)
    return value


@dataclass
class AppContext:
    """What a command may use of the outside world."""

    # emoji off: ":cd:" inside a fingerprint must stay ":cd:"
    out: Console = field(default_factory=lambda: Console(emoji=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, emoji=False))
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    clock: Callable[[], dt.datetime] = _utcnow
    prompt: Callable[[str, bool], str] = _prompt
    interactive: bool = field(default_factory=sys.stdin.isatty)
    workspace_path: Path | None = None
    debug: bool = False
    connect: Connector = ssh_connect  # how multi-host commands reach a host
    connect_admin: AdminConnector = AdminClient.for_workspace  # ... and its meshd's admin API
    bundle_cache: Path = DEFAULT_CACHE
    build_bundle: BundleBuilder = build_bundle  # meshd and its wheels for a host's Python
    rollback_deadline: float = ROLLBACK_DEADLINE

    def workspace_dir(self) -> Path:
        """The workspace directory: --workspace, MESHCTL_WORKSPACE, or ./mesh."""
        if self.workspace_path is not None:
            return self.workspace_path
        return Path(self.environ.get("MESHCTL_WORKSPACE", str(DEFAULT_WORKSPACE)))

    def workspace(self) -> Workspace:
        """Load the workspace, with a hint when there is none."""
        return Workspace.load(self.workspace_dir())

    def passphrase(self, confirm: bool = False) -> str:
        """The CA passphrase from MESHCTL_CA_PASSPHRASE or, in a terminal, a prompt."""
        value = self.environ.get(PASSPHRASE_ENV)
        if value is not None:
            return value
        if not self.interactive:
            raise ConfigError(
                f"the CA passphrase is needed but {PASSPHRASE_ENV} is not set "
                "and there is no terminal to ask",
                hint=f"export {PASSPHRASE_ENV}=... (or run meshctl in a terminal)",
            )
        return self.prompt("CA passphrase", confirm)

    def print_json(self, data: Any) -> None:
        """Machine-readable output: plain JSON on stdout, no colours, no wrapping."""
        self.out.print(
            json.dumps(data, indent=2, sort_keys=True),
            markup=False,
            highlight=False,
            emoji=False,
            soft_wrap=True,
        )


def app_context(ctx: typer.Context) -> AppContext:
    """The AppContext that ``run`` placed on the click context."""
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj

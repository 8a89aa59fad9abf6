"""``meshctl hosts``: the workspace's pinned SSH host keys."""

from __future__ import annotations

from typing import Annotated

import paramiko
import typer

from meshctl.cli.context import app_context
from meshctl.transport import fingerprint
from meshd.errors import ConfigError

app = typer.Typer(help="Manage the SSH host keys pinned in the workspace.", no_args_is_help=True)


@app.command("forget")
def forget(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(help="HOST or [HOST]:PORT as pinned in known_hosts")],
) -> None:
    """Forget the pinned host key of HOST, e.g. after the host was reinstalled.

    The next connection then refuses the unknown key until you accept it with
    --accept-new-host-key, after checking its fingerprint on the host.

    Example: meshctl hosts forget 10.0.0.11
    """
    actx = app_context(ctx)
    path = actx.workspace().root / "known_hosts"
    keys = paramiko.HostKeys()
    keys.load(str(path))
    entry = keys.lookup(host)
    if not entry:
        raise ConfigError(
            f"no host key pinned for {host} in {path}",
            hint="check the spelling; a non-default SSH port is written [HOST]:PORT",
        )
    forgotten = ", ".join(f"{kind} {fingerprint(key)}" for kind, key in entry.items())
    del keys[host]
    keys.save(str(path))
    path.chmod(0o600)
    actx.out.print(f"forgot the host key of {host} ({forgotten})", markup=False)

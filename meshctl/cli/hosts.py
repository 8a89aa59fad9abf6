"""``meshctl hosts``: the inventory (hosts.toml) and the pinned SSH host keys."""

from __future__ import annotations

from typing import Annotated

import typer

from meshctl import state
from meshctl.cli.common import FailModeOption, LabelsOption, ServicesOption
from meshctl.cli.context import app_context
from meshctl.inventory import (
    HostOverrides,
    select_hosts,
)
from meshctl.transport import fingerprint, load_known_hosts, save_known_hosts
from meshd.errors import ConfigError

app = typer.Typer(
    help="Manage the inventory and the SSH host keys pinned in the workspace.",
    no_args_is_help=True,
)


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
    keys = load_known_hosts(path)
    entry = keys.lookup(host)
    if not entry:
        raise ConfigError(
            f"no host key pinned for {host} in {path}",
            hint="check the spelling; a non-default SSH port is written [HOST]:PORT",
        )
    forgotten = ", ".join(f"{kind} {fingerprint(key)}" for kind, key in entry.items())
    del keys[host]
    save_known_hosts(path, keys)
    actx.out.print(f"forgot the host key of {host} ({forgotten})", markup=False)


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the host's name in the mesh")],
    target: Annotated[
        str, typer.Argument(metavar="[USER@]ADDRESS[:PORT]", help="how SSH reaches it")
    ],
    services: ServicesOption = None,
    labels: LabelsOption = None,
    fail_mode: FailModeOption = None,
) -> None:
    """Add a host to hosts.toml (or update it) without joining it yet.

    Then join several at once with meshctl join --all (or by name).

    Example: meshctl hosts add api1 root@10.0.0.12 --service api:8081
    """
    actx = app_context(ctx)
    ws = actx.workspace()
    overrides = HostOverrides.parse(services, labels, fail_mode, name)
    default = ws.config.defaults.fail_mode
    with state.locked(ws):
        inventory = state.load_inventory(ws)
        (host,) = select_hosts(inventory, [target], False, overrides, default)
        taken = inventory.host(name)
        if taken is not None and taken.address != host.address:
            raise ConfigError(f"host {name!r} already has address {taken.address} in hosts.toml")
        state.save_inventory(ws, inventory.with_host(host))
    services_text = ", ".join(f"{s.name}:{s.port}" for s in host.services) or "no services"
    actx.out.print(
        f"added {name} ({host.user}@{host.address}:{host.port}, {services_text})", markup=False
    )

"""``meshctl join``, ``leave`` and ``revoke``: put hosts into the mesh and take them out."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Annotated

import typer

from meshctl import issuers, policies, revoking, state
from meshctl.cli.common import (
    AcceptOption,
    DryRunOption,
    FailModeOption,
    JsonOption,
    KeyOption,
    LabelsOption,
    ServicesOption,
    SudoOption,
    TimeoutOption,
    finish,
    make_rollout,
    rollout_progress,
)
from meshctl.cli.context import app_context
from meshctl.fleet import SshOptions
from meshctl.inventory import HostOverrides, select_hosts
from meshctl.provision import rollout
from meshctl.provision.rollout import Outcome, Rollout
from meshd.errors import MeshError


def join(
    ctx: typer.Context,
    targets: Annotated[
        list[str] | None,
        typer.Argument(metavar="[HOST]...", help="[USER@]HOST[:PORT], or a host of hosts.toml"),
    ] = None,
    services: ServicesOption = None,
    labels: LabelsOption = None,
    name: Annotated[
        str | None, typer.Option("--name", help="host name (default: hostname)")
    ] = None,
    all_hosts: Annotated[bool, typer.Option("--all", help="every host of hosts.toml")] = False,
    fail_mode: FailModeOption = None,
    key_file: KeyOption = None,
    sudo: SudoOption = False,
    accept_new_host_key: AcceptOption = False,
    dry_run: DryRunOption = False,
    json_out: JsonOption = False,
    connect_timeout: TimeoutOption = 10.0,
    issuer: Annotated[
        bool,
        typer.Option("--issuer", help="make the hosts issuers too (see meshctl issuer add)"),
    ] = False,
) -> None:
    """Join hosts to the mesh over SSH: install meshd, its identity, unit and redirect rules.

    Re-running on a joined host changes nothing unless something differs.
    On the way, issuers past 2/3 of their CA's life are re-signed.

    Examples:
      meshctl join root@10.0.0.11 --service api:8080 --accept-new-host-key
      meshctl join web1 api1 db1
      meshctl join --all --dry-run
      meshctl join web1 --issuer
    """
    actx = app_context(ctx)
    overrides = HostOverrides.parse(services, labels, fail_mode, name)
    ssh = SshOptions(key_file, sudo, accept_new_host_key, connect_timeout, not dry_run)
    ro = make_rollout(actx, ssh)
    inventory = state.load_inventory(ro.ws)
    default_mode = ro.ws.config.defaults.fail_mode
    hosts = select_hosts(inventory, targets or [], all_hosts, overrides, default_mode)
    with state.locked(ro.ws), rollout_progress(ro, actx, json_out):
        ro.passphrase = functools.cache(ro.passphrase)  # asked once for leaves and issuers
        outcomes = rollout.join_and_push(ro, hosts, dry_run)
        if not dry_run:
            outcomes = _policy_on_the_way(ro, outcomes)
            outcomes = _issuers_on_the_way(ro, outcomes, issuer)
    title = "dry run" if dry_run else "join"
    finish(actx, title, outcomes, json_out, plans=dry_run, facts=True)


def _policy_on_the_way(ro: Rollout, outcomes: list[Outcome]) -> list[Outcome]:
    """The applied policy set to the hosts that joined, after the registry: a host enforces
    the mesh's policy from its join on (a row of its own for another host it changed)."""
    joined = [o.host for o in outcomes if o.ok and o.status in ("joined", "converged")]
    if not joined:
        return outcomes
    try:
        results = policies.push_at_join(ro, joined)
    except MeshError as e:  # the applied set no longer validates: joined, without policy
        for o in outcomes:
            if o.host in joined:
                o.status, o.error = "failed", e
        return outcomes
    by_host = {o.host: o for o in outcomes}
    for host, result in results.items():
        row = by_host.get(host.name)
        if row is None:
            row = Outcome(host.name, host.address, "applied")
            outcomes.append(row)
        if isinstance(result, MeshError):
            row.status, row.error = "failed", result
        else:
            row.done.append(result)
    return outcomes


def _issuers_on_the_way(ro: Rollout, outcomes: list[Outcome], make: bool) -> list[Outcome]:
    """``--issuer``: the hosts that joined become issuers; then issuers due are re-signed."""
    joined = [o.host for o in outcomes if o.ok and o.status in ("joined", "converged")]
    if make and joined:
        added = issuers.add(ro, issuers.joined_hosts(ro, joined))
        outcomes = issuers.merge(outcomes, added)
    return issuers.merge(outcomes, issuers.renew(ro, force=False, only_due=True))


def leave(
    ctx: typer.Context,
    hosts: Annotated[
        list[str],
        typer.Argument(metavar="HOST...", help="hosts of hosts.toml, or [USER@]ADDRESS[:PORT]"),
    ],
    forget_unreachable: Annotated[
        bool,
        typer.Option(
            "--forget-unreachable",
            help="drop hosts that cannot be reached from the inventory anyway (nothing removed)",
        ),
    ] = False,
    key_file: KeyOption = None,
    sudo: SudoOption = False,
    dry_run: DryRunOption = False,
    json_out: JsonOption = False,
    connect_timeout: TimeoutOption = 10.0,
) -> None:
    """Take hosts out of the mesh: stop meshd, remove its rules, files, user, unit and names.

    Works when meshd is broken or already gone; running it twice is harmless.
    The other hosts then get a registry without them, revoking their identity
    and certificates, so that a copy of their key opens no link any more.

    Example: meshctl leave api2
    """
    actx = app_context(ctx)
    ro = make_rollout(actx, SshOptions(key_file, sudo, False, connect_timeout))
    inventory = state.load_inventory(ro.ws)
    # a host not (or no longer) in hosts.toml can still be cleaned up by its address
    specs = [
        h if h.name else replace(h, name=h.address)
        for h in select_hosts(inventory, hosts, False, HostOverrides(), "closed")
    ]
    with state.locked(ro.ws), rollout_progress(ro, actx, json_out):
        outcomes = revoking.leave_and_revoke(ro, specs, dry_run, forget_unreachable)
    finish(actx, "dry run" if dry_run else "leave", outcomes, json_out, plans=dry_run)


def revoke(
    ctx: typer.Context,
    hosts: Annotated[list[str], typer.Argument(metavar="HOST...", help="host names")],
    json_out: JsonOption = False,
) -> None:
    """Revoke hosts that are compromised or gone, without reaching them over SSH.

    Every remaining host gets a registry that revokes their identity and the
    certificates meshctl knows of, and refuses their links at once; they are
    dropped from hosts.toml. Nothing on the revoked host changes: when it is
    reachable again, meshctl leave USER@ADDRESS cleans it up.

    Example: meshctl revoke web2
    """
    actx = app_context(ctx)
    ro = make_rollout(actx, SshOptions())
    with state.locked(ro.ws), rollout_progress(ro, actx, json_out):
        outcomes = revoking.revoke_and_push(ro, hosts)
    finish(actx, "revoke", outcomes, json_out)

"""The fleet table of ``meshctl status``: one row per host, problems in colour; and the
warnings about the mesh's identities (issuers, renewal) printed under it."""

from __future__ import annotations

import datetime as dt

from rich.markup import escape
from rich.table import Table

from meshctl.issuers import WARN_AT, parse_time, past_share
from meshctl.provision.status import HostStatus
from meshd.schema import format_duration
from meshd.telemetry.logs import clean


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, hours, days = int(seconds // 60), int(seconds // 3600), int(seconds // 86400)
    return (
        f"{days}d"
        if days
        else f"{hours}h"
        if hours
        else f"{minutes}m"
        if minutes
        else f"{int(seconds)}s"
    )


def _meshd(s: HostStatus) -> str:
    """State, readiness, version and uptime in one cell."""
    if not s.reachable and s.admin_error:
        return "[red]unreachable[/]"
    ok = s.meshd == "active" and s.ready
    text = "active, ready" if ok else "active, not ready" if s.meshd == "active" else s.meshd
    lines = [f"[{'green' if ok else 'red'}]{escape(text)}[/]"]
    if s.version:
        lines.append(f"{escape(s.version)}, up {_uptime(s.uptime_seconds)}")
    if s.restarts:
        lines.append(f"[yellow]{s.restarts} restart(s)[/]")
    return "\n".join(lines)


def _cert(s: HostStatus) -> str:
    if s.cert_not_after is None:
        return "[red]none[/]"
    text = f"{s.cert_not_after:%Y-%m-%d %H:%M}"
    return f"[yellow]{text} (renew)[/]" if s.cert_warning else text


def _rules(s: HostStatus) -> str:
    if s.rules_fallback:
        return "[red]fallback[/]"
    return "[green]yes[/]" if s.rules else "[red]no[/]"


def _ipv6(s: HostStatus) -> str | None:
    """IPv6 that meshd does not serve, as the host's rules treat it (nothing when served)."""
    if not s.ipv6 or s.ipv6 == "served" or s.ipv6.startswith("absent"):
        return None
    if s.ipv6_exposed:  # meshd's own words would claim what the rules do not
        return (
            f"[red]IPv6 {escape(s.ipv6.split(':')[0])}, but the ip6tables rules redirect IPv6 "
            "to meshd's ports, where meshd does not listen and any local user may: run "
            f"meshctl join {escape(s.host)}[/]"
        )
    return f"[yellow]IPv6 {escape(s.ipv6)}[/]"


def _problems(s: HostStatus) -> str:
    notes = []
    if not s.joined:
        notes.append("[yellow]not joined: run meshctl join " + escape(s.host) + "[/]")
    if s.error:
        notes.append(f"[red]{escape(s.error)}[/]")
    if s.admin_error and s.reachable:
        notes.append(f"[red]admin API: {escape(s.admin_error)}[/]")
    if s.reachable and s.meshd == "active" and not s.ready:
        notes.append("[red]meshd is not ready[/]")
    if s.rules_fallback:
        notes.append(
            "[red]meshd-rules.service failed at boot: the last applied rules hold the host closed "
            f"(fallback); see journalctl -u meshd-rules, then meshctl join {escape(s.host)}[/]"
        )
    elif s.reachable and s.joined and not s.rules:
        notes.append("[red]redirect rules missing: run meshctl join " + escape(s.host) + "[/]")
    ipv6 = _ipv6(s)
    if ipv6:
        notes.append(ipv6)
    if s.registry_version is not None and s.registry_version != s.expected_registry:
        notes.append(
            f"[yellow]registry version {s.registry_version}, the workspace's is "
            f"{s.expected_registry}: run meshctl join {escape(s.host)}[/]"
        )
    if s.policy_behind:
        has = "no policy" if s.policy_version is None else f"policy version {s.policy_version}"
        notes.append(
            f"[yellow]{has}, the workspace's is {s.expected_policy}: "
            "run meshctl policy apply again[/]"
        )
    if s.cert_warning:
        notes.append("[yellow]certificate past 2/3 of its life: run meshctl join[/]")
    if s.drift:
        notes.append(
            f"[yellow]drift: {len(s.drift)} change(s) pending; "
            f"see meshctl join {escape(s.host)} --dry-run[/]"
        )
    if s.healthy:
        return "[green]healthy[/]"
    return "\n".join(notes) or "[red]unhealthy[/]"


def _policy(s: HostStatus) -> str:
    text = "-" if s.policy_version is None else str(s.policy_version)
    return f"[yellow]{text}[/]" if s.policy_behind else text


def status_table(statuses: list[HostStatus], registry_version: int) -> Table:
    """One row per host: reachability, meshd, versions, certificate, rules, drift."""
    table = Table(
        title=f"mesh status (workspace registry version {registry_version})", title_justify="left"
    )
    for column in ("host", "address", "meshd", "registry", "policy", "cert until", "rules"):
        table.add_column(column, no_wrap=column in ("host", "address"))
    table.add_column("notes", overflow="fold", ratio=1)
    for s in statuses:
        registry = "-" if s.registry_version is None else str(s.registry_version)
        if s.registry_version is not None and s.registry_version != registry_version:
            registry = f"[yellow]{registry}[/]"
        table.add_row(
            escape(s.host),
            escape(s.address),
            _meshd(s),
            registry,
            _policy(s),
            _cert(s),
            "[red]fallback[/]"
            if s.rules_fallback
            else "[green]yes[/]"
            if s.rules
            else "[red]no[/]",
            _problems(s),
        )
    return table


SHORT_LEAF = 7 * 86400  # leaves that need an issuer: nobody re-joins every host weekly


def fleet_warnings(
    statuses: list[HostStatus],
    issuers: list[str],
    lifetimes: tuple[int, int],
    now: dt.datetime,
) -> list[str]:
    """One line per thing to act on: issuers past half their life, failing renewals, and
    short leaves without any issuer. ``lifetimes``: mesh.toml's leaf and issuer lifetimes."""
    leaf, issuer_life = lifetimes
    by_host = {s.host: s for s in statuses}
    found = [
        w
        for name in issuers
        if name in by_host
        for w in _issuer_warning(by_host[name], issuer_life, now)
    ]
    for s in statuses:
        if s.renewal is not None and s.renewal.state == "failing":
            found.append(
                f"{s.host}: certificate renewal failing ({s.renewal.failures} attempt(s)): "
                f"{clean(s.renewal.last_error) or 'no error reported'}; see meshctl issuer list"
            )
    if not issuers and statuses and leaf <= SHORT_LEAF:
        found.append(
            f"no issuer, and leaves live {format_duration(leaf)}: no host renews its "
            "certificate; add one: meshctl issuer add HOST"
        )
    return found


def _issuer_warning(s: HostStatus, lifetime: int, now: dt.datetime) -> list[str]:
    """An issuer whose meshd answered: without a CA, or past half its CA's life."""
    if s.admin_error is not None or s.version is None:
        return []  # its row says why it did not answer
    end = parse_time(s.issuer_not_after)
    if end is None:
        return [f"issuer {s.host} holds no issuer CA: run meshctl issuer add {s.host}"]
    if not past_share(end, now, lifetime, WARN_AT):
        return []
    return [
        f"issuer {s.host}: its CA is past half its life (until {end:%Y-%m-%d %H:%M} UTC): "
        "run meshctl ca renew-issuers"
    ]

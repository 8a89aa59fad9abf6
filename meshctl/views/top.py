"""The views of ``meshctl top``: the screen (services, edges, paths, hosts) and its JSON line.

Pure: a ``meshctl.traffic.Top`` in, a rich renderable or a JSON-ready dict
out. Names come from meshd's counters, so they pass through ``clean`` and
``escape`` before they reach the terminal.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from meshctl.traffic import EdgeRow, HostRow, PathRow, ServiceRow, Signals, Top
from meshd.telemetry.logs import clean

NO_PATHS = "request paths: not shown (needs meshd's live tap, which these hosts do not serve)"


def _name(text: str) -> str:
    return escape(clean(text))


def _rate(value: float) -> str:
    return f"{value:.1f}"


def _success(value: float | None) -> str:
    if value is None:
        return "-"
    text = f"{value * 100:.2f}%"
    return text if value >= 0.99 else f"[yellow]{text}[/]" if value >= 0.95 else f"[red]{text}[/]"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _bytes(per_s: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if per_s < 1024:
            return f"{per_s:.0f} {unit}/s" if unit == "B" else f"{per_s:.1f} {unit}/s"
        per_s /= 1024
    return f"{per_s:.1f} GiB/s"


def _signal_cells(s: Signals) -> list[str]:
    return [_rate(s.rps), _success(s.success), _ms(s.p50), _ms(s.p95), _ms(s.p99)]


def _table(title: str, first: list[str], rest: list[str]) -> Table:
    table = Table(title=title, title_justify="left", expand=True)
    for column in first:
        table.add_column(column, no_wrap=True)
    for column in rest:
        table.add_column(column, justify="right", no_wrap=True)
    return table


SIGNALS = ["rps", "success", "p50 ms", "p95 ms", "p99 ms"]


def services_table(rows: tuple[ServiceRow, ...]) -> Table:
    """Per service, the server side summed over its hosts."""
    table = _table("services (server side)", ["service"], [*SIGNALS, "bytes/s", "open"])
    table.add_column("hosts", overflow="fold", ratio=1)
    for r in rows:
        hosts = ", ".join(_name(h) for h in r.hosts)
        table.add_row(
            _name(r.service), *_signal_cells(r.signals), _bytes(r.bytes_per_s), str(r.open), hosts
        )
    return table


def edges_table(rows: tuple[EdgeRow, ...]) -> Table:
    """Per edge, the client side."""
    table = _table("edges (client side)", ["source", "destination"], SIGNALS)
    for r in rows:
        table.add_row(_name(r.source), _name(r.destination), *_signal_cells(r.signals))
    return table


def paths_table(rows: tuple[PathRow, ...]) -> Table:
    """The busiest request paths, from the tap."""
    table = _table(
        "busiest paths", ["method", "path"], ["count", "success", "best ms", "worst ms", "last ms"]
    )
    for r in rows:
        cells = [str(r.count), _success(r.success), _ms(r.best), _ms(r.worst), _ms(r.last)]
        table.add_row(_name(r.method), _name(r.path), *cells)
    return table


def hosts_line(hosts: tuple[HostRow, ...]) -> Text:
    """Every watched host, the unreachable ones in red with why."""
    line = Text("hosts: ")
    for i, h in enumerate(hosts):
        if i:
            line.append("  ")
        if h.reachable:
            line.append(clean(h.host), style="green")
        elif h.error is None:
            line.append(f"{clean(h.host)} (waiting)", style="dim")
        else:
            line.append(f"{clean(h.host)} unreachable", style="bold red")
    return line


def host_errors(hosts: tuple[HostRow, ...]) -> list[str]:
    """One line per unreachable host: why."""
    return [f"{clean(h.host)}: {clean(h.error)}" for h in hosts if h.error is not None]


def top_view(top: Top, time: dt.datetime, window: float, interval: float) -> RenderableType:
    """The whole screen: a header, services, edges, paths (or why not), hosts, errors."""
    reachable = sum(h.reachable for h in top.hosts)
    header = Text(
        f"meshctl top  {time:%H:%M:%S} UTC  window {window:g}s, every {interval:g}s  "
        f"{reachable}/{len(top.hosts)} hosts answering  (Ctrl-C quits)",
        style="bold",
    )
    parts: list[RenderableType] = [header, services_table(top.services), edges_table(top.edges)]
    parts.append(paths_table(top.paths) if top.paths is not None else Text(NO_PATHS, style="dim"))
    parts.append(hosts_line(top.hosts))
    parts.extend(Text(line, style="red") for line in host_errors(top.hosts))
    return Group(*parts)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _signals_json(s: Signals) -> dict[str, Any]:
    ms = [_round(v * 1000 if v is not None else None, 3) for v in (s.p50, s.p95, s.p99)]
    return {
        "rps": round(s.rps, 3),
        "success": _round(s.success, 5),
        "p50_ms": ms[0],
        "p95_ms": ms[1],
        "p99_ms": ms[2],
    }


def top_json(top: Top, time: dt.datetime) -> dict[str, Any]:
    """One JSON line of ``--json``: success is a share (0..1), latencies in milliseconds."""
    services = [
        {
            "service": r.service,
            **_signals_json(r.signals),
            "bytes_per_s": round(r.bytes_per_s, 3),
            "open": r.open,
            "hosts": list(r.hosts),
        }
        for r in top.services
    ]
    edges = [
        {"source": r.source, "destination": r.destination, **_signals_json(r.signals)}
        for r in top.edges
    ]
    paths = [
        {
            "method": p.method,
            "path": p.path,
            "count": p.count,
            "success": _round(p.success, 5),
            "best_ms": round(p.best * 1000, 3),
            "worst_ms": round(p.worst * 1000, 3),
            "last_ms": round(p.last * 1000, 3),
        }
        for p in top.paths or ()
    ]
    hosts = [{"host": h.host, "reachable": h.reachable, "error": h.error} for h in top.hosts]
    return {
        "time": time.isoformat(),
        "services": services,
        "edges": edges,
        "paths": paths,
        "hosts": hosts,
    }

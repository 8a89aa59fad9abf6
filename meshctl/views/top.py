"""The views of ``meshctl top``: the screen (services, edges, paths, hosts) and its JSON line.

Pure: a ``meshctl.traffic.Top`` in, a rich renderable or a JSON-ready dict
out. Names come from meshd's counters, so they pass through ``clean`` before
they reach the terminal (no markup is parsed: cells are plain text and a style).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Span, Text

from meshctl.traffic import EdgeRow, HostRow, PathRow, ServiceRow, Signals, Top
from meshd.telemetry.logs import clean

NO_TAP = "busiest paths: no tap read"
NO_REQUESTS = "(no requests on the taps in the window)"


Cell = tuple[str, str]  # text, style ("": none)


def _name(text: str) -> Cell:
    return clean(text), ""


def _rate(value: float) -> Cell:
    return f"{value:.1f}", ""


def _success(value: float | None) -> Cell:
    if value is None:
        return "-", ""
    style = "" if value >= 0.99 else "yellow" if value >= 0.95 else "red"
    return f"{value * 100:.2f}%", style


def _ms(seconds: float | None) -> Cell:
    return ("-" if seconds is None else f"{seconds * 1000:.1f}"), ""


def _bytes(per_s: float) -> Cell:
    for unit in ("B", "KiB", "MiB"):
        if per_s < 1024:
            return (f"{per_s:.0f} {unit}/s" if unit == "B" else f"{per_s:.1f} {unit}/s"), ""
        per_s /= 1024
    return f"{per_s:.1f} GiB/s", ""


def _signal_cells(s: Signals) -> list[Cell]:
    return [_rate(s.rps), _success(s.success), _ms(s.p50), _ms(s.p95), _ms(s.p99)]


SEPARATOR = " │ "


def grid(title: str, headers: list[str], align: str, rows: list[list[Cell]]) -> Text:
    """A table as one Text: a title, a header, a line per row, columns apart by SEPARATOR,
    each aligned as ``align`` says ("l" or "r" a column: "llrr").
    Laid out by hand, as one string and the spans of its styled cells: a rich Table
    measures and renders every cell on its own, which for 30 services a second cost more
    CPU than all the polling."""
    widths = [max([len(h)] + [len(r[i][0]) for r in rows]) for i, h in enumerate(headers)]
    parts, spans, at = [title], [Span(0, len(title), "bold")], len(title)
    for cells in [[(h, "bold") for h in headers], *rows]:
        for i, (value, style) in enumerate(cells):
            glue = SEPARATOR if i else "\n"
            if align[i] == "r":
                cell = value.rjust(widths[i])
            else:  # the last column is not padded: no trailing blanks
                cell = value if i == len(cells) - 1 else value.ljust(widths[i])
            if style:
                spans.append(Span(at + len(glue), at + len(glue) + len(cell), style))
            parts += [glue, cell]
            at += len(glue) + len(cell)
    return Text("".join(parts), no_wrap=True, overflow="ellipsis", spans=spans)


def _row(*cells: Cell | list[Cell]) -> list[Cell]:
    return [c for cell in cells for c in (cell if isinstance(cell, list) else [cell])]


SIGNALS = ["rps", "success", "p50 ms", "p95 ms", "p99 ms"]


def services_table(rows: tuple[ServiceRow, ...]) -> Text:
    """Per service, the server side summed over its hosts."""
    headers = ["service", *SIGNALS, "bytes/s", "open", "hosts"]
    cells = [
        _row(
            _name(r.service),
            _signal_cells(r.signals),
            _bytes(r.bytes_per_s),
            (str(r.open), ""),
            (clean(", ".join(r.hosts)), ""),
        )
        for r in rows
    ]
    return grid("services (server side)", headers, "lrrrrrrrl", cells)


def edges_table(rows: tuple[EdgeRow, ...]) -> Text:
    """Per edge, the client side."""
    cells = [[_name(r.source), _name(r.destination), *_signal_cells(r.signals)] for r in rows]
    return grid("edges (client side)", ["source", "destination", *SIGNALS], "llrrrrr", cells)


def paths_table(rows: tuple[PathRow, ...]) -> Text:
    """The busiest request paths, from the tap (server side, over the window)."""
    headers = ["method", "path", "count", "success", "best ms", "worst ms", "last ms"]
    cells = [
        _row(_name(r.method), _name(r.path), (str(r.count), ""), _success(r.success))
        + _row(_ms(r.best), _ms(r.worst), _ms(r.last))
        for r in rows
    ]
    return grid("busiest paths (server side, from the tap)", headers, "llrrrrr", cells)


def paths_missing(missing: tuple[tuple[str, str], ...], most: int = 5) -> str | None:
    """One line naming the hosts whose paths are missing and why (the first ``most``)."""
    if not missing:
        return None
    shown = ", ".join(f"{clean(h)} ({clean(why, 80)})" for h, why in missing[:most])
    more = f" and {len(missing) - most} more" if len(missing) > most else ""
    return f"paths missing from {shown}{more}"


def paths_part(top: Top) -> list[Text]:
    """The paths table (or why there is none), then which hosts' paths are missing."""
    if top.paths is None:
        return [Text(NO_TAP, style="dim")]
    parts = [paths_table(top.paths)]
    if not top.paths:
        parts.append(Text(NO_REQUESTS, style="dim"))
    missing = paths_missing(top.paths_missing)
    if missing is not None:
        parts.append(Text(missing, style="yellow"))
    return parts


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


def host_errors(hosts: tuple[HostRow, ...], most: int = 5) -> list[str]:
    """One line per unreachable host saying why, the first ``most`` of them."""
    lines = [f"{clean(h.host)}: {clean(h.error)}" for h in hosts if h.error is not None]
    more = len(lines) - most
    return lines[:most] + ([f"... and {more} more unreachable"] if more > 0 else [])


def top_view(
    top: Top, time: dt.datetime, window: float, interval: float, live: bool = False
) -> RenderableType:
    """The whole screen: a header, the hosts (first: a full screen cuts off the bottom),
    why hosts are unreachable, then services, edges and paths (or why there are none)."""
    reachable = sum(h.reachable for h in top.hosts)
    header = Text(
        f"meshctl top  {time:%H:%M:%S} UTC  window {window:g}s, every {interval:g}s  "
        f"{reachable}/{len(top.hosts)} hosts answering" + ("  (Ctrl-C quits)" if live else ""),
        style="bold",
    )
    parts: list[RenderableType] = [header, hosts_line(top.hosts)]
    parts.extend(Text(line, style="red") for line in host_errors(top.hosts))
    parts += [Text(), services_table(top.services), Text(), edges_table(top.edges), Text()]
    parts.extend(paths_part(top))
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
    """One JSON line of ``--json``: success is a share (0..1), latencies in milliseconds;
    ``paths_missing`` lists the hosts whose tap is not streaming (``host``, ``error``)."""
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
    missing = [{"host": h, "error": why} for h, why in top.paths_missing]
    return {
        "time": time.isoformat(),
        "services": services,
        "edges": edges,
        "paths": paths,
        "paths_missing": missing,
        "hosts": hosts,
    }

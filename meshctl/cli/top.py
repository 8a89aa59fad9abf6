"""``meshctl top``: live golden signals of every joined host's meshd.

The command polls (``meshctl.trafficpoll``), folds each poll into the
sliding windows (``meshctl.traffic``), reads every host's live tap for the
busiest paths (``meshctl.taps`` into ``meshctl.tappaths``) and shows the result
(``meshctl.views.top``): redrawn full screen in a terminal, printed as one
snapshot after another when stdout is not a terminal, as JSON lines with
``--json``, or once with ``--once``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated

import typer
from rich.console import RenderableType
from rich.live import Live

from meshctl import state
from meshctl.admin_client import AdminEndpoint
from meshctl.cli.common import JsonOption
from meshctl.cli.context import AppContext, app_context
from meshctl.cli.errors import ExitCode
from meshctl.tappaths import JSON_ROWS, SCREEN_ROWS, PathWindow
from meshctl.taps import CONNECT_TIMEOUT, Taps
from meshctl.traffic import SORTS, SortKey, Top, Watch, select, sort_key, summarize
from meshctl.trafficpoll import Poller
from meshctl.views.top import top_json, top_view
from meshctl.workspace import Workspace
from meshd.errors import ConfigError

TIMEOUT_SHARE = 0.8  # of the interval: a host's answer must come before the next refresh
MAX_TIMEOUT = 5.0

ServiceFilter = Annotated[
    str | None,
    typer.Option(
        "--service",
        "-s",
        help="only this service, its edges and the paths of requests to or from it",
    ),
]
HostFilter = Annotated[
    list[str] | None, typer.Option("--host", help="poll only this joined host (repeat)")
]
SortOption = Annotated[
    str, typer.Option("--sort", help="order rows by rps, success (worst first), p99 or name")
]
WindowOption = Annotated[
    float,
    typer.Option("--window", min=1.0, help="seconds of history rates, percentiles and paths cover"),
]
IntervalOption = Annotated[
    float, typer.Option("--interval", min=0.2, help="seconds between refreshes")
]
OnceOption = Annotated[
    bool,
    typer.Option(
        "--once",
        help="poll twice, one interval apart (reading the taps in between), print one "
        "snapshot, exit",
    ),
]


def top(
    ctx: typer.Context,
    service: ServiceFilter = None,
    host: HostFilter = None,
    sort: SortOption = "rps",
    window: WindowOption = 10.0,
    interval: IntervalOption = 1.0,
    once: OnceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Watch live traffic: per service, per edge, per host, refreshed every second.

    Services are counted on the server side (requests their meshd received,
    summed over the hosts serving them), edges (source -> destination) on the
    client side: rps, success rate (neither a 5xx nor no answer), p50/p95/p99
    latency over the last --window seconds, bytes/s and open connections.
    The busiest request paths come from every host's live tap (GET /tap,
    with --service only requests from or to that service), counted on the
    server side as services are (a request through two meshd counts once):
    method, path, count, success rate, best/worst/last latency over the
    window; the top 10 on screen, 50 in --json. A host whose tap is refused
    (an older meshd, 4 taps open on it already) is tried again every few
    seconds and named under the paths meanwhile.
    A host that does not answer within the interval is marked unreachable.
    Without a terminal, or with --json (one JSON object per line), it prints
    one snapshot per refresh. Ctrl-C quits. --once exits 8 when a host did
    not answer.

    Example: meshctl top --service api --sort p99
    """
    actx = app_context(ctx)
    by = sort_key(sort)
    if by is None:
        raise ConfigError(
            f"--sort {sort!r} is not one of {', '.join(SORTS)}", hint="e.g. --sort p99"
        )
    ws = actx.workspace()
    endpoints = watched(ws, host)
    timeout = min(interval * TIMEOUT_SHARE, MAX_TIMEOUT)
    poller = Poller(actx.connect_admin(ws, timeout), endpoints, timeout)
    watch = Watch.of([e.host for e in endpoints], window)
    taps = Taps(actx.connect_admin(ws, CONNECT_TIMEOUT), endpoints, service).start()
    session = _Session(actx, poller, watch, (service, by), interval)
    session.taps, session.paths = taps, PathWindow(window)
    session.path_rows = JSON_ROWS if json_out else SCREEN_ROWS
    before = ending_on_first_ctrl_c()
    try:
        if once:
            code = session.once(json_out)
            if code != ExitCode.OK:
                raise typer.Exit(code)
        elif json_out or not actx.out.is_terminal:
            session.stream(json_out)
        else:
            session.live()
    except KeyboardInterrupt:  # the way out of a live view: no message, no traceback
        raise typer.Exit(ExitCode.OK) from None
    finally:
        taps.close()
        poller.close()
        if before is not None and signal.getsignal(signal.SIGINT) is _first_ctrl_c:
            signal.signal(signal.SIGINT, before)  # ended otherwise: SIGINT as it was


def ending_on_first_ctrl_c() -> signal.Handlers | Callable[..., object] | int | None:
    """Make the first Ctrl-C end top and any later one do nothing; the handler it replaced
    (None: not in the main thread, the one Python handles signals in, so nothing done).

    Ctrl-C is how an operator leaves the live view, and it is often pressed twice.
    The second used to land wherever top was on its way out: restoring the terminal,
    closing the taps, joining the threads of answers in flight, or, once Python
    finalises (it gives SIGINT back to the default action then, unless SIGINT is
    ignored), killing the process by the signal with no exit status. So the first
    SIGINT ignores SIGINT from then on, for the rest of the process, before it raises
    ``KeyboardInterrupt``. What is left is bounded: the taps are closed (2 s at most)
    and answers in flight end within their timeout (5 s at most).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, _first_ctrl_c)


def _first_ctrl_c(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def watched(ws: Workspace, names: list[str] | None) -> list[AdminEndpoint]:
    """The admin API of every joined host (or of ``names``, which must be joined)."""
    joined = state.joined(ws)
    hosts = [h for h in state.load_inventory(ws).hosts if h.name in joined]
    if names:
        unknown = sorted(set(names) - {h.name for h in hosts})
        if unknown:
            raise ConfigError(
                f"not a joined host: {', '.join(unknown)}",
                hint=f"joined hosts: {', '.join(h.name for h in hosts) or 'none'}",
            )
        hosts = [h for h in hosts if h.name in names]
    if not hosts:
        raise ConfigError(
            "no joined hosts to watch", hint="meshctl join [USER@]HOST --service NAME:PORT"
        )
    port = ws.config.defaults.admin_port
    return [AdminEndpoint(h.name, h.address, port) for h in hosts]


class _Session:
    """One run of ``top``: the poller, the windows so far, and how to show them."""

    def __init__(
        self,
        actx: AppContext,
        poller: Poller,
        watch: Watch,
        rows: tuple[str | None, SortKey],
        interval: float,
    ) -> None:
        self.actx, self.poller, self.watch = actx, poller, watch
        self.service, self.sort = rows  # which service, and the order of rows
        self.interval = interval
        self.sleep: Callable[[float], None] = time.sleep
        self.taps: Taps | None = None  # no tap read: no paths
        self.paths = PathWindow(0.0)
        self.path_rows = SCREEN_ROWS

    def refresh(self) -> Top:
        self.watch = self.watch.observe(self.poller.poll())
        shown = select(summarize(self.watch), self.service, self.sort)
        if self.taps is None:
            return shown
        self.paths.add(self.taps.take())
        rows = self.paths.rows(self.actx.clock().timestamp(), self.path_rows)
        return replace(shown, paths=rows, paths_missing=self.taps.missing())

    def ticks(self) -> Callable[[], None]:
        """A wait until the next refresh, an interval after the previous one started."""
        next_at = time.monotonic()

        def wait() -> None:
            nonlocal next_at
            next_at = max(next_at + self.interval, time.monotonic())
            self.sleep(max(0.0, next_at - time.monotonic()))

        return wait

    def once(self, json_out: bool) -> ExitCode:
        wait = self.ticks()
        self.refresh()
        wait()
        shown = self.refresh()
        self.show(shown, json_out)
        return ExitCode.OK if all(h.reachable for h in shown.hosts) else ExitCode.PARTIAL

    def stream(self, json_out: bool) -> None:
        """One snapshot per refresh, from the second poll on (the first has no rates)."""
        wait = self.ticks()
        self.refresh()
        while True:
            wait()
            self.show(self.refresh(), json_out)

    def live(self) -> None:
        wait = self.ticks()
        console = self.actx.out
        with Live(
            self.view(self.refresh(), live=True),
            console=console,
            screen=True,
            auto_refresh=False,  # redrawn after each poll only: a refresh costs CPU
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            while True:
                wait()
                live.update(self.view(self.refresh(), live=True), refresh=True)

    def view(self, shown: Top, live: bool = False) -> RenderableType:
        return top_view(shown, self.actx.clock(), self.watch.span, self.interval, live)

    def show(self, shown: Top, json_out: bool) -> None:
        now = self.actx.clock()
        if json_out:
            line = json.dumps(top_json(shown, now), sort_keys=True)
            self.actx.out.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        else:
            self.actx.out.print(self.view(shown))
            self.actx.out.print()

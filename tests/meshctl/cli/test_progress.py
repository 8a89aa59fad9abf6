"""The per-host progress display: live on terminals only, paused for prompts."""

from __future__ import annotations

from rich.console import Console

from meshctl.cli.common import progress_display
from meshctl.cli.context import AppContext


def context(terminal: bool) -> AppContext:
    err = Console(record=True, width=100, force_terminal=terminal, stderr=True, emoji=False)
    return AppContext(err=err)


def test_pipes_and_json_get_no_live_display() -> None:
    for terminal, json_out in ((False, False), (True, True)):
        with progress_display(context(terminal), json_out) as report:
            report("web1", "connecting")
            assert report.bar is None
            assert report.paused(lambda: 42) == 42


def test_a_terminal_gets_a_line_per_host_and_prompts_pause_it() -> None:
    actx = context(True)
    with progress_display(actx, json_out=False) as report:
        report("web1", "connecting")
        report("db1", "reading facts")
        report("web1", "installing meshd")
        bar = report.bar
        assert bar is not None
        descriptions = {t.fields["host"]: t.description for t in bar.tasks}
        assert descriptions == {"web1": "installing meshd", "db1": "reading facts"}
        seen: list[bool] = []

        def prompt() -> str:
            seen.append(bar.live.is_started)
            return "pw"

        assert report.paused(prompt) == "pw"
        assert seen == [False] and bar.live.is_started

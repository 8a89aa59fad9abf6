"""Run meshctl in-process with recorded consoles and a fixed clock."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from meshctl.cli.app import run
from meshctl.cli.context import AppContext
from tests.meshctl.helpers import NOW


@dataclass
class Result:
    code: int
    out: str
    err: str


def meshctl(
    *argv: str, env: dict[str, str] | None = None, prompt_answer: str | None = None
) -> Result:
    out = Console(record=True, width=100, force_terminal=False, emoji=False)
    err = Console(record=True, width=100, force_terminal=False, stderr=True, emoji=False)
    asked: list[str] = []

    def prompt(text: str, confirm: bool) -> str:
        asked.append(text)
        assert prompt_answer is not None, "meshctl prompted but the test gave no answer"
        return prompt_answer

    context = AppContext(
        out=out,
        err=err,
        environ=env or {},
        clock=lambda: NOW,
        prompt=prompt,
        interactive=prompt_answer is not None,
    )
    code = run(list(argv), context)
    return Result(code, out.export_text(), err.export_text())

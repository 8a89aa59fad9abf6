"""What the validator reports: one ``Problem`` per finding, rendered as §2.12 spells it.

``FILE:LINE: error[CODE] FIELD: MESSAGE`` for people, ``to_json`` for scripts
(``meshctl policy validate --json``) and for meshd's 400 answer to a bad push.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: where (file, line, field), which rule (code) and what to do (message)."""

    file: str
    line: int
    code: str
    field: str
    message: str
    severity: Severity = "error"

    def render(self) -> str:
        """``policy/t.toml:9: error[P012] allow."ro".methods[1]: method ...``."""
        return f"{self.file}:{self.line}: {self.severity}[{self.code}] {self.field}: {self.message}"

    def to_json(self) -> dict[str, object]:
        """The JSON object of ``validate --json``'s ``problems`` list."""
        return {
            "file": self.file,
            "line": self.line,
            "code": self.code,
            "field": self.field,
            "message": self.message,
            "severity": self.severity,
        }


def errors(problems: Iterable[Problem]) -> list[Problem]:
    """The problems that make a document invalid (warnings left out)."""
    return [problem for problem in problems if problem.severity == "error"]


def by_line(problems: Iterable[Problem]) -> list[Problem]:
    """Sorted by file, then line; problems on one line keep the order they were found in."""
    return sorted(problems, key=lambda problem: (problem.file, problem.line))

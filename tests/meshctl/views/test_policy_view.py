"""Views of ``meshctl policy``: the problem summary, diffs and explained decisions."""

from __future__ import annotations

import pytest
from rich.console import Console, RenderableType

from meshctl.policydiff import Change, DocumentDiff
from meshctl.policyprobes import OTHER_SERVICE, ChangeLine, DecisionDiff, Outcome
from meshctl.views.policy import (
    MAX_LINES,
    decision_json,
    decision_view,
    decisions_view,
    diff_view,
    problems_summary,
)
from meshd.policy.lang.evaluate import Decision
from meshd.policy.lang.problems import Problem


def text(renderable: RenderableType) -> str:
    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


def problem(severity: str) -> Problem:
    return Problem("f.toml", 1, "P001", "x", "m", severity)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("severities", "files", "expected"),
    [
        ([], 1, "1 file valid"),
        ([], 3, "3 files valid"),
        (["error"], 1, "1 error in 1 file"),
        (["error", "error", "warning"], 2, "2 errors, 1 warning in 2 files"),
        (["warning", "warning"], 1, "2 warnings in 1 file"),
    ],
)
def test_problems_summary(severities: list[str], files: int, expected: str) -> None:
    assert problems_summary([problem(s) for s in severities], files) == expected


DENY = Decision("deny", 403, "zt/deny/no-admin", ("zt/deny/audit",), "matched deny rule")


def test_decision_json_is_exactly_the_interface() -> None:
    assert decision_json(DENY) == {
        "decision": "deny",
        "status": 403,
        "rule": "zt/deny/no-admin",
        "would_deny": ["zt/deny/audit"],
    }


@pytest.mark.parametrize(
    ("decision", "lines"),
    [
        (DENY, ["decision:   deny (answered 403 by meshd)", "would-deny: zt/deny/audit"]),
        (
            Decision("reset", None, "zt/mtls/mode"),
            ["decision:   reset (connection reset)", "status:     -", "would-deny: none"],
        ),
        (Decision("allow", None, "zt/allow/a"), ["decision:   allow (forwarded to the service)"]),
    ],
)
def test_decision_view(decision: Decision, lines: list[str]) -> None:
    shown = text(decision_view(decision, "web -> api:8080 GET /")).splitlines()
    assert shown[0] == "web -> api:8080 GET /"
    assert f"rule:       {decision.rule}" in shown
    for line in lines:
        assert line in shown


def test_diff_view_marks_each_change() -> None:
    diffs = [
        DocumentDiff(
            "d",
            "changed",
            (
                Change("added", "d/deny/x", None, {"to": "*"}),
                Change("changed", "d/authz/default", "deny", "audit"),
                Change("removed", "d/allow/a", {"to": "api"}),
            ),
        ),
        DocumentDiff("e", "unchanged", ()),
    ]
    assert text(diff_view(diffs)).splitlines() == [
        "d: 3 changes",
        '  + d/deny/x  {"to": "*"}',
        '  ~ d/authz/default  "deny" -> "audit"',
        '  - d/allow/a  {"to": "api"}',
        "e: unchanged",
    ]


DENIED = Outcome("deny", "d/authz/default")


def test_decisions_view_one_line_per_change_and_says_probes_are_representatives() -> None:
    lines = (
        ChangeLine("api", True, "db", 5432, None, Outcome("allow", "d/allow/a"), DENIED),
        ChangeLine(
            "web",
            True,
            "api",
            8080,
            "GET /v1/x",
            DENIED,
            Outcome("allow", "d/allow/b", ("d/deny/w",), ("d/rate_limit/r",)),
        ),
        ChangeLine("other", False, OTHER_SERVICE, None, "tcp", Outcome("reset", "m"), DENIED),
    )
    shown = text(decisions_view(DecisionDiff(9, (), lines))).splitlines()
    assert shown[:4] == [
        "decisions: none of 9 change",
        "  api → db:5432 every request: allow (d/allow/a) → deny (d/authz/default)",
        "  web → api:8080 GET /v1/x: deny (d/authz/default) → allow (d/allow/b, would deny: "
        "d/deny/w, rate limit: d/rate_limit/r)",
        "  other (an identity no rule names) → any other service:<a port no rule names> tcp: "
        "reset (m) → deny (d/authz/default)",
    ]
    note = " ".join(" ".join(shown[4:]).split())
    assert "the probes are representatives" in note and "not every possible request" in note


def test_decisions_view_shows_at_most_max_lines() -> None:
    line = ChangeLine("api", True, "db", 5432, "tcp", Outcome("allow", "d/allow/a"), DENIED)
    shown = text(decisions_view(DecisionDiff(500, (), (line,) * (MAX_LINES + 3)))).splitlines()
    assert shown.count(shown[1]) == MAX_LINES
    assert "  ... and 3 more (--json lists every changed probe)" in shown


def test_decisions_view_when_no_service_needs_probing() -> None:
    shown = text(decisions_view(DecisionDiff(0, (), ()))).splitlines()
    assert shown[0] == "decisions: none change (no service's rules or settings differ)"

"""Rendering of join/leave results and of plans (``--dry-run``)."""

from __future__ import annotations

from rich.console import Console, RenderableType

from meshctl.provision.desired import FileSpec
from meshctl.provision.plan import Plan, ReloadSystemd, StartMeshd, WriteFile
from meshctl.provision.rollout import Outcome
from meshctl.views.rollout import outcome_json, outcomes_table, plan_view
from meshd.errors import ProvisionError

PLAN = Plan(
    "web1",
    (
        WriteFile("content differs", FileSpec("/etc/meshd/meshd.toml", b"[identity]\nhost = 1\n")),
        ReloadSystemd("unit files changed"),
        StartMeshd("its config changed", "restart"),
    ),
)
FAILED = Outcome(
    "web2",
    "10.0.0.12",
    "failed",
    error=ProvisionError("web2: meshd did not start: bad config", hint="see journalctl on web2"),
)


def render(renderable: RenderableType) -> str:
    console = Console(record=True, width=100)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def test_failed_outcome_shows_message_and_hint() -> None:
    text = render(outcomes_table("join", [FAILED]))
    assert "web2: meshd did not start: bad config" in text
    assert "hint: see journalctl on web2" in text
    assert "failed" in text


def test_results_of_each_kind() -> None:
    outcomes = [
        Outcome("web1", "10.0.0.11", "converged"),
        Outcome("db1", "10.0.0.13", "planned", plan=PLAN),
        Outcome("api1", "10.0.0.14", "joined", done=["write a", "enable b", "start meshd"]),
    ]
    lines = render(outcomes_table("join", outcomes)).splitlines()
    assert "already matched: nothing changed" in next(line for line in lines if "web1" in line)
    assert "3 step(s) planned" in next(line for line in lines if "db1" in line)
    api1 = next(line for line in lines if "api1" in line)
    assert "enable b; start meshd" in api1 and " 3 " in api1  # the last two, and a count


def test_plan_view_numbers_steps_and_shows_details() -> None:
    lines = render(plan_view(PLAN)).splitlines()
    assert lines[0] == "web1: 3 step(s)"
    assert lines[1].startswith("   1. write /etc/meshd/meshd.toml (644, root)  (content differs)")
    assert lines[2:4] == ["        [identity]", "        host = 1"]
    assert lines[4] == "   2. systemctl daemon-reload  (unit files changed)"
    assert lines[5].startswith("   3. systemctl restart meshd")


def test_plan_view_without_details_and_empty() -> None:
    assert "[identity]" not in render(plan_view(PLAN, details=False))
    assert "web1: nothing to do (the host already matches)" in render(plan_view(Plan("web1")))


def test_outcome_json_carries_plan_and_error() -> None:
    data = outcome_json(Outcome("db1", "10.0.0.13", "planned", plan=PLAN))
    assert [s["step"] for s in data["plan"]] == ["WriteFile", "ReloadSystemd", "StartMeshd"]
    assert outcome_json(FAILED)["error"] == {
        "message": "web2: meshd did not start: bad config",
        "hint": "see journalctl on web2",
    }

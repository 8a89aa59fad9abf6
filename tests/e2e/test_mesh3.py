"""The 3-host fixture's one leaf-lifetime knob, on a real workspace (no hosts needed)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from meshctl.workspace import Workspace
from tests.e2e.mesh3 import in_process, set_leaf_lifetime


@pytest.mark.parametrize(
    ("lifetime", "hours"), [("1m", 1), ("2h", 2), ("90m", 2), ("24h", 24), ("3d", 72)]
)
def test_the_leaf_lifetime_lands_in_mesh_toml(tmp_path: Path, lifetime: str, hours: int) -> None:
    ws = tmp_path / "ws"
    assert in_process(["init", str(ws), "--name", "knob"], ws).code == 0
    set_leaf_lifetime(ws, lifetime)
    defaults = tomllib.loads((ws / "mesh.toml").read_text())["defaults"]
    # mesh.toml's duration once meshctl reads one (issue 12), whole hours before
    assert defaults.get("leaf_lifetime") == lifetime or defaults["leaf_lifetime_hours"] == hours
    assert Workspace.load(ws).config.name == "knob"  # meshctl still reads the workspace

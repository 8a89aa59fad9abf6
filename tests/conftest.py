"""Suite-wide pytest setup: the testbed plugin (real hosts for end-to-end tests), and a mesh
of real meshd processes on loopback for the tests of meshd and of meshctl's admin client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.meshd.harness import MeshNet

pytest_plugins = ["meshctl.testbed.pytest_plugin"]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[MeshNet]:
    mesh = MeshNet(tmp_path)
    try:
        yield mesh
    finally:
        mesh.stop_all()

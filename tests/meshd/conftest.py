"""Fixtures shared by the meshd tests: a mesh of real meshd processes on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.meshd.harness import MeshNet
from tests.meshd.pairs import LoopApps, Pair, make_web, start_pair


@pytest.fixture
def make_pair(net: MeshNet) -> Iterator[Callable[..., Pair]]:
    """Start a pair (keyword arguments as for ``start_pair``); apps and meshd stop at the end."""
    web, apps = make_web(), LoopApps()
    try:
        yield lambda **options: start_pair(net, web, apps, **options)
    finally:
        net.stop_all()
        web.close()
        apps.close()


@pytest.fixture
def pair(make_pair: Callable[..., Pair]) -> Pair:
    return make_pair()

"""Swap hooks touch links and timers: they run on the daemon's loop, whoever recompiles."""

from __future__ import annotations

import asyncio
import threading
from typing import cast

import pytest

from meshd.registry import Registry
from meshd.runtime import Runtime
from meshd.tls.context import TlsMaterial
from tests.meshd.policy.sample import config

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_recompile_from_a_worker_thread_runs_the_hooks_on_the_loop() -> None:
    """A push is applied in the document store's worker thread (PUT /trust, /certs, ...)."""
    rt = Runtime(config(), cast(TlsMaterial, None), Registry())
    rt.loop = asyncio.get_running_loop()
    ran: list[threading.Thread] = []
    done = asyncio.Event()

    def hook() -> None:
        ran.append(threading.current_thread())
        done.set()

    rt.swapped.append(hook)
    await asyncio.to_thread(rt.recompile)
    await asyncio.wait_for(done.wait(), 5)
    assert ran == [threading.main_thread()]


async def test_a_recompile_on_the_loop_runs_the_hooks_at_once() -> None:
    rt = Runtime(config(), cast(TlsMaterial, None), Registry())
    rt.loop = asyncio.get_running_loop()
    ran: list[bool] = []
    rt.swapped.append(lambda: ran.append(True))
    rt.recompile()
    assert ran == [True]

"""Connections to local apps, opened without a task group per connection.

Opening the app connection is the one wait on the inbound hot path. An
anyio task with a cancel scope per connection cost about a fifth of the
CPU of a new connection, so each connect here is a plain asyncio task with
a loop timer as its deadline; the Connector owns them all and cancels what
is left when its ``serve`` (started in the daemon's task group) ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

OnError = Callable[[BaseException], None]


class Connector:
    """Opens TCP connections with a deadline and reports failures to a callback."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.pending: set[asyncio.Task[object]] = set()

    def connect(
        self, host: str, port: int, factory: Callable[[], asyncio.Protocol], on_error: OnError
    ) -> Callable[[], None]:
        """Start connecting; return what cancels it (a no-op once it is done)."""
        loop = asyncio.get_running_loop()
        task: asyncio.Task[object] = loop.create_task(loop.create_connection(factory, host, port))
        timer = loop.call_later(self.timeout, task.cancel)
        self.pending.add(task)
        task.add_done_callback(lambda done: self._done(done, timer, on_error))
        return lambda: _cancel(task)

    def _done(
        self, task: asyncio.Task[object], timer: asyncio.TimerHandle, on_error: OnError
    ) -> None:
        timer.cancel()
        self.pending.discard(task)
        if task.cancelled():
            on_error(TimeoutError(f"no answer within {self.timeout:g}s"))
            return
        error = task.exception()
        if error is not None:
            on_error(error)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            for task in list(self.pending):
                task.cancel()


def _cancel(task: asyncio.Task[object]) -> None:
    task.cancel()

"""sd_notify over a real AF_UNIX datagram socket, by path and by abstract name."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from meshd.host.systemd import Notifier, watchdog


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value that reaches it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = env = str(tmp_path / "notify.sock")
    else:
        name = f"meshd-test-{uuid.uuid4().hex}"
        address, env = "\0" + name, "@" + name
    sock.bind(address)
    sock.settimeout(2)
    with sock:
        yield sock, env


def test_messages_arrive_one_datagram_each(listener: tuple[socket.socket, str]) -> None:
    sock, env = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": env})
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("serving\n3 links")
    assert notifier.watchdog_ping()
    assert notifier.stopping()
    received = [sock.recv(4096).decode() for _ in range(4)]
    assert received == ["READY=1", "STATUS=serving 3 links", "WATCHDOG=1", "STOPPING=1"]


def test_reloading_carries_monotonic_time(listener: tuple[socket.socket, str]) -> None:
    sock, env = listener
    assert Notifier.from_env({"NOTIFY_SOCKET": env}).reloading()
    first, second = sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    assert second.startswith("MONOTONIC_USEC=")
    assert int(second.split("=")[1]) > 0


def test_no_op_outside_systemd() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval() is None


def test_unreachable_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not notifier.ready()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4242"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/notify", **env}, pid=4242)
    assert notifier.watchdog_interval() == interval


def test_watchdog_pid_defaults_to_ours() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(env).watchdog_interval() == 1.0


@pytest.mark.anyio
async def test_watchdog_loop_pings(listener: tuple[socket.socket, str]) -> None:
    sock, env = listener
    sock.setblocking(False)
    notifier = Notifier.from_env({"NOTIFY_SOCKET": env, "WATCHDOG_USEC": "20000"})
    pings: list[bytes] = []
    async with anyio.create_task_group() as tg:
        await tg.start(watchdog, notifier)
        with anyio.move_on_after(5):  # every 10 ms: three come quickly unless something is wrong
            while len(pings) < 3:
                await anyio.sleep(0.01)
                with contextlib.suppress(BlockingIOError):
                    pings.append(sock.recv(64))
        tg.cancel_scope.cancel()
    assert len(pings) >= 3
    assert set(pings) == {b"WATCHDOG=1"}


@pytest.mark.anyio
async def test_watchdog_returns_without_a_watchdog() -> None:
    with anyio.fail_after(1):
        await watchdog(Notifier.from_env({}))

"""sd_notify for meshd.service (``Type=notify`` with a watchdog), without libsystemd.

systemd passes a datagram socket in ``NOTIFY_SOCKET`` (a path, or an abstract
name when it starts with "@") and the watchdog timeout in ``WATCHDOG_USEC``.
Each state change is one datagram such as ``READY=1``; outside systemd every
call is a no-op. Sends never block: a full socket drops the message.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

log = logging.getLogger("meshd.systemd")


@dataclass(frozen=True)
class Notifier:
    """Where to send notifications, and the watchdog timeout if one is armed for us."""

    address: str | None = None
    watchdog_usec: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], pid: int | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (``pid``: ours)."""
        raw = environ.get("NOTIFY_SOCKET", "")
        address = "\0" + raw[1:] if raw.startswith("@") else raw
        return cls(address or None, _watchdog_usec(environ, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``READY=1``) as one datagram; True when it was sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(state.encode(), self.address)
        except OSError as e:
            log.warning("sd_notify %r failed: %s", state.split("\n", 1)[0], e)
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        # Type=notify-reload wants the monotonic time of the reload alongside
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + text.replace("\n", " "))

    def watchdog_ping(self) -> bool:
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the watchdog timeout, or None without a watchdog."""
        if self.address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid is not None and watchdog_pid.strip() != str(pid):
        return None  # armed for another process (e.g. our parent)
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


async def watchdog(
    notifier: Notifier, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Ping the watchdog at half its timeout until cancelled; return at once without one.

    The pings come from the event loop, so a loop that stops running stops them too.
    """
    task_status.started()
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while True:
        notifier.watchdog_ping()
        await anyio.sleep(interval)

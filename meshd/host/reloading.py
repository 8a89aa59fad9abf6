"""``meshd reload``: trigger a reload and report meshd's own verdict, read from /stats.

meshd keeps the outcome of its last reload (a generation, ok or the error)
and reports it on /stats, which its local unix socket serves. This command
reads the generation, triggers the reload (``systemctl reload UNIT``, or
SIGHUP to the pid /stats reports), waits for the generation to move and
returns the outcome. The verdict never comes from log text: anything a mesh
peer manages to get into meshd's log cannot forge it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from meshd.errors import ConfigError, MeshError
from meshd.stats import ReloadReport, Stats

MAX_STATS_BYTES = 1 << 20  # /stats is a few KiB; a local reader still bounds what it takes


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.path))
        self.sock = sock


def local_stats(path: Path, timeout: float = 5.0) -> Stats:
    """GET /stats over meshd's local admin socket."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("GET", "/stats")
        response = conn.getresponse()
        body = response.read(MAX_STATS_BYTES)
    except OSError as e:
        raise MeshError(
            f"cannot ask meshd on {path}: {e.strerror or e}",
            hint="is meshd running (systemctl status meshd)? run this as root or meshd",
        ) from e
    finally:
        conn.close()
    if response.status != 200:
        raise MeshError(f"meshd on {path} answered {response.status} to GET /stats")
    try:
        stats = json.loads(body)
    except ValueError as e:
        raise MeshError(f"meshd on {path} sent /stats that is not JSON: {e}") from e
    if not isinstance(stats, dict):
        raise MeshError(f"meshd on {path} sent /stats that is not a JSON object")
    return Stats.from_json(stats)


def outcome(stats: Stats) -> ReloadReport:
    """The last reload's outcome in ``stats``; MeshError when meshd does not report one."""
    if stats.reload is None:
        raise MeshError(
            "this meshd does not report reload outcomes on /stats", hint="upgrade meshd"
        )
    return stats.reload


def reload(socket_path: Path, unit: str | None, timeout: float) -> ReloadReport:
    """Reload meshd and wait for its verdict on that reload."""
    before = local_stats(socket_path)
    pid, generation = before.pid, outcome(before).generation
    if unit is not None:
        _systemctl_reload(unit)
    elif pid is not None and pid > 1:
        os.kill(pid, signal.SIGHUP)
    else:
        raise MeshError("meshd does not report its pid on /stats", hint="pass --unit")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = local_stats(socket_path)
        if now.pid != pid:
            raise MeshError("meshd restarted during the reload", hint="see its log")
        verdict = outcome(now)
        if verdict.generation != generation:
            return verdict
    raise MeshError(f"meshd did not finish the reload within {timeout:g}s", hint="see its log")


def _systemctl_reload(unit: str) -> None:
    result = subprocess.run(
        ["systemctl", "reload", unit], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise MeshError(
            f"systemctl reload {unit} failed: {result.stderr.strip() or result.returncode}",
            hint=f"see systemctl status {unit}",
        )


def socket_of(config_socket: Path | None, config_path: Path) -> Path:
    if config_socket is None:
        raise ConfigError(
            f"{config_path}: [listen] admin_socket is empty, so meshd has no local socket",
            hint="set admin_socket to reload through it",
        )
    return config_socket

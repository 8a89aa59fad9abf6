"""The testbed leaves nothing behind: after down, after a killed run, after a killed nspawn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshctl.testbed import Testbed, cleanup_leftovers, leftovers

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("testbed_ready")]

BRING_UP_AND_WAIT = """
import time
from pathlib import Path
from meshctl.testbed import Testbed
tb = Testbed.up(hosts=1, progress=lambda message: None)
print(tb.prefix, flush=True)
time.sleep(600)
"""


def quiet(_message: str) -> None:
    pass


def nspawn_processes(prefix: str) -> list[str]:
    out = subprocess.run(
        ["pgrep", "-af", "systemd-nspawn"], check=False, capture_output=True, text=True
    )
    return [line for line in out.stdout.splitlines() if f"{prefix}-" in line]


def assert_clean(prefix: str, state_root: Path | None = None) -> None:
    assert leftovers(prefix, state_root) == []
    assert nspawn_processes(prefix) == []
    links = subprocess.run(["ip", "-o", "link"], check=True, capture_output=True, text=True).stdout
    assert f"{prefix}-" not in links
    assert not [p for p in os.listdir("/sys/fs/cgroup") if p.startswith(prefix)]
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        path = f"/sys/fs/cgroup/{hierarchy}"
        if os.path.isdir(path):
            assert not [p for p in os.listdir(path) if p.startswith(f"{prefix}-")]
    with open("/proc/self/mountinfo") as fh:
        assert prefix not in fh.read()


def test_down_leaves_nothing() -> None:
    tb = Testbed.up(hosts=1, progress=quiet)
    prefix = tb.prefix
    assert leftovers(prefix) != []
    tb.down()
    tb.down()  # idempotent
    assert_clean(prefix)


def test_cleanup_leftovers_removes_a_killed_run(tmp_path: Path) -> None:
    # A private state root, so concurrent runs' own cleanups do not race this one.
    env = {**os.environ, "MESHCTL_TESTBED_STATE": str(tmp_path)}
    with subprocess.Popen(
        [sys.executable, "-c", BRING_UP_AND_WAIT], stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            prefix = proc.stdout.readline().strip()
            assert prefix, "the child run did not bring its testbed up"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
    assert leftovers(prefix, tmp_path) != []

    removed = cleanup_leftovers(tmp_path)

    assert removed == [prefix]
    assert_clean(prefix, tmp_path)


def test_down_after_nspawn_was_killed_leaves_nothing() -> None:
    tb = Testbed.up(hosts=1, progress=quiet)
    try:
        host = tb.hosts[0]
        init = host.init_pid()
        nspawn = int((host.dir / "nspawn.pid").read_text())
        os.kill(nspawn, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{nspawn}/exe") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert host.init_pid() == init, "the host should live on without nspawn"
    finally:
        tb.down()
    assert_clean(tb.prefix)

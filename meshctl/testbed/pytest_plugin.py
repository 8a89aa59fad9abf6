"""pytest plugin: the session-scoped `testbed` fixture of real test hosts.

Loaded only by the test suite (``pytest_plugins`` in tests/conftest.py). The
fixture skips when not root, fails when root but the tools are missing, and
tears the testbed down whatever happens: after the session, on SIGTERM/SIGINT
and at exit. After teardown it asserts nothing of the testbed is left.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from .testbed import Testbed, cleanup_leftovers, leftovers

REQUIRED = ("systemd-nspawn", "debootstrap", "unshare", "nsenter", "ip")
Handler = Callable[[int, FrameType | None], Any] | int | None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--testbed-hosts",
        type=int,
        default=3,
        help="number of hosts in the session testbed (default 3)",
    )


def require_testbed() -> None:
    """Skip unless root; fail (not skip) when root but the host tools are missing."""
    if os.geteuid() != 0:
        pytest.skip("testbed tests need root (systemd-nspawn hosts); run pytest as root")
    missing = [t for t in REQUIRED if shutil.which(t) is None]
    if missing:
        pytest.fail(
            f"testbed tools missing: {', '.join(missing)}; "
            "apt-get install systemd-container debootstrap iproute2 util-linux",
            pytrace=False,
        )


def _progress(message: str) -> None:
    sys.stderr.write(f"\n[testbed] {message}")
    sys.stderr.flush()


@pytest.fixture(scope="session")
def testbed_ready() -> None:
    """Preconditions of any testbed test: root, tools, no orphaned testbeds."""
    require_testbed()
    cleanup_leftovers()


@pytest.fixture(scope="session")
def testbed(request: pytest.FixtureRequest, testbed_ready: None) -> Iterator[Testbed]:
    """A running testbed shared by the session (`--testbed-hosts N`, default 3)."""
    count = int(request.config.getoption("--testbed-hosts"))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    quiet = contextlib.nullcontext() if capture is None else capture.global_and_fixture_disabled()
    with quiet:  # show progress live: the first image build takes a minute
        tb = Testbed.up(hosts=count, progress=_progress)
    guard = TeardownGuard(tb)
    guard.install()
    try:
        yield tb
    finally:
        guard.teardown()
        guard.uninstall()
    left = leftovers(tb.prefix)
    assert left == [], f"testbed {tb.prefix} leaked: {left}"


class TeardownGuard:
    """Tears a testbed down once: on demand, on SIGTERM/SIGINT (then re-raises), at exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self._done = threading.Lock()
        self._previous: dict[int, Handler] = {}

    def install(self) -> None:
        atexit.register(self.teardown)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        atexit.unregister(self.teardown)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def teardown(self) -> None:
        if self._done.acquire(blocking=False):
            self.tb.down()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        try:
            self.teardown()
        finally:
            previous = self._previous.get(signum, signal.SIG_DFL)
            self.uninstall()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signum)

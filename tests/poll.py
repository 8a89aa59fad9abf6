"""Waiting for what happens a moment later (a daemon counts on close, journald stores late)."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> float:
    """Poll ``check`` until it is true; return how long that took. Fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:g}s"
        time.sleep(every)
    return time.monotonic() - start

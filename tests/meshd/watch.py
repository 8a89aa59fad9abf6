"""What abuse costs a process: resident memory and descriptors, sampled over the whole run.

A ``Watch`` samples each watched process every 20 ms in a thread, so the
peak is the maximum over the run rather than one reading at a moment the
test chose. ``settled`` then waits until each process is back near the
baseline taken when the watch started: memory returned, descriptors closed.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Usage:
    rss_kib: int
    fds: int


def usage(pid: int) -> Usage:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return Usage(rss, len(os.listdir(f"/proc/{pid}/fd")))


@dataclass
class Watch:
    """Peak and baseline of RSS and descriptors of named processes."""

    pids: dict[str, int]
    every: float = 0.02
    baseline: dict[str, Usage] = field(default_factory=dict)
    peaks: dict[str, Usage] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        self.baseline = {name: usage(pid) for name, pid in self.pids.items()}
        self.peaks = dict(self.baseline)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            try:
                now = usage(pid)
            except OSError:
                continue  # exited: the test says so
            peak = self.peaks[name]
            self.peaks[name] = Usage(max(peak.rss_kib, now.rss_kib), max(peak.fds, now.fds))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)
        self.sample()

    def growth_kib(self, name: str) -> int:
        return self.peaks[name].rss_kib - self.baseline[name].rss_kib

    def check_peak(self, label: str, name: str, max_growth_kib: int) -> None:
        grown = self.growth_kib(name)
        print(
            f"{label}: {name} RSS {self.baseline[name].rss_kib / 1024:.1f} MiB at rest, peak "
            f"{self.peaks[name].rss_kib / 1024:.1f} MiB (+{grown / 1024:.1f}), descriptors "
            f"{self.baseline[name].fds} -> peak {self.peaks[name].fds}"
        )
        assert grown < max_growth_kib, f"{label}: {name} grew {grown / 1024:.1f} MiB"

    def settled(self, label: str, rss_slack_kib: int, fd_slack: int, timeout: float = 20.0) -> None:
        """Wait until every process is back within the slack of its baseline; fail if not."""
        deadline = time.monotonic() + timeout
        while True:
            now = {name: usage(pid) for name, pid in self.pids.items()}
            over = {
                name: u
                for name, u in now.items()
                if u.rss_kib > self.baseline[name].rss_kib + rss_slack_kib
                or u.fds > self.baseline[name].fds + fd_slack
            }
            if not over:
                for name, u in now.items():
                    print(f"{label}: {name} back to {u.rss_kib / 1024:.1f} MiB, {u.fds} fds")
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{label}: not back near the baseline after {timeout:.0f}s: "
                    + "; ".join(
                        f"{name} {u.rss_kib / 1024:.1f} MiB / {u.fds} fds (baseline "
                        f"{self.baseline[name].rss_kib / 1024:.1f} MiB / {self.baseline[name].fds})"
                        for name, u in over.items()
                    )
                )
            time.sleep(0.2)

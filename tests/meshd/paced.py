"""Known load for traffic tests: requests at a fixed rate over one kept-alive connection.

``Paced`` sends GET / to a local port (a meshd upstream listener) on a
schedule of ``rate`` per second from its start, in a thread, and records when
each answer came back (monotonic clock), so a test can count what it sent in
any window. A late answer does not make it send a burst to catch up: the
schedule moves on from now.
"""

from __future__ import annotations

import http.client
import threading
import time
from bisect import bisect_left


class Paced:
    """GET / to 127.0.0.1:``port`` at ``rate`` per second until stopped."""

    def __init__(self, port: int, rate: float, path: str = "/") -> None:
        self.port, self.rate, self.path = port, rate, path
        self.ok: list[float] = []  # monotonic times of 2xx answers, in order
        self.failed = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"paced-{port}", daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        next_at = time.monotonic()
        try:
            while not self.stopping.wait(max(0.0, next_at - time.monotonic())):
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                if 200 <= response.status < 300:
                    self.ok.append(time.monotonic())
                else:
                    self.failed += 1
                next_at = max(next_at + 1 / self.rate, time.monotonic() - 1 / self.rate)
        except OSError:
            self.failed += 1  # the test sees it: its counts fall short
        finally:
            conn.close()

    def between(self, start: float, end: float) -> int:
        """Answers that came back in [start, end) (monotonic times)."""
        return bisect_left(self.ok, end) - bisect_left(self.ok, start)

    def start(self) -> Paced:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)

    def __enter__(self) -> Paced:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Processes the bench starts: start/stop by PID with optional CPU pinning (Processes),
free ports, finding executables, readiness checks (wait_port, probe) and the proxies'
CPU and RSS sampling (Usage)."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from common import (
    LOADGEN_CPU,
    LOCAL,
    READY_TIMEOUT,
    SMALL_BODY,
    SMALL_PATH,
    STOP_TIMEOUT,
    ChainError,
)

# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


class Processes:
    """Every long-running process the bench started, stopped by PID."""

    def __init__(self, workdir: Path, pin: bool) -> None:
        self.workdir = workdir
        self.pin = pin
        self.running: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], cpu: str) -> Proc:
        log = self.workdir / f"{name}.log"
        full = ["taskset", "-c", cpu, *argv] if self.pin else list(argv)
        with log.open("wb") as out:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them ourselves
            )
        proc = Proc(name, popen, log)
        self.running.append(proc)
        return proc

    def stop(self, procs: Sequence[Proc]) -> None:
        for p in procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in procs:
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.kill()
                p.popen.wait()
            if p in self.running:
                self.running.remove(p)

    def stop_all(self) -> None:
        self.stop(list(reversed(self.running)))


def loadgen_argv(argv: Sequence[str], pin: bool) -> list[str]:
    return ["taskset", "-c", LOADGEN_CPU, *argv] if pin else list(argv)


class Ports:
    """Free TCP ports on 127.0.0.1, never the same one twice in a run."""

    def __init__(self) -> None:
        self.used: set[int] = set()

    def take(self) -> int:
        while True:
            with socket.socket() as s:
                s.bind((LOCAL, 0))
                port = int(s.getsockname()[1])
            if port not in self.used:
                self.used.add(port)
                return port


def wait_port(port: int, procs: Sequence[Proc], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            if p.popen.poll() is not None:
                raise ChainError(f"{p.name} exited with code {p.popen.returncode}: {p.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((LOCAL, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            tails = "; ".join(f"{p.name}: {p.log_tail(3)}" for p in procs)
            raise ChainError(f"port {port} not accepting after {timeout:.0f}s ({tails})")
        time.sleep(0.1)


def http_get(port: int, path: str = SMALL_PATH, timeout: float = 5.0) -> tuple[int, int]:
    """One GET with Connection: close; (status, body bytes)."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection((LOCAL, port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not match:
        raise ChainError(f"not an HTTP response: {data[:80]!r}")
    return int(match.group(1)), len(body)


def probe(port: int, procs: Sequence[Proc], timeout: float = 15.0) -> None:
    """Retry one request through the chain until it returns the backend's 200."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for p in procs:
            if p.popen.poll() is not None:
                raise ChainError(f"{p.name} exited with code {p.popen.returncode}: {p.log_tail()}")
        try:
            status, size = http_get(port)
        except (OSError, ChainError) as e:
            last = str(e) or type(e).__name__
        else:
            if status == 200 and size == SMALL_BODY:
                return
            last = f"status {status}, {size} bytes"
        time.sleep(0.2)
    tails = "; ".join(f"{p.name}: {p.log_tail(3)}" for p in procs)
    raise ChainError(f"no 200 through the chain after {timeout:.0f}s ({last}) ({tails})")


# ---------------------------------------------------------------- resource use


def _tree(procs: Sequence[psutil.Process]) -> list[psutil.Process]:
    out: list[psutil.Process] = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out.append(p)
            out.extend(p.children(recursive=True))
    return out


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for p in _tree(procs):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def rss_bytes(procs: Sequence[psutil.Process]) -> int:
    total = 0
    for p in _tree(procs):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


class Usage:
    """Proxy CPU seconds (user+sys) over a block, and the peak summed RSS, sampled."""

    INTERVAL = 0.05

    def __init__(self, procs: Sequence[Proc]) -> None:
        self.procs = [psutil.Process(p.popen.pid) for p in procs]
        self.cpu = 0.0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._cpu0 = 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, rss_bytes(self.procs))
            self._stop.wait(self.INTERVAL)

    def __enter__(self) -> Usage:
        self._cpu0 = cpu_seconds(self.procs)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, rss_bytes(self.procs))
        self.cpu = cpu_seconds(self.procs) - self._cpu0


def find_binary(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )
    if not found:
        raise ChainError(f"{name} not found: run `sudo sh bench/setup.sh`")
    return found

"""Load generators: wrk, h2load and curl runners, and the parsers of their output
(parse_wrk, parse_h2load, percentile) into a Load."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import LOCAL, MIB, SMALL_PATH, LoadError, Settings
from procs import loadgen_argv

# ---------------------------------------------------------------- load generators


@dataclass
class Load:
    throughput: float  # req/s, or MiB/s for bulk
    units: float  # requests completed, or MiB moved
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    note: str = ""


_WRK_TIME = re.compile(r"([\d.]+)(us|ms|s|m)\b")
_WRK_SCALE = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _wrk_ms(text: str) -> float:
    match = _WRK_TIME.fullmatch(text.strip())
    if not match:
        raise LoadError(f"wrk latency {text!r}")
    return float(match.group(1)) * _WRK_SCALE[match.group(2)]


def parse_wrk(out: str) -> Load:
    """Requests/sec, the 50% and 99% latency lines of --latency, and errors."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and total and p50 and p99):
        raise LoadError(f"cannot read wrk output: {out.strip()[-300:]!r}")
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return Load(
        throughput=float(rps.group(1)),
        units=float(total.group(1)),
        p50_ms=_wrk_ms(p50.group(1)),
        p99_ms=_wrk_ms(p99.group(1)),
        errors=errors,
    )


def run_wrk(port: int, s: Settings, seconds: int, close: bool) -> Load:
    argv = ["wrk", "-t1", f"-c{s.connections}", f"-d{seconds}s", "--timeout", "5s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{LOCAL}:{port}{SMALL_PATH}")
    return parse_wrk(_run(loadgen_argv(argv, s.pin), seconds + 30))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted ``values``."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def parse_h2load(out: str, log: str, seconds: float) -> Load:
    """Latencies from h2load's --log-file (start us, status, duration us per request)."""
    latencies: list[float] = []
    failed = 0
    for line in log.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        if not parts[1].startswith("2"):
            failed += 1
        latencies.append(int(parts[2]) / 1000.0)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    if not latencies or not counts:
        raise LoadError(f"cannot read h2load output: {out.strip()[-300:]!r}")
    done = int(counts.group(3))
    errors = max(failed, int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7)))
    return Load(
        throughput=done / seconds,
        units=float(done),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        errors=errors,
    )


def run_h2load(port: int, s: Settings, seconds: int, workdir: Path) -> Load:
    log = workdir / "h2load.log"
    log.unlink(missing_ok=True)
    per_client = max(1, s.rate // s.rate_clients)
    argv = [
        "h2load", "--h1", "-c", str(s.rate_clients), "--rps", str(per_client),
        "-D", str(seconds), "--log-file", str(log), f"http://{LOCAL}:{port}{SMALL_PATH}",
    ]  # fmt: skip
    out = _run(loadgen_argv(argv, s.pin), seconds + 30)
    text = log.read_text() if log.exists() else ""
    return parse_h2load(out, text, seconds)


def run_bulk(port: int, s: Settings) -> Load:
    argv = [
        "curl", "-sS", "-o", "/dev/null", "--max-time", "600",
        "-w", "%{http_code} %{size_download} %{time_total}",
        f"http://{LOCAL}:{port}/bulk",
    ]  # fmt: skip
    out = _run(loadgen_argv(argv, s.pin), 620).split()
    if len(out) != 3:
        raise LoadError(f"curl printed {out!r}")
    status, size, seconds = int(out[0]), int(out[1]), float(out[2])
    if status != 200 or size != s.bulk_bytes:
        raise LoadError(f"bulk: status {status}, {size} of {s.bulk_bytes} bytes")
    mib = size / MIB
    return Load(throughput=mib / seconds, units=mib, p50_ms=None, p99_ms=None, errors=0)


def _run(argv: Sequence[str], timeout: float) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise LoadError(f"{argv[0] if argv[0] != 'taskset' else argv[3]} timed out") from e
    if done.returncode != 0:
        raise LoadError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout

"""HTTP/1.1 load from a testbed host: keep-alive connections, every failure counted by kind.

One file, python3's standard library only: the end-to-end tests upload it to a
host (which has python3 but no pip) and run it there, so the load passes
through that host's iptables and meshd like an app's own traffic.

    python3 loadgen.py --url http://api.mesh:8081/healthz --connections 16 \
        --duration 60 [--rate 500] [--timeout 5] [--output /tmp/load.json] \
        [--rotate] [--log-requests]

Each connection sends one request at a time and keeps the connection open
(HTTP/1.1 keep-alive); a connection that failed is replaced by a new one. With
``--rate`` the requests are paced to that total rate (shared by the
connections), else they go as fast as the answers come. Several ``--url``
are spread over the connections (connection i keeps URL i mod n); with
``--rotate`` every connection takes them in turn instead (starting at its own
one), so each URL gets its exact share of the requests whatever their
latencies: a mix of paths, statuses and delays at a known proportion (the
URLs must then share one host and port). At the end one JSON summary is
printed (and written to ``--output``, atomically): requests, ok, failures by
kind, latencies, statuses, a per-second timeline and the first failures in
detail. ``--log-requests`` adds ``log``: one ``[end, latency_ms, status,
url]`` per request (``end`` in epoch seconds, comparable with other
processes' clocks; ``status`` 0 when no answer came; ``url`` the index of its
``--url``), the first MAX_LOGGED of them, so a caller can compute any window's
rate, success and percentiles itself.

Failure kinds (a request counts once, under the first that applies):
``connect_refused``, ``connect_failed`` (any other connect error, its timeout
included), ``reset`` (ECONNRESET or EPIPE while sending or reading), ``closed``
(the peer closed the connection before the first byte of the answer: the app
would see its keep-alive connection die under it), ``short_read`` (closed in
the middle of an answer), ``timeout`` (no whole answer within ``--timeout``),
``bad_response`` (not HTTP/1.x), ``non_2xx``. A clean ``Connection: close``
after a whole answer is not a failure: the next request opens a new
connection (counted in ``connects``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.parse
from array import array
from dataclasses import dataclass, field

KINDS = (
    "connect_refused",
    "connect_failed",
    "reset",
    "closed",
    "short_read",
    "timeout",
    "bad_response",
    "non_2xx",
)
MAX_HEAD = 64 * 1024
DETAILS_KEPT = 20
MAX_LOGGED = 500_000  # requests in ``log``: a bound on memory and on the summary's size
AFTER_FAILURE = 0.01  # seconds: a peer that is down is not hammered in a tight loop


class Failure(Exception):
    """A request failed; ``kind`` is one of KINDS."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    request: bytes  # the whole request, sent as is on every round

    @classmethod
    def of(cls, url: str, method: str = "GET", body: bytes = b"") -> Target:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url}: only http://HOST[:PORT]/PATH is supported")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshctl-loadgen\r\n"
        if body or method in ("POST", "PUT"):
            head += f"Content-Length: {len(body)}\r\n"
        return cls(parts.hostname, parts.port or 80, (head + "\r\n").encode() + body)


@dataclass
class Tally:
    """What happened, added to by every connection (one event loop: no locks needed)."""

    started: float
    ok: int = 0
    connects: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    statuses: dict[str, int] = field(default_factory=dict)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    timeline: dict[int, list[int]] = field(default_factory=dict)
    details: list[dict[str, object]] = field(default_factory=list)
    log: list[tuple[float, float, int, int]] | None = None  # with --log-requests

    def logged(self, sent: float, now: float, status: int, url: int) -> None:
        """One request in ``log``; ``now`` (monotonic) turned into epoch seconds."""
        if self.log is not None and len(self.log) < MAX_LOGGED:
            end = time.time() - (time.monotonic() - now)
            self.log.append((round(end, 4), round((now - sent) * 1000, 3), status, url))

    def second(self, now: float) -> list[int]:
        return self.timeline.setdefault(int(now - self.started), [0, 0])

    def answered(self, status: int, latency: float, now: float) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if 200 <= status < 300:
            self.ok += 1
            self.latencies.append(latency)
            self.second(now)[0] += 1
        else:
            self.failed(Failure("non_2xx", f"status {status}"), now)

    def failed(self, failure: Failure, now: float) -> None:
        self.failures[failure.kind] += 1
        self.second(now)[1] += 1
        if len(self.details) < DETAILS_KEPT:
            at = round(now - self.started, 3)
            self.details.append({"at": at, "kind": failure.kind, "detail": failure.detail})


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-100) of sorted values; 0.0 when there are none."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[min(int(rank), len(ordered)) - 1]


def summary(tally: Tally, seconds: float) -> dict[str, object]:
    """The JSON document printed at the end."""
    ordered = sorted(tally.latencies)
    failed = sum(tally.failures.values())
    requests = tally.ok + failed
    ms = {f"p{q:g}": round(percentile(ordered, q) * 1000, 3) for q in (50, 90, 99, 99.9)}
    ms["max"] = round(ordered[-1] * 1000, 3) if ordered else 0.0
    ms["mean"] = round(sum(ordered) / len(ordered) * 1000, 3) if ordered else 0.0
    last = max(tally.timeline, default=-1)
    extra: dict[str, object] = {} if tally.log is None else {"log": tally.log}
    return {
        "requests": requests,
        "ok": tally.ok,
        "failed": failed,
        "failures": tally.failures,
        "connects": tally.connects,
        "statuses": tally.statuses,
        "seconds": round(seconds, 3),
        "rps": round(requests / seconds, 1) if seconds > 0 else 0.0,
        "latency_ms": ms,
        "timeline": [tally.timeline.get(s, [0, 0]) for s in range(last + 1)],
        "first_failures": tally.details,
        **extra,
    }


# --- the wire ----------------------------------------------------------------


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One response (status, whether the server keeps the connection); raises Failure."""
    head = await _read_head(reader)
    lines = head.decode("latin-1").split("\r\n")
    status = _status(lines[0])
    headers = _headers(lines[1:])
    keep = headers.get("connection", "").lower() != "close" and lines[0].startswith("HTTP/1.1")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        await _read_chunked(reader)
    elif "content-length" in headers:
        await _read_exactly(reader, _length(headers["content-length"]))
    elif status not in (204, 304) and not 100 <= status < 200:
        await reader.read()  # the body runs to the end of the connection
        keep = False
    return status, keep


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        kind = "short_read" if e.partial else "closed"
        raise Failure(kind, f"{len(e.partial)} bytes of the head, then the end") from None
    except asyncio.LimitOverrunError:
        raise Failure("bad_response", f"head over {MAX_HEAD} bytes") from None


def _status(line: str) -> int:
    version, _, rest = line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise Failure("bad_response", f"status line {line[:80]!r}")
    return int(code)


def _headers(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip().lower()] = value.strip()
    return found


def _length(value: str) -> int:
    if not value.isdigit():
        raise Failure("bad_response", f"Content-Length {value[:40]!r}")
    return int(value)


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise Failure("short_read", f"{len(e.partial)} of {n} body bytes") from None


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        line = await _read_line(reader)
        size = line.split(b";")[0].strip()
        try:
            n = int(size, 16)
        except ValueError:
            raise Failure("bad_response", f"chunk size {size[:20]!r}") from None
        if n == 0:
            while await _read_line(reader) != b"\r\n":
                pass  # trailers
            return
        await _read_exactly(reader, n + 2)


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError:
        raise Failure("short_read", "the end inside a chunked body") from None


# --- connections ---------------------------------------------------------------


@dataclass
class Plan:
    targets: list[Target]
    connections: int
    duration: float
    rate: float  # total requests per second; 0: as fast as answers come
    timeout: float
    rotate: bool = False  # each connection takes the targets in turn
    log_requests: bool = False


async def _connect(
    target: Target, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port, limit=MAX_HEAD), timeout
        )
    except ConnectionRefusedError as e:
        raise Failure("connect_refused", str(e)) from None
    except (TimeoutError, OSError) as e:
        raise Failure("connect_failed", f"{type(e).__name__}: {e}") from None


async def _exchange(
    target: Target, streams: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> tuple[int, bool]:
    reader, writer = streams
    try:
        writer.write(target.request)
        await writer.drain()
        return await read_answer(reader)
    except (ConnectionResetError, BrokenPipeError) as e:
        raise Failure("reset", f"{type(e).__name__}: {e}") from None


class Connection:
    """One client connection, re-opened after a failure or a ``Connection: close``.

    It sends to target ``first`` of the plan's, or to each in turn from there
    (``plan.rotate``: the targets then share host and port)."""

    def __init__(self, first: int, plan: Plan, tally: Tally) -> None:
        self.index, self.plan, self.tally = first % len(plan.targets), plan, tally
        self.target = plan.targets[self.index]
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def run(self, start: float, every: float, end: float) -> None:
        due = start
        while (now := time.monotonic()) < end:
            if every and due > now:
                await asyncio.sleep(min(due - now, end - now))
                continue
            await self.one()
            if self.plan.rotate:
                self.index = (self.index + 1) % len(self.plan.targets)
                self.target = self.plan.targets[self.index]
            due = max(due + every, time.monotonic() - 1.0) if every else due
        self.close()

    async def one(self) -> None:
        sent = time.monotonic()  # the latency includes a connect: the app would wait for it
        try:
            streams = await self._streams()
            status, keep = await asyncio.wait_for(
                _exchange(self.target, streams), self.plan.timeout
            )
        except (TimeoutError, Failure) as e:
            failure = e if isinstance(e, Failure) else Failure("timeout", f"{self.plan.timeout}s")
            now = time.monotonic()
            self.tally.failed(failure, now)
            self.tally.logged(sent, now, 0, self.index)
            self.close()
            await asyncio.sleep(AFTER_FAILURE)
            return
        now = time.monotonic()
        self.tally.answered(status, now - sent, now)
        self.tally.logged(sent, now, status, self.index)
        if not keep:
            self.close()

    async def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.streams is None:  # its own timeout: a slow connect is connect_failed
            self.streams = await _connect(self.target, self.plan.timeout)
            self.tally.connects += 1
        return self.streams

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].transport.abort()
            self.streams = None


async def run(plan: Plan) -> dict[str, object]:
    start = time.monotonic()
    tally = Tally(started=start, log=[] if plan.log_requests else None)
    end = start + plan.duration
    every = plan.connections / plan.rate if plan.rate else 0.0
    conns = [Connection(i, plan, tally) for i in range(plan.connections)]
    offsets = [every * i / plan.connections for i in range(plan.connections)]
    await asyncio.gather(
        *(c.run(start + o, every, end) for c, o in zip(conns, offsets, strict=True))
    )
    return summary(tally, time.monotonic() - start)


def parse_args(argv: list[str]) -> tuple[Plan, str | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", action="append", required=True, help="repeat: spread connections")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    p.add_argument("--rate", type=float, default=0.0, help="requests/s in total; 0: max")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    p.add_argument("--method", default="GET")
    p.add_argument("--body", default="", help="request body (POST, PUT)")
    p.add_argument("--output", help="also write the summary to this file")
    p.add_argument("--rotate", action="store_true", help="each connection takes every URL")
    p.add_argument("--log-requests", action="store_true", help="add each request to the summary")
    a = p.parse_args(argv)
    targets = [Target.of(u, a.method, a.body.encode()) for u in a.url]
    if a.rotate and len({(t.host, t.port) for t in targets}) > 1:
        p.error("--rotate takes URLs of one host and port (a connection goes to one)")
    plan = Plan(targets, a.connections, a.duration, a.rate, a.timeout, a.rotate, a.log_requests)
    return plan, a.output


def main(argv: list[str]) -> int:
    plan, output = parse_args(argv)
    text = json.dumps(asyncio.run(run(plan)), sort_keys=True)
    if output:
        with open(output + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(output + ".tmp", output)  # a reader never sees half a summary
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

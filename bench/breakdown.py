#!/usr/bin/env python3
"""Where a chain's proxy CPU goes: kernel, TLS, interpreter, event loop, ... per request.

    .venv/bin/python bench/breakdown.py                       # meshd and haproxy-tcp, keep-alive
    .venv/bin/python bench/breakdown.py --chains meshd,envoy --scenario close --seconds 8
    .venv/bin/python bench/breakdown.py --scenario bulk --json

A companion to run.py, not a replacement: run.py says how fast, this says why.
For each chain it starts the same processes as run.py (same configs, same
pinning), warms up, then runs one load (wrk for keepalive/close, curl for
bulk) while ``perf record`` samples the proxy processes. The proxies' CPU
seconds (psutil, before/after) divided by the requests (or MiB) give the
cost per unit, which is then split by shared object: the kernel, OpenSSL
(libcrypto, libssl, _ssl), the Python interpreter, uvloop, httptools, libc,
and the proxy's own binary. Needs ``perf`` (Debian: linux-perf) and root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from backend import make_pki, start_nginx
from chains import Ctx, chains
from common import LOADGEN_CPU, LOCAL, MIB, SMALL_PATH, ChainError, Settings
from load import parse_wrk
from procs import Ports, Processes, cpu_seconds, loadgen_argv

CATEGORIES = (
    ("kernel", re.compile(r"^\[kernel")),
    ("OpenSSL", re.compile(r"^(libcrypto|libssl|_ssl\.)")),
    ("Python interpreter", re.compile(r"^(libpython|python3)")),
    ("uvloop", re.compile(r"^(loop\.cpython|_asyncio\.)")),
    ("httptools", re.compile(r"^(parser\.cpython|url_parser\.)")),
    ("libc", re.compile(r"^(libc\.|libm\.|ld-linux)")),
    ("proxy binary", re.compile(r"^(haproxy|envoy)$")),
)
_DSO_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")


def categorize(report: str) -> dict[str, float]:
    """Shares (percent) per category from ``perf report --sort dso`` text."""
    shares: dict[str, float] = {}
    for line in report.splitlines():
        match = _DSO_LINE.match(line)
        if not match:
            continue
        share, dso = float(match.group(1)), match.group(2)
        name = next((c for c, pattern in CATEGORIES if pattern.match(dso)), "other")
        shares[name] = shares.get(name, 0.0) + share
    return shares


def run_load(scenario: str, port: int, seconds: int, pin: bool) -> float:
    """Run one load against the chain; return the units done (requests, or MiB for bulk)."""
    if scenario == "bulk":
        argv = [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            f"http://{LOCAL}:{port}/bulk",
        ]
    else:
        close = ["-H", "Connection: close"] if scenario == "close" else []
        argv = ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", *close]
        argv.append(f"http://{LOCAL}:{port}{SMALL_PATH}")
    out = subprocess.run(loadgen_argv(argv, pin), capture_output=True, text=True, check=True).stdout
    return int(out) / MIB if scenario == "bulk" else parse_wrk(out).units


def profile_chain(name: str, scenario: str, seconds: int, settings: Settings) -> dict[str, object]:
    chain = next(c for c in chains() if c.name == name)
    with tempfile.TemporaryDirectory(prefix="meshd-breakdown-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir, settings.pin)
        try:
            ports = Ports()
            backend, _ = start_nginx(procs, ports, settings)
            running = chain.start(Ctx(procs, ports, make_pki(workdir), backend))
            pids = [p.popen.pid for p in running.procs]
            run_load(scenario, running.port, 2, settings.pin)  # warm-up: links, caches
            data = workdir / "perf.data"
            perf = subprocess.Popen(
                ["perf", "record", "-F", "999", "-o", str(data), "-p", ",".join(map(str, pids))],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)  # perf attaches
            watched = [psutil.Process(p) for p in pids]
            before = cpu_seconds(watched)
            units = run_load(scenario, running.port, seconds, settings.pin)
            cpu = cpu_seconds(watched) - before
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
            report = subprocess.run(
                ["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "-g", "none"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            procs.stop_all()
    per_unit = cpu / units * (1e3 if scenario == "bulk" else 1e6)
    shares = categorize(report)
    return {
        "chain": name,
        "scenario": scenario,
        "units": units,
        "unit": "MiB" if scenario == "bulk" else "requests",
        "cpu_seconds": cpu,
        "cost": per_unit,
        "cost_unit": "ms/MiB" if scenario == "bulk" else "us/req",
        "shares": shares,
    }


def to_markdown(results: Sequence[dict[str, object]]) -> str:
    names = [c for c, _ in CATEGORIES] + ["other"]
    cost_unit = str(results[0]["cost_unit"])
    head = "| category | " + " | ".join(str(r["chain"]) for r in results) + " |"
    rule = "|---|" + "--:|" * len(results)
    rows = [head, rule]
    total = "| **total** | " + " | ".join(f"**{r['cost']:.2f}**" for r in results) + " |"
    for name in names:
        cells = []
        for r in results:
            shares = r["shares"]
            assert isinstance(shares, dict)
            share = shares.get(name, 0.0)
            cost = float(r["cost"])  # type: ignore[arg-type]
            cells.append(f"{cost * share / 100:.2f} ({share:.0f}%)" if share else "—")
        if any(c != "—" for c in cells):
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows.append(total)
    scenario = results[0]["scenario"]
    return f"Proxy CPU in {cost_unit}, scenario {scenario}, split by perf samples:\n\n" + "\n".join(
        rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--chains", default="meshd,haproxy-tcp")
    parser.add_argument("--scenario", choices=("keepalive", "close", "bulk"), default="keepalive")
    parser.add_argument("--seconds", type=int, default=5, help="length of the wrk run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("perf") is None:
        print("breakdown.py: perf not found (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 2
    cpus = os.cpu_count() or 1
    settings = Settings.make(True, pin=not args.no_pin and cpus >= 2)
    if settings.pin:
        os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    known = {c.name for c in chains()} - {"direct"}
    wanted = [c for c in args.chains.split(",") if c]
    if unknown := set(wanted) - known:
        parser.error(f"unknown chains {sorted(unknown)}; known: {sorted(known)}")
    results = []
    for name in wanted:
        print(f"profiling {name} ({args.scenario})", file=sys.stderr, flush=True)
        try:
            results.append(profile_chain(name, args.scenario, args.seconds, settings))
        except (ChainError, subprocess.CalledProcessError) as e:
            print(f"{name}: {e}", file=sys.stderr)
    if not results:
        return 1
    print(json.dumps(results, indent=2) if args.json else to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

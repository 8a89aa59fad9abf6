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
    python-floor  the same with bench/floor.py as A and B: meshd's link design, no features

See bench/README.md for what is measured and how to read the ratios. The
script starts every process itself, with generated configs in a temporary
directory, and stops each by its PID when it ends (also on Ctrl-C and errors).

This file is the entry point (arguments, main); the rest lives beside it, imported
as sibling modules: common.py (constants, errors, Settings), procs.py (processes,
ports, CPU/RSS sampling), load.py (wrk/h2load/curl and their parsers), backend.py
(PKI, nginx), chains.py (the chains and their configs), measure.py (rounds and
samples), report.py (header, ratios, markdown and JSON), floor.py (the Python floor).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from chains import chains
from common import LOADGEN_CPU, ChainError, Settings
from measure import run_all
from report import header, to_json, to_markdown

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

"""Running the benchmark: every round of every scenario on every chain (run_all), one
measured run (measure -> Sample), idle RSS, and the collected Results."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from backend import make_pki, start_nginx
from chains import Chain, Ctx, Running, chains
from common import MIB, SCENARIOS, ChainError, LoadError, Settings
from load import run_bulk, run_h2load, run_wrk
from procs import Ports, Processes, Usage, probe, rss_bytes

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
        run = _Run(ctx, s, results, log)
        for round_no in range(1, s.rounds + 1):
            run.round(selected, round_no)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


@dataclass
class _Run:
    """What every round of one run shares."""

    ctx: Ctx
    s: Settings
    results: Results
    log: Callable[[str], None]

    def round(self, selected: Sequence[Chain], round_no: int) -> None:
        """Start every chain afresh, then measure scenario by scenario, chains back to back.

        The figures that a ratio compares are taken seconds apart, not minutes:
        drift in the machine's speed hits both alike. The chain order rotates
        each round.
        """
        running: dict[str, Running] = {}
        try:
            for chain in selected:
                started = self._start(chain, round_no)
                if started is not None:
                    running[chain.name] = started
            names = list(running)
            shift = (round_no - 1) % max(1, len(names))
            by_name = {c.name: c for c in selected}
            for scenario in SCENARIOS:
                for name in names[shift:] + names[:shift]:
                    if scenario in by_name[name].scenarios and name not in self.results.failed:
                        self.log(f"round {round_no}/{self.s.rounds}: {scenario} {name}")
                        self._measure(scenario, name, running[name], round_no)
        finally:
            for started in running.values():
                self.ctx.procs.stop(started.procs)

    def _start(self, chain: Chain, round_no: int) -> Running | None:
        if chain.name in self.results.failed:
            return None
        try:
            running = chain.start(self.ctx)
            probe(running.port, running.procs)
        except (ChainError, OSError) as e:
            self.results.failed[chain.name] = str(e)
            self.log(f"    {chain.name} failed: {e}")
            return None
        if round_no == 1 and running.procs:
            self.results.idle[chain.name] = idle_rss(running)
        return running

    def _measure(self, scenario: str, name: str, running: Running, round_no: int) -> None:
        cell = self.results.cells[scenario][name]
        try:
            cell.samples.append(
                measure(scenario, running, self.s, self.ctx.procs.workdir, self.log)
            )
        except LoadError as e:
            cell.errors.append(f"round {round_no}: {e}")
            self.log(f"    {scenario} failed: {e}")
        dead = [p for p in running.procs if p.popen.poll() is not None]
        if dead:
            why = f"{dead[0].name} died during {scenario}: {dead[0].log_tail()}"
            self.results.failed[name] = why
            self.log(f"    {why}")

"""The report: run header (machine, versions, method), meshd's ratios to the best
HAProxy/Envoy baseline, and the markdown and JSON renderings."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import ssl
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
from chains import envoy_binary
from common import (
    LOADGEN_CPU,
    MIB,
    PROXY_CPU,
    SCENARIOS,
    SMALL_BODY,
    ChainError,
    Settings,
    scenario_title,
)
from measure import Cell, Results
from procs import find_binary

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
            "Each round starts every chain afresh and checks one request returns the "
            "backend's 200; then each scenario runs on the chains back to back (the order "
            "rotates each round), so the figures a ratio compares are seconds apart.",
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
        return find_binary(name)
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


FLOOR = "python-floor"  # bench/floor.py: what meshd's architecture costs in Python without features


def ratios(results: Results, subject: str = "meshd") -> dict[str, dict[str, Any]]:
    """``subject`` / the best chain of each other family, per scenario and metric."""
    out: dict[str, dict[str, Any]] = {}
    if not any(c.name == subject for c in results.chains):
        return out
    for scenario in SCENARIOS:
        mine = results.cells[scenario][subject]
        row: dict[str, Any] = {}
        for family in ("haproxy", "envoy", FLOOR):
            if family == subject:
                continue
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


POLICY = "meshd-policy"  # meshd with bench/policy.py's policy in force on B
# the issue's acceptance: (scenario, metric) -> (bound on meshd-policy / meshd, which side)
POLICY_BOUNDS = {
    ("keepalive", "cpu_per_unit"): (1.15, "max", "keep-alive CPU per request"),
    ("close", "throughput"): (1 / 1.10, "min", "new connections/s"),
}


def policy_ratios(results: Results) -> dict[str, dict[str, float | None]]:
    """meshd-policy / meshd per scenario and metric, same run: what enforcing the policy costs."""
    names = {c.name for c in results.chains}
    if not {"meshd", POLICY} <= names:
        return {}
    out: dict[str, dict[str, float | None]] = {}
    for scenario in SCENARIOS:
        mine, base = results.cells[scenario][POLICY], results.cells[scenario]["meshd"]
        row: dict[str, float | None] = {}
        for attr, _label in RATIO_METRICS:
            a, b = _cell_value(mine, attr), _cell_value(base, attr)
            row[attr] = a / b if a is not None and b else None
        out[scenario] = row
    return out


def policy_verdicts(table: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    """Each acceptance bound with its ratio and whether it is met (None: not measured)."""
    out = []
    for (scenario, attr), (bound, side, what) in POLICY_BOUNDS.items():
        ratio = table.get(scenario, {}).get(attr)
        met = None if ratio is None else (ratio <= bound if side == "max" else ratio >= bound)
        out.append({"what": what, "scenario": scenario, "metric": attr, "ratio": ratio,
                    "bound": bound, "side": side, "met": met})  # fmt: skip
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
        "ratios_python_floor": ratios(results, FLOOR),
        "ratios_meshd_policy": policy_ratios(results),
        "policy_bounds": policy_verdicts(policy_ratios(results)),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


RATIO_TITLES = {
    "meshd": "## meshd vs HAProxy, Envoy and the Python floor (same run)",
    FLOOR: "## The Python floor (bench/floor.py) vs HAProxy and Envoy (same run)",
}


def _ratio_lines(results: Results, subject: str = "meshd") -> list[str]:
    s = results.settings
    table = ratios(results, subject)
    lines = [RATIO_TITLES[subject], ""]
    ran = any(c.name == subject for c in results.chains) and any(
        results.cells[x][subject].samples for x in SCENARIOS
    )
    if not table or not ran:
        return [*lines, f"{subject} did not run, so there are no ratios.", ""]
    lines += [
        f"Ratio = {subject} / baseline. Throughput: >1 is better for {subject}; p99, CPU per "
        f"request/MiB and peak RSS: <1 is better for {subject}. Baseline = the best HAProxy "
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


def _policy_lines(results: Results) -> list[str]:
    table = policy_ratios(results)
    if not table:
        return []
    lines = [
        "## meshd with a policy vs meshd without (same run)",
        "",
        f"Ratio = {POLICY} / meshd: B enforces bench/policy.py's policy (mTLS strict, "
        "authz default deny, 205 rules over 50 services; every request to web is judged "
        "by L7 rules and takes a rate-limit token).",
        "",
        "| scenario | throughput x | p99 x | CPU/unit x | peak RSS x |",
        "|---|--:|--:|--:|--:|",
    ]
    for scenario, row in table.items():
        short = scenario_title(scenario, results.settings).split(" ", 1)[0]
        cells = "".join(f"| {_fmt(row[a], '.3f')} " for a, _ in RATIO_METRICS)
        lines.append(f"| {short} {cells}|")
    lines.append("")
    for v in policy_verdicts(table):
        sign = "<=" if v["side"] == "max" else ">="
        verdict = {True: "**met**", False: "**missed**", None: "not measured"}[v["met"]]
        lines.append(
            f"- {v['what']} ({v['scenario']}): {_fmt(v['ratio'], '.3f')}x, "
            f"bound {sign} {v['bound']:.3f}x: {verdict}"
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
    lines += _policy_lines(results)
    if any(c.name == FLOOR for c in results.chains):
        lines += _ratio_lines(results, FLOOR)
    if results.idle:
        lines += ["## Idle RSS (just started, after one request, no traffic)", ""]
        lines += ["| chain | process | RSS MiB |", "|---|---|--:|"]
        for chain_name, procs in results.idle.items():
            for name, mib in procs.items():
                lines.append(f"| {chain_name} | {name} | {mib:.1f} |")
            lines.append(f"| {chain_name} | **both** | **{sum(procs.values()):.1f}** |")
        lines.append("")
    return "\n".join(lines)

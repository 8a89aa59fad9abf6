"""``meshctl top`` against 30 real meshd processes on loopback, one of them killed.

The fleet (``tests.meshctl.meshdfleet``): 30 ``meshd run`` processes, joined
hosts of one workspace, each admin API on its own 127.0.0.x at the
workspace's admin port; web, api and db served by three of them and called
through three others at a known pace, the rest idle. ``meshctl top --json``
runs as a user runs it (a process, its stdout a pipe); its CPU is read from
/proc/PID/stat. The stand-in test of test_top_live.py stays: it is faster
and covers hosts that hang rather than die.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import subprocess
import time
from pathlib import Path
from statistics import median
from typing import Any

import pytest

from tests.meshctl.cli.test_top_live import MESHCTL, lines_of, next_doc, reap
from tests.meshctl.meshdfleet import SERVICES, meshd_fleet, rss_mib
from tests.meshd.paced import Paced

RATE = 10.0  # requests per second through each client host
RSS_MIB = 128  # a meshd here holds about 35 MiB: far more is a leak


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reachable(doc: dict[str, Any]) -> dict[str, bool]:
    return {h["host"]: h["reachable"] for h in doc["hosts"]}


def test_top_of_thirty_meshd_marks_the_killed_one_under_a_fifth_of_a_core(
    tmp_path: Path,
) -> None:
    with meshd_fleet(tmp_path) as fleet:
        loads = [Paced(port, RATE).start() for port in fleet.upstreams.values()]
        command = [str(MESHCTL), "--workspace", str(fleet.mesh.ws.root), "top", "--json"]
        top = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert top.stdout is not None and top.stderr is not None
            lines = lines_of(top.stdout)
            first = next_doc(lines, timeout=30.0)  # meshctl's start, on a busy machine
            for _ in range(5):  # a first answer may be slow: a new TLS session to each host
                if all(reachable(first).values()):
                    break
                first = next_doc(lines)
            used, started = cpu_seconds(top.pid), time.monotonic()
            refreshes = [next_doc(lines) for _ in range(8)]
            victim = fleet.meshds["h30"]
            victim.proc.kill()
            victim.proc.wait()
            after = [next_doc(lines), next_doc(lines)]
            share = (cpu_seconds(top.pid) - used) / (time.monotonic() - started)
            print(f"meshctl top --json, 30 meshd: {share:.1%} of a core")
            rss = rss_mib(list(fleet.meshds.values()))  # the 29 left, after their traffic
            print(f"meshd: {sum(rss):.0f} MiB resident in all, {max(rss):.1f} MiB the largest")
            top.send_signal(signal.SIGINT)
            assert top.wait(timeout=10) == 0
            assert top.stderr.read() == ""
        finally:
            for load in loads:
                load.stop()
            reap(top)
    hosts = list(fleet.meshds)
    assert all(reachable(d) == dict.fromkeys(hosts, True) for d in [first, *refreshes]), [
        {h: e for h, e in reachable(d).items() if not e} for d in refreshes
    ]
    times = [dt.datetime.fromisoformat(d["time"]) for d in [first, *refreshes]]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert median(gaps) == pytest.approx(1.0, abs=0.1) and max(gaps) < 2.0, gaps
    for doc in refreshes:
        services = {s["service"]: s for s in doc["services"]}
        assert sorted(services) == sorted(SERVICES)
        for service, host in fleet.servers.items():
            assert services[service]["hosts"] == [host]
            assert services[service]["rps"] > 0 and services[service]["success"] == 1.0
        edges = {(e["source"], e["destination"]): e["rps"] for e in doc["edges"]}
        assert sorted(edges) == sorted((f"host/{h}", s) for s, h in fleet.clients.items())
        assert all(rps > 0 for rps in edges.values()), edges
    assert share < 0.2, f"meshctl top used {share:.0%} of a core"
    assert max(rss) < RSS_MIB, rss
    assert load_failures(loads) == 0
    marked = [reachable(d) for d in after]
    assert marked[-1] == {**dict.fromkeys(hosts, True), "h30": False}, marked
    (gone,) = [h for h in after[-1]["hosts"] if h["host"] == "h30"]
    assert "connection refused" in gone["error"], gone


def load_failures(loads: list[Paced]) -> int:
    return sum(load.failed for load in loads)

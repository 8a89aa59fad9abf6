"""Reading wrk's report, and wrk counting what a misbehaving local server did."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e import wrk
from tests.e2e.test_loadgen import (
    Behaviour,
    error_every_other,
    keep_alive,
    reset_every_third,
    server,
)

RESETS = """Running 1s test @ http://127.0.0.1:38151/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.67ms    2.13ms  16.39ms   86.68%
    Req/Sec     2.88k   443.72     3.68k    72.73%
  3145 requests in 1.10s, 122.85KB read
  Socket errors: connect 0, read 1571, write 0, timeout 0
Requests/sec:   2861.17
Transfer/sec:    111.76KB
"""
ERRORS = """Running 1s test @ http://127.0.0.1:35661/
  1 threads and 4 connections
  20708 requests in 1.10s, 849.35KB read
  Non-2xx or 3xx responses: 10353
Requests/sec:  18825.90
"""
CLEAN = """Running 5s test @ http://api.mesh:8081/healthz
  804 requests in 5.03s, 144.67KB read
Requests/sec:    159.94
"""
LONG = (
    "  1000 requests in 4.00m, 1.00MB read\n  Socket errors: connect 2, read 0, write 1, timeout 3"
)


@pytest.mark.parametrize(
    ("report", "ok", "failed", "seconds"),
    [
        (RESETS, 3145, 1571, 1.1),
        (ERRORS, 20708 - 10353, 10353, 1.1),
        (CLEAN, 804, 0, 5.03),
        (LONG, 1000, 6, 240.0),
    ],
)
def test_parse_reads_answers_and_failures(
    report: str, ok: int, failed: int, seconds: float
) -> None:
    summary = wrk.parse(report)
    assert (summary["ok"], summary["failed"], summary["requests"]) == (ok, failed, ok + failed)
    assert summary["seconds"] == pytest.approx(seconds)


def test_uploads_are_wrk_and_luajit() -> None:
    ldd = (
        "\tlinux-vdso.so.1 (0x00007f)\n"
        "\tlibluajit-5.1.so.2 => /lib/x86_64-linux-gnu/libluajit-5.1.so.2 (0x00007f)\n"
        "\tlibssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x00007f)\n"
    )
    assert wrk.uploads(ldd, Path("/usr/bin/wrk")) == [
        wrk.Upload(Path("/usr/bin/wrk"), "/usr/local/bin/wrk", 0o755),
        wrk.Upload(
            Path("/lib/x86_64-linux-gnu/libluajit-5.1.so.2"),
            "/usr/local/lib/libluajit-5.1.so.2",
            0o644,
        ),
    ]


@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
@pytest.mark.parametrize("behaviour", [keep_alive, reset_every_third, error_every_other])
def test_wrk_counts_what_the_server_did(behaviour: Behaviour) -> None:
    with server(behaviour) as (port, served):
        report = subprocess.run(
            ["wrk", "-t1", "-c4", "-d1s", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    summary, counts = wrk.parse(report), dict(served.counts)
    assert abs(int(summary["ok"]) - counts.pop("ok")) <= 4  # type: ignore[call-overload]
    assert abs(int(summary["failed"]) - sum(counts.values())) <= 4  # type: ignore[call-overload]

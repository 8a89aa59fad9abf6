"""wrk on a testbed host, as a cross-check of loadgen.py: what to copy there, its report read.

The hosts have no wrk and no route to a mirror, but this machine's wrk
(Debian package ``wrk``) runs there once copied with the one library the
host image lacks (``libluajit-5.1.so.2``). wrk counts every failed request
too, though coarser than loadgen.py: a reset, a close before the answer and
a close in the middle of one are all ``read`` errors, 3xx counts as success,
one URL per run, and its report is text (read by `parse`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BINARY = "/usr/local/bin/wrk"
LIBRARY_DIR = "/usr/local/lib"
ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
DONE = re.compile(r"(\d+) requests in ([\d.]+)(m?s|m|h)")
NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Upload:
    source: Path  # on this machine
    target: str  # on the host
    mode: int


def uploads(ldd_output: str, wrk: Path) -> list[Upload]:
    """wrk and the libraries of its ``ldd`` output that a host image lacks (luajit)."""
    found = [Upload(wrk, BINARY, 0o755)]
    for line in ldd_output.splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name.startswith("libluajit"):
            found.append(Upload(Path(rest.split()[0]), f"{LIBRARY_DIR}/{name}", 0o644))
    return found


def local_uploads() -> list[Upload]:
    """What to copy onto a host from this machine (wrk must be installed here)."""
    wrk = shutil.which("wrk")
    assert wrk, "wrk is not installed here: apt-get install wrk"
    ldd = subprocess.run(["ldd", wrk], capture_output=True, text=True, check=True).stdout
    return uploads(ldd, Path(wrk))


def parse(report: str) -> dict[str, object]:
    """wrk's text report as loadgen.py's summary keys (requests, ok, failed, failures)."""
    done = DONE.search(report)
    assert done, f"not a wrk report:\n{report}"
    answered, seconds = int(done.group(1)), float(done.group(2)) * SECONDS[done.group(3)]
    errors = ERRORS.search(report)
    kinds = ("connect", "read", "write", "timeout")
    failures = dict(zip(kinds, map(int, errors.groups()), strict=True)) if errors else {}
    non_2xx = NON_2XX.search(report)
    failures["non_2xx_or_3xx"] = int(non_2xx.group(1)) if non_2xx else 0
    failed = sum(failures.values())
    ok = answered - failures["non_2xx_or_3xx"]  # wrk counts answers, errors apart
    return {
        "requests": ok + failed,
        "ok": ok,
        "failed": failed,
        "failures": failures,
        "seconds": seconds,
    }

"""What crossed the testbed's wire: a tcpdump capture of every packet of its subnets."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def net_filter(subnets: str | Sequence[str]) -> list[str]:
    """tcpdump's filter for everything to and from any of ``subnets`` (IPv4 and IPv6)."""
    nets = [subnets] if isinstance(subnets, str) else list(subnets)
    words: list[str] = []
    for net in nets:
        words += [*(["or"] if words else []), "net", net]
    return words


@contextmanager
def capture(subnets: str | Sequence[str], pcap: Path) -> Iterator[Path]:
    """Capture everything to and from ``subnets`` on every root-namespace interface.

    Pass the testbed's ``subnets`` (its IPv4 /24 and IPv6 /64): a check that a
    marker never crossed the wire must see IPv6 packets too.
    ``--immediate-mode``: without it libpcap hands packets over in blocks, on a
    timeout, and a capture stopped soon after the traffic can come back empty.
    """
    argv = ["tcpdump", "-i", "any", "--immediate-mode", "-U", "-w", str(pcap), "-s", "0"]
    proc = subprocess.Popen(
        [*argv, *net_filter(subnets)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    proc.stderr.readline()  # "listening on ..." once the capture runs
    try:
        yield pcap
    finally:
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(10)
        proc.stderr.close()

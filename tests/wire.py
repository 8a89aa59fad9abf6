"""What crossed the testbed's wire: a tcpdump capture of every packet of a subnet."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def capture(subnet: str, pcap: Path) -> Iterator[Path]:
    """Capture everything to and from ``subnet`` on every root-namespace interface.

    ``--immediate-mode``: without it libpcap hands packets over in blocks, on a
    timeout, and a capture stopped soon after the traffic can come back empty.
    """
    argv = ["tcpdump", "-i", "any", "--immediate-mode", "-U", "-w", str(pcap), "-s", "0"]
    proc = subprocess.Popen(
        [*argv, "net", subnet],
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

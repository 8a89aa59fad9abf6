"""glibc malloc settings for a relay that moves data in chunks of up to 256 KiB.

Every read from a socket or out of TLS becomes a new bytes object of up to
256 KiB. With glibc's defaults such a chunk is either mmap'd (above the
dynamic mmap threshold) or, once freed at the top of the heap, given back
with brk because it exceeds the 128 KiB trim threshold. Either way the next
chunk lands on fresh pages, which the kernel must zero and fault in: the
profile of a bulk transfer showed a fifth of meshd's CPU in those page
faults and brk calls. Keeping up to ``TRIM_THRESHOLD`` of freed heap and
serving chunks below ``MMAP_THRESHOLD`` from the heap lets them reuse warm
memory; the cost is that much memory kept after a burst, bounded.

Settings the operator made win: a MALLOC_*_ variable keeps its own parameter,
and any glibc.malloc tunable in GLIBC_TUNABLES leaves malloc alone entirely.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger("meshd")

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 16 << 20  # bytes of free heap kept rather than returned to the kernel
TOP_PAD = 4 << 20  # bytes the heap grows by at a time
MMAP_THRESHOLD = 1 << 20  # allocations this large or larger get their own mapping

SETTINGS = {
    "MALLOC_TRIM_THRESHOLD_": (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    "MALLOC_TOP_PAD_": (M_TOP_PAD, TOP_PAD),
    "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
}


def tune() -> list[str]:
    """Apply the settings not already chosen in the environment; return the ones applied."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return []
    name = ctypes.util.find_library("c")
    if name is None:
        return []
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):  # not glibc
        return []
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    applied = []
    for variable, (param, value) in SETTINGS.items():
        if variable in os.environ:
            continue
        if mallopt(param, value) == 1:
            applied.append(variable)
        else:
            log.debug("mallopt(%d, %d) refused", param, value)
    return applied


# The cyclic garbage collector. The relay's objects (streams, protocols, parsers) die by
# reference counting; cycles are rare. With the default gen0 threshold of 700 a busy relay
# ran a collection every few connections, and each full one walked every object that
# imports left behind (tens of thousands). Freezing what exists at startup takes those out
# of every later collection, and a higher gen0 threshold makes young collections rarer.
# (Frozen objects are never examined for cycles again: if one of them later became cyclic
# garbage it would stay. That is at most the startup set, once; reloads make new objects.)
GC_THRESHOLDS = (20_000, 20, 20)


def settle_gc() -> None:
    """Call once the daemon is up: freeze startup objects, then collect young ones less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# Giving memory back. The settings above keep freed heap memory for reuse, and glibc
# returns only the free memory at the top of the heap by itself; after a burst (a flood
# of handshakes, thousands of connections) the free chunks in the middle stay resident.
# malloc_trim(0) hands their whole pages back (madvise), at the cost of a walk of the heap
# (a few ms) and, for a busy relay, of faulting some pages in again. The daemon calls
# ``give_back`` every few seconds: it trims when the heap holds much free memory, at once
# while the process grows fast (a burst going on), otherwise at most every RELAX seconds.
GIVE_BACK_ABOVE = 8 << 20  # bytes of free heap below which a trim is not worth it
BURST = 32 << 20  # bytes of growth since the last trim that make it urgent
RELAX = 10.0  # seconds between trims otherwise


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class Heap:
    """glibc's heap as the daemon sees it: free bytes, resident size, trimming."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        self._info = getattr(libc, "mallinfo2", None)
        self._trim = getattr(libc, "malloc_trim", None)
        if self._info is not None:
            self._info.restype = _MallInfo2
        self.clock = clock
        self.after = self.resident()  # resident bytes after the last trim (or at start)
        self.trimmed_at = clock()
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._info is not None and self._trim is not None

    def free(self) -> int:
        """Bytes malloc holds free (0 when not glibc)."""
        return int(self._info().fordblks) if self._info is not None else 0

    def resident(self) -> int:
        try:
            with open("/proc/self/statm", "rb") as f:  # noqa: PTH123 - a hot, tiny read
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def give_back(self) -> bool:
        """Trim if worth it (see above); True when it trimmed."""
        if not self.available:
            return False
        now = self.clock()
        if not should_trim(self.resident(), self.after, self.free(), now - self.trimmed_at):
            return False
        assert self._trim is not None
        gc.collect()  # what cycles hold (a link and its timers) goes first, then the pages
        self._trim(0)
        self.trims += 1
        self.after, self.trimmed_at = self.resident(), now
        return True


def should_trim(resident: int, after: int, free: int, since: float) -> bool:
    """Much free heap, and either fast growth since the last trim or a while since it."""
    if free < GIVE_BACK_ABOVE:
        return False
    return resident - after >= BURST or since >= RELAX

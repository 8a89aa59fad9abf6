"""meshd's malloc settings: 256 KiB chunks come from a heap that is kept, not from fresh pages."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
from typing import Any

import pytest

from meshd.host import allocator
from meshd.host.allocator import should_trim

PROBE = """
import ctypes, json, sys
from meshd.host import allocator
from meshd.host.allocator import should_trim
applied = allocator.tune() if sys.argv[1] == "tuned" else []

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2()
chunks = [bytes(256 * 1024) for _ in range(16)]
during = libc.mallinfo2()
del chunks
after = libc.mallinfo2()
print(json.dumps({"applied": applied, "mmapped": during.hblks - before.hblks, "heap_after_free": after.arena}))
"""


def probe(mode: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return dict(json.loads(out))


@pytest.fixture(scope="module")
def glibc() -> None:
    if ctypes.util.find_library("c") is None:
        pytest.skip("no libc found")


def test_defaults_map_each_chunk_and_return_the_heap(glibc: None) -> None:
    # the baseline this module exists to change: without it, every chunk is its own mapping
    found = probe("default", env={"PATH": "/usr/bin:/bin"})
    assert found["mmapped"] >= 8


def test_tuned_chunks_come_from_a_heap_that_is_kept(glibc: None) -> None:
    found = probe("tuned", env={"PATH": "/usr/bin:/bin"})
    assert set(found["applied"]) == set(allocator.SETTINGS)
    assert found["mmapped"] == 0
    assert found["heap_after_free"] >= 4 * 1024 * 1024


def test_operator_environment_wins(glibc: None) -> None:
    env = {"PATH": "/usr/bin:/bin", "MALLOC_MMAP_THRESHOLD_": "131072"}
    found = probe("tuned", env=env)
    assert "MALLOC_MMAP_THRESHOLD_" not in found["applied"]
    assert found["mmapped"] >= 8


def test_settle_gc_freezes_startup_objects_and_collects_young_ones_less_often() -> None:
    code = (
        "import gc, json; from meshd.host import allocator; before = gc.get_threshold();"
        " allocator.settle_gc();"
        " print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, frozen = json.loads(out.stdout)
    assert tuple(after) == allocator.GC_THRESHOLDS
    assert after[0] > before[0]
    assert frozen > 1000  # the imported modules' objects, no longer walked by collections


def test_glibc_tunables_for_malloc_leave_it_alone(glibc: None) -> None:
    env = {"PATH": "/usr/bin:/bin", "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}
    found = probe("tuned", env=env)
    assert found["applied"] == []
    assert found["mmapped"] >= 8


MiB = 1 << 20


@pytest.mark.parametrize(
    ("resident", "after", "free", "since", "trim"),
    [
        (40 * MiB, 30 * MiB, 4 * MiB, 60.0, False),  # little free heap: never
        (200 * MiB, 30 * MiB, 4 * MiB, 60.0, False),  # grown, but the memory is in use
        (200 * MiB, 30 * MiB, 150 * MiB, 1.0, True),  # a burst: free heap, fast growth
        (50 * MiB, 45 * MiB, 20 * MiB, 3.0, False),  # trimmed a moment ago, little growth
        (50 * MiB, 45 * MiB, 20 * MiB, 12.0, True),  # a while since: the rest goes back
    ],
)
def test_should_trim(resident: int, after: int, free: int, since: float, trim: bool) -> None:
    assert should_trim(resident, after, free, since) is trim


def test_give_back_returns_freed_heap_to_the_kernel() -> None:
    """In a child process: allocate 256 KiB chunks as a burst does, free them, give back."""
    script = """
from meshd.host import allocator
from meshd.host.allocator import should_trim
allocator.tune()
heap = allocator.Heap(clock=lambda: 1e9)  # long after: no waiting for RELAX
chunks = [bytearray(256 * 1024) for _ in range(600)]  # ~150 MiB, on the heap once tuned
keep = [bytearray(64) for _ in range(50000)]  # small objects after them pin the heap
del chunks
grown = heap.resident()
assert heap.give_back()
print(grown >> 20, heap.resident() >> 20, heap.give_back())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    grown, after, again = int(out[0]), int(out[1]), out[2]
    assert grown - after > 100, f"RSS {grown} MiB -> {after} MiB"
    assert again == "False"  # nothing more to give: no second trim

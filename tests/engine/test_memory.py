from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from locft.engine import memory

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's"
)


def _run_python(code: str, *args: str) -> str:
    """`code`'s standard output from a fresh interpreter (malloc's state is per process)."""
    return subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout


@glibc
def test_freed_heap_holes_go_back_to_the_os() -> None:
    # in a child: the heap is process-wide; in-process this check failed after some other tests
    # (`pytest tests/engine tests/test_benchmark.py`) and passed alone.
    # 64 KiB blocks (below glibc's mmap threshold, so they live in the heap) interleaved with
    # small blocks that stay alive: freeing the big ones leaves holes that free() alone keeps
    child = """
from locft.engine import memory
big, keep = [], []
for _ in range(1500):
    big.append(bytearray(64 * 1024))  # zero-filled: its pages are resident
    keep.append(bytearray(600))  # above pymalloc's 512 bytes: a malloc'd chunk between holes
del big
before = memory.resident_mib()
assert memory.release_freed_memory()
print(before - memory.resident_mib(), len(keep))
"""
    released, kept = _run_python(child).split()
    assert float(released) > 40, (released, kept)  # about 94 MiB were freed into holes
    assert int(kept) == 1500


def test_resident_memory_is_read_on_linux() -> None:
    mib = memory.resident_mib()
    if sys.platform.startswith("linux"):
        assert 10 < mib < 1e6


@glibc
def test_large_blocks_from_mmap_leave_no_holes() -> None:
    # process-wide, so in a child. Freeing a 4 MiB block raises glibc's own threshold past 256 KiB;
    # with it fixed at 128 KiB, 256 KiB blocks freed between live small ones still go straight
    # back to the OS, without a trim
    child = """
import sys
from locft.engine import memory
if sys.argv[1] == "fixed":
    assert memory.mmap_large_allocations()
first = bytearray(4 * 2**20)
del first
big, keep = [], []
for _ in range(400):
    big.append(bytearray(256 * 1024)); keep.append(bytearray(600))
before = memory.resident_mib()
del big
print(before - memory.resident_mib())
"""
    assert float(_run_python(child, "fixed")) > 60  # of the 100 MiB
    assert float(_run_python(child, "glibc default")) < 20  # kept in the heap's holes

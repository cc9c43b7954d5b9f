from __future__ import annotations

import platform
import sys

import pytest

from locft.engine import memory

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's"
)


@glibc
def test_freed_heap_holes_go_back_to_the_os() -> None:
    # 64 KiB blocks (below glibc's mmap threshold, so they live in the heap) interleaved with
    # small blocks that stay alive: freeing the big ones leaves holes that free() alone keeps
    big, keep = [], []
    for _ in range(1500):
        big.append(bytearray(64 * 1024))  # zero-filled: its pages are resident
        keep.append(bytearray(600))  # above pymalloc's 512 bytes: a malloc'd chunk between holes
    del big
    before = memory.resident_mib()
    assert memory.release_freed_memory()
    after = memory.resident_mib()
    assert before - after > 40, (before, after)  # about 94 MiB were freed into holes
    assert len(keep) == 1500


def test_resident_memory_is_read_on_linux() -> None:
    mib = memory.resident_mib()
    if sys.platform.startswith("linux"):
        assert 10 < mib < 1e6

"""Handing freed heap memory back to the operating system during and after training.

glibc's malloc keeps memory that was freed inside its heap for reuse instead of returning it.
Training allocates and frees activations of many shapes (micro-batches sorted by length, replay
rows of other lengths), so a process that trained keeps about twice the memory it still uses:
after 64 facts x 20 epochs, 2.5 GiB resident where 1.3 GiB is left once freed pages go back.
`malloc_trim(0)` returns them: once training is done, which matters to a long-lived process
(the daemon, a server) that trains and then does other work; and after every epoch, which
lowers training's own peak a little (2,619 against 2,804-2,847 MiB) for 0.1-0.2 s an epoch.
Serving large blocks from mmap (`mmap_large_allocations`) lowers it most (2,134 MiB) but
nearly doubles the seconds per epoch, so the library does not do it (docs/experiments/scripts/epoch_memory.py,
docs/experiments/quality/epoch_memory.jsonl). Other C libraries (musl, macOS) have no such calls,
and there these are no-ops.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already uses
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def mmap_large_allocations(threshold_bytes: int = 128 * 1024) -> bool:
    """Serve every allocation of at least `threshold_bytes` from its own mmap, unmapped on free.

    glibc raises its mmap threshold as large blocks are freed (up to 32 MiB), after which
    activation-sized tensors are carved out of the heap and leave holes behind; a fixed threshold
    keeps them out of it, at the price of page faults on every such allocation. Process-wide;
    used by docs/experiments/scripts/epoch_memory.py, not by training. False where there is no glibc (nothing done).
    """
    if _MALLOC_TRIM is None:  # not glibc
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes))


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS; False where the C library cannot (nothing was done)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def resident_mib() -> float:
    """This process's resident memory now (not its peak), in MiB; NaN where /proc is absent."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

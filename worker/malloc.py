"""glibc's allocator, set for the engine's large, short-lived tensors (Linux on the CPU).

By default glibc serves every block over its mmap threshold (128 KiB, raised on its own only as
large blocks are freed) with a fresh ``mmap`` and gives it back on ``free``, so the feature maps
of every forward and backward pass (up to 12 MiB each for lite0's four views of 176 px) come
back from the kernel as new pages, and the first write to each page faults. ``tune()`` keeps
blocks up to 32 MiB (glibc's largest threshold) in the heap and freed memory in the process
(up to 1 GiB at its top), so the next pass reuses warm pages. Measured on the 2-core VM
(``benchmarks/malloc.py``, ``benchmarks/results/malloc-cpu2.json``, 5 alternations of 2 classes):
an ``invariant+`` visualization faulted in 382,000 pages as glibc sets itself and 550 tuned
(medians per class), and took 0.92 of the time (7.6 s against 8.2 s). The price: a worker
keeps its peak memory.
Where glibc is not the C library (macOS, musl), nothing changes.

What PyTorch recommends for the CPU is jemalloc or tcmalloc preloaded, which a pip install
cannot provide; these two ``mallopt`` settings are the part of their gain glibc itself offers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks up to this size come from the heap (glibc's maximum on 64-bit systems)."""
TRIM_THRESHOLD = 1024 * 1024 * 1024
"""Free memory at the heap's top kept up to this size instead of given back."""

_done: bool | None = None


def tune() -> bool:
    """Set both thresholds once per process (a forked child inherits them); True where glibc
    took them. Safe to call again and anywhere: it never raises."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _done

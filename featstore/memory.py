"""Keep a long run's resident memory flat: large buffers are given back to the OS when freed.

Why: extraction and training allocate and free batch-sized tensors (decoded batches from the loader
workers, the teacher's activations) at every step. glibc serves a freed block of more than 128 KiB from
``mmap`` only until the first such block is freed; then it raises its threshold (up to 32 MiB) and serves
them from its heap, which fragments, so the resident size creeps with the number of batches (the figures
are in docs/datasets.md). Activations above 32 MiB are always mapped and do not fragment.

Fixing the threshold at 16 MiB (``mallopt(M_MMAP_THRESHOLD)``, which also turns the raising off) maps the
buffers of a few MiB again, so the resident size stays flat for a few per cent of speed on small images and
none on images whose buffers are mapped anyway. The CLI sets it once per
process (the workers it forks inherit it); a user's own ``MALLOC_MMAP_THRESHOLD_`` wins. A library does
not change its host's allocator, so the Python API leaves it to the caller (:func:`bound_heap_growth`).

Buffers below the threshold (decoded batches, smaller activations, the store's encode buffers, which zarr
allocates on its own I/O threads, each with its own glibc arena) still come from heaps that fragment, and a
heap gives memory back only from its top. :func:`release_free_memory` (``malloc_trim``) hands every free
page of every arena back; extraction calls it after each chunk it writes, so the resident size is bounded by
one chunk's working set rather than growing with the number of chunks.

Linux/glibc only; elsewhere (macOS, musl) a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD_BYTES = 16 * 1024 * 1024


def bound_heap_growth(threshold: int = THRESHOLD_BYTES) -> bool:
    """Serve allocations of ``threshold`` bytes and more from ``mmap`` (glibc).

    Args:
        threshold: the allocation size, in bytes, from which glibc maps memory rather than using its heap.

    Returns:
        True when the threshold is set; False off glibc or when the user's ``MALLOC_MMAP_THRESHOLD_`` rules.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))


def release_free_memory() -> bool:
    """Give the free pages of every glibc heap back to the OS (``malloc_trim(0)``).

    Returns:
        True when some memory is given back; False when none is, or off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return False
    return bool(trim(0))

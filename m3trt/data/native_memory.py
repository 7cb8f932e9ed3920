"""Giving freed decoder memory back to the system (glibc only; a no-op elsewhere).

glibc keeps one malloc arena per thread and raises its mmap threshold after the first large
free, so the ~900 MB a 100-megapixel PNG takes to decode stays mapped in the arena of whichever
worker decoded it: four workers that each decoded one bomb hold 3.5 GB even when the bombs were
decoded one at a time. ``malloc_trim(0)`` returns the free pages of every arena; the decode
budget calls it after each large decode, where its cost (a few ms) is nothing next to the
decode's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

TRIM_AFTER_BYTES = 64 << 20
"""Decodes estimated at this many bytes or more are followed by a trim."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):  # musl and other libcs have no malloc_trim
        return None
    return libc


def release_free_memory() -> bool:
    """Return freed heap pages to the system; False where the C library cannot."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True

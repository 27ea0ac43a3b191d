"""glibc malloc settings for a render's block-sized arrays.

A render allocates and frees numpy temporaries of 0.1-4 MB for every block it decodes, mixes, limits and
meters. glibc serves each allocation over its mmap threshold (128 KB at start, raised only after a mapped
chunk is freed) with a fresh mapping and unmaps it on free, so the next block's temporaries page-fault
anew; in a VM those faults cost more than the arithmetic on the pages (the limiter's moving average ran 3x
slower, and about half of the render's minor faults were these). Fixed thresholds keep freed blocks in the
heap for the next block, for ~10 MB more resident memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 << 20  # allocations at or above this still get their own mapping
TRIM_THRESHOLD = 64 << 20  # free heap kept before glibc returns it to the system
# The operator's environment wins: glibc reads these at start-up and this module leaves them alone.
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


@functools.cache
def keep_block_buffers() -> bool:
    """Set glibc's mmap and trim thresholds for this process, once (forks inherit them). True when set.

    Called where a render starts its block loops (not at import). A no-op off Linux/glibc and where the
    environment already tunes malloc.
    """
    if not sys.platform.startswith("linux") or any(os.environ.get(name) for name in _ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        log.debug("mallopt refused the render's thresholds; glibc's defaults stay")
    return done

"""Process settings that keep a CPU model step's time steady: the allocator and torch's thread pools.

Measured on this project's machine (docs/performance.md, "Model step on CPU"), glibc's malloc gave a
32 x 128-token prefill 350k-600k page faults per step (1.4-2.4 GB of freshly zeroed pages): its
large-allocation threshold moves with the allocation history, and the engine thread allocates from
its own arena, whose heaps are unmapped and mapped again between steps. How many of a step's
temporaries took that path depended on the history of the process and on which arena its thread
got, so identical runs in different processes paid different costs. Fixed thresholds and one arena
make a step reuse the same memory every time (0 faults per step after the first).

Torch's defaults are kept for the compute threads (one per core); the inter-op pool, which the
model step never uses, is held to one thread so it cannot compete with them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import torch

logger = logging.getLogger("sgc.runtime")

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest allowed value: below it, blocks are reused
TRIM_THRESHOLD_BYTES = 1 << 30  # keep up to 1 GiB of freed heap instead of returning it every step

_tuned = False


def tune_cpu_process() -> bool:
    """Apply the settings once per process; True if malloc took them (glibc), False elsewhere."""
    global _tuned
    if _tuned:
        return True
    ok = _tune_malloc()
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # the pool has already started (or was set): leave it as it is
    _tuned = ok
    return ok


def _tune_malloc() -> bool:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    results = [mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
               mallopt(_M_ARENA_MAX, 1)]
    if not all(results):
        logger.debug("mallopt refused some settings: %s", results)
    return all(results)

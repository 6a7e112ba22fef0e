"""How a Cairn process asks glibc's allocator to keep freed memory for reuse.

Why: the byte paths allocate a buffer per MiB moved (a received frame's payload, a
pread's result, an encoded chunk) and free it a few milliseconds later. By default
glibc serves such sizes with a fresh mmap (or from a heap top it trims back to the
kernel as soon as it is freed), so every MiB is page-faulted in and zeroed again:
measured here, allocating and filling 1 MiB with eight others alive cost ~270 µs
against ~65 µs for the copy alone, and a 64 MiB GET through `cairn dev` spent ~15 %
of the worker's CPU in page faults and page clearing. With the thresholds below,
freed buffers stay in the heap and the next one reuses their pages: the same GET
went from ~2.2 to ~2.0 ms of server CPU per MiB, ~660–690 to ~690–790 MiB/s.

The price: a process keeps up to MALLOC_TRIM_THRESHOLD_BYTES of freed heap instead
of returning it at once (its peak stays its peak). Elsewhere than glibc (musl, macOS)
this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("cairn.memory")

MiB = 1 << 20
MALLOC_MMAP_THRESHOLD_BYTES = 32 * MiB   # allocations below come from the heap (glibc's dynamic maximum)
MALLOC_TRIM_THRESHOLD_BYTES = 256 * MiB  # free heap top kept before giving it back to the kernel

_M_TRIM_THRESHOLD = -1                   # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Set the thresholds above in this process; True if the allocator took them."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = (mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) == 1
            and mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES) == 1)
    if not done:
        log.info("MallocTuning refused: freed buffers go back to the kernel (slower byte paths)")
    return done

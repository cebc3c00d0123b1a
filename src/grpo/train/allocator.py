"""Keep freed CPU memory in the process (glibc malloc), so large tensors are not page-faulted in
again on every pass.

glibc serves each allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
returns it to the kernel on free. A training pass allocates and frees the same activation
buffers every step (medium benchmark: [64, 139, 2048] bf16 tensors of 36 MiB, dozens per
pass), so every step the kernel zero-fills those pages again: a CPU update spent about a
fifth of its time in page faults. With mmap off for chunks and a trim threshold that never
triggers, freed blocks go back to malloc's heap and the next pass reuses them; the resident
size then stays at its high-water mark instead of falling between passes (the peak itself
does not grow: the same buffers are reused). Measured in docs/benchmarks.md.

Same effect as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>`` in the environment, set
here from ``train.reuse_freed_memory`` since glibc only reads those at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# mallopt takes an int: INT_MAX (2 GiB of free memory at the heap's top before a trim) is as
# good as never for a trainer that reuses its buffers every step
_TRIM_AT = 2**31 - 1


def reuse_freed_memory() -> bool:
    """Tell glibc malloc to keep freed memory for reuse; True if it took the settings, False
    where the C library is not glibc (musl, macOS, Windows): nothing is changed there."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    no_mmap = mallopt(_M_MMAP_MAX, 0) == 1
    no_trim = mallopt(_M_TRIM_THRESHOLD, _TRIM_AT) == 1
    return no_mmap and no_trim

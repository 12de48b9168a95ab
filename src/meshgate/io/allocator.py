"""Fixed glibc malloc thresholds for the proxy processes (gateway, sidecar).

Relaying a body allocates and frees buffers of 64-256 KiB, one after another.
glibc's malloc adapts two thresholds to that: after the first such buffer is
freed it raises its mmap threshold above it (so the next ones come from the heap)
and its trim threshold to twice that, and then gives the top of the heap back to
the kernel each time a buffer at the top is freed. The heap grows and shrinks for
nearly every buffer: a brk() pair plus page faults and zeroing of fresh pages in
the kernel. Measured on the compiled build (docs/performance.md, "Compiled
build"): ~1,900 brk calls per 256 MiB relayed and 612 MiB/s, against ~1,900 MiB/s
with fixed thresholds.

`tune_malloc` fixes them (mallopt): blocks under `MMAP_THRESHOLD_BYTES` come from
the heap, and up to `TRIM_THRESHOLD_BYTES` free at its top is kept rather than
given back at once. Memory stays bounded: at most that much more resident after a
burst. It does nothing when the process does not run on glibc, when the operator
set the thresholds through glibc's environment (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES`` with ``glibc.malloc.``), or when
``MESHGATE_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

MMAP_THRESHOLD_BYTES = 1 << 20  # 1 MiB: above the largest relay buffer (256 KiB)
TRIM_THRESHOLD_BYTES = 8 << 20  # 8 MiB kept free at the top of the heap at most
# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
OFF_ENV = "MESHGATE_MALLOC_TUNING"


def glibc_version() -> str | None:
    """The C library's version when it is glibc (e.g. "2.36"), else None."""
    try:
        found = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):  # not a glibc system
        return None
    if not found or not found.startswith("glibc "):
        return None
    return found.removeprefix("glibc ")


def tune_malloc(environ: Mapping[str, str] = os.environ) -> str:
    """Fix the thresholds when no one else decides them; say what happened (for the log)."""
    if environ.get(OFF_ENV) == "0":
        return f"malloc thresholds left to glibc ({OFF_ENV}=0)"
    if any(name in environ for name in _GLIBC_ENV) or "glibc.malloc." in environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return "malloc thresholds left to the environment's MALLOC_*/GLIBC_TUNABLES settings"
    if glibc_version() is None:
        return "malloc thresholds untouched (not glibc)"
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success, 0 on error
    if not (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    ):
        return "malloc thresholds: glibc refused mallopt"
    return (
        f"malloc thresholds fixed: mmap {MMAP_THRESHOLD_BYTES >> 20} MiB, "
        f"trim {TRIM_THRESHOLD_BYTES >> 20} MiB ({OFF_ENV}=0 leaves them to glibc)"
    )

"""glibc malloc thresholds of the proxy processes (meshgate.io.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from meshgate.io.allocator import MMAP_THRESHOLD_BYTES, OFF_ENV, glibc_version, tune_malloc

pytestmark = pytest.mark.skipif(glibc_version() is None, reason="mallopt is glibc's")

# A fresh interpreter (malloc's thresholds are per process): optionally tune, then
# allocate a 512 KiB block and say where glibc put it, by mallinfo2's counters.
PROBE = textwrap.dedent(
    """
    import ctypes, sys

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    from meshgate.io.allocator import tune_malloc
    print(tune_malloc())
    before = libc.mallinfo2()
    block = bytearray(512 * 1024)
    after = libc.mallinfo2()
    print(after.hblkhd - before.hblkhd, after.uordblks - before.uordblks)
    """
)


def probe(**env: str) -> tuple[str, int, int]:
    """(tune_malloc's message, bytes newly mmapped, bytes newly in use on the heap)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    clean.pop(OFF_ENV, None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    mapped, heap = (int(n) for n in out[1].split())
    return out[0], mapped, heap


def test_a_relay_sized_block_comes_from_the_heap_once_tuned() -> None:
    message, mapped, heap = probe()
    assert message.startswith("malloc thresholds fixed: mmap 1 MiB, trim 8 MiB")
    assert MMAP_THRESHOLD_BYTES > 512 * 1024
    assert mapped == 0
    assert heap >= 512 * 1024


def test_turned_off_glibc_keeps_its_own_threshold() -> None:
    # glibc's default (128 KiB until a freed mapping raises it): the block is mmapped,
    # which is what the probe above tells apart
    message, mapped, heap = probe(**{OFF_ENV: "0"})
    assert message == f"malloc thresholds left to glibc ({OFF_ENV}=0)"
    assert mapped >= 512 * 1024
    assert heap < 512 * 1024


@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_MMAP_THRESHOLD_": "4194304"},
        {"MALLOC_TRIM_THRESHOLD_": "1048576"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4194304"},
    ],
)
def test_the_operators_glibc_settings_win(env: dict[str, str]) -> None:
    assert tune_malloc(env) == (
        "malloc thresholds left to the environment's MALLOC_*/GLIBC_TUNABLES settings"
    )
    message, _, _ = probe(**env)
    assert message.startswith("malloc thresholds left to the environment")


def test_unrelated_tunables_do_not_stop_it() -> None:
    message, mapped, _ = probe(GLIBC_TUNABLES="glibc.pthread.rseq=0")
    assert message.startswith("malloc thresholds fixed")
    assert mapped == 0

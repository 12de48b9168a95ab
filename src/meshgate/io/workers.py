"""Process model: N workers share the listening port with SO_REUSEPORT.

Each worker is a forked process running its own uvloop event loop. The
parent forwards SIGTERM/SIGINT (drain and exit) and SIGHUP (reload) to the
workers, restarts a worker that dies unexpectedly (a non-zero exit or a signal;
exit 0 means it drained, e.g. after ``POST /drain``), and exits 0 when all
workers drained cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop

log = logging.getLogger("meshgate.workers")

Serve = Callable[[asyncio.Event, asyncio.Event, int], Awaitable[int]]
"""A worker body: runs until the stop event is set; the reload event asks for a
reload; the int is the worker's index (0 .. workers - 1)."""

RESTART_BACKOFF_S = 1.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Fleet:
    """Where a worker stands among ``size`` workers sharing ``directory``."""

    index: int
    size: int
    directory: Path

    def socket(self, index: int) -> Path:
        """The Unix socket of worker ``index``'s private admin listener."""
        return self.directory / f"worker-{index}.sock"


def run_in_loop(serve: Serve, index: int = 0) -> int:
    """Run ``serve`` (as worker ``index``) on a fresh uvloop loop with signal handlers;
    return its exit code."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        reload = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        return await serve(stop, reload, index)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker (so it drains) if the parent dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: workers outlive a killed parent
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_workers(serve: Serve, workers: int) -> int:
    """Run ``serve`` in ``workers`` processes (in this process when 1)."""
    if workers <= 1:
        return run_in_loop(serve)
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    parent = os.getpid()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                _die_with_parent(parent)
                code = run_in_loop(serve, index)
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for index in range(workers):
        spawn(index)
    log.info("started %d workers: %s", workers, ", ".join(map(str, children)))
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping or code == 0:  # a signal, or the worker drained (POST /drain)
            worst = worst or (code if code > 0 else 0)
            continue
        log.error("worker %d (pid %d) exited with %d; restarting", index, pid, code)
        time.sleep(RESTART_BACKOFF_S)
        if not stopping:
            spawn(index)
    return worst

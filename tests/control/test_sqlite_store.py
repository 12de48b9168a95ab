"""The SQLite store under cancellation: a caller that gives up (a request timed out,
a sidecar stopped) must not leave the store half-written or let the next write run
alongside one still in the worker thread."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from meshgate.control.store import SQLiteStore


async def _slow_inserts(store: SQLiteStore, nap_s: float) -> None:
    """Every write to `kv` takes ``nap_s`` in the worker thread (a trigger calling a
    sleeping SQL function), so a caller can be cancelled while its write runs."""

    def install() -> None:
        db = store._db
        assert db is not None
        db.create_function("nap", 1, lambda s: time.sleep(s))
        db.execute(f"CREATE TEMP TRIGGER slow AFTER INSERT ON kv BEGIN SELECT nap({nap_s}); END")

    await store._run(install)


async def test_cancelled_write_finishes_and_the_next_write_waits(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "cp.db"))
    await store.open()
    try:
        await _slow_inserts(store, 0.3)
        first = asyncio.create_task(store.put("instances/a", "1"))
        await asyncio.sleep(0.05)  # the insert is in the worker thread now
        first.cancel()
        # Before the fix: "cannot start a transaction within a transaction".
        rev = await store.put("instances/b", "2")
        assert rev == 2
        a, b = await store.get("instances/a"), await store.get("instances/b")
        assert a is not None and a.value == "1" and a.revision == 1
        assert b is not None and b.value == "2"
        # The committed write the caller gave up on still reached the watchers.
        events = store.log.since(0)
        assert events is not None
        assert [(e.revision, e.key) for e in events] == [(1, "instances/a"), (2, "instances/b")]
    finally:
        await store.close()


async def test_cancelled_writes_queued_or_running(tmp_path: Path) -> None:
    """The write already running is committed; those still queued behind it are not
    made; the file reopens with exactly the committed ones and their revision."""
    path = str(tmp_path / "cp.db")
    store = SQLiteStore(path)
    await store.open()
    await _slow_inserts(store, 0.2)
    writes = [asyncio.create_task(store.put(f"instances/{i}", str(i))) for i in range(3)]
    await asyncio.sleep(0.05)
    for task in writes:
        task.cancel()
    await store.close()  # waits for the worker thread's queue
    again = SQLiteStore(path)
    await again.open()
    try:
        entries, rev = await again.list("instances/")
        assert [e.key for e in entries] == ["instances/0"]
        assert rev == 1
    finally:
        await again.close()

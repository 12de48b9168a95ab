"""The control plane's storage: a small key-value interface with a global revision,
leases and a watch log, over SQLite (one process) or etcd (several; etcd_store.py).

Values are JSON text. Every write gets the next revision. Keys under `WATCHED`
prefixes are what watchers see (instances, policies, the trust bundle); the others
(join tokens, the CA's key material) only move the revision.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import secrets
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from meshgate.control.leases import LeaseTable
from meshgate.control.watch import Event, WatchLog

log = logging.getLogger("meshgate.control.store")

WATCHED = ("instances/", "policies/", "bundle")
SWEEP_MAX_SLEEP_S = 1.0
T = TypeVar("T")


def watched(key: str) -> bool:
    return key.startswith(WATCHED)


class StoreUnavailable(RuntimeError):
    """The backend does not answer (etcd down); the request may be retried."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: str
    revision: int
    lease: int | None = None


Listener = Callable[[Event], None]


class Store(ABC):
    """Shared parts: the watch log, waiters and listeners of every change."""

    def __init__(self, history: int) -> None:
        self.history = history
        self.log = WatchLog(0, history)
        self._changed = asyncio.Event()
        self.listeners: list[Listener] = []
        self.closing = False  # set by `end_watches`: long-polls answer at once

    def _publish(self, event: Event) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("store listener failed on %s", event.key)
        if watched(event.key):
            self.log.append(event)
        else:
            self.log.advance(event.revision)
        self._changed.set()
        self._changed = asyncio.Event()

    def _reset_log(self, revision: int) -> None:
        """Start the log over at ``revision`` (changes before it were missed)."""
        self.log = WatchLog(revision, self.history)
        self._changed.set()
        self._changed = asyncio.Event()

    def end_watches(self) -> None:
        """Shutting down: wake every waiting long-poll, and wait no more. (Held
        until the drain timeout, they would deliver the deletions of leases that
        expire meanwhile, heartbeats no longer reaching a closed listener.)"""
        self.closing = True
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_after(self, revision: int, timeout_s: float) -> None:
        """Return when the log moves past ``revision``, or after ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.log.revision <= revision and not self.closing:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def get(self, key: str) -> Entry | None: ...

    @abstractmethod
    async def list(self, prefix: str) -> tuple[list[Entry], int]:
        """Every entry under ``prefix`` and the revision they were read at."""

    @abstractmethod
    async def put(self, key: str, value: str, lease: int | None = None) -> int:
        """Write; the new revision."""

    @abstractmethod
    async def create(self, key: str, value: str) -> bool:
        """Write only if ``key`` is absent; whether it was written."""

    @abstractmethod
    async def delete(self, key: str) -> bool: ...

    @abstractmethod
    async def grant(self, ttl_s: float) -> int:
        """A new lease id."""

    @abstractmethod
    async def keepalive(self, lease: int) -> bool:
        """Renew; False when the lease expired or never existed."""

    @abstractmethod
    async def revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys."""

    @abstractmethod
    async def revision(self) -> int: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, revision INTEGER NOT NULL, lease INTEGER
);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl_s REAL NOT NULL,
    expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease);
"""


class SQLiteStore(Store):
    """One file, one process. sqlite3 runs in one dedicated worker thread, so
    operations run one at a time in the order they were asked for, even when a
    caller is cancelled while its operation runs (the thread finishes it; the next
    one waits its turn). A write's change event is scheduled on the event loop by
    that thread right after its commit, so watchers see every committed revision,
    in order, whether or not its caller is still waiting. An operation cancelled
    before the thread took it up is not made. Leases live in a `LeaseTable`
    mirrored to the file; after a restart each lease gets a full TTL again (as etcd
    does on a new leader)."""

    def __init__(
        self, path: str, *, history: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(history)
        self.path = path
        self.clock = clock
        self.leases = LeaseTable()
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._rev = 0

    # -- thread side ------------------------------------------------------------
    def _open_sync(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        self._rev = int(row[0]) if row else 0
        now = self.clock()
        for lease_id, ttl_s, expires_at in db.execute("SELECT id, ttl_s, expires_at FROM leases"):
            self.leases.restore(int(lease_id), float(ttl_s), max(float(expires_at), now + ttl_s))
        self._db = db

    def _write(self, stmt: str, args: tuple[object, ...], key: str, value: str | None) -> int:
        """Run ``stmt`` (``_REV`` in ``args`` stands for the new revision) plus the
        revision bump in one transaction; schedule the change event; the revision."""
        db, loop = self._db, self._loop
        assert db is not None and loop is not None
        rev = self._rev + 1
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(stmt, tuple(rev if a is _REV else a for a in args))
            db.execute(
                "INSERT INTO meta(name, value) VALUES('revision', ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (rev,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._rev = rev
        loop.call_soon_threadsafe(self._publish, Event(rev, key, value))
        return rev

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._thread is None or self._loop is None:
            raise StoreUnavailable(f"sqlite {self.path}: the store is closed")
        return await self._loop.run_in_executor(self._thread, fn)

    # -- interface --------------------------------------------------------------
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._run(self._open_sync)
        except (sqlite3.Error, OSError) as exc:
            await self._stop_thread()
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from None
        self.log = WatchLog(self._rev, self.history)
        self._sweeper = asyncio.create_task(self._sweep(), name="sqlite-lease-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._db is not None:
            db = self._db
            await self._run(db.close)  # after every operation already queued
            self._db = None
        await self._stop_thread()

    async def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.shutdown, wait=True)

    async def revision(self) -> int:
        return self._rev

    async def get(self, key: str) -> Entry | None:
        def q() -> Entry | None:
            assert self._db is not None
            row = self._db.execute(
                "SELECT key, value, revision, lease FROM kv WHERE key=?", (key,)
            ).fetchone()
            return Entry(*row) if row else None

        return await self._run(q)

    async def list(self, prefix: str) -> tuple[list[Entry], int]:
        def q() -> tuple[list[Entry], int]:
            assert self._db is not None
            rows = self._db.execute(
                "SELECT key, value, revision, lease FROM kv WHERE substr(key, 1, ?) = ? "
                "ORDER BY key",
                (len(prefix), prefix),
            ).fetchall()
            return [Entry(*r) for r in rows], self._rev

        return await self._run(q)

    async def put(self, key: str, value: str, lease: int | None = None) -> int:
        if lease is not None and lease not in self.leases:
            raise KeyError(f"lease {lease} does not exist")
        return await self._run(
            lambda: self._write(
                "INSERT INTO kv(key, value, revision, lease) VALUES(?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value, "
                "revision=excluded.revision, lease=excluded.lease",
                (key, value, _REV, lease),
                key,
                value,
            )
        )

    async def create(self, key: str, value: str) -> bool:
        def q() -> int | None:
            assert self._db is not None
            if self._db.execute("SELECT 1 FROM kv WHERE key=?", (key,)).fetchone():
                return None
            return self._write(
                "INSERT INTO kv(key, value, revision) VALUES(?, ?, ?)",
                (key, value, _REV),
                key,
                value,
            )

        return await self._run(q) is not None

    async def delete(self, key: str) -> bool:
        def q() -> int | None:
            assert self._db is not None
            if not self._db.execute("SELECT 1 FROM kv WHERE key=?", (key,)).fetchone():
                return None
            return self._write("DELETE FROM kv WHERE key=?", (key,), key, None)

        return await self._run(q) is not None

    async def grant(self, ttl_s: float) -> int:
        lease_id = secrets.randbits(62) + 1
        lease = self.leases.grant(lease_id, ttl_s, self.clock())

        def q() -> None:
            assert self._db is not None
            self._db.execute(
                "INSERT INTO leases(id, ttl_s, expires_at) VALUES(?, ?, ?)",
                (lease_id, ttl_s, lease.expires_at),
            )

        await self._run(q)
        return lease_id

    async def keepalive(self, lease: int) -> bool:
        renewed = self.leases.keepalive(lease, self.clock())
        if renewed is None:
            return False
        expires_at = renewed.expires_at

        def q() -> None:
            assert self._db is not None
            self._db.execute("UPDATE leases SET expires_at=? WHERE id=?", (expires_at, lease))

        await self._run(q)
        return True

    async def revoke(self, lease: int) -> None:
        self.leases.revoke(lease)
        await self._drop_leases([lease])

    async def _drop_leases(self, lease_ids: builtins.list[int]) -> None:
        """Delete the leases and every key attached to them (one revision per key)."""

        def q() -> None:
            assert self._db is not None
            for lease_id in lease_ids:
                keys = [
                    r[0] for r in self._db.execute("SELECT key FROM kv WHERE lease=?", (lease_id,))
                ]
                for key in keys:
                    self._write("DELETE FROM kv WHERE key=?", (key,), key, None)
                self._db.execute("DELETE FROM leases WHERE id=?", (lease_id,))

        await self._run(q)

    async def _sweep(self) -> None:
        """Expire leases at their deadlines (checked at least every second)."""
        while True:
            expired = self.leases.expired(self.clock())
            if expired:
                try:
                    await self._drop_leases(expired)
                except sqlite3.Error:
                    log.exception("could not delete the keys of expired leases")
            deadline = self.leases.next_deadline()
            delay = SWEEP_MAX_SLEEP_S
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - self.clock()))
            await asyncio.sleep(delay)


class _RevMarker:
    """Stands for the new revision in `SQLiteStore._write` arguments."""


_REV = _RevMarker()

"""etcd storage (HA): several control planes share one etcd cluster through aetcd.

The store's revision is etcd's revision; instance leases are etcd leases (etcd
deletes the keys when one expires, whichever control plane granted it); each
process follows every change with one etcd watch on the prefix, feeding its own
watch log, so a registration through one control plane reaches watchers of all.
When the watch falls behind etcd's compaction, the log starts over and watchers
get a snapshot. When the member in use stops answering, the next configured
endpoint that answers takes over (requests and the watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.rtypes

from meshgate.control.store import Entry, Store, StoreUnavailable
from meshgate.control.watch import Event

log = logging.getLogger("meshgate.control.etcd")

RECONNECT_DELAY_S = 0.5
# A request waits for a reconnection (trying every member) at most this many timeouts.
RECONNECT_WAIT_FACTOR = 3
T = TypeVar("T")


class ChannelClosed(Exception):
    """An etcd call ended because its client was closed (a reconnection elsewhere)."""


async def _open_client(client: aetcd.Client) -> None:
    await client.connect()
    await client.status()


def _forget_abandoned(
    abandoned: set[asyncio.Future[Any]],
) -> Callable[[asyncio.Future[Any]], None]:
    def done(task: asyncio.Future[Any]) -> None:
        abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the caller has long had its TimeoutError

    return done


class EtcdStore(Store):
    def __init__(
        self,
        endpoints: list[tuple[str, int]],
        prefix: str,
        *,
        timeout_s: float = 5.0,
        history: int = 10_000,
    ) -> None:
        super().__init__(history)
        self.endpoints = endpoints
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._client: aetcd.Client | None = None
        self._endpoint = 0  # index of the member the client talks to
        self._reconnecting = asyncio.Lock()
        self._abandoned: set[asyncio.Future[Any]] = set()  # timed-out calls still ending
        self._watcher: asyncio.Task[None] | None = None
        self._watch_started = asyncio.Event()

    def _k(self, key: str) -> bytes:
        return (self.prefix + key).encode()

    def _unk(self, raw: bytes) -> str:
        return raw.decode()[len(self.prefix) :]

    @property
    def client(self) -> aetcd.Client:
        if self._client is None:
            raise StoreUnavailable("etcd store is not open")
        return self._client

    async def _connect(self, first: int = 0) -> aetcd.Client:
        """A client of the first member that answers, trying them in order from ``first``."""
        problems = []
        n = len(self.endpoints)
        for i in range(n):
            index = (first + i) % n
            host, port = self.endpoints[index]
            client = aetcd.Client(host=host, port=port, timeout=int(max(1, self.timeout_s)))
            try:
                await self._bounded(_open_client(client))
            except (aetcd.exceptions.ClientError, ChannelClosed, TimeoutError, OSError) as exc:
                problems.append(f"{host}:{port}: {exc or type(exc).__name__}")
                await self._close_quietly(client)
                continue
            self._endpoint = index
            return client
        raise StoreUnavailable("no etcd endpoint answers: " + "; ".join(problems))

    async def _reconnect(self, failed: aetcd.Client) -> None:
        """``failed`` lost its member: talk to the next one that answers (once, however
        many callers noticed)."""
        async with self._reconnecting:
            if id(self._client) != id(failed):
                return  # another caller already moved on
            host, port = self.endpoints[self._endpoint]
            log.warning("etcd member %s:%d unreachable; trying the others", host, port)
            self._client = await self._connect(self._endpoint + 1)
        # Closing the channel of a dead member is bounded too (and outside the lock: the
        # callers waiting for the reconnection must not wait for it).
        await self._close_quietly(failed)

    async def _close_quietly(self, client: aetcd.Client) -> None:
        """Close a client, bounded: a channel to a member going away can take a
        gRPC reconnection backoff (tens of seconds) to close."""
        with contextlib.suppress(Exception):  # TimeoutError included
            await self._bounded(client.close())

    async def _call(self, op: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """``op`` on the current client, bounded by ``timeout_s`` (the client's own RPC
        deadline is not always honoured while a member is going away); on a connection
        failure or that timeout, once more on the next member that answers. Still no
        answer: `StoreUnavailable` (the API says 503)."""
        client = self.client
        try:
            return await self._bounded(op(client))
        except (
            aetcd.exceptions.ConnectionFailedError,
            aetcd.exceptions.ConnectionTimeoutError,
            ChannelClosed,
            TimeoutError,
        ):
            # Bounded: another caller (the watch) may hold the reconnection longer.
            try:
                await self._bounded(self._reconnect(client), RECONNECT_WAIT_FACTOR)
            except TimeoutError:
                raise StoreUnavailable(
                    f"etcd: no member answered within {self.timeout_s * RECONNECT_WAIT_FACTOR:g} s"
                ) from None
        try:
            return await self._bounded(op(self.client))
        except TimeoutError:
            raise StoreUnavailable(f"etcd: no answer within {self.timeout_s:g} s") from None
        except ChannelClosed as exc:
            raise StoreUnavailable(str(exc)) from None

    async def _bounded(self, call: Awaitable[T], timeouts: float = 1.0) -> T:
        """``call``'s result, or TimeoutError after ``timeouts`` x ``timeout_s`` even
        when the call does not give up when cancelled (asyncio.timeout would wait for
        it): a gRPC call to a member going away was seen to ignore its cancellation
        for 30 s. It then ends in the background."""
        task = asyncio.ensure_future(call)
        done, _ = await asyncio.wait({task}, timeout=self.timeout_s * timeouts)
        if task in done:
            if task.cancelled():
                # Not us: closing the client of a member that went away (another
                # caller reconnected) cancels the gRPC calls still on its channel.
                raise ChannelClosed("etcd: the call's channel was closed")
            return task.result()
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(_forget_abandoned(self._abandoned))
        raise TimeoutError

    async def open(self) -> None:
        self._client = await self._connect()
        rev = await self.revision()
        self._reset_log(rev)
        self._watcher = asyncio.create_task(self._watch(rev), name="etcd-watch")
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._watch_started.wait()
        except TimeoutError:
            raise StoreUnavailable(
                f"etcd watch on {self.prefix} did not start within {self.timeout_s:g} s"
            ) from None

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def revision(self) -> int:
        # A range over a key that never exists answers with the current revision.
        try:
            probe = await self._call(lambda c: c.get_prefix(self._k("\x00revision-probe")))
        except aetcd.exceptions.ClientError as exc:
            raise StoreUnavailable(f"etcd: {exc}") from None
        return int(probe.header.revision)

    async def get(self, key: str) -> Entry | None:
        try:
            got = await self._call(lambda c: c.get(self._k(key)))
        except aetcd.exceptions.ClientError as exc:
            raise StoreUnavailable(f"etcd: {exc}") from None
        if got is None:
            return None
        return Entry(key, got.value.decode(), got.mod_revision, got.lease or None)

    async def list(self, prefix: str) -> tuple[list[Entry], int]:
        try:
            got = await self._call(lambda c: c.get_prefix(self._k(prefix)))
        except aetcd.exceptions.ClientError as exc:
            raise StoreUnavailable(f"etcd: {exc}") from None
        entries = [
            Entry(self._unk(kv.key), kv.value.decode(), kv.mod_revision, kv.lease or None)
            for kv in got
        ]
        return entries, int(got.header.revision)

    async def put(self, key: str, value: str, lease: int | None = None) -> int:
        try:
            got = await self._call(lambda c: c.put(self._k(key), value.encode(), lease=lease))
        except aetcd.exceptions.ClientError as exc:
            if "lease not found" in str(exc):
                raise KeyError(f"lease {lease} does not exist") from None
            raise StoreUnavailable(f"etcd: {exc}") from None
        return int(got.header.revision)

    async def create(self, key: str, value: str) -> bool:
        k = self._k(key)
        try:
            ok, _ = await self._call(
                lambda c: c.transaction(
                    compare=[c.transactions.version(k) == 0],
                    success=[c.transactions.put(k, value.encode())],
                    failure=[],
                )
            )
        except aetcd.exceptions.ClientError as exc:
            raise StoreUnavailable(f"etcd: {exc}") from None
        return bool(ok)

    async def delete(self, key: str) -> bool:
        try:
            got = await self._call(lambda c: c.delete(self._k(key)))
        except aetcd.exceptions.ClientError as exc:
            raise StoreUnavailable(f"etcd: {exc}") from None
        return got is not None and bool(got.deleted)

    async def grant(self, ttl_s: float) -> int:
        try:
            lease = await self._call(lambda c: c.lease(max(1, round(ttl_s))))
        except aetcd.exceptions.ClientError as exc:
            raise StoreUnavailable(f"etcd: {exc}") from None
        return int(lease.id)

    async def keepalive(self, lease: int) -> bool:
        try:
            reply = await self._call(lambda c: c.refresh_lease(lease))
        except aetcd.exceptions.ClientError as exc:
            raise StoreUnavailable(f"etcd: {exc}") from None
        return reply is not None and int(reply.TTL) > 0

    async def revoke(self, lease: int) -> None:
        try:
            await self._call(lambda c: c.revoke_lease(lease))
        except aetcd.exceptions.ClientError as exc:
            if "lease not found" in str(exc):
                return
            raise StoreUnavailable(f"etcd: {exc}") from None

    async def _watch(self, start: int) -> None:
        """Follow every change under the prefix from ``start``; reconnect on errors,
        start the log over when etcd compacted what was missed."""
        after = start
        while True:
            client = self.client
            try:
                stream = await client.watch_prefix(self.prefix.encode(), start_revision=after + 1)
                self._watch_started.set()
                try:
                    async for ev in stream:
                        rev = int(ev.kv.mod_revision)
                        key = self._unk(ev.kv.key)
                        if ev.kind == aetcd.rtypes.EventKind.DELETE:
                            self._publish(Event(rev, key, None))
                        else:
                            self._publish(Event(rev, key, ev.kv.value.decode()))
                        after = rev
                finally:
                    with contextlib.suppress(Exception):
                        await stream.cancel()
            except asyncio.CancelledError:
                raise
            except aetcd.exceptions.RevisionCompactedError:
                after = await self.revision()
                log.warning("etcd compacted past the watch: watchers get a snapshot")
                self._reset_log(after)
            except Exception as exc:
                log.warning("etcd watch failed (%s); reconnecting", exc)
                try:
                    await self._reconnect(client)
                except StoreUnavailable as down:
                    log.warning("%s", down)
                await asyncio.sleep(RECONNECT_DELAY_S)

"""Group commit: one fsync for the commits of many messages, taken before anything leaves.

Rule 1 (what it guarantees): a store opened with ``group_commit=True`` (setpay/store.py
Rule 5) commits without syncing (SQLite WAL, ``synchronous=NORMAL``: the commit is in the
WAL, in the page cache, and a process crash loses nothing) and reports each commit here.
``barrier()`` returns only when every commit reported before it was called is on disk
(``fdatasync`` of the store's WAL file, as ``synchronous=FULL`` does at each commit). Nothing
that a commit's effect could be seen by leaves the process before a barrier: every publish
(``broker.connection.Bus.publish``, the RPC client and server), every ack of a consumed
message (``broker.consumer``), every HTTPS answer of a front door (``actors/web/server.py``)
awaits it first. So an acknowledged or answered effect survives power loss exactly as with
a synced commit, while commits made while a sync runs share the next one.
Rule 2 (ordering): within one SQLite file the WAL keeps commits in order and recovery keeps
a prefix of them, so deferring the sync changes no possible crash state of that file. Across
files it could (a later commit of one file on disk, an earlier one of another not), so a
transaction on any store (SQLite or PostgreSQL) first syncs the commits other stores still
owe (``pending_elsewhere``; setpay/store.py Rule 5): crash states keep the order of commits
across files as they had when every commit synced. A hot path that moves from one file to
another (the gateway: ledger, then its ISO 8583 journal) awaits ``barrier()`` at that step,
so the loop never waits for that sync.
Rule 3: one sync round at a time, in a worker thread, so the event loop keeps running while
the disk works; a failed sync raises in every waiter (the publish or ack does not happen,
the message is redelivered) and its stores stay due for the next round.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol


class Syncable(Protocol):
    def sync_to_disk(self) -> None: ...


class GroupCommit:
    """The process's durability barrier over the stores that opted in (Rules 1-3)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the counters and the set of stores due
        self._round = threading.Lock()  # one sync round at a time
        self._committed = 0  # commits reported, each complete in its WAL
        self._synced = 0  # every commit numbered up to this is on disk
        self._due: dict[int, Syncable] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self.rounds = 0  # sync rounds run (tests, bench)

    def committed(self, store: Syncable) -> int:
        """Report a commit of ``store``; its number (the barrier that covers it is
        ``synced >= number``)."""
        with self._lock:
            self._due[id(store)] = store
            self._committed += 1
            return self._committed

    @property
    def synced(self) -> int:
        return self._synced

    def pending(self) -> bool:
        """Whether a reported commit is not yet on disk."""
        return self._synced < self._committed

    def pending_elsewhere(self, store: object) -> bool:
        """Whether a store other than ``store`` owes a sync (Rule 2)."""
        if not self._due:
            return False
        with self._lock:
            return any(key != id(store) for key in self._due)

    def sync(self) -> None:
        """Bring every commit reported so far to disk (blocking; any thread)."""
        target = self._committed
        with self._round:
            if self._synced >= target:
                return  # a round that started after our commits covered them
            with self._lock:
                upto = self._committed
                stores = list(self._due.values())
                self._due.clear()
            try:
                for store in stores:
                    store.sync_to_disk()
            except BaseException:
                with self._lock:
                    for store in stores:
                        self._due.setdefault(id(store), store)
                raise
            self._synced = max(self._synced, upto)
            self.rounds += 1

    async def barrier(self) -> None:
        """Return once every commit reported before this call is on disk (Rule 1)."""
        if self._synced >= self._committed:
            return
        target = self._committed
        loop = asyncio.get_running_loop()
        while self._synced < target:
            running = self._inflight
            if running is None or running[0] is not loop or running[1].done():
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="group-commit")
                future = loop.run_in_executor(self._executor, self.sync)
                self._inflight = (loop, future)
            else:
                future = running[1]
            await asyncio.shield(future)


GROUP = GroupCommit()  # the process's one barrier

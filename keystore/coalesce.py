"""Coalescing a client's private-key calls into batches while the keystore is busy with it.

A purchase's steps each need one private operation (keystore/client.py), but a party serving
many purchases at once asks for many: one RPC round trip each costs more CPU in the caller,
RabbitMQ and the keystore worker than the signature itself (BENCHMARKS.md, keystore). So a
client lets at most ``limit`` requests be in flight; calls made while that many are out wait
and leave together, as one ``batch`` request, when one comes back.

Rule 1: no call waits for company. A call made while fewer than ``limit`` requests are in
flight leaves at the end of the event loop's current turn (with whatever other calls that
turn made), so an idle client adds no latency.
Rule 2: one call alone is sent as its own operation (``one``); two or more as one batch
(``many``, at most ``max_items`` each), whose answer holds each item's own result or error.
Rule 3: each caller gets its own item's outcome: a batch that fails as a whole (keystore
unreachable, malformed answer) fails each of its calls with that error; a caller that was
cancelled is skipped if still waiting, and its result dropped if already sent.
Rule 4: the client never holds more than ``max_waiting`` calls waiting; one more is refused at
once (``overloaded``) instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Sends ``submit``ted items through ``one`` or ``many`` with at most ``limit`` in flight."""

    def __init__(
        self,
        one: Callable[[Item], Awaitable[Result]],
        many: Callable[[Sequence[Item]], Awaitable[Sequence[Result | Exception]]],
        *,
        limit: int,
        max_items: int,
        max_waiting: int = 4096,
        overloaded: Callable[[], Exception],
    ) -> None:
        if limit < 1 or max_items < 2:
            raise ValueError("a coalescer needs limit >= 1 and max_items >= 2")
        self._one = one
        self._many = many
        self._limit = limit
        self._max_items = max_items
        self._max_waiting = max_waiting
        self._overloaded = overloaded
        self._waiting: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._in_flight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0  # requests sent (a batch counts once)
        self.items = 0  # items sent in them

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def submit(self, item: Item) -> Result:
        """``item``'s result, or its error raised (Rule 3)."""
        if len(self._waiting) >= self._max_waiting:
            raise self._overloaded()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._waiting.append((item, future))
        if self._in_flight < self._limit and not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)  # Rule 1: this turn's other calls join it
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._waiting and self._in_flight < self._limit:
            taken: list[tuple[Item, asyncio.Future[Result]]] = []
            while self._waiting and len(taken) < self._max_items:
                item, future = self._waiting.popleft()
                if not future.done():  # a cancelled caller is not sent (Rule 3)
                    taken.append((item, future))
            if not taken:
                continue
            self._in_flight += 1
            task = asyncio.ensure_future(self._send(taken))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, taken: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        outcomes: Sequence[Result | BaseException] = [asyncio.CancelledError()] * len(taken)
        self.requests += 1
        self.items += len(taken)
        try:
            if len(taken) == 1:
                outcomes = [await self._one(taken[0][0])]
            else:
                outcomes = await self._many([item for item, _ in taken])
                if len(outcomes) != len(taken):
                    raise RuntimeError("a batch answered with the wrong number of results")
        except Exception as exc:  # the request as a whole failed: each call fails with it
            outcomes = [exc] * len(taken)
        finally:
            self._in_flight -= 1
            for (_, future), outcome in zip(taken, outcomes, strict=True):
                if future.done():
                    continue  # its caller was cancelled meanwhile
                if isinstance(outcome, asyncio.CancelledError):
                    future.cancel()  # the client is closing
                elif isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            if self._waiting and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def close(self) -> None:
        """Wait for the requests in flight (their callers get their answers)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

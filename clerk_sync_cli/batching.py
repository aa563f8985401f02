"""Deliveries that arrive together are applied together: ``serve``'s queue in front of
:meth:`receive.Receiver.receive_many`.

A delivery waits in the event loop until one of its workers (``serve`` gives it half the pool's
connections) is free; a free worker takes every delivery waiting (up to :data:`BATCH_MAX`) into one
transaction in its thread, so under a burst each transaction, round trip and thread hand-off
serves several deliveries (measured in ``benchmarks/bench_webhooks.py``), and a lone delivery
is applied at once, as before. A batch holds at most one delivery per ``svix-id`` and per user,
and never one whose ``svix-id`` or user is in a batch still running: those wait for the next,
so each user's events are applied one after another, as if they had come one by one. A
delivery no worker took within ``wait_s`` is answered 503 (Svix retries it); one taken is
waited for, since its transaction may commit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from clerk_sync_cli.errors import ClerkSyncError
from clerk_sync_cli.receive import Item, Receipt, Result
from clerk_sync_cli.store.pool import all_busy

#: The most deliveries one transaction applies.
BATCH_MAX = 64


@dataclass(eq=False)
class _Waiting:
    item: Item
    future: asyncio.Future[Result]
    keys: tuple[str, ...] = field(default=())
    taken: bool = False


class Batcher:
    """Queues deliveries and applies them in batches with ``receive_many`` (blocking, run in
    one of ``workers`` threads)."""

    def __init__(
        self,
        receive_many: Callable[[Sequence[Item]], list[Result]],
        workers: int,
        *,
        wait_s: float,
        batch_max: int = BATCH_MAX,
    ) -> None:
        self._receive_many = receive_many
        self._free = workers
        self._wait_s = wait_s
        self._batch_max = batch_max
        self._queue: deque[_Waiting] = deque()
        self._running: set[str] = set()  # svix-ids and users of the batches being applied
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="clerk-sync-delivery")
        self._tasks: set[asyncio.Task[None]] = set()

    async def receive(self, item: Item) -> Receipt:
        """``item``'s receipt once its batch is applied; raises its error (409, 400, 503)."""
        loop = asyncio.get_running_loop()
        event = item.event
        keys = (f"svix:{item.delivery.id}",) + (
            (f"user:{event.clerk_id}",) if event.clerk_id else ()
        )
        waiting = _Waiting(item, loop.create_future(), keys)
        self._queue.append(waiting)
        self._dispatch(loop)
        if not waiting.future.done():
            await asyncio.wait([waiting.future], timeout=self._wait_s)
        if not waiting.future.done() and not waiting.taken:
            self._queue.remove(waiting)
            raise all_busy(self._wait_s)
        result = await waiting.future
        if isinstance(result, ClerkSyncError):
            raise result
        return result

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a batch on each free worker while deliveries wait that may go."""
        while self._free and self._queue:
            batch = self._take()
            if not batch:
                return  # all that wait, wait for a running batch
            self._free -= 1
            task = loop.create_task(self._apply(loop, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        keys: set[str] = set()
        left: deque[_Waiting] = deque()
        for waiting in self._queue:
            if waiting.future.done():  # its request is gone (cancelled)
                continue
            goes = (
                len(batch) < self._batch_max
                and keys.isdisjoint(waiting.keys)
                and self._running.isdisjoint(waiting.keys)
            )
            keys.update(waiting.keys)  # a later delivery of the same id or user waits its turn
            if goes:
                waiting.taken = True
                batch.append(waiting)
            else:
                left.append(waiting)
        self._queue = left
        for waiting in batch:
            self._running.update(waiting.keys)
        return batch

    async def _apply(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting]) -> None:
        items = [waiting.item for waiting in batch]
        results: Sequence[Result | Exception]
        try:
            results = await loop.run_in_executor(self._threads, self._receive_many, items)
        except Exception as exc:  # a bug: every delivery of the batch is answered with it
            results = [exc] * len(batch)
        finally:
            self._free += 1
            for waiting in batch:
                self._running.difference_update(waiting.keys)
        for waiting, result in zip(batch, results, strict=True):
            if waiting.future.done():
                continue
            if isinstance(result, Receipt | ClerkSyncError):
                waiting.future.set_result(result)
            else:
                waiting.future.set_exception(result)
        self._dispatch(loop)

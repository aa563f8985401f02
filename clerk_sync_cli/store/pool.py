"""A fixed set of :class:`Store` connections shared by a server's worker threads.

``serve`` answers each request on a thread of its own; each takes a store from the pool for
one unit of work and gives it back. Connections are opened on first use and reopened by the
store when they fail, so the server starts, and keeps answering ``/healthz``, while the
database is down.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from clerk_sync_cli.errors import DatabaseUnavailableError
from clerk_sync_cli.store.connection import Store

#: Longest a unit of work waits for a free connection (Svix gives up after 15 s).
WAIT_S = 10.0


def all_busy(seconds: float) -> DatabaseUnavailableError:
    """What waiting ``seconds`` in vain for a connection is answered (503: Svix retries)."""
    return DatabaseUnavailableError(
        f"every database connection was busy for {seconds:g} s",
        "The database is slow or overloaded; Svix retries the delivery.",
    )


class Pool:
    def __init__(self, make: Callable[[], Store], size: int) -> None:
        self._make = make
        self._idle: queue.LifoQueue[Store] = queue.LifoQueue()
        self._made = 0
        self._size = size
        self._lock = threading.Lock()
        self._all: list[Store] = []

    @property
    def size(self) -> int:
        """The most connections this pool opens."""
        return self._size

    @contextmanager
    def store(self, timeout: float = WAIT_S) -> Iterator[Store]:
        """A store for this thread's unit of work; DatabaseUnavailableError if none frees up
        within ``timeout`` seconds (every connection busy: the database is too slow)."""
        store = self._take(timeout)
        try:
            yield store
        finally:
            self._idle.put(store)

    def _take(self, timeout: float) -> Store:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._made < self._size:
                self._made += 1
                store = self._make()
                self._all.append(store)
                return store
        try:
            return self._idle.get(timeout=timeout)
        except queue.Empty:
            raise all_busy(timeout) from None

    def close(self) -> None:
        with self._lock:
            for store in self._all:
                store.close()

"""Walking Clerk's user list with a :class:`~clerk_sync_cli.clerk.client.ClerkClient`: by
``created_at`` window with the ``starting_after`` cursor, falling back to offset paging
(:func:`walk`); several windows at once under the client's one rate limiter
(:func:`walk_concurrently`); a millisecond or the rest of a window by ``created_at`` filters
alone (:func:`at_ms`, :func:`sweep`); newest change first down to a watermark
(:func:`walk_recent`). Every request is the client's (:meth:`ClerkClient.list_users`): it
paces, retries and classifies; this module only decides what to ask next.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from clerk_sync_cli.clerk.client import ClerkClient
from clerk_sync_cli.decoding import ClerkUser
from clerk_sync_cli.errors import ClerkDataError, ClerkRequestError
from clerk_sync_cli.windows import Window

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
PAGE_LIMIT = 500  # Clerk's maximum page size


@dataclass(frozen=True)
class Page:
    window: Window
    users: list[Any]
    cursor: str | None  # the last user id: where the walk resumes after this page
    last: bool  # the window is exhausted


@dataclass(frozen=True)
class RecentPage:
    """A page of the newest-changed-first walk (:func:`walk_recent`)."""

    users: list[Any]
    offset: int
    done: bool  # reached below the watermark, or the end of the list
    exact: bool = True  # False: a page of one updated_at from end to end, ties unknowable


def both(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """Two independent requests at once: with Clerk's ~300 ms a request, the metadata a run
    starts with costs two waits instead of four. The rate limiter paces them as any other."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clerk-meta") as pool:
        later = pool.submit(second)
        return first(), later.result()


def walk_concurrently(
    client: ClerkClient,
    windows: Sequence[tuple[Window, str | None]],
    *,
    concurrency: int,
    prepare: Callable[[Page], T],
    limit: int = PAGE_LIMIT,
) -> Iterator[T]:
    """Walk several windows at once, each from its cursor, yielding ``prepare(page)`` as
    pages arrive (in order within a window). ``prepare`` runs in the worker, so what waits in
    the queue (a few items) is its compact result, not a page of raw users.
    The client's rate limiter paces every worker together. The first error stops the walk."""
    if concurrency <= 1 or len(windows) <= 1:
        for window, cursor in windows:
            for page in walk(client, window, cursor, limit=limit):
                yield prepare(page)
        return
    # a few prepared pages ahead are enough to keep the consumer busy; each walker waiting to
    # queue one holds one more, so memory grows with --concurrency only by that much
    pages: queue.Queue[T | BaseException | None] = queue.Queue(maxsize=min(concurrency, 4))
    todo: queue.SimpleQueue[tuple[Window, str | None]] = queue.SimpleQueue()
    for item in windows:
        todo.put(item)
    stop = threading.Event()

    def offer(item: T | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                pages.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            while not stop.is_set():
                try:
                    window, cursor = todo.get_nowait()
                except queue.Empty:
                    break
                for page in walk(client, window, cursor, limit=limit):
                    prepared = prepare(page)
                    del page  # only the prepared page waits for the queue, not the parsed one
                    if not offer(prepared):
                        return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer(exc)
        finally:
            offer(None)

    workers = [
        threading.Thread(target=worker, name=f"clerk-walk-{n}", daemon=True)
        for n in range(min(concurrency, len(windows)))
    ]
    for thread in workers:
        thread.start()
    running = len(workers)
    try:
        while running:
            arrived = pages.get()
            if arrived is None:
                running -= 1
            elif isinstance(arrived, BaseException):
                raise arrived
            else:
                yield arrived
    finally:
        stop.set()
        for thread in workers:
            thread.join(timeout=5)


def created_at_range(client: ClerkClient) -> tuple[int, int] | None:
    """(oldest, newest) ``created_at`` in ms, or None when there are no users."""
    oldest, newest = both(lambda: _end(client, "+created_at"), lambda: _end(client, "-created_at"))
    return None if oldest is None or newest is None else (oldest, newest)


def _end(client: ClerkClient, order: str) -> int | None:
    """The ``created_at`` of the first user in ``order``, or None when there are none."""
    page = client.list_users({"limit": 1, "order_by": order})
    if not page:
        return None
    created = page[0].created_at if isinstance(page[0], ClerkUser) else None
    if not isinstance(created, int):
        raise ClerkDataError("A user has no numeric created_at; cannot split the walk.")
    return created


def walk(
    client: ClerkClient, window: Window, cursor: str | None = None, *, limit: int = PAGE_LIMIT
) -> Iterator[Page]:
    """Every user of ``window`` in ``+created_at`` order, a page at a time, walked with the
    ``starting_after`` cursor from ``cursor``. Ends with a page marked ``last``, the first
    one shorter than ``limit``.

    If Clerk refuses a cursor (its user was deleted mid-walk, say), the walk steps back to
    the previous user of the page and re-reads the overlap (callers deduplicate). If no
    cursor is accepted, it falls back to offset paging for the rest of the window.
    """
    params: dict[str, Any] = {"limit": limit, "order_by": "+created_at", **window.params()}
    fallbacks: list[str] = [cursor] if cursor else []
    offset: int | None = None
    served = 0
    while True:
        if offset is not None:
            page = client.list_users({**params, "offset": offset})
        elif fallbacks:
            try:
                page = client.list_users({**params, "starting_after": fallbacks[-1]})
            except ClerkRequestError:
                fallbacks.pop()
                if not fallbacks:
                    client.offset_fallbacks += 1
                    offset = served
                continue
        else:
            page = client.list_users(params)
        served += len(page)
        if offset is not None:
            offset += len(page)
        ids = [u.id for u in page if isinstance(u, ClerkUser)]
        usable = [i for i in ids if isinstance(i, str) and i]
        last = len(page) < limit
        if not last and not usable:
            raise ClerkDataError("A full page of users has no ids; cannot page on.")
        if not last and fallbacks and usable[-1] == fallbacks[-1]:
            raise ClerkDataError("Loop detected in pagination: Clerk returned a page twice.")
        cursor = usable[-1] if usable else (fallbacks[-1] if fallbacks else None)
        fallbacks = usable[-8:]  # where to step back to if the cursor user disappears
        # Hand the parsed page (~2 MB of objects) over without keeping it in this frame:
        # a walker that waits to queue its page would otherwise hold two.
        held = [page]
        del page, ids, usable
        yield Page(window, held.pop(), cursor, last)
        if last:
            return


def at_ms(client: ClerkClient, ms: int, *, limit: int = PAGE_LIMIT) -> Iterator[list[Any]]:
    """Every user created in millisecond ``ms``, by ``created_at`` filters alone, whatever
    the cursor does with users that share a millisecond (Clerk does not say). The bounds
    reach a millisecond either side, so the answer holds ``ms`` whether they are inclusive
    or not (callers deduplicate). A millisecond of more than a page (an import) is paged by
    offset, and read again until a whole pass finds no new id: its ties may come back in
    another order between requests."""
    params = {
        "limit": limit,
        "order_by": "+created_at",
        "created_at_after": ms - 1,
        "created_at_before": ms + 1,
    }
    known: set[str] = set()
    for _ in range(3):
        offset, fresh = 0, False
        while True:
            page = client.list_users({**params, "offset": offset} if offset else params)
            ids = {u.id for u in page if isinstance(u, ClerkUser)}
            fresh = fresh or not ids <= known
            known |= {i for i in ids if isinstance(i, str)}
            yield page
            if len(page) < limit:
                break
            offset += len(page)
        if offset == 0 or not fresh:
            return  # one page held it all, or a whole pass found nothing new


def sweep(
    client: ClerkClient, start_ms: int, before: int | None, *, limit: int = PAGE_LIMIT
) -> Iterator[list[Any]]:
    """Every user created at or after ``start_ms`` (and before ``before``), by
    ``created_at`` filters alone: for a window whose cursor walk may have ended early (a
    deleted cursor answered ``200 []``, say). Each request starts at the newest
    millisecond of the one before (re-read: it may go on past the page); a full page
    within one millisecond is read whole with :func:`at_ms`, then stepped past."""
    low = start_ms
    while True:
        params: dict[str, Any] = {
            "limit": limit,
            "order_by": "+created_at",
            "created_at_after": low - 1,
        }
        if before is not None:
            params["created_at_before"] = before
        page = client.list_users(params)
        yield page
        if len(page) < limit:
            return
        stamps = sorted(
            {
                u.created_at
                for u in page
                if isinstance(u, ClerkUser) and isinstance(u.created_at, int)
            }
        )
        if not stamps:
            raise ClerkDataError("A full page of users has no created_at; cannot page on.")
        if stamps[-1] > low:
            low = stamps[-1]
        else:  # the page is all within low (or the millisecond below, if inclusive)
            for ms in stamps:
                yield from at_ms(client, ms, limit=limit)
            low += 1


def walk_recent(
    client: ClerkClient, since_ms: int, *, limit: int = PAGE_LIMIT, max_pages: int
) -> Iterator[RecentPage]:
    """Users newest change first, down to ``since_ms``: ``order_by=-updated_at`` paged by
    ``offset`` (Clerk has no updated_at filter, and allows its cursor only with created_at
    order). Ends with the first page that reaches below ``since_ms`` or ends the list
    (``done``), or after ``max_pages`` pages (the last one then is not ``done``).

    Offset paging over a list that changes under it: a user changed mid-walk jumps to the
    front and pushes the users before it one place deeper, so a later page re-reads one
    already read (callers deduplicate, see ``Store.see_and_compare``); the change itself is
    read by the next run, whose watermark is never later than this run's start. A user
    deleted mid-walk pulls the rest one place up, so one user may be skipped; a deletion
    also lowers Clerk's count, which makes ``sync`` run the full reconcile. The overlap
    callers subtract from their watermark covers clock skew and users sharing a ms.

    Users sharing the page's oldest ``updated_at`` may come back in another order on the
    next request (Clerk does not say how it breaks ties), so the next page starts where
    that group starts, and reads it again whole. A group larger than a page cannot be
    re-read that way: the page it goes on into is marked not ``exact`` (the caller then
    trusts the walk no more than one cut short).
    """
    offset = 0
    spanning: int | None = None  # the updated_at of a page that was one group throughout
    for _ in range(max_pages):
        users = client.list_users({"limit": limit, "order_by": "-updated_at", "offset": offset})
        stamps = [u.updated_at for u in users if isinstance(u, ClerkUser)]
        times = [t for t in stamps if isinstance(t, int) and not isinstance(t, bool)]
        if len(users) >= limit and not times:
            raise ClerkDataError(
                "A full page of users has no updated_at; cannot tell how far back to read."
            )
        done = len(users) < limit or min(times) < since_ms
        # the group before went on into this page: it was larger than a page
        exact = spanning is None or spanning not in times
        tied = sum(1 for t in stamps if t == min(times)) if times else 0
        yield RecentPage(users, offset, done, exact)
        if done:
            return
        whole = tied >= len(users)  # one group throughout: cannot be re-read from its start
        spanning = min(times) if whole else None
        offset += len(users) if whole else len(users) - tied

"""Clerk Backend API client: auth, pacing, retries, paging. The only module that speaks HTTP.

Responses are classified where they arrive: 429, 5xx, timeouts, dropped connections and
truncated bodies are retriable; 401/403 and other 4xx are not. Retrying happens in one place
(:meth:`ClerkClient._request`), bounded in attempts and in total time.

Memory stays bounded whatever the other end sends: a body longer than :data:`MAX_BODY_BYTES`
is cut off while it streams in, and a list page longer than the ``limit`` asked for is
refused; both are protocol errors, retried, then the run fails closed. Only Clerk can say a
user is gone: a 404 counts as "no such user" only with Clerk's own error body
(``resource_not_found``), and callers check the path with a user Clerk lists
(:meth:`ClerkClient.verify_lookup`) before they trust one.
"""

from __future__ import annotations

import queue
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pydantic_core
from pydantic import SecretStr
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from clerk_sync_cli import __version__
from clerk_sync_cli.errors import (
    ClerkAuthError,
    ClerkDataError,
    ClerkRequestError,
    ClerkUnavailableError,
    RetriableError,
    UnconfirmedError,
)
from clerk_sync_cli.settings import key_kind

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
PAGE_LIMIT = 500  # Clerk's maximum page size
RATE_LIMITS = {"sk_live_": 1000, "sk_test_": 100}  # requests per 10 s, per instance
#: Pages parsed at once. Parsing holds the GIL, so more parsers only hold more parsed pages
#: (~2 MB each) in memory and in the way of the database thread; the requests themselves
#: stay as concurrent as --concurrency says.
PARSERS = 2
#: The longest answer read from Clerk, enforced while it streams in. A page of 500 users is
#: about 1 MB; this leaves room for users with large metadata, never for an endless body.
MAX_BODY_BYTES = 16 * 1024 * 1024
#: All the bodies a client holds at once (streaming in, or waiting to be parsed), whatever
#: the number of walkers: 16 near-cap answers would otherwise hold 256 MiB. A Clerk page is
#: ~1 MB, so only a broken upstream meets this; its request then fails and is retried.
MAX_BODIES_BYTES = 64 * 1024 * 1024


class ByteBudget:
    """Bytes a client may hold in response bodies at once (see :data:`MAX_BODIES_BYTES`).
    Never waits (walkers holding parts of bodies could wait on each other for ever):
    :meth:`take` answers False when the budget is spent."""

    def __init__(self, total: int = MAX_BODIES_BYTES) -> None:
        self.total = total
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.total:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    max_seconds: float = 300.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_cap: float = 60.0


def default_max_rps(secret_key: SecretStr) -> float:
    """A pace safely under the instance's limit, inferred from the key's prefix."""
    value = secret_key.get_secret_value()
    per_10s = next((n for p, n in RATE_LIMITS.items() if value.startswith(p)), 100)
    return per_10s / 10 * 0.9


class RateLimiter:
    """A token bucket shared by every request of a run, retries included.

    ``cool_down`` stops everyone until a server-given time, so one 429 pauses all workers.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._sleep = sleep
        self.capacity = max(1.0, rate)  # at most one second's worth in a burst
        self._tokens = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._resume_at = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                wait = max(self._resume_at - now, 0.0)
                if wait == 0.0 and self._tokens >= 1.0 - 1e-9:  # tolerate float rounding
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return
                if wait == 0.0:
                    wait = (1.0 - self._tokens) / self.rate
            self._sleep(wait)

    def cool_down(self, seconds: float) -> None:
        with self._lock:
            self._resume_at = max(self._resume_at, self._clock() + seconds)
            self._tokens = 0.0


def retry_after_seconds(header: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: an integer, or an HTTP date."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _clerk_message(status: int, body: bytes) -> str:
    """Clerk's own words for an error response (``errors[0].long_message``), if any."""
    try:
        first = pydantic_core.from_json(body)["errors"][0]
        text = str(first.get("long_message") or first.get("message") or "")
        code = str(first.get("code") or "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return f"HTTP {status}"
    return f"{code}: {text}" if code else text


def _clerk_not_found(body: bytes) -> bool:
    """Whether a 404's body is Clerk's own "no such resource": a JSON error body with an
    ``errors[].code`` of ``resource_not_found``. A proxy's or a router's 404 is not."""
    try:
        errors = pydantic_core.from_json(body).get("errors")
    except (ValueError, AttributeError):
        return False
    return isinstance(errors, list) and any(
        isinstance(e, dict) and e.get("code") == "resource_not_found" for e in errors
    )


def _foreign_404(response: httpx.Response, body: bytes) -> str:
    """What a 404 that is not Clerk's looks like, for the message: its type, or its code."""
    if not body.strip():
        return "an empty body"
    try:
        first = pydantic_core.from_json(body)["errors"][0]
        return f"error code {str(first['code'])[:40]!r}"
    except (ValueError, KeyError, IndexError, TypeError):
        kind = response.headers.get("Content-Type", "").split(";")[0].strip()
        return f"a {kind[:40]} body" if kind else "a body that is not Clerk's"


def _user_path(user_id: str) -> str:
    """``/users/{id}`` with the id as one path segment, whatever it holds; an id a URL would
    resolve as ``.`` or ``..`` is refused (no Clerk id is)."""
    segment = quote(user_id, safe="")
    if not segment.strip("."):
        raise ClerkRequestError(f"{user_id!r} is not a Clerk user id.")
    return f"/users/{segment}"


@dataclass(frozen=True)
class Window:
    """A slice of the list by ``created_at`` (ms): strictly after ``after``, strictly before
    ``before``; None is open-ended. Neighbouring windows overlap by a millisecond so that the
    whole list is covered whether Clerk's bounds are inclusive or exclusive."""

    no: int
    after: int | None = None
    before: int | None = None

    def params(self) -> dict[str, int]:
        params = {}
        if self.after is not None:
            params["created_at_after"] = self.after
        if self.before is not None:
            params["created_at_before"] = self.before
        return params


def split_windows(oldest: int, newest: int, count: int) -> list[Window]:
    """``count`` windows of equal time span covering every ``created_at``, the first open
    below and the last open above (so sign-ups during the walk land in it)."""
    count = max(1, min(count, newest - oldest))
    bounds = [oldest + (newest - oldest) * k // count for k in range(1, count)]
    lows: list[int | None] = [None, *(b - 1 for b in bounds)]
    highs: list[int | None] = [*bounds, None]
    return [Window(n, lo, hi) for n, (lo, hi) in enumerate(zip(lows, highs, strict=True))]


@dataclass(frozen=True)
class Page:
    window: Window
    users: list[Any]
    cursor: str | None  # the last user id: where the walk resumes after this page
    last: bool  # the window is exhausted


@dataclass(frozen=True)
class RecentPage:
    """A page of the newest-changed-first walk (:meth:`ClerkClient.walk_recent`)."""

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
            for page in client.walk(window, cursor, limit=limit):
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
                for page in client.walk(window, cursor, limit=limit):
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


class ClerkClient:
    """Talks to ``base_url`` (e.g. ``https://api.clerk.com/v1``) with one secret key."""

    def __init__(
        self,
        http: httpx.Client,
        base_url: str,
        secret_key: SecretStr,
        *,
        max_rps: float | None = None,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._key = secret_key
        self._kind = key_kind(secret_key)
        self.limiter = limiter or RateLimiter(max_rps or default_max_rps(secret_key), sleep=sleep)
        self._retry = retry
        self._sleep = sleep
        self.requests = 0
        self.offset_fallbacks = 0
        self._count_lock = threading.Lock()
        self._parsing = threading.BoundedSemaphore(PARSERS)
        self.budget = ByteBudget()

    # -- the API -----------------------------------------------------------------------------

    def count_users(self) -> int:
        body = self._get_json("/users/count", {})
        total = body.get("total_count") if isinstance(body, dict) else None
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise ClerkDataError("Clerk's /users/count answer has no total_count; stopping.")
        return total

    def get_instance(self) -> dict[str, Any]:
        body = self._get_json("/instance", {})
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise ClerkDataError("Clerk's /instance answer has no id; stopping.")
        return body

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        """One user, or None when Clerk answers its own 404 (deleted or never existed).

        A 404 without Clerk's ``resource_not_found`` body raises :class:`UnconfirmedError`.
        Even Clerk's own 404 proves nothing about a path that does not reach the user API
        (``CLERK_API_URL`` routed elsewhere): check it with :meth:`verify_lookup` first."""
        body = self._get_json(_user_path(user_id), {}, missing_ok=True)
        if body is None:
            return None
        if not isinstance(body, dict):
            raise ClerkDataError(f"Clerk's answer for user {user_id} is not an object; stopping.")
        if body.get("id") != user_id:
            raise ClerkDataError(
                f"Clerk's answer for user {user_id} is not that user; stopping.",
                "Check CLERK_API_URL points at the Backend API (https://api.clerk.com/v1).",
            )
        return body

    def verify_lookup(self, known_id: str) -> None:
        """The positive control before any 404 is trusted: ``GET /users/{id}`` of a user Clerk
        lists must answer 200 with that user, which proves the path reaches Clerk's user API.
        Raises :class:`UnconfirmedError` (or the request's own error) otherwise."""
        try:
            found = self.get_user(known_id)
        except (ClerkDataError, UnconfirmedError) as exc:
            raise UnconfirmedError(
                f"checked with {known_id}, a user Clerk lists: {exc.message.rstrip('.')}",
                exc.hint,
            ) from None
        if found is None:
            raise UnconfirmedError(
                f"GET /users/{{id}} answered 404 for {known_id}, a user Clerk lists, so its "
                "404s prove nothing"
            )

    def other_user_id(self, user_id: str) -> str | None:
        """A user Clerk lists other than ``user_id`` (the newest one), or None."""
        page = self._list({"limit": 1})
        first = page[0].get("id") if page and isinstance(page[0], dict) else None
        return first if isinstance(first, str) and first and first != user_id else None

    def created_at_range(self) -> tuple[int, int] | None:
        """(oldest, newest) ``created_at`` in ms, or None when there are no users."""
        oldest, newest = both(lambda: self._end("+created_at"), lambda: self._end("-created_at"))
        return None if oldest is None or newest is None else (oldest, newest)

    def _end(self, order: str) -> int | None:
        page = self._get_json("/users", {"limit": 1, "order_by": order}, max_items=1)
        if not isinstance(page, list):
            raise ClerkDataError("Clerk's user list is not a JSON array; stopping.")
        if not page:
            return None
        created = page[0].get("created_at") if isinstance(page[0], dict) else None
        if not isinstance(created, int):
            raise ClerkDataError("A user has no numeric created_at; cannot split the walk.")
        return created

    def walk(
        self, window: Window, cursor: str | None = None, *, limit: int = PAGE_LIMIT
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
                page = self._list({**params, "offset": offset})
            elif fallbacks:
                try:
                    page = self._list({**params, "starting_after": fallbacks[-1]})
                except ClerkRequestError:
                    fallbacks.pop()
                    if not fallbacks:
                        self.offset_fallbacks += 1
                        offset = served
                    continue
            else:
                page = self._list(params)
            served += len(page)
            if offset is not None:
                offset += len(page)
            ids = [u.get("id") for u in page if isinstance(u, dict)]
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

    def at_ms(self, ms: int, *, limit: int = PAGE_LIMIT) -> Iterator[list[Any]]:
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
                page = self._list({**params, "offset": offset} if offset else params)
                ids = {u.get("id") for u in page if isinstance(u, dict)}
                fresh = fresh or not ids <= known
                known |= {i for i in ids if isinstance(i, str)}
                yield page
                if len(page) < limit:
                    break
                offset += len(page)
            if offset == 0 or not fresh:
                return  # one page held it all, or a whole pass found nothing new

    def sweep(
        self, start_ms: int, before: int | None, *, limit: int = PAGE_LIMIT
    ) -> Iterator[list[Any]]:
        """Every user created at or after ``start_ms`` (and before ``before``), by
        ``created_at`` filters alone: for a window whose cursor walk may have ended early (a
        deleted cursor answered ``200 []``, say). Each request starts at the newest
        millisecond of the one before (re-read: it may go on past the page); a full page
        within one millisecond is read whole with :meth:`at_ms`, then stepped past."""
        low = start_ms
        while True:
            params: dict[str, Any] = {
                "limit": limit,
                "order_by": "+created_at",
                "created_at_after": low - 1,
            }
            if before is not None:
                params["created_at_before"] = before
            page = self._list(params)
            yield page
            if len(page) < limit:
                return
            stamps = sorted(
                {
                    u["created_at"]
                    for u in page
                    if isinstance(u, dict) and isinstance(u.get("created_at"), int)
                }
            )
            if not stamps:
                raise ClerkDataError("A full page of users has no created_at; cannot page on.")
            if stamps[-1] > low:
                low = stamps[-1]
            else:  # the page is all within low (or the millisecond below, if inclusive)
                for ms in stamps:
                    yield from self.at_ms(ms, limit=limit)
                low += 1

    def walk_recent(
        self, since_ms: int, *, limit: int = PAGE_LIMIT, max_pages: int
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
            users = self._list({"limit": limit, "order_by": "-updated_at", "offset": offset})
            stamps = [u.get("updated_at") for u in users if isinstance(u, dict)]
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

    def _list(self, params: dict[str, Any]) -> list[Any]:
        page = self._get_json("/users", params, max_items=int(params["limit"]))
        if not isinstance(page, list):
            raise ClerkDataError(
                "Clerk's user list is not a JSON array; stopping before changing anything."
            )
        return page

    # -- plumbing ----------------------------------------------------------------------------

    def _get_json(
        self,
        path: str,
        params: dict[str, Any],
        *,
        missing_ok: bool = False,
        max_items: int | None = None,
    ) -> Any:
        """The parsed answer; None for Clerk's own 404 when ``missing_ok``. ``max_items``:
        a JSON array longer than this (a page longer than its ``limit``) is a protocol error."""
        return self._request("GET", path, params, missing_ok=missing_ok, max_items=max_items)

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        *,
        missing_ok: bool,
        max_items: int | None = None,
    ) -> Any:
        policy = self._retry
        retrying = Retrying(
            retry=retry_if_exception_type(RetriableError),
            stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_seconds),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._attempt(
                        method, path, params, missing_ok=missing_ok, max_items=max_items
                    )
        except RetriableError as exc:
            raise ClerkUnavailableError(
                f"Clerk is unavailable: {exc.message} (gave up after "
                f"{retrying.statistics.get('attempt_number', policy.attempts)} attempts).",
                "Try again later; nothing was deactivated.",
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        policy = self._retry
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RetriableError) and error.retry_after is not None:
            return 0.0  # the limiter's shared cool-down holds every request until Retry-After
        ceiling = min(policy.backoff_max, policy.backoff_base * 2 ** (state.attempt_number - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography

    def _attempt(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        *,
        missing_ok: bool,
        max_items: int | None = None,
    ) -> Any:
        self.limiter.acquire()
        with self._count_lock:
            self.requests += 1
        url = self._base + path
        headers = {
            "Authorization": f"Bearer {self._key.get_secret_value()}",
            "User-Agent": f"clerk-sync/{__version__}",
            "Accept": "application/json",
            "Accept-Encoding": "gzip",  # decoded here, within the cap (_read_capped)
        }
        try:
            # Streamed so the body is ours alone: a Response keeps what it read in reference
            # cycles that only the garbage collector frees, a megabyte a page.
            with self._http.stream(method, url, params=params, headers=headers) as response:
                body = _read_capped(response, f"{method} {path}", self.budget)
        except httpx.TimeoutException:
            raise RetriableError(f"request to {self._base} timed out") from None
        except httpx.TransportError as exc:
            raise RetriableError(f"cannot reach {self._base} ({_transport_reason(exc)})") from None
        try:
            return self._answer(response, body, method, path, missing_ok, max_items)
        finally:
            self.budget.give(len(body))  # what _read_capped took for it

    def _answer(
        self,
        response: httpx.Response,
        body: bytes,
        method: str,
        path: str,
        missing_ok: bool,
        max_items: int | None,
    ) -> Any:
        """What an answer means: the parsed body, None (Clerk's 404), or the error to raise."""
        status = response.status_code
        if status == 429:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait is not None:
                self.limiter.cool_down(min(wait, self._retry.retry_after_cap))
            raise RetriableError("rate limited (HTTP 429)", retry_after=wait)
        if status >= 500:
            raise RetriableError(f"HTTP {status} from Clerk")
        if status in (401, 403):
            raise ClerkAuthError(
                f"Clerk rejected the secret key ({self._kind}): HTTP {status}.",
                "Check CLERK_SECRET_KEY (Clerk dashboard → Configure → API keys) and CLERK_API_URL.",
            )
        if status == 404 and missing_ok:
            if _clerk_not_found(body):
                return None
            raise UnconfirmedError(
                f"{method} {path} answered HTTP 404 with {_foreign_404(response, body)}, "
                "not Clerk's resource_not_found",
                "Check CLERK_API_URL reaches Clerk's Backend API (https://api.clerk.com/v1), "
                "not a proxy or router answering for it.",
            )
        if status >= 400:
            raise ClerkRequestError(
                f"Clerk refused {method} {path}: HTTP {status} {self._scrub(_clerk_message(status, body))}",
                "Check CLERK_API_URL points at the Backend API (https://api.clerk.com/v1).",
            )
        try:
            with self._parsing:
                parsed = pydantic_core.from_json(body)  # ~2x json.loads on big pages
        except ValueError:
            raise RetriableError(f"truncated or non-JSON answer to {path}") from None
        if max_items is not None and isinstance(parsed, list) and len(parsed) > max_items:
            raise RetriableError(
                f"{method} {path} answered {len(parsed)} users for a page of at most {max_items}"
            )
        return parsed

    def _scrub(self, text: str) -> str:
        secret = self._key.get_secret_value()
        return text.replace(secret, self._kind) if secret else text


def _read_capped(response: httpx.Response, what: str, budget: ByteBudget) -> bytes:
    """The body, read as it streams in and abandoned past :data:`MAX_BODY_BYTES` (a declared
    ``Content-Length`` over the cap is refused before reading anything). A gzip body is
    decoded here, never more than the cap: httpx would inflate each 64 KiB read whole, and
    64 KiB of gzip can hold 64 MB. The body's bytes are taken from ``budget``; the caller
    gives them back once it is done with the body (here, if reading it fails)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RetriableError(f"{what} announced {_mib(int(declared))}, over the {_mib()} cap")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in _DECODERS:
        raise RetriableError(f"{what} answered in an encoding not asked for ({encoding[:20]})")
    inflate = _DECODERS[encoding]()
    chunks: list[bytes] = []
    size = 0
    try:
        for raw in response.iter_raw():
            while raw:
                if inflate is None:
                    chunk, raw = raw, b""
                else:  # at most one byte past the cap, whatever the ratio
                    chunk = inflate.decompress(raw, MAX_BODY_BYTES - size + 1)
                    raw = inflate.unconsumed_tail
                _take(budget, len(chunk), what)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise RetriableError(f"{what} answered more than the {_mib()} cap")
                chunks.append(chunk)
        if inflate is not None:
            rest = inflate.flush()  # at most zlib's window
            _take(budget, len(rest), what)
            size += len(rest)
            chunks.append(rest)
            if not inflate.eof:
                raise RetriableError(f"truncated gzip answer to {what}")
        return b"".join(chunks)
    except BaseException:
        budget.give(size)
        raise


def _take(budget: ByteBudget, n: int, what: str) -> None:
    if not budget.take(n):
        raise RetriableError(
            f"{what}: the answers in flight passed {_mib(budget.total)} in all (too large)"
        )


_DECODERS: dict[str, Callable[[], Any]] = {
    "identity": lambda: None,
    "": lambda: None,
    "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "deflate": lambda: zlib.decompressobj(),
}


def _mib(size: int = MAX_BODY_BYTES) -> str:
    return f"{size / 2**20:.0f} MiB"


def _transport_reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    return re.sub(r"\s+", " ", text)[:160]

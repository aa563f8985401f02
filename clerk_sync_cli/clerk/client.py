"""Clerk Backend API client: auth, requests, answers, retries, bounded bodies. The only module
that speaks HTTP; pacing is :mod:`.pacing`'s, walking the list :mod:`.walking`'s.

Responses are classified where they arrive: 429, 5xx, timeouts, dropped connections and
truncated bodies are retriable; 401/403 and other 4xx are not. Retrying happens in one place
(:meth:`ClerkClient._request`), bounded in attempts and in total time.

Memory stays bounded whatever the other end sends: a body longer than :data:`MAX_BODY_BYTES`
is cut off while it streams in, and a list page longer than the ``limit`` asked for is
refused; both are protocol errors, retried, then the run fails closed. Only Clerk can say a
user is gone: a 404 counts as "no such user" only with Clerk's own error body
(``resource_not_found``), and callers check the path with a user Clerk lists
(:meth:`ClerkClient.verify_lookup`) before they trust one.

The key never leaves in a message: the client registers it with :mod:`clerk_sync_cli.scrub`
(as loading the settings does), through which every error message passes.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
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
from clerk_sync_cli.clerk.pacing import RateLimiter, default_max_rps, retry_after_seconds
from clerk_sync_cli.decoding import ClerkUser, decode_json, decode_page
from clerk_sync_cli.errors import (
    ClerkAuthError,
    ClerkDataError,
    ClerkRequestError,
    ClerkUnavailableError,
    RetriableError,
    UnconfirmedError,
)
from clerk_sync_cli.scrub import register
from clerk_sync_cli.settings import key_kind

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
        register(secret_key.get_secret_value())  # a client made in a test scrubs it too
        self.limiter = limiter or RateLimiter(max_rps or default_max_rps(secret_key), sleep=sleep)
        self._retry = retry
        self._sleep = sleep
        self.requests = 0
        self.offset_fallbacks = 0  # windows a walk read by offset, the cursor refused (walking)
        self._count_lock = threading.Lock()
        self._parsing = threading.BoundedSemaphore(PARSERS)
        self.budget = ByteBudget()

    # -- the key's instance, remembered without the key -----------------------------------------

    def key_check(self, salt: str | None = None) -> str:
        """``salt:hexdigest``, the salted SHA-256 of this client's API URL and key: stored, it
        proves a later run uses the same key against the same API (so the same instance, as a
        Clerk key belongs to one for life) without storing anything the key can be read from."""
        salt = salt or secrets.token_hex(16)
        material = f"{salt}\n{self._base}\n{self._key.get_secret_value()}".encode()
        return f"{salt}:{hashlib.sha256(material).hexdigest()}"

    def has_key(self, key_check: str) -> bool:
        """Whether ``key_check`` (:meth:`key_check`) was made from this client's URL and key."""
        salt, _, _digest = key_check.partition(":")
        return bool(salt) and hmac.compare_digest(self.key_check(salt), key_check)

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

    def get_jwks(self) -> dict[str, Any]:
        """The instance's session-token keys (``GET /jwks``; Clerk does not rate-limit it)."""
        body = self._get_json("/jwks", {})
        if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
            raise ClerkDataError("Clerk's /jwks answer has no keys.")
        return body

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        """One user, or None when Clerk answers its own 404 (deleted or never existed).

        A 404 without Clerk's ``resource_not_found`` body raises :class:`UnconfirmedError`.
        Even Clerk's own 404 proves nothing about a path that does not reach the user API
        (``CLERK_API_URL`` routed elsewhere): check it with :meth:`verify_lookup` first."""
        body = self._get_json(_user_path(user_id), {}, missing_ok=True, decode=decode_json)
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
        page = self.list_users({"limit": 1})
        first = page[0].id if page and isinstance(page[0], ClerkUser) else None
        return first if isinstance(first, str) and first and first != user_id else None

    def list_users(self, params: dict[str, Any]) -> list[ClerkUser | Any]:
        """One page of ``GET /users`` with ``params`` (``limit`` among them): a list of at
        most ``limit`` users (:class:`ClerkUser`, or an entry that is not an object, as it
        came), or a protocol error."""
        page = self._get_json("/users", params, max_items=int(params["limit"]), decode=decode_page)
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
        decode: Callable[[bytes], Any] = pydantic_core.from_json,
    ) -> Any:
        """The parsed answer; None for Clerk's own 404 when ``missing_ok``. ``max_items``:
        a JSON array longer than this (a page longer than its ``limit``) is a protocol error.
        ``decode``: how a successful body is read (``ValueError`` when it is not JSON)."""
        return self._request(
            "GET", path, params, missing_ok=missing_ok, max_items=max_items, decode=decode
        )

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        *,
        missing_ok: bool,
        max_items: int | None = None,
        decode: Callable[[bytes], Any] = pydantic_core.from_json,
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
                        method,
                        path,
                        params,
                        missing_ok=missing_ok,
                        max_items=max_items,
                        decode=decode,
                    )
        except RetriableError as exc:
            error = ClerkUnavailableError(
                f"Clerk is unavailable: {exc.message} (gave up after "
                f"{retrying.statistics.get('attempt_number', policy.attempts)} attempts).",
                "Try again later; nothing was deactivated.",
            )
            error.retry_after = exc.retry_after
            raise error from None
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
        decode: Callable[[bytes], Any] = pydantic_core.from_json,
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
            return self._answer(response, body, method, path, missing_ok, max_items, decode)
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
        decode: Callable[[bytes], Any],
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
                f"Clerk refused {method} {path}: HTTP {status} {_clerk_message(status, body)}",
                "Check CLERK_API_URL points at the Backend API (https://api.clerk.com/v1).",
            )
        try:
            with self._parsing:
                parsed = decode(body)
        except ValueError:
            raise RetriableError(f"truncated or non-JSON answer to {path}") from None
        if max_items is not None and isinstance(parsed, list) and len(parsed) > max_items:
            raise RetriableError(
                f"{method} {path} answered {len(parsed)} users for a page of at most {max_items}"
            )
        return parsed


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

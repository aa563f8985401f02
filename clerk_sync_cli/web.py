"""``clerk-sync serve``'s HTTP side: an ASGI app (Starlette) with Clerk's webhook endpoint, the
guide's sign-in endpoints (:mod:`clerk_sync_cli.signin`) and a health check, importable to
mount into an existing Python backend::

    from clerk_sync_cli.settings import load_settings
    from clerk_sync_cli.web import create_app

    app.mount("/clerk-sync", create_app(load_settings()))   # FastAPI or Starlette

A delivery is checked in this order, each step before the next reads more of it: method
(405), declared and actual size (413, without reading past the limit), media type (415),
signature (400 for a missing or malformed header, 401 for a stale or wrong one), body
(415 not JSON, 400 cannot be processed), then applied together with the deliveries that
wait with it (:mod:`clerk_sync_cli.batching`, :mod:`clerk_sync_cli.receive`).
Nothing a sender controls causes a 500, and no answer echoes the payload. A sign-in call is
verified by its session token only (401 otherwise; its body is never read). Errors become
statuses in one place, :func:`_failure`; each delivery and each sign-in call leaves one log
line, with ids only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clerk_sync_cli.backend import Backend
from clerk_sync_cli.batching import Batcher
from clerk_sync_cli.clerk import ClerkClient, RetryPolicy
from clerk_sync_cli.errors import ClerkSyncError
from clerk_sync_cli.events import Event, parse_event
from clerk_sync_cli.receive import Item, Receiver
from clerk_sync_cli.scrub import scrub
from clerk_sync_cli.settings import Settings
from clerk_sync_cli.signatures import SignatureError, verify
from clerk_sync_cli.signin import Signin
from clerk_sync_cli.store import Store, connect
from clerk_sync_cli.store.pool import WAIT_S, Pool
from clerk_sync_cli.tokens import Jwks, Keys, PemKey, Session

WEBHOOK_PATH = "/api/webhooks/clerk"
HEALTH_PATH = "/healthz"
SYNC_PATH = "/api/v1/users/sync"
PROFILE_PATH = "/api/v1/users/profile"
SETTINGS_PATH = "/api/v1/users/settings"
#: The largest delivery accepted; Clerk's user events are a few KiB.
MAX_BODY = 1024 * 1024
#: Longest a delivery waits for a free connection before it is answered 503, as the pool's.
POOL_WAIT_S = WAIT_S

log = logging.getLogger("clerk_sync.serve")


class _Refused(Exception):
    """A request refused before it is verified: a status and a reason, nothing else."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(
    settings: Settings,
    *,
    signin: bool = True,
    backend: Backend | None = None,
    now: Callable[[], float] = time.time,
) -> Starlette:
    """The ASGI app ``serve`` runs: the webhook endpoint and ``/healthz``, and, unless
    ``signin`` is off, the sign-in endpoints (:mod:`clerk_sync_cli.signin`) with CORS for the
    authorized parties. Refuses (ConfigError) without a valid webhook signing secret, a
    database URL, and for sign-in the authorized parties and the Clerk key; connects to the
    database and Clerk only when a request needs them."""
    keys = settings.webhook_keys()
    backend = backend or make_backend(settings)
    # Deliveries that arrive together are applied together, in at most half the connections
    # at once: the others stay free for sign-ins (a browser waits on them), and fewer, fuller
    # batches cost less per delivery (benchmarks/bench_webhooks.py measures both).
    batches = max(1, backend.pool.size // 2)
    batcher = Batcher(Receiver(backend).receive_many, batches, wait_s=POOL_WAIT_S)

    async def webhook(request: Request) -> Response:
        started = time.monotonic()
        event: Event | None = None
        delivery_id = None
        try:
            body = await _body(request)
            _check_media_type(request)
            delivery = verify(keys, request.headers, body, now=now())
            delivery_id = delivery.id
            event = parse_event(body)
            receipt = await batcher.receive(Item(delivery, event, started))
        except Exception as exc:  # every failure is answered, see _failure
            status, message = _failure(exc)
            _log_delivery(delivery_id, event, f"{status} {message}", started)
            return JSONResponse({"error": message}, status_code=status)
        warned = f" ({len(receipt.warnings)} warnings)" if receipt.warnings else ""
        _log_delivery(delivery_id, event, receipt.outcome + warned, started)
        return JSONResponse({"outcome": receipt.outcome})

    async def health(request: Request) -> Response:
        try:
            await anyio.to_thread.run_sync(backend.check)
        except Exception as exc:
            _, message = _failure(exc)
            return JSONResponse({"status": "unavailable", "error": message}, status_code=503)
        return JSONResponse({"status": "ok"})

    routes = [
        Route(WEBHOOK_PATH, webhook, methods=["POST"]),
        Route(HEALTH_PATH, health, methods=["GET"]),
    ]
    middleware: list[Middleware] = []
    if signin:
        parties = settings.authorized_parties()
        signing_in = make_signin(settings, backend, parties, now=now)
        routes += _signin_routes(signing_in)
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=sorted(parties),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        )
    return Starlette(routes=routes, middleware=middleware)


def _signin_routes(signing_in: Signin) -> list[Route]:
    """The guide's three endpoints; each acts for the token's user only (none takes an id)."""

    def endpoint(work: Callable[[Session], dict[str, Any]]) -> Callable[[Request], Any]:
        async def answer(request: Request) -> Response:
            started = time.monotonic()
            authorization = request.headers.get("authorization")
            user: list[str] = []

            def call() -> dict[str, Any]:
                session = signing_in.session(authorization)  # may fetch the JWKS: a thread
                user.append(session.user_id)
                return work(session)

            try:
                doc = await anyio.to_thread.run_sync(call)
            except Exception as exc:  # every failure is answered, see _failure
                status, message = _failure(exc)
                retry = getattr(exc, "retry_after", None)
                headers = (
                    {"Retry-After": str(math.ceil(retry))} if status == 503 and retry else None
                )
                _log_signin(request, user, f"{status} {message}", started)
                return JSONResponse({"detail": message}, status_code=status, headers=headers)
            _log_signin(request, user, "200", started)
            return JSONResponse(doc)

        return answer

    return [
        Route(SYNC_PATH, endpoint(signing_in.sync), methods=["POST"]),
        Route(PROFILE_PATH, endpoint(signing_in.profile), methods=["GET"]),
        Route(SETTINGS_PATH, endpoint(signing_in.settings), methods=["GET"]),
    ]


def make_backend(settings: Settings) -> Backend:
    """``settings``' database: a pool of connections opened when needed, with timeouts that
    fit in Svix's 15 s (a slow database is answered 503, and retried)."""
    dsn = settings.dsn()
    tables = settings.tables()

    def make_store() -> Store:
        return Store(
            lambda: connect(dsn, application_name="clerk-sync serve"),
            tables,
            statement_timeout_ms=min(settings.clerk_sync_statement_timeout_ms, 10_000),
            lock_timeout_ms=min(settings.clerk_sync_lock_timeout_ms, 5_000),
            reconnect_attempts=1,
            sleep=lambda _: time.sleep(0.1),
        )

    return Backend(Pool(make_store, settings.clerk_sync_serve_connections), tables)


def make_signin(
    settings: Settings,
    backend: Backend,
    parties: frozenset[str],
    *,
    now: Callable[[], float] = time.time,
) -> Signin:
    """The sign-in side: a Clerk client that answers fast (one attempt: a browser waits; a
    rate limit is answered 503 with Clerk's Retry-After), and the session-token keys:
    ``CLERK_JWT_KEY`` if set, else the instance's JWKS."""
    http = httpx.Client(timeout=httpx.Timeout(5.0, connect=3.0))
    clerk = ClerkClient(
        http,
        settings.api_url(),
        settings.secret_key(),
        retry=RetryPolicy(attempts=1, max_seconds=5.0, retry_after_cap=0.0),
    )
    jwt_key = settings.clerk_jwt_key
    keys: Keys = PemKey(jwt_key.get_secret_value()) if jwt_key else Jwks(clerk.get_jwks)
    return Signin(backend, clerk, keys, parties, now=now)


async def _body(request: Request) -> bytes:
    """The body, at most :data:`MAX_BODY` bytes: a larger declared length is refused before
    reading, a longer stream (chunked, or a lying Content-Length) as soon as it passes it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "malformed Content-Length header")
        if int(declared) > MAX_BODY:
            raise _Refused(413, f"body larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _Refused(413, f"body larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_media_type(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise _Refused(415, "expected Content-Type: application/json")


def _failure(exc: BaseException) -> tuple[int, str]:
    """The one place an error becomes an HTTP status and a message (scrubbed; never the
    payload): 4xx for what the sender did, 503 for what a retry can fix, 500 for a bug."""
    if isinstance(exc, _Refused | SignatureError):
        return exc.status, exc.message
    if isinstance(exc, ClerkSyncError):
        return exc.http_status, exc.message
    log.error("internal error: %s", scrub(f"{type(exc).__name__}: {exc}")[:300])
    return 500, "internal error"


def _log_signin(request: Request, user: list[str], outcome: str, started: float) -> None:
    """One line per sign-in call: the path, the token's user id (once verified), outcome."""
    shown = user[0] if user else "-"
    ms = (time.monotonic() - started) * 1000
    log.info("signin %s %s %s %.1fms", request.url.path, shown, outcome, ms)


def _log_delivery(
    delivery_id: str | None, event: Event | None, outcome: str, started: float
) -> None:
    """One line per delivery: ids, type and outcome only (no personal data, no secret)."""
    fields: list[Any] = [
        delivery_id or "-",
        event.type if event else "-",
        (event.clerk_id if event else None) or "-",
        outcome,
        (time.monotonic() - started) * 1000,
    ]
    log.info("webhook %s %s %s %s %.1fms", *fields)

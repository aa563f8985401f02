"""The :class:`Emulator`: an emulated Clerk instance, scriptable from Python, answering HTTP
requests through :meth:`Emulator.handle` (no sockets: :mod:`.server` feeds it)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

from clerk_sync_cli.emulator.config import EmulatorConfig, configure
from clerk_sync_cli.emulator.control import control
from clerk_sync_cli.emulator.errors import ApiError, not_found
from clerk_sync_cli.emulator.faults import Faults
from clerk_sync_cli.emulator.filters import Params, parse_filters
from clerk_sync_cli.emulator.ids import b62, blake
from clerk_sync_cli.emulator.query import QueryEngine, parse_list_query
from clerk_sync_cli.emulator.render import deleted_user, json_bytes
from clerk_sync_cli.emulator.sessions import SessionKeys
from clerk_sync_cli.emulator.users import UserStore
from clerk_sync_cli.emulator.webhooks import Webhooks

_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
_Answer = tuple[int, dict[str, str], bytes]

_ROUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GET", ("v1", "users")),
    ("GET", ("v1", "users", "count")),
    ("GET", ("v1", "users", "{id}")),
    ("GET", ("v1", "instance")),
    ("GET", ("v1", "jwks")),
    ("GET", ("_emulator", "jwt-key")),
    ("POST", ("_emulator", "rotate-jwt-key")),
    ("POST", ("_emulator", "users", "{id}", "session-token")),
    ("POST", ("_emulator", "users")),
    ("PATCH", ("_emulator", "users", "{id}")),
    ("DELETE", ("_emulator", "users", "{id}")),
    ("POST", ("_emulator", "users", "{id}", "ban")),
    ("POST", ("_emulator", "users", "{id}", "unban")),
    ("GET", ("_emulator", "config")),
    ("PATCH", ("_emulator", "config")),
    ("GET", ("_emulator", "stats")),
    ("POST", ("_emulator", "reset-stats")),
    ("GET", ("_emulator", "edge-cases")),
)


def _route(method: str, path: str) -> tuple[str, str | None]:
    """(endpoint label, path argument) for a request; label "unmatched" if no route fits."""
    parts = path.strip("/").split("/")
    for route_method, pattern in _ROUTES:
        if route_method != method or len(pattern) != len(parts):
            continue
        arg: str | None = None
        for want, got in zip(pattern, parts, strict=True):
            if want == "{id}":
                arg = unquote(got)
                if not arg:
                    break
            elif want != got:
                break
        else:
            return f"{method} /{'/'.join(pattern)}", arg
    return "unmatched", None


def _ok(payload: Any) -> _Answer:
    return 200, dict(_JSON_HEADERS), json_bytes(payload)


def _instance(cfg: EmulatorConfig) -> dict[str, Any]:
    env = cfg.environment_type or (
        "production" if cfg.secret_key.startswith("sk_live_") else "development"
    )
    workspace = "ws_2" + b62(blake(f"workspace:{cfg.instance_id}".encode())[:26])
    return {
        "object": "instance",
        "id": cfg.instance_id,
        "environment_type": env,
        "allowed_origins": None,
        "workspace_id": workspace,
    }


class Emulator:
    """An emulated Clerk instance. Thread-safe: every public method takes one lock."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._users = UserStore(config)
        self._lock = self._users.lock
        self._query = QueryEngine(self._users, config)
        self._faults = Faults(config, self._lock)
        #: the signed webhooks of this emulator's changes (``wait_idle()``, ``stats()``, ...)
        self.webhooks = Webhooks(config)
        self.sessions = SessionKeys()
        # Scenario hooks for tests (Python API only, not part of Clerk's API):
        #: ids left out of every list page, yet counted and fetchable (an incomplete listing)
        self.hidden_from_list: set[str] = set()
        #: route labels that always answer 500, e.g. "GET /v1/users/{id}"
        self.failing_endpoints: set[str] = set()
        #: called before each list request with its 1-based number (to change users mid-walk)
        self.before_list: Callable[[int], None] | None = None
        #: added to every /users/count answer (a count that lags the list, or runs ahead of it)
        self.count_offset = 0
        #: when set, every list request answers 200 with exactly this body (a malformed answer)
        self.list_body: bytes | None = None
        #: list pages hold up to this many times the ``limit`` asked for (a server ignoring it)
        self.limit_factor = 1
        self._hook_seq = 0

    # -- mutations -----------------------------------------------------------------------------

    def create_user(
        self,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        email: str | None = None,
        banned: bool = False,
        created_at: int | None = None,
        user_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a user (signed up with an email code; no email address if ``email`` is None).

        ``created_at`` defaults to now (later than every base user); ``extra`` fields are
        shallow-merged into the result (e.g. ``external_id=``, ``locked=True``,
        ``public_metadata={...}``, ``updated_at=``). Sends ``user.created``.
        """
        with self._lock:  # events queue in the order of the changes
            user = self._users.create_user(
                first_name, last_name, email, banned, created_at, user_id, extra
            )
            self.webhooks.emit("user.created", user)
        return user

    def update_user(self, user_id: str, **fields: Any) -> dict[str, Any]:
        """Shallow-merge ``fields`` into a user and bump ``updated_at`` (unless given).

        ``email=`` replaces the primary address (adding one if the user has none).
        Raises KeyError for an unknown or deleted user. Sends ``user.updated``.
        """
        with self._lock:
            user = self._users.update_user(user_id, fields)
            self.webhooks.emit("user.updated", user)
        return user

    def ban_user(self, user_id: str) -> None:
        """Ban a user (an update: ``user.updated``)."""
        self.update_user(user_id, banned=True)

    def unban_user(self, user_id: str) -> None:
        """Lift a user's ban (an update: ``user.updated``)."""
        self.update_user(user_id, banned=False)

    def delete_user(self, user_id: str) -> None:
        """Delete a user; KeyError if there is no such live user. Sends ``user.deleted``."""
        with self._lock:
            self._users.delete_user(user_id)
            self.webhooks.emit("user.deleted", deleted_user(user_id))

    # -- reading -------------------------------------------------------------------------------

    def warm(self, count: int | None = None) -> int:
        """Pre-render the first ``count`` base users (default: all that fit the cache budget).

        For benchmarks that want to measure the client, not the emulator's first-touch cost.
        Returns how many users were rendered.
        """
        return self._users.warm(count)

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        return self._users.get_user(user_id)

    def session_token(self, user_id: str, **options: Any) -> str:
        """A Clerk session token for one of this instance's users (see ``sessions``)."""
        if self.get_user(user_id) is None:
            raise KeyError(user_id)
        return self.sessions.mint(user_id, **options)

    def rotate_jwt_key(self, *, keep_old: bool = True) -> str:
        return self.sessions.rotate(keep_old=keep_old)

    def user_ids(self) -> list[str]:
        """All live ids in ``+created_at`` order (O(n))."""
        return self._users.user_ids()

    def count(self) -> int:
        return self._users.count()

    def edge_case_ids(self) -> dict[str, list[str]]:
        """Live base users per edge-case kind (as generated; later updates are not tracked).

        Every kind is present when ``edge_cases`` is on and ``users >= len(EDGE_CASE_KINDS)``.
        O(users) the first time, cached after.
        """
        return self._users.edge_case_ids()

    def _decode(self, uid: str) -> int | None:
        """The base index an id encodes, or None (tests check ids do not sort by it)."""
        return self._users.base.ids.decode(uid)

    # -- knobs and counters --------------------------------------------------------------------

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change knobs (faults, undocumented behaviours) at runtime, validated; returns all."""
        with self._lock:
            return configure(self.config, changes)

    def stats(self) -> dict[str, Any]:
        """Counters since start (or the last reset).

        ``requests_total``, ``api_requests`` (/v1), ``control_requests`` (/_emulator),
        ``by_endpoint`` ({"GET /v1/users": n, ...}), ``by_status`` ({"200": n, ...}),
        ``responses_401``, ``responses_429``, ``responses_5xx``, ``truncated``, ``users_served``
        (users in list responses), ``connections`` (TCP connections accepted),
        ``webhooks`` (see :meth:`Webhooks.stats`) and ``render_cache`` (users and bytes kept
        rendered, and the budget: ``--cache-mb``).
        """
        return {
            **self._faults.stats(),
            "webhooks": self.webhooks.stats(),
            "render_cache": self._users.cache_stats(),
        }

    def reset_stats(self) -> None:
        """Zero the counters and the fail/throttle/truncate cadence (not the rate-limit window)."""
        self._faults.reset()
        self.webhooks.reset_stats()

    def close(self) -> None:
        """Stop the webhook sender (pending deliveries are abandoned). Idempotent."""
        self.webhooks.close()

    def note_connection(self) -> None:
        """Called by the HTTP server for every accepted connection."""
        self._faults.count_connection()

    # -- HTTP ----------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> _Answer:
        """Answer one HTTP request: (status, headers, body).

        If the returned headers carry ``Content-Length`` it differs from ``len(body)``: the
        response is deliberately truncated and the connection must be closed after it.
        """
        method = method.upper()
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        label, arg = _route(method, path)
        is_api = path == "/v1" or path.startswith("/v1/")
        self._faults.count_request(label, is_api)
        try:
            params = parse_qs(query, keep_blank_values=True)
            if is_api:
                self._faults.delay(params)
            self._authenticate(headers)
            if is_api and label != "GET /v1/jwks":  # Clerk does not rate-limit the JWKS
                self._faults.admit()
            if label in self.failing_endpoints:
                raise ApiError(500, "internal_clerk_error", "Oops", "Injected failure.")
            status, out_headers, payload = self._dispatch(method, path, label, arg, params, body)
        except ApiError as exc:
            status, out_headers, payload = self._error(exc)
        except Exception as exc:  # a bug: answer like Clerk would, don't kill the connection
            status, out_headers, payload = self._error(
                ApiError(500, "internal_clerk_error", "Internal error", f"emulator bug: {exc!r}")
            )
        out_headers, payload = self._faults.count_response(status, label, out_headers, payload)
        return status, out_headers, payload

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        value = headers.get("Authorization")
        if value is None:
            value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scheme, _, token = value.strip().partition(" ")
        expected = self.config.secret_key.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise ApiError(
                401,
                "authentication_invalid",
                "Invalid authentication",
                "The provided secret key is invalid. Make sure that your secret key is correct.",
            )

    def _error(self, exc: ApiError) -> _Answer:
        trace = os.urandom(16).hex()
        long_message = exc.long_message
        key = self.config.secret_key
        if key and key in long_message:  # error messages echo input; never the key
            long_message = long_message.replace(key, "[redacted]")
        body = {
            "errors": [
                {
                    "message": exc.message,
                    "long_message": long_message,
                    "code": exc.code,
                    "meta": exc.meta,
                }
            ],
            "clerk_trace_id": trace,
        }
        headers = {**_JSON_HEADERS, **exc.headers, "Clerk-Trace-Id": trace}
        return exc.status, headers, json_bytes(body)

    def _dispatch(
        self, method: str, path: str, label: str, arg: str | None, params: Params, body: bytes
    ) -> _Answer:
        if label == "GET /v1/users":
            return 200, dict(_JSON_HEADERS), self._list(params)
        if label == "GET /v1/users/count":
            total = max(0, self._count(params) + self.count_offset)
            return _ok({"object": "total_count", "total_count": total})
        if label == "GET /v1/users/{id}":
            assert arg is not None
            user = self.get_user(arg)
            if user is None:
                raise not_found(f"No user was found with id {arg}")
            return _ok(user)
        if label == "GET /v1/instance":
            return _ok(_instance(self.config))
        if label == "GET /v1/jwks":
            return _ok(self.sessions.jwks())
        if " /_emulator/" in label:
            return _ok(control(self, label, arg, body))
        raise not_found(f"No route matches {method} {path}")

    def _list(self, params: Params) -> bytes:
        hook = self.before_list
        if hook is not None:
            with self._lock:
                self._hook_seq += 1
                seq = self._hook_seq
            hook(seq)
        if self.list_body is not None:
            return self.list_body
        query = parse_list_query(params)
        users = self._users
        with self._lock:
            refs = self._query.page(query, query.limit * self.limit_factor)
            if self.hidden_from_list:
                refs = [r for r in refs if users.ref_id(r) not in self.hidden_from_list]
            parts = [users.ref_bytes(ref) for ref in refs]
            self._faults.count_served(len(parts))
        return b"[" + b",".join(parts) + b"]"

    def _count(self, params: Params) -> int:
        filters = parse_filters(params)
        with self._lock:
            return self._query.count(filters)

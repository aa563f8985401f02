"""The guide's sign-in call, without trusting the browser: ``POST /api/v1/users/sync`` and the
two reads beside it, for the user a verified Clerk session token names.

The body of the guide's call (the user's name, email and picture, as the browser says) is
ignored: anyone with a session could send any. Instead the user is fetched from Clerk's
Backend API and written through the apply unit, as every other way in writes it (mapping,
version gate, settings row, instance pin). A second sign-in of the same user within
:data:`FRESH_S` answers from the table without calling Clerk, so a storm of tab refreshes
cannot spend the instance's rate limit; while Clerk rate-limits, requests are answered 503
with its ``Retry-After`` without calling it again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from clerk_sync_cli.apply import Target, apply_users, delete_user
from clerk_sync_cli.backend import Backend
from clerk_sync_cli.clerk import ClerkClient
from clerk_sync_cli.errors import (
    ClerkSyncError,
    ClerkUnavailableError,
    NotFoundError,
    UnconfirmedError,
)
from clerk_sync_cli.history import Instance
from clerk_sync_cli.mapping import RejectedUser, map_user
from clerk_sync_cli.pinning import admit_instance
from clerk_sync_cli.store import users
from clerk_sync_cli.store.connection import Cursor
from clerk_sync_cli.tables import Tables
from clerk_sync_cli.tokens import Keys, Session, bearer, verify_session

#: A user synced this recently (seconds) is answered from the table.
FRESH_S = 60.0
#: Most users remembered as freshly synced (the oldest are forgotten first).
FRESH_KEEP = 100_000
#: The guide's ``UserResponse``, in order.
USER_FIELDS = (
    "id",
    "clerk_id",
    "email",
    "first_name",
    "last_name",
    "profile_image_url",
    "is_active",
    "created_at",
    "updated_at",
)
MISMATCH_HINT = (
    "Nothing was written. CLERK_SECRET_KEY must be the key of the instance that fills this "
    "table (re-pin with `clerk-sync backfill --allow-instance-change` if it really changed)."
)


class Unavailable(ClerkUnavailableError):
    """Clerk cannot be asked right now; ``retry_after`` seconds until it may be."""


class Signin:
    """The three endpoints' work, from any thread; ``clerk`` is a client that does not retry
    for long (a browser is waiting)."""

    def __init__(
        self,
        backend: Backend,
        clerk: ClerkClient,
        keys: Keys,
        parties: Collection[str],
        *,
        now: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self._clerk = clerk
        self._keys = keys
        self._parties = frozenset(parties)
        self._now = now
        self._clock = clock
        self._fresh: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._instance: Instance | None = None
        self._cool_until = 0.0
        self._lookup_checked = False

    def session(self, authorization: str | None) -> Session:
        """The verified session of a request's Authorization header (401 otherwise)."""
        return verify_session(bearer(authorization), self._keys, self._parties, now=self._now())

    # -- the endpoints --------------------------------------------------------------------

    def sync(self, session: Session) -> dict[str, Any]:
        """``POST /api/v1/users/sync``: the user as Clerk has it, written, as ``UserResponse``."""
        user_id = session.user_id
        if self._is_fresh(user_id):
            row = self._row(user_id)
            if row is not None:
                return row
        raw = self._from_clerk(user_id)
        target = self.backend.target()
        instance = self._clerk_instance()
        with self.backend.pool.store() as store:
            if raw is None:  # Clerk's own 404, checked: the user is gone
                store.atomic(lambda cur: _deleted(cur, target, instance, user_id))
                raise NotFoundError(f"Clerk has no user {user_id} (deleted): deactivated")
            mapped = map_user(raw, target.schema.limits)
            if isinstance(mapped, RejectedUser):
                raise ClerkSyncError(f"Clerk's user cannot be synced: {mapped.problem}")

            def write(cur: Cursor) -> dict[str, Any] | None:
                admit_instance(cur, instance, MISMATCH_HINT)
                outcome = apply_users(cur, target, [mapped])
                if outcome.failures:
                    raise ClerkSyncError(
                        f"the database refused this user: {outcome.failures[0].problem}"
                    )
                return _user_response(cur, target.tables, user_id)

            row = store.atomic(write)
        self._remember(user_id)
        if row is None:  # pragma: no cover - written just now, in this transaction
            raise NotFoundError("no row for this user")
        return row

    def profile(self, session: Session) -> dict[str, Any]:
        """``GET /api/v1/users/profile``: the user's row, from the table only."""
        row = self._row(session.user_id)
        if row is None:
            raise NotFoundError("no row for this user yet: POST /api/v1/users/sync first")
        return row

    def settings(self, session: Session) -> dict[str, Any]:
        """``GET /api/v1/users/settings``: the user's settings row, whatever its columns."""
        tables = self.backend.target().tables
        with self.backend.pool.store() as store:
            _, settings = store.run(users.row_and_settings, tables, session.user_id)
        if settings is None:
            raise NotFoundError("no settings row for this user")
        return {name: jsonable(value) for name, value in settings.items()}

    # -- steps ----------------------------------------------------------------------------

    def _row(self, user_id: str) -> dict[str, Any] | None:
        tables = self.backend.target().tables
        with self.backend.pool.store() as store:
            return store.run(_user_response, tables, user_id)

    def _from_clerk(self, user_id: str) -> dict[str, Any] | None:
        """The user from Clerk; None only for a 404 that is provably Clerk's (the lookup path
        checked once against a user Clerk lists). Unavailable while Clerk rate-limits."""
        wait = self._cool_until - self._clock()
        if wait > 0:
            raise _unavailable("Clerk is rate-limiting this instance", wait)
        try:
            raw = self._clerk.get_user(user_id)
            if raw is None and not self._lookup_checked:
                other = self._clerk.other_user_id(user_id)
                if other is not None:
                    self._clerk.verify_lookup(other)
                self._lookup_checked = True
        except ClerkUnavailableError as exc:
            wait = exc.retry_after if exc.retry_after is not None else 5.0
            if exc.retry_after is not None:
                self._cool_until = self._clock() + wait
            raise _unavailable(exc.message, wait) from None
        except UnconfirmedError as exc:
            raise _unavailable(
                f"could not confirm the user with Clerk: {exc.message}", 30
            ) from None
        return raw

    def _clerk_instance(self) -> Instance:
        if self._instance is None:
            try:
                self._instance = Instance.from_clerk(self._clerk.get_instance())
            except ClerkUnavailableError as exc:
                raise _unavailable(exc.message, exc.retry_after or 5.0) from None
        return self._instance

    def _is_fresh(self, user_id: str) -> bool:
        with self._lock:
            synced = self._fresh.get(user_id)
            return synced is not None and self._clock() - synced < FRESH_S

    def _remember(self, user_id: str) -> None:
        with self._lock:
            self._fresh[user_id] = self._clock()
            self._fresh.move_to_end(user_id)
            while len(self._fresh) > FRESH_KEEP:
                self._fresh.popitem(last=False)


def _unavailable(message: str, wait: float) -> Unavailable:
    error = Unavailable(message, "Nothing was written; try again after Retry-After.")
    error.retry_after = max(1.0, wait)
    return error


def _deleted(cur: Cursor, target: Target, instance: Instance, user_id: str) -> None:
    admit_instance(cur, instance, MISMATCH_HINT)
    delete_user(cur, target, user_id)


def _user_response(cur: Cursor, tables: Tables, user_id: str) -> dict[str, Any] | None:
    row, _ = users.row_and_settings(cur, tables, user_id)
    if row is None:
        return None
    return {name: jsonable(row.get(name)) for name in USER_FIELDS}


def jsonable(value: Any) -> Any:
    """A database value as JSON can carry it: times in ISO 8601, uuids and decimals as text."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value

"""Clerk user JSON → the row clerk-sync keeps in ``users``. Pure functions, no I/O.

Users arrive as :class:`~clerk_sync_cli.decoding.ClerkUser` (a list page, decoded only
as far as these rules read it) or as plain JSON objects (a webhook, ``GET /users/{id}``),
which are read the same way. Only what the sync uses is validated. A user without a usable ``id`` is rejected (it cannot be
keyed); any other field that is missing, of the wrong type or does not fit its column becomes
NULL and is reported as a :class:`FieldWarning`, so one odd value never sinks a batch and is
never truncated silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from clerk_sync_cli.decoding import ClerkUser, EmailAddress, from_object

#: The ``users`` columns clerk-sync writes and compares, in table order.
SYNCED_FIELDS: tuple[str, ...] = (
    "email",
    "first_name",
    "last_name",
    "profile_image_url",
    "is_active",
)

#: Clerk user ids: ``user_`` followed by base62 characters.
CLERK_ID_PATTERN = re.compile(r"user_[0-9A-Za-z]{1,128}")


@dataclass(frozen=True)
class ColumnLimits:
    """Character limits of the text columns (``None``: unlimited), read from the database."""

    clerk_id: int | None = 255
    email: int | None = 255
    first_name: int | None = 100
    last_name: int | None = 100
    profile_image_url: int | None = 500


class UserRow(msgspec.Struct, frozen=True):
    """What the ``users`` table should hold for one Clerk user. A struct, not a dataclass:
    a page makes 500 of them, and they are sent to Postgres as JSON in native code
    (``store.users``)."""

    clerk_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    profile_image_url: str | None
    is_active: bool
    created_at: datetime | None
    #: Clerk's ``updated_at`` (ms) of this version of the user: not a column of ``users``, but
    #: what orders versions arriving by different ways (:mod:`clerk_sync_cli.store.versions`).
    version: int | None = None

    def value(self, name: str) -> Any:
        return getattr(self, name)


@dataclass(frozen=True)
class FieldWarning:
    """A value that was stored as NULL instead, and why."""

    clerk_id: str | None
    field: str
    problem: str


class MappedUser(msgspec.Struct, frozen=True):
    row: UserRow
    warnings: tuple[FieldWarning, ...] = ()


@dataclass(frozen=True)
class RejectedUser:
    """A listed user that cannot be synced at all (no usable id)."""

    clerk_id: str | None
    problem: str
    warnings: tuple[FieldWarning, ...] = field(default=())


def map_user(raw: Any, limits: ColumnLimits = ColumnLimits()) -> MappedUser | RejectedUser:
    """Map one Clerk user (a :class:`ClerkUser`, or a JSON object) to a :class:`UserRow`,
    or reject it."""
    if type(raw) is not ClerkUser:
        raw = from_object(raw)
        if not isinstance(raw, ClerkUser):
            return RejectedUser(None, f"expected a user object, got {type(raw).__name__}")
    user_id = raw.id
    if type(user_id) is not str or not CLERK_ID_PATTERN.fullmatch(user_id):
        shown = user_id if isinstance(user_id, str) and user_id.isprintable() else None
        return RejectedUser(shown[:64] if shown else None, "missing or malformed id")
    if limits.clerk_id is not None and len(user_id) > limits.clerk_id:
        return RejectedUser(user_id[:64], f"id longer than the clerk_id column ({limits.clerk_id})")

    warnings: list[FieldWarning] = []
    email, first_name, last_name = primary_email(raw), raw.first_name, raw.last_name
    image = image_url(raw)
    if not (  # most users: every value stored as it is, decided without a call per field
        _plain(email, limits.email)
        and _plain(first_name, limits.first_name)
        and _plain(last_name, limits.last_name)
        and _plain(image, limits.profile_image_url)
    ):
        texts = (
            ("email", email, limits.email),
            ("first_name", first_name, limits.first_name),
            ("last_name", last_name, limits.last_name),
            ("profile_image_url", image, limits.profile_image_url),
        )
        values: list[str | None] = []
        for name, value, limit in texts:
            if value is None or _plain(value, limit):
                values.append(value)
                continue
            checked, problem = check_text(value, limit)
            if problem is not None:
                warnings.append(FieldWarning(user_id, name, problem))
            values.append(checked)
        email, first_name, last_name, image = values

    banned = raw.banned
    if type(banned) is not bool:
        warnings.append(FieldWarning(user_id, "is_active", "banned is not a boolean; kept active"))
        banned = False

    created = raw.created_at
    created_at = _timestamp(created) if type(created) is int else None
    if created_at is None and created is not None:
        warnings.append(FieldWarning(user_id, "created_at", "not a millisecond timestamp"))

    updated = raw.updated_at
    version = updated if type(updated) is int else None  # no order to keep: never refused

    row = UserRow(user_id, email, first_name, last_name, image, not banned, created_at, version)
    return MappedUser(row, tuple(warnings) if warnings else ())


def _timestamp(ms: int) -> datetime | None:
    """Clerk's milliseconds since the epoch as a time, or None when out of range."""
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _plain(value: Any, limit: int | None) -> bool:
    """The common case, decided cheaply: ASCII text that fits and holds no NUL byte."""
    return (
        type(value) is str
        and value != ""
        and value.isascii()
        and (limit is None or len(value) <= limit)
        and "\x00" not in value
    )


def primary_email(raw: ClerkUser) -> Any:
    """The address whose id is ``primary_email_address_id``, else the first, else None."""
    addresses: Any = raw.email_addresses
    if type(addresses) is not list or not addresses:
        return None
    primary_id = raw.primary_email_address_id
    first = None
    for address in addresses:
        if type(address) is not EmailAddress:
            continue
        if first is None:
            first = address
        if primary_id is not None and address.id == primary_id:
            return address.email_address
    return first.email_address if first is not None else None


def image_url(raw: ClerkUser) -> Any:
    """``image_url``, else the deprecated ``profile_image_url``, else None."""
    for value in (raw.image_url, raw.profile_image_url):
        if value is not None and value != "":
            return value
    return None


def check_text(value: Any, limit: int | None) -> tuple[str | None, str | None]:
    """``(value, None)`` when it can be stored as is; ``(None, why)`` when it cannot."""
    if value is None or value == "":
        return None, None
    if _plain(value, limit):
        return value, None
    if not isinstance(value, str):
        return None, f"not a string ({type(value).__name__})"
    if "\x00" in value:
        return None, "contains a NUL byte, which Postgres text cannot store"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None, "not valid Unicode (lone surrogate)"
    if limit is not None and len(value) > limit:
        return None, f"{len(value)} characters, longer than the column's {limit}"
    return value, None

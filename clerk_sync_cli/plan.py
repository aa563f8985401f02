"""The diff: what must change so the table matches Clerk. Pure functions over plain values."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from clerk_sync_cli.mapping import SYNCED_FIELDS, UserRow


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DEACTIVATE = "deactivate"
    REACTIVATE = "reactivate"
    UNCHANGED = "unchanged"
    SETTINGS_MISSING = "settings_missing"


#: Every category, in report order.
ACTIONS: tuple[Action, ...] = tuple(Action)


@dataclass(frozen=True)
class DbUser:
    """A ``users`` row as the sync sees it."""

    id: str
    clerk_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    profile_image_url: str | None
    is_active: bool | None
    has_settings: bool

    def value(self, name: str) -> Any:
        return getattr(self, name)


FieldDiff = dict[str, tuple[Any, Any]]


@dataclass(frozen=True)
class Change:
    """One planned change. ``row`` is what to write for create/update/reactivate."""

    clerk_id: str
    action: Action
    fields: FieldDiff = field(default_factory=dict)
    row: UserRow | None = None


def diff_fields(row: UserRow, existing: DbUser) -> FieldDiff:
    """Fields whose stored value differs from Clerk's, as ``{name: (old, new)}``."""
    return {
        name: (existing.value(name), row.value(name))
        for name in SYNCED_FIELDS
        if existing.value(name) != row.value(name)
    }


def plan_user(row: UserRow, existing: DbUser | None) -> list[Change]:
    """The changes for one user present in Clerk: exactly one of create/update/reactivate/
    unchanged, plus ``settings_missing`` when its row has no settings row."""
    if existing is None:
        fields = {name: (None, row.value(name)) for name in SYNCED_FIELDS}
        return [Change(row.clerk_id, Action.CREATE, fields, row)]
    fields = diff_fields(row, existing)
    if not fields:
        main = Change(row.clerk_id, Action.UNCHANGED)
    elif existing.is_active is False and row.is_active:
        main = Change(row.clerk_id, Action.REACTIVATE, fields, row)
    else:
        main = Change(row.clerk_id, Action.UPDATE, fields, row)
    if existing.has_settings:
        return [main]
    return [main, Change(row.clerk_id, Action.SETTINGS_MISSING)]


def plan_deactivation(existing: DbUser) -> Change:
    """An active row whose user is gone from Clerk."""
    return Change(existing.clerk_id, Action.DEACTIVATE, {"is_active": (existing.is_active, False)})


@dataclass(frozen=True)
class DeactivationGuard:
    """When to refuse deactivating: the defaults protect against a partial or wrong listing."""

    max_deactivations: int | None = None  # explicit allowance from --max-deactivations
    min_count: int = 10  # refuse above this many ...
    max_share: float = 0.05  # ... when they are also more than this share of active rows

    def refusal(self, candidates: int, active_rows: int, clerk_users: int) -> str | None:
        """Why deactivating ``candidates`` rows must not happen, or None when it may."""
        if candidates == 0:
            return None
        allowed = self.max_deactivations
        if allowed is not None:
            if candidates <= allowed:
                return None
            return (
                f"{candidates} rows would be deactivated, more than --max-deactivations {allowed}."
            )
        if clerk_users == 0 and active_rows > 0:
            return (
                f"Clerk listed no users while the table has {active_rows} active rows; "
                "is CLERK_SECRET_KEY for the right instance? Pass --max-deactivations N to allow."
            )
        if candidates > self.min_count and candidates > self.max_share * active_rows:
            share = 100.0 * candidates / max(active_rows, 1)
            return (
                f"{candidates} rows would be deactivated ({share:.0f}% of {active_rows} active), "
                f"over the safety limit (more than {self.min_count} and more than "
                f"{self.max_share:.0%}). Pass --max-deactivations {candidates} if this is right."
            )
        return None

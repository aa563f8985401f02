"""The diff and the deactivation guard. Pure: plain values in, plain values out."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from msgspec.structs import replace as changed

from clerk_sync_cli.mapping import UserRow
from clerk_sync_cli.plan import (
    Action,
    DbUser,
    DeactivationGuard,
    plan_deactivation,
    plan_user,
)

ROW = UserRow(
    clerk_id="user_a",
    email="a@example.com",
    first_name="Ada",
    last_name="Lovelace",
    profile_image_url="https://img/a",
    is_active=True,
    created_at=datetime(2024, 1, 1, tzinfo=UTC),
)
DB = DbUser(
    id="00000000-0000-0000-0000-000000000001",
    clerk_id="user_a",
    email="a@example.com",
    first_name="Ada",
    last_name="Lovelace",
    profile_image_url="https://img/a",
    is_active=True,
    has_settings=True,
)


def test_new_user_is_created_with_every_field() -> None:
    [change] = plan_user(ROW, None)
    assert change.action is Action.CREATE
    assert change.row == ROW
    assert change.fields["email"] == (None, "a@example.com")


def test_identical_row_is_unchanged() -> None:
    assert [c.action for c in plan_user(ROW, DB)] == [Action.UNCHANGED]


def test_changed_fields_are_listed_with_old_and_new() -> None:
    [change] = plan_user(changed(ROW, first_name="Augusta", email=None), DB)
    assert change.action is Action.UPDATE
    assert change.fields == {"first_name": ("Ada", "Augusta"), "email": ("a@example.com", None)}


def test_inactive_row_of_a_present_unbanned_user_is_reactivated() -> None:
    [change] = plan_user(ROW, replace(DB, is_active=False))
    assert change.action is Action.REACTIVATE
    assert change.fields == {"is_active": (False, True)}


def test_banned_user_with_active_row_is_an_update_to_inactive() -> None:
    [change] = plan_user(changed(ROW, is_active=False), DB)
    assert change.action is Action.UPDATE
    assert change.fields == {"is_active": (True, False)}


def test_banned_user_with_inactive_row_is_unchanged() -> None:
    changes = plan_user(changed(ROW, is_active=False), replace(DB, is_active=False))
    assert [c.action for c in changes] == [Action.UNCHANGED]


def test_null_is_active_is_drift() -> None:
    [change] = plan_user(ROW, replace(DB, is_active=None))
    assert change.action is Action.UPDATE
    assert change.fields == {"is_active": (None, True)}


def test_missing_settings_row_is_reported_beside_the_main_action() -> None:
    changes = plan_user(ROW, replace(DB, has_settings=False))
    assert [c.action for c in changes] == [Action.UNCHANGED, Action.SETTINGS_MISSING]


def test_deactivation_change() -> None:
    change = plan_deactivation(DB)
    assert (change.action, change.fields) == (Action.DEACTIVATE, {"is_active": (True, False)})


@pytest.mark.parametrize(
    ("candidates", "active", "clerk", "refused"),
    [
        (0, 1000, 1000, False),
        (10, 100, 90, False),  # 10 is not more than 10
        (11, 100, 89, True),  # more than 10 and 11% of active
        (11, 1000, 989, False),  # more than 10 but only 1.1%
        (60, 1000, 940, True),  # 6%
        (1, 5, 0, True),  # Clerk listed nobody
    ],
)
def test_default_guard(candidates: int, active: int, clerk: int, refused: bool) -> None:
    reason = DeactivationGuard().refusal(candidates, active, clerk)
    assert (reason is not None) == refused


def test_max_deactivations_allows_up_to_n_and_no_more() -> None:
    guard = DeactivationGuard(max_deactivations=60)
    assert guard.refusal(60, 100, 40) is None
    assert guard.refusal(1, 5, 0) is None
    reason = guard.refusal(61, 100, 39)
    assert reason is not None
    assert "--max-deactivations 60" in reason

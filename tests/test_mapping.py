"""Mapping rules, one by one, on Clerk's realistic user JSON. Pure: no network, no database."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from clerk_sync_cli.mapping import ColumnLimits, MappedUser, RejectedUser, map_user

EXAMPLE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "clerk_user_example.json").read_text()
)


def user(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(EXAMPLE)
    raw.update(changes)
    return raw


DEFAULT_LIMITS = ColumnLimits()


def mapped(raw: Any, limits: ColumnLimits = DEFAULT_LIMITS) -> MappedUser:
    result = map_user(raw, limits)
    assert isinstance(result, MappedUser), result
    return result


def test_realistic_user_maps_every_column() -> None:
    result = mapped(EXAMPLE)
    row = result.row
    assert (row.clerk_id, row.email, row.first_name, row.last_name) == (
        "user_2x8kQm3VbN7pLr4TzYw1HcDeFgA",
        "ada@example.com",
        "Ada",
        "Lovelace",
    )
    assert row.profile_image_url == EXAMPLE["image_url"]
    assert row.is_active is True
    assert row.created_at == datetime(2024, 5, 28, 8, 0, tzinfo=UTC)
    assert result.warnings == ()


def test_primary_email_is_found_by_id_not_position() -> None:
    addresses = list(reversed(EXAMPLE["email_addresses"]))
    assert mapped(user(email_addresses=addresses)).row.email == "ada@example.com"


def test_dangling_or_null_primary_falls_back_to_first_address() -> None:
    assert mapped(user(primary_email_address_id="idn_gone")).row.email == "ada@example.com"
    assert mapped(user(primary_email_address_id=None)).row.email == "ada@example.com"


def test_no_email_at_all_is_null() -> None:
    row = mapped(user(email_addresses=[], primary_email_address_id=None)).row
    assert row.email is None


def test_empty_names_become_null_and_unicode_is_kept() -> None:
    row = mapped(user(first_name="", last_name="Ωμέγα \u200f\u05e9\u05dc\u05d5\u05dd")).row
    assert row.first_name is None
    assert row.last_name == "Ωμέγα \u200f\u05e9\u05dc\u05d5\u05dd"


def test_image_url_falls_back_to_deprecated_profile_image_url() -> None:
    assert mapped(user(image_url=None)).row.profile_image_url == EXAMPLE["profile_image_url"]
    assert mapped(user(image_url=None, profile_image_url=None)).row.profile_image_url is None


def test_banned_is_inactive_but_locked_is_not() -> None:
    assert mapped(user(banned=True)).row.is_active is False
    assert mapped(user(locked=True)).row.is_active is True


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("first_name", "x" * 140, "140 characters, longer than the column's 100"),
        ("last_name", "nul\x00byte", "contains a NUL byte"),
        ("image_url", "https://img/" + "a" * 600, "longer than the column's 500"),
        ("first_name", 42, "not a string (int)"),
        ("last_name", "lone \ud800 surrogate", "not valid Unicode"),
    ],
)
def test_value_that_does_not_fit_is_null_with_a_warning(
    field: str, value: Any, problem: str
) -> None:
    result = mapped(user(**{field: value}))
    column = "profile_image_url" if field == "image_url" else field
    assert getattr(result.row, column) is None
    assert len(result.warnings) == 1
    warning = result.warnings[0]
    assert (warning.clerk_id, warning.field) == (EXAMPLE["id"], column)
    assert problem in warning.problem
    # the rest of the user is intact
    assert result.row.email == "ada@example.com"


def test_limits_come_from_the_database_columns() -> None:
    limits = ColumnLimits(first_name=2)
    result = mapped(EXAMPLE, limits)
    assert result.row.first_name is None
    assert [w.field for w in result.warnings] == ["first_name"]
    assert mapped(EXAMPLE, ColumnLimits(first_name=None)).row.first_name == "Ada"


@pytest.mark.parametrize("bad_id", [None, "", 17, "usr_abc", "user_abc def", "user_ab\x00c"])
def test_user_without_a_usable_id_is_rejected(bad_id: Any) -> None:
    raw = user(id=bad_id)
    result = map_user(raw)
    assert isinstance(result, RejectedUser)
    assert "id" in result.problem


def test_non_object_is_rejected() -> None:
    assert isinstance(map_user(["not", "a", "user"]), RejectedUser)


def test_unknown_fields_are_ignored() -> None:
    assert mapped(user(brand_new_field={"x": 1})).row == mapped(EXAMPLE).row


def test_bad_created_at_is_null_with_a_warning() -> None:
    result = mapped(user(created_at="yesterday"))
    assert result.row.created_at is None
    assert [w.field for w in result.warnings] == ["created_at"]

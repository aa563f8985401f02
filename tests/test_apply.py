"""The apply unit, called directly (the one place tests may): every way in writes through
:func:`apply.apply_users`, so what it promises is tested here against a real Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from clerk_sync_cli.apply import Target, apply_users, deactivate
from clerk_sync_cli.mapping import FieldWarning, MappedUser, RejectedUser, UserRow
from clerk_sync_cli.plan import Action, plan_deactivation
from clerk_sync_cli.project import schema_info
from clerk_sync_cli.store import Store, connect, runs, schema, users

from .support import rows


def user(n: int, **fields: Any) -> MappedUser:
    values: dict[str, Any] = {
        "clerk_id": f"user_{n:027d}",
        "email": f"user{n}@example.com",
        "first_name": f"First{n}",
        "last_name": f"Last{n}",
        "profile_image_url": None,
        "is_active": True,
        "created_at": None,
    }
    values.update(fields)
    warnings = tuple(values.pop("warnings", ()))
    return MappedUser(UserRow(**values), warnings)


@pytest.fixture
def store(db: psycopg.Connection[Any], dsn: str) -> Iterator[Store]:
    with Store(lambda: connect(dsn)) as store:
        yield store


def target(store: Store, *, dry_run: bool = False) -> Target:
    info = schema_info(store.run(schema.read, store.tables), writing=not dry_run)
    return Target(store.tables, info, dry_run=dry_run)


def xmins(db: psycopg.Connection[Any]) -> list[Any]:
    return [r["xmin"] for r in rows(db, "SELECT xmin::text FROM users ORDER BY clerk_id")]


def test_it_writes_new_users_with_their_settings_rows_and_counts_them(
    store: Store, db: psycopg.Connection[Any]
) -> None:
    outcome = store.atomic(lambda cur: apply_users(cur, target(store), [user(1), user(2)]))
    assert outcome.applied[Action.CREATE] == 2
    assert [c.action for c in outcome.changes] == [Action.CREATE, Action.CREATE]
    assert [r["email"] for r in rows(db)] == ["user1@example.com", "user2@example.com"]
    settings = rows(db, "SELECT count(*) AS n FROM user_monitoring_settings")
    assert settings == [{"n": 2}]


def test_an_unchanged_user_is_never_rewritten(store: Store, db: psycopg.Connection[Any]) -> None:
    store.atomic(lambda cur: apply_users(cur, target(store), [user(1), user(2)]))
    before = xmins(db)
    outcome = store.atomic(
        lambda cur: apply_users(cur, target(store), [user(1), user(2, first_name="Grace")])
    )
    assert outcome.unchanged == 1
    assert outcome.applied == {Action.UPDATE: 1}
    after = xmins(db)
    assert after[0] == before[0]  # not even an UPDATE to the same values
    assert after[1] != before[1]


def test_a_dry_run_plans_and_writes_nothing(store: Store, db: psycopg.Connection[Any]) -> None:
    outcome = store.atomic(lambda cur: apply_users(cur, target(store, dry_run=True), [user(1)]))
    assert [c.action for c in outcome.changes] == [Action.CREATE]
    assert not outcome.applied
    assert rows(db) == []


def test_a_refused_value_costs_that_user_only(store: Store, db: psycopg.Connection[Any]) -> None:
    db.execute("ALTER TABLE users ADD CONSTRAINT no_bobs CHECK (first_name <> 'Bob')")
    batch = [user(n) for n in range(7)] + [user(7, first_name="Bob")]
    outcome = store.atomic(lambda cur: apply_users(cur, target(store), batch))
    assert outcome.applied[Action.CREATE] == 7
    assert [(f.clerk_id, "no_bobs" in f.problem) for f in outcome.failures] == [
        (user(7).row.clerk_id, True)
    ]
    assert len(rows(db)) == 7


def test_a_run_counts_warns_and_writes_each_user_once(
    store: Store, db: psycopg.Connection[Any]
) -> None:
    run_id = store.run(runs.start, "diff", dry_run=False)
    warned = user(1, warnings=[FieldWarning(user(1).row.clerk_id, "email", "too long")])
    first = store.atomic(lambda cur: apply_users(cur, target(store), [warned], seen_by=run_id))
    again = store.atomic(
        lambda cur: apply_users(cur, target(store), [warned, user(2)], seen_by=run_id)
    )
    assert len(first.warnings) == 1
    assert first.applied[Action.CREATE] == 1
    assert again.seen_before == {warned.row.clerk_id}
    assert again.warnings == []
    assert again.unchanged == 0
    assert again.applied == {Action.CREATE: 1}
    # a read-only run keeps whom it saw in memory and passes it as `known`: the same rule
    dry = store.atomic(
        lambda cur: apply_users(
            cur, target(store, dry_run=True), [warned], known={warned.row.clerk_id}
        )
    )
    assert dry.warnings == []
    assert dry.unchanged == 0
    assert not dry.changes


def test_rejected_users_are_failures_and_nothing_else(store: Store) -> None:
    outcome = store.atomic(
        lambda cur: apply_users(cur, target(store), [RejectedUser(None, "no id"), user(1)])
    )
    assert outcome.rejected == 1
    assert [f.problem for f in outcome.failures] == ["no id"]
    assert outcome.users == [user(1).row.clerk_id]


def test_a_missing_settings_row_is_created_again(store: Store, db: psycopg.Connection[Any]) -> None:
    store.atomic(lambda cur: apply_users(cur, target(store), [user(1)]))
    db.execute("DELETE FROM user_monitoring_settings")
    outcome = store.atomic(lambda cur: apply_users(cur, target(store), [user(1)]))
    assert outcome.applied == {Action.SETTINGS_MISSING: 1}
    assert rows(db, "SELECT count(*) AS n FROM user_monitoring_settings") == [{"n": 1}]


def test_deactivation_keeps_the_row_its_uuid_and_its_settings(
    store: Store, db: psycopg.Connection[Any]
) -> None:
    store.atomic(lambda cur: apply_users(cur, target(store), [user(1)]))
    [before] = rows(db)
    stored = store.run(users.fetch, store.tables, user(1).row.clerk_id)
    assert stored is not None
    changes = [plan_deactivation(stored)]
    assert store.atomic(lambda cur: deactivate(cur, target(store, dry_run=True), changes)) == 0
    assert store.atomic(lambda cur: deactivate(cur, target(store), changes)) == 1
    assert store.atomic(lambda cur: deactivate(cur, target(store), changes)) == 0
    [after] = rows(db)
    assert (after["id"], after["is_active"]) == (before["id"], False)
    assert rows(db, "SELECT count(*) AS n FROM user_monitoring_settings") == [{"n": 1}]

"""backfill and diff end to end: the CLI as a user runs it, a real Postgres, the emulator."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from clerk_sync_cli.emulator import RunningEmulator

from .support import BOTH_SCHEMAS, Cli, populate, rows

ACTIONS = ["create", "update", "deactivate", "reactivate", "unchanged", "settings_missing"]


def snapshot(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Every row with its xmin: any write, even a no-op UPDATE, changes it."""
    return conn.execute(
        "SELECT u.xmin::text, u.*, s.xmin::text, s.user_id FROM users u "
        "LEFT JOIN user_monitoring_settings s ON s.user_id = u.id ORDER BY u.clerk_id"
    ).fetchall()


def counts(**given: int) -> dict[str, int]:
    return {a: given.get(a, 0) for a in ACTIONS}


@BOTH_SCHEMAS
def test_backfill_fills_an_empty_table_across_pages(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 1203)  # three pages of 500
    doc = cli.json("backfill")
    assert doc["status"] == "ok"
    assert doc["counts"] == counts(create=1203)
    assert doc["applied"] == counts(create=1203)
    assert doc["clerk_users"] == 1203
    assert doc["db_users"] == 0
    stored = {r["clerk_id"]: r for r in rows(db)}
    assert len(stored) == 1203
    first = users[0]
    row = stored[first["id"]]
    assert (row["email"], row["first_name"], row["last_name"], row["is_active"]) == (
        "user0@example.com",
        "First0",
        "Last0",
        True,
    )
    assert row["profile_image_url"] == first["image_url"]
    assert int(row["created_at"].timestamp() * 1000) == first["created_at"]
    # the trigger made one settings row per user
    assert db.execute(
        "SELECT count(DISTINCT user_id) FROM user_monitoring_settings"
    ).fetchone() == (1203,)


@BOTH_SCHEMAS
def test_rerun_writes_nothing(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 30)
    assert cli("backfill").exit_code == 0
    before = snapshot(db)
    doc = cli.json("diff")
    assert doc["counts"] == counts(unchanged=30)
    assert doc["applied"] == counts()
    assert doc["changes"] == []
    assert snapshot(db) == before


@BOTH_SCHEMAS
def test_drift_is_planned_exactly_then_applied(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 40)
    assert cli("backfill").exit_code == 0
    clerk = emulator.emulator
    clerk.update_user(users[0]["id"], first_name="Renamed")
    clerk.ban_user(users[1]["id"])
    clerk.delete_user(users[2]["id"])
    new = clerk.create_user(first_name="New", email="new@example.com")
    before = snapshot(db)

    plan = cli.json("diff", "--dry-run")
    assert plan["dry_run"] is True
    assert plan["counts"] == counts(create=1, update=2, deactivate=1, unchanged=37)
    assert plan["applied"] == counts()
    assert snapshot(db) == before, "a dry run wrote to the users or settings table"
    by_id = {c["clerk_id"]: c for c in plan["changes"]}
    assert by_id[users[0]["id"]] == {
        "clerk_id": users[0]["id"],
        "action": "update",
        "fields": {"first_name": ["First0", "Renamed"]},
    }
    assert by_id[users[1]["id"]]["fields"] == {"is_active": [True, False]}
    assert by_id[users[2]["id"]]["action"] == "deactivate"
    assert by_id[new["id"]]["action"] == "create"

    applied = cli.json("diff", "--yes")
    assert applied["applied"] == counts(create=1, update=2, deactivate=1)
    stored = {r["clerk_id"]: r for r in rows(db)}
    assert stored[users[0]["id"]]["first_name"] == "Renamed"
    assert stored[users[1]["id"]]["is_active"] is False
    assert stored[users[2]["id"]]["is_active"] is False
    assert stored[new["id"]]["email"] == "new@example.com"
    assert cli.json("diff")["counts"] == counts(unchanged=40)


@BOTH_SCHEMAS
def test_deleted_user_keeps_its_uuid_and_settings_row(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 5)
    assert cli("backfill").exit_code == 0
    gone = users[3]["id"]
    [(uuid_before,)] = db.execute("SELECT id FROM users WHERE clerk_id = %s", (gone,)).fetchall()
    emulator.emulator.delete_user(gone)
    doc = cli.json("diff")
    assert doc["applied"]["deactivate"] == 1
    row = db.execute("SELECT id, is_active FROM users WHERE clerk_id = %s", (gone,)).fetchone()
    assert row == (uuid_before, False)
    assert db.execute(
        "SELECT count(*) FROM user_monitoring_settings WHERE user_id = %s", (uuid_before,)
    ).fetchone() == (1,)
    # back in Clerk with the same id (an unban after a ban works the same): reactivated
    assert db.execute("SELECT count(*) FROM users").fetchone() == (5,)


@BOTH_SCHEMAS
def test_backfill_never_deactivates(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 5)
    assert cli("backfill").exit_code == 0
    emulator.emulator.delete_user(users[0]["id"])
    doc = cli.json("backfill")
    assert doc["counts"]["deactivate"] == 0
    assert db.execute("SELECT bool_and(is_active) FROM users").fetchone() == (True,)


@BOTH_SCHEMAS
def test_reactivation_of_an_unbanned_user(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 3)
    emulator.emulator.ban_user(users[0]["id"])
    assert cli("backfill").exit_code == 0
    emulator.emulator.unban_user(users[0]["id"])
    doc = cli.json("backfill")
    assert doc["counts"] == counts(reactivate=1, unchanged=2)
    assert doc["applied"]["reactivate"] == 1
    assert db.execute(
        "SELECT is_active FROM users WHERE clerk_id = %s", (users[0]["id"],)
    ).fetchone() == (True,)


@BOTH_SCHEMAS
def test_guard_refuses_a_mass_deletion(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 100)
    assert cli("backfill").exit_code == 0
    for user in users[:20]:
        emulator.emulator.delete_user(user["id"])
    refused = cli("diff", "--yes")
    assert refused.exit_code == 3, refused.output
    assert "20 rows would be deactivated" in refused.stderr
    assert "--max-deactivations" in refused.stderr
    assert db.execute("SELECT count(*) FROM users WHERE NOT is_active").fetchone() == (0,)

    too_few = cli.json("diff", "--yes", "--max-deactivations", "19", expect=3)
    assert too_few["status"] == "refused"
    assert too_few["applied"]["deactivate"] == 0

    allowed = cli.json("diff", "--yes", "--max-deactivations", "20")
    assert allowed["status"] == "ok"
    assert allowed["applied"]["deactivate"] == 20
    assert db.execute("SELECT count(*) FROM users WHERE NOT is_active").fetchone() == (20,)


@BOTH_SCHEMAS
def test_empty_clerk_never_deactivates_a_full_table(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 3)
    assert cli("backfill").exit_code == 0
    for user in users:
        emulator.emulator.delete_user(user["id"])
    doc = cli.json("diff", "--yes", expect=3)
    assert "Clerk listed no users" in doc["refusal"]
    assert db.execute("SELECT count(*) FROM users WHERE is_active").fetchone() == (3,)


@BOTH_SCHEMAS
def test_missing_settings_rows_are_repaired(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 4)
    assert cli("backfill").exit_code == 0
    db.execute(
        "DELETE FROM user_monitoring_settings WHERE user_id = "
        "(SELECT id FROM users WHERE clerk_id = %s)",
        (users[1]["id"],),
    )
    plan = cli.json("diff", "--dry-run")
    assert plan["counts"] == counts(unchanged=4, settings_missing=1)
    doc = cli.json("backfill")
    assert doc["applied"] == counts(settings_missing=1)
    assert db.execute("SELECT count(*) FROM user_monitoring_settings").fetchone() == (4,)


@BOTH_SCHEMAS
def test_exit_code_flag_reports_drift(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 2)
    assert cli("diff", "--dry-run", "--exit-code").exit_code == 1
    assert cli("diff", "--dry-run").exit_code == 0
    assert cli("backfill").exit_code == 0
    assert cli("diff", "--dry-run", "--exit-code").exit_code == 0


@BOTH_SCHEMAS
def test_web_app_rows_are_updated_not_duplicated(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 3)
    # the web app already wrote one of them at sign-in, with an older name
    db.execute(
        "INSERT INTO users (clerk_id, email, first_name) VALUES (%s, %s, 'Old')",
        (users[0]["id"], "user0@example.com"),
    )
    doc = cli.json("backfill")
    assert doc["counts"]["create"] == 2
    assert doc["counts"]["update"] == 1
    assert db.execute("SELECT count(*) FROM users").fetchone() == (3,)


@BOTH_SCHEMAS
def test_rows_the_database_refuses_are_isolated_and_reported(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """A constraint of the app's (here: a CHECK) refuses one user; the batch is split, that
    user is listed, everyone else is written, and the exit code says partial."""
    populate(emulator, 9)
    bad = emulator.emulator.create_user(first_name="Bad", email="blocked@spam.test")
    db.execute("ALTER TABLE users ADD CONSTRAINT no_spam CHECK (email NOT LIKE '%%@spam.test')")
    doc = cli.json("backfill", expect=4)
    assert doc["status"] == "partial"
    assert [f["clerk_id"] for f in doc["failures"]] == [bad["id"]]
    assert "no_spam" in doc["failures"][0]["problem"]
    assert doc["applied"]["create"] == 9
    assert db.execute("SELECT count(*) FROM users").fetchone() == (9,)


@BOTH_SCHEMAS
@pytest.mark.parametrize("dry_run", [True, False])
def test_json_document_matches_the_contract(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], dry_run: bool
) -> None:
    populate(emulator, 2)
    args = ["diff", "--dry-run"] if dry_run else ["backfill"]
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.stderr
    import json

    doc = json.loads(result.stdout)  # the whole of stdout is one document
    assert {
        "command",
        "dry_run",
        "status",
        "clerk_users",
        "db_users",
        "counts",
        "applied",
        "changes",
        "warnings",
        "duration_s",
    } <= set(doc)
    assert doc["command"] == args[0]
    assert doc["dry_run"] is dry_run
    assert set(doc["counts"]) == set(ACTIONS) == set(doc["applied"])
    assert all(set(c) == {"clerk_id", "action", "fields"} for c in doc["changes"])
    assert isinstance(doc["duration_s"], float)


@BOTH_SCHEMAS
def test_changes_list_is_capped(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 1005)
    doc = cli.json("diff", "--dry-run")
    assert doc["counts"]["create"] == 1005
    assert len(doc["changes"]) == 1000
    assert doc["changes_truncated"] is True

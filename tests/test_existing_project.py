"""The project a user already has (tests/fixtures/existing_project.sql, written independently
of sql/), connected to as Supabase's `postgres` role: init-db leaves the app's schema alone,
read-only commands create nothing, a project damaged by the old init-db is diagnosed and
repaired, and the bookkeeping appears by itself on the first writing run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from clerk_sync_cli import ddl
from clerk_sync_cli.emulator import RunningEmulator

from .existing_project import (
    FIXTURES,
    SUPA_POSTGRES,
    SUPA_READER,
    app_sign_in,
    role_dsn,
)
from .support import BOTH_SCHEMAS, Cli, populate

EXISTING = pytest.mark.parametrize("db", ["existing"], indirect=True)
APP_TRIGGER = "on_user_created_create_settings"
#: The trigger that creates settings rows, on each kind of project (conftest.SCHEMAS)
SETTINGS_TRIGGER = {"ours": "create_user_monitoring_settings_trigger", "existing": APP_TRIGGER}
UPDATED_AT_TRIGGER = {"ours": "update_users_updated_at", "existing": "users_set_updated_at"}


def kind_of(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["db"])


def catalog(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Every schema, relation (with its columns), function (with its body), trigger (with its
    function and state), extension and comment outside the system catalogs."""
    return [
        (kind, name)
        for kind, name in conn.execute(
            """
            WITH ns AS (SELECT oid, nspname FROM pg_namespace
                        WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast'))
            SELECT 'schema', nspname FROM ns
            UNION ALL
            SELECT 'relation', c.oid::regclass::text || ' ' || c.relkind::text || ' rls=' ||
                   c.relrowsecurity || ' (' || coalesce((SELECT string_agg(a.attname || ' ' ||
                   format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                   FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                   AND NOT a.attisdropped), '') || ')'
            FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
            UNION ALL
            SELECT 'function', p.oid::regprocedure::text || ' ' || md5(p.prosrc) || ' '
                   || p.prosecdef || coalesce(array_to_string(p.proconfig, ','), '')
            FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
            UNION ALL
            SELECT 'trigger', t.tgrelid::regclass::text || '.' || t.tgname || ' -> '
                   || t.tgfoid::regprocedure::text || ' ' || t.tgenabled::text
            FROM pg_trigger t WHERE NOT t.tgisinternal
            UNION ALL
            SELECT 'extension', extname || ' in ' || extnamespace::regnamespace::text
            FROM pg_extension
            UNION ALL
            SELECT 'comment', pg_describe_object(d.classoid, d.objoid, d.objsubid) || ': '
                   || d.description
            FROM pg_description d WHERE d.objoid >= 16384
            UNION ALL
            SELECT 'policy', polrelid::regclass::text || '.' || polname FROM pg_policy
            ORDER BY 1, 2
            """
        ).fetchall()
    ]


def app_part(entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What belongs to the app, leaving out clerk-sync's own schema."""
    return [(k, n) for k, n in entries if "clerk_sync" not in n]


def settings_rows(db: psycopg.Connection[Any], clerk_id: str) -> int:
    (count,) = db.execute(
        "SELECT count(*) FROM user_monitoring_settings s JOIN users u ON u.id = s.user_id "
        "WHERE u.clerk_id = %s",
        (clerk_id,),
    ).fetchone() or (None,)
    return int(count)


def damage_like_the_old_init_db(db: psycopg.Connection[Any]) -> None:
    """What clerk-sync 0.1's init-db did on this project: its 004 file, run as the tool's role,
    added its triggers beside the app's own."""
    db.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(SUPA_POSTGRES)))
    db.execute((FIXTURES / "old_init_db_004_triggers.sql").read_text())
    db.execute("RESET ROLE")


@EXISTING
def test_backfill_works_right_after_install_and_keeps_the_app_schema(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """No init-db: the first writing run creates clerk-sync's own schema (and only that)."""
    populate(emulator, 12)
    before = catalog(db)
    doc = cli.json("backfill")
    assert doc["status"] == "ok", doc
    assert doc["applied"]["create"] == 12
    assert db.execute("SELECT count(*) FROM user_monitoring_settings").fetchone() == (12,)
    after = catalog(db)
    assert app_part(after) == app_part(before)
    assert ("schema", "clerk_sync") in after
    versions = db.execute("SELECT version FROM clerk_sync.migrations ORDER BY 1").fetchall()
    assert [v for (v,) in versions] == list(range(1, ddl.latest_version() + 1))
    (owner,) = db.execute(
        "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'clerk_sync'"
    ).fetchone() or (None,)
    assert owner == SUPA_POSTGRES
    (comment,) = db.execute(
        "SELECT obj_description('clerk_sync'::regnamespace, 'pg_namespace')"
    ).fetchone() or (None,)
    assert comment.startswith("clerk-sync")


@BOTH_SCHEMAS
def test_init_db_changes_nothing_in_the_app_schema_and_says_what_it_found(
    cli: Cli, db: psycopg.Connection[Any], request: pytest.FixtureRequest
) -> None:
    kind = kind_of(request)
    before = catalog(db)
    doc = cli.json("init-db")
    assert doc["app_schema"] == "existing"
    assert all(name.startswith("migrations/") for name in doc["applied"])
    assert app_part(catalog(db)) == app_part(before)
    found = {(f["area"], f["check"]): f for f in doc["findings"]}
    settings = found[("settings rows", "trigger")]
    assert settings["result"] == "ok"
    assert SETTINGS_TRIGGER[kind] in settings["detail"]
    assert UPDATED_AT_TRIGGER[kind] in found[("users table", "updated_at")]["detail"]
    assert found[("users table", "row-level security")]["result"] == "ok"  # bypassed by owner

    human = cli("init-db")
    assert human.exit_code == 0, human.stderr
    assert "left exactly as it is" in human.stdout
    assert SETTINGS_TRIGGER[kind] in human.stdout

    # the app's own sign-in upsert still works, and makes exactly one settings row
    with psycopg.connect(cli.env["DATABASE_URL"]) as app:
        app_sign_in(app, "user_app1", "one@example.com")
        app_sign_in(app, "user_app1", "one@example.org")  # the next sign-in updates
    assert settings_rows(db, "user_app1") == 1


@EXISTING
def test_read_only_commands_create_nothing_on_an_untouched_project(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 7)
    app_sign_in(db, users[0]["id"], "stale@example.com")  # the app wrote one, out of date
    app_sign_in(db, "user_gone_from_clerk", "gone@example.com")
    before = catalog(db)
    readers = {
        "supa_postgres": cli.env["DATABASE_URL"],
        "SELECT-only role": role_dsn(cli.env["DATABASE_URL"], SUPA_READER),
    }
    for who, url in readers.items():
        doc = cli.json("diff", "--dry-run", DATABASE_URL=url)
        assert doc["status"] == "ok", (who, doc)
        assert doc["counts"]["create"] == 6, who
        assert doc["counts"]["update"] == 1, who
        assert doc["counts"]["deactivate"] == 1, who
        assert doc["clerk_users"] == 7, who
        assert any("No clerk-sync bookkeeping" in n for n in doc["notes"]), who
        assert cli.json("backfill", "--dry-run", DATABASE_URL=url)["counts"]["create"] == 6
        shown = cli.json("user", users[1]["id"], DATABASE_URL=url)
        assert [c["action"] for c in shown["changes"]] == ["create"], who
        status = cli.json("status", DATABASE_URL=url)
        assert status["bookkeeping"] is False
        assert status["runs"] == []
        assert status["instance"] is None
        assert "No clerk-sync bookkeeping" in cli("status", DATABASE_URL=url).stdout
        doctor = cli.json("doctor", DATABASE_URL=url)
        assert doctor["status"] == "ok", (who, doctor)
        assert catalog(db) == before, f"{who}: a read-only command changed the catalog"
    assert db.execute("SELECT count(*) FROM users").fetchone() == (2,)


@EXISTING
def test_a_project_damaged_by_the_old_init_db_is_diagnosed_and_repaired(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    damage_like_the_old_init_db(db)
    with pytest.raises(psycopg.errors.UniqueViolation):
        app_sign_in(db, "user_broken", "broken@example.com")  # what production saw

    doc = cli.json("doctor", expect=2)
    assert doc["status"] == "failed"
    failed = [c for c in doc["checks"] if c["result"] == "fail"]
    assert [(c["area"], c["check"]) for c in failed] == [("settings rows", "trigger")]
    assert "create_user_monitoring_settings_trigger" in failed[0]["detail"]
    assert APP_TRIGGER in failed[0]["detail"]
    assert "cannot be inserted" in failed[0]["detail"]
    assert "clerk-sync doctor --fix" in failed[0]["fix"]
    human = cli("doctor")
    assert human.exit_code == 2
    assert "✗" in human.stdout
    assert "doctor --fix" in human.stdout

    # a writing run refuses rather than failing every insert; init-db reports it too
    populate(emulator, 3)
    refused = cli("backfill")
    assert refused.exit_code == 2, refused.stderr
    assert "cannot be inserted" in refused.stderr
    assert "doctor --fix" in refused.stderr
    init = cli.json("init-db")
    assert any(f["result"] == "fail" for f in init["findings"])

    fixed = cli.json("doctor", "--fix")
    assert fixed["status"] == "ok", fixed
    assert fixed["fixed"] == [
        "create_user_monitoring_settings_trigger (public.create_user_monitoring_settings())"
    ]
    triggers = {
        name for (name,) in db.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
    }
    assert APP_TRIGGER in triggers
    assert "create_user_monitoring_settings_trigger" not in triggers
    assert db.execute(
        "SELECT to_regprocedure('public.create_user_monitoring_settings()')"
    ).fetchone() == (None,)
    app_sign_in(db, "user_fixed", "fixed@example.com")
    assert settings_rows(db, "user_fixed") == 1
    assert cli.json("backfill")["applied"]["create"] == 3
    assert cli.json("doctor", "--fix")["fixed"] == []  # nothing left to fix


@EXISTING
def test_fix_never_drops_a_trigger_it_cannot_prove_is_its_own(
    cli: Cli, db: psycopg.Connection[Any]
) -> None:
    """Two settings triggers, both the app's (say one was renamed and left behind)."""
    db.execute(
        "CREATE TRIGGER create_user_monitoring_settings_trigger AFTER INSERT ON users "
        "FOR EACH ROW EXECUTE FUNCTION handle_new_user_settings()"
    )
    before = catalog(db)
    doc = cli.json("doctor", "--fix", expect=2)
    assert doc["fixed"] == []
    check = next(c for c in doc["checks"] if c["check"] == "trigger")
    assert "None of them is certainly clerk-sync's" in check["fix"]
    assert "DROP TRIGGER" in check["fix"]
    assert catalog(db) == before


@EXISTING
def test_a_role_that_may_not_create_the_schema_is_told_which_privilege(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    (name,) = db.execute("SELECT current_database()").fetchone() or ("",)
    db.execute(
        sql.SQL("REVOKE CREATE ON DATABASE {} FROM supa_postgres").format(sql.Identifier(name))
    )
    populate(emulator, 2)
    result = cli("backfill")
    assert result.exit_code == 2
    assert "CREATE privilege on database" in result.stderr
    assert "clerk-sync init-db --print" in result.stderr
    assert "Traceback" not in result.stderr
    assert db.execute("SELECT to_regnamespace('clerk_sync')").fetchone() == (None,)

    # an admin pastes the printed SQL (it leaves the app's tables alone), then runs work
    before = app_part(catalog(db))
    printed = cli("init-db", "--print")
    db.execute(printed.stdout)
    db.execute("GRANT USAGE, CREATE ON SCHEMA clerk_sync TO supa_postgres")
    db.execute("GRANT ALL ON ALL TABLES IN SCHEMA clerk_sync TO supa_postgres")
    assert app_part(catalog(db)) == before
    assert cli.json("backfill")["applied"]["create"] == 2


@EXISTING
def test_two_first_runs_at_once_create_the_schema_once(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    populate(emulator, 600)
    env = {**os.environ, **cli.env}
    command = [sys.executable, "-m", "clerk_sync_cli", "backfill", "--json"]
    runs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]  # reads both pipes as they fill
    outcomes = [(run.returncode, output) for run, output in zip(runs, outputs, strict=True)]
    codes = sorted(code for code, _ in outcomes)
    assert codes in ([0, 0], [0, 3]), outcomes
    for code, (out, err) in outcomes:
        assert "Traceback" not in err
        if code == 3:
            assert "holds the lock" in err
        else:
            assert json.loads(out)["status"] == "ok"
    assert db.execute("SELECT count(*) FROM users").fetchone() == (600,)
    assert db.execute(
        "SELECT count(*), count(DISTINCT version) FROM clerk_sync.migrations"
    ).fetchone() == (ddl.latest_version(), ddl.latest_version())


@BOTH_SCHEMAS
def test_doctor(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], request: pytest.FixtureRequest
) -> None:
    kind = kind_of(request)
    doc = cli.json("doctor")
    assert doc["status"] == "ok"
    checks = {(c["area"], c["check"]): c for c in doc["checks"]}
    assert all(c["result"] == "ok" for c in doc["checks"]), doc  # no ! either
    assert SETTINGS_TRIGGER[kind] in checks[("settings rows", "trigger")]["detail"]
    assert "ins_emulator" in checks[("clerk", "key")]["detail"]
    role = {"ours": "postgres", "existing": SUPA_POSTGRES}[kind]
    assert f"as role {role}" in checks[("postgres", "reachable")]["detail"]
    schema = checks[("bookkeeping", "schema")]["detail"]
    # init-db made it on "ours"; on "existing" nothing has run yet
    latest = f"version {ddl.latest_version()}"
    assert schema.startswith("none yet") if kind == "existing" else latest in schema
    settings = checks[("settings", "variables")]["detail"]
    assert "CLERK_SECRET_KEY (environment)" in settings
    text = json.dumps(doc)
    for secret in (cli.env["CLERK_SECRET_KEY"], "p@ss/w:rd%"):
        assert secret not in text

    assert cli("backfill").exit_code == 0
    after = {(c["area"], c["check"]): c for c in cli.json("doctor")["checks"]}
    assert latest in after[("bookkeeping", "schema")]["detail"]
    assert "ins_emulator" in after[("bookkeeping", "instance")]["detail"]
    assert after[("bookkeeping", "last run")]["detail"].startswith("run ")

    broken = cli.json("doctor", CLERK_API_URL="http://127.0.0.1:9/v1", expect=2)
    bad = [c for c in broken["checks"] if c["result"] == "fail"]
    assert [(c["area"], c["check"]) for c in bad] == [("clerk", "reachable")]
    down = cli("doctor", DATABASE_URL="postgresql://nobody@127.0.0.1:9/x")
    assert down.exit_code == 2
    assert "Traceback" not in down.stdout + down.stderr

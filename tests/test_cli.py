"""The surfaces a user touches: help, version, settings, errors, `user`, `init-db`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import typer.core
import typer.main
from typer.testing import CliRunner

from clerk_sync_cli.cli import app
from clerk_sync_cli.emulator import RunningEmulator

from .support import BOTH_SCHEMAS, SECRET, Cli, rows


def registered_commands() -> list[str]:
    """Every command registered on the app (hidden ones too): a new one is covered unasked."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return sorted(group.commands)


COMMANDS = registered_commands()


def run(*args: str, **env: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example: clerk-sync " + command in " ".join(result.output.split())


@pytest.mark.parametrize("command", ["backfill", "diff", "sync", "user", "doctor"])
def test_help_names_the_environment_variables(command: str) -> None:
    text = run(command, "--help").output
    for name in ("CLERK_SECRET_KEY", "DATABASE_URL", "CLERK_API_URL"):
        assert name in text


def test_version_via_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "clerk_sync_cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("clerk-sync 0.")


def test_missing_setting_names_it_and_exits_2(emulator: RunningEmulator) -> None:
    result = run("backfill", CLERK_API_URL=emulator.base_url, DATABASE_URL="postgresql://x@h/db")
    assert result.exit_code == 2
    assert "CLERK_SECRET_KEY is not set" in result.stderr
    assert ".env.example" in result.stderr
    assert "Traceback" not in result.output + result.stderr

    result = run("diff", CLERK_SECRET_KEY=SECRET, CLERK_API_URL=emulator.base_url)
    assert result.exit_code == 2
    assert "DATABASE_URL is not set" in result.stderr


def test_settings_come_from_dot_env(tmp_path: Path, dsn: str, emulator: RunningEmulator) -> None:
    (tmp_path / ".env").write_text(
        f"CLERK_SECRET_KEY={SECRET}\nDATABASE_URL={dsn}\nCLERK_API_URL={emulator.base_url}\n"
    )
    (tmp_path / ".env").chmod(0o600)
    assert run("init-db").exit_code == 0
    emulator.emulator.create_user(first_name="Dot", email="dot@example.com")
    result = run("backfill", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["applied"]["create"] == 1
    assert "readable by other users" not in result.stderr
    (tmp_path / ".env").chmod(0o644)
    assert "chmod 600 .env" in run("diff", "--dry-run").stderr


def test_malformed_settings_exit_2_without_echoing_them(emulator: RunningEmulator) -> None:
    secret = "pk_test_this_is_not_a_secret_key_1234567890"
    result = run(
        "diff",
        CLERK_SECRET_KEY=secret,
        DATABASE_URL="postgresql://u:pw@h/db",
        CLERK_API_URL=emulator.base_url,
    )
    assert result.exit_code == 2
    assert "CLERK_SECRET_KEY is malformed" in result.stderr
    assert secret not in result.output + result.stderr

    bad_dsn = "host=h password=hunter2 dbname='unterminated"
    result = run("init-db", DATABASE_URL=bad_dsn)
    assert result.exit_code == 2
    assert "DATABASE_URL is malformed" in result.stderr
    assert "hunter2" not in result.output + result.stderr


def test_rejected_key_exits_2_naming_its_kind_not_its_value(cli: Cli, db: Any) -> None:
    wrong = "sk_live_" + "Z" * 40
    result = cli("diff", "--json", CLERK_SECRET_KEY=wrong)
    assert result.exit_code == 2
    assert "secret key was rejected" in result.stderr or "rejected the secret key" in result.stderr
    assert "sk_live_…" in result.stderr
    assert wrong not in result.output + result.stderr
    assert json.loads(result.stdout)["status"] == "failed"


def test_unreachable_database_names_host_and_port_and_exits_5(emulator: RunningEmulator) -> None:
    result = run(
        "diff",
        CLERK_SECRET_KEY=SECRET,
        CLERK_API_URL=emulator.base_url,
        DATABASE_URL="postgresql://app:s3cretpw@127.0.0.1:9/app",
    )
    assert result.exit_code == 5
    assert "127.0.0.1:9" in result.stderr
    assert "s3cretpw" not in result.output + result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_unreachable_clerk_exits_5(cli: Cli, db: Any) -> None:
    result = cli("backfill", CLERK_API_URL="http://127.0.0.1:9/v1", CLERK_SYNC_MAX_ATTEMPTS="2")
    assert result.exit_code == 5, result.stderr
    assert "Clerk is unavailable" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_missing_tables_say_run_init_db(cli: Cli, dsn: str) -> None:
    result = cli("backfill")
    assert result.exit_code == 2
    assert "clerk-sync init-db" in result.stderr


def test_table_without_unique_clerk_id_is_explained(cli: Cli, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
            "clerk_id varchar(255), email varchar(255), first_name varchar(100), "
            "last_name varchar(100), profile_image_url varchar(500), is_active boolean, "
            "created_at timestamptz, updated_at timestamptz)"
        )
    assert cli("init-db").exit_code == 0
    result = cli("backfill")
    assert result.exit_code == 2
    assert "clerk_id has no unique constraint" in result.stderr
    assert "ADD CONSTRAINT" in result.stderr


# -- user -----------------------------------------------------------------------------------------


@BOTH_SCHEMAS
def test_user_shows_plan_and_applies_one_user(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    ada = emulator.emulator.create_user(
        first_name="Ada", last_name="Lovelace", email="ada@example.com"
    )
    other = emulator.emulator.create_user(first_name="Other", email="o@example.com")
    doc = cli.json("user", ada["id"])
    assert doc["found"] is True
    assert doc["row"] is None
    assert doc["applied"] is False
    assert doc["clerk"]["email"] == "ada@example.com"
    assert [c["action"] for c in doc["changes"]] == ["create"]

    doc = cli.json("user", ada["id"], "--apply")
    assert doc["applied"] is True
    assert doc["row"]["first_name"] == "Ada"
    assert doc["settings"] is not None
    assert [r["clerk_id"] for r in rows(db)] == [ada["id"]]  # just that user
    assert other["id"] not in {r["clerk_id"] for r in rows(db)}

    human = cli("user", ada["id"])
    assert human.exit_code == 0
    assert "matches Clerk" in human.stdout


def test_user_with_a_lone_surrogate_is_applied_with_a_warning(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    ada = emulator.emulator.create_user(first_name="Ada", last_name="x\ud800", email="a@ex.com")
    emulator.emulator.create_user(first_name="Bob", email="bob@example.com")  # the control
    doc = cli.json("user", ada["id"], "--apply")
    assert doc["applied"] is True
    assert [w["field"] for w in doc["warnings"]] == ["last_name"]
    assert (doc["row"]["first_name"], doc["row"]["last_name"]) == ("Ada", None)


@BOTH_SCHEMAS
def test_user_deleted_in_clerk_is_deactivated_by_apply(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    ada = emulator.emulator.create_user(first_name="Ada", email="ada@example.com")
    emulator.emulator.create_user(first_name="Bob", email="bob@example.com")  # the control
    assert cli("backfill").exit_code == 0
    emulator.emulator.delete_user(ada["id"])
    doc = cli.json("user", ada["id"], "--apply")
    assert doc["clerk"] is None
    assert [c["action"] for c in doc["changes"]] == ["deactivate"]
    assert doc["row"]["is_active"] is False


@BOTH_SCHEMAS
def test_user_unknown_everywhere_exits_1(cli: Cli, db: Any) -> None:
    result = cli("user", "user_doesnotexist")
    assert result.exit_code == 1
    assert "not in Clerk and not in the table" in result.stdout


# -- init-db --------------------------------------------------------------------------------------


def test_init_db_print_is_the_whole_script() -> None:
    result = run("init-db", "--print")
    assert result.exit_code == 0
    for name in (
        "app/001_guide_schema.sql",
        'CREATE TABLE "public"."users"',
        'IF to_regclass(\'"public"."users"\') IS NOT NULL THEN',  # the app part is guarded
        "clerk_sync.runs",
        "INSERT INTO clerk_sync.migrations",
    ):
        assert name in result.stdout


def test_init_db_is_idempotent_and_never_alters_existing_tables(cli: Cli, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
            "clerk_id varchar(64) UNIQUE NOT NULL, email text, first_name text, "
            "last_name text, profile_image_url text, is_active boolean, "
            "created_at timestamptz, updated_at timestamptz, plan text DEFAULT 'free')"
        )
        conn.execute(
            "CREATE TABLE user_monitoring_settings (user_id uuid PRIMARY KEY, "
            "theme text NOT NULL DEFAULT 'dark')"
        )
    first = cli.json("init-db")
    assert first["app_schema"] == "existing"
    assert first["applied"][0] == "migrations/001_runs.sql"  # clerk-sync's own schema only
    assert all(name.startswith("migrations/") for name in first["applied"])
    findings = {(f["area"], f["check"]): f for f in first["findings"]}
    assert findings[("settings rows", "trigger")]["result"] == "warn"  # none: the app has none
    again = cli.json("init-db")
    assert again["applied"] == []
    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'users' "
                "ORDER BY ordinal_position"
            ).fetchall()
        ]
        assert columns[-1] == "plan"  # untouched
        assert conn.execute(
            "SELECT character_maximum_length FROM information_schema.columns "
            "WHERE table_name = 'users' AND column_name = 'clerk_id'"
        ).fetchone() == (64,)
        triggers = {
            r[0]
            for r in conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'users'::regclass AND NOT tgisinternal"
            )
        }
        assert triggers == set()  # the app had none, and init-db adds none to an existing table


def test_updated_at_trigger_and_uuid_default(db: psycopg.Connection[Any]) -> None:
    db.execute("INSERT INTO users (clerk_id) VALUES ('user_x')")
    (first,) = db.execute("SELECT updated_at FROM users").fetchone() or ()
    db.execute("UPDATE users SET first_name = 'X'")
    (second,) = db.execute("SELECT updated_at FROM users").fetchone() or ()
    assert second > first
    (uuid,) = db.execute("SELECT id FROM users").fetchone() or ()
    assert uuid.version == 4


def test_readme_quick_start_is_what_ci_runs() -> None:
    """The README's two commands are the ones .ci/run proves on a clean clone."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    start = readme.index("## Quick start")
    block = readme[start:].split("```console", 1)[1].split("```", 1)[0]
    commands = [line.removeprefix("$ ").strip() for line in block.strip().splitlines()]
    assert len(commands) == 2
    assert commands[0].endswith("clerk-sync demo")
    assert commands[1].endswith("pytest")
    ci = (root / ".ci" / "run").read_text()
    for command in commands:
        assert command in ci


def test_init_db_on_a_new_project_turns_row_level_security_on(cli: Cli, dsn: str) -> None:
    """public is served by Supabase's Data API: tables of emails and names created with RLS
    off would be readable by anyone holding the anon key."""
    result = cli("init-db")
    assert result.exit_code == 0, result.stderr
    assert "row-level security on" in result.stdout
    with psycopg.connect(dsn, autocommit=True) as conn:
        flags = conn.execute(
            "SELECT relname, relrowsecurity FROM pg_class WHERE relname IN "
            "('users', 'user_monitoring_settings') ORDER BY 1"
        ).fetchall()
        assert flags == [("user_monitoring_settings", True), ("users", True)]
        assert conn.execute("SELECT count(*) FROM pg_policy").fetchone() == (0,)
        comments = conn.execute(
            "SELECT obj_description('users'::regclass), "
            "obj_description('clerk_sync_create_settings_row()'::regprocedure)"
        ).fetchone()
        assert comments is not None
        assert all(c.startswith("clerk-sync") for c in comments)


def test_the_process_collects_garbage_again_once_the_command_has_loaded() -> None:
    """The entry point turns the collector off while modules load; a long ``serve`` must not
    run without it."""
    probe = (
        "import gc, sys\n"
        "from clerk_sync_cli.__main__ import main\n"
        "sys.argv = ['clerk-sync', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(gc.isenabled(), gc.get_threshold()[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "True 50000"

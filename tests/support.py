"""What the tests share besides fixtures: running the CLI as a user does, filling the
emulator, reading rows back, and the two kinds of project every command is tested against."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner, Result

from clerk_sync_cli.cli import app
from clerk_sync_cli.emulator import RunningEmulator

SECRET = "sk_test_emulator"

_databases = itertools.count()


@contextmanager
def scratch_database(admin_dsn: str) -> Iterator[str]:
    """A brand-new empty database on ``admin_dsn``'s server (its DSN), dropped afterwards."""
    name = f"clerk_sync_test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


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


#: The two kinds of project every end-to-end test of a command runs against (parametrise a
#: test with ``@BOTH_SCHEMAS``): "ours", a new project whose tables `clerk-sync init-db`
#: created from sql/, connected to as a superuser; and "existing", the app a user already has
#: (tests/fixtures/existing_project.sql, written independently of sql/: the app's own trigger
#: and column names, a settings trigger without ON CONFLICT, RLS on, uuid-ossp in
#: `extensions`), connected to as Supabase's `postgres` role is (no superuser, BYPASSRLS, the
#: tables' owner), without init-db ever having run.
SCHEMAS = ["ours", "existing"]
BOTH_SCHEMAS = pytest.mark.parametrize("db", SCHEMAS, indirect=True)


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


# A tiny parent, so the child's peak RSS is its own (on Linux a child's ru_maxrss starts at
# its parent's, and pytest's is large).
SPAWN = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stderr.write(done.stderr)\n"
    "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "print(done.stdout)\n"
)


def dead_pid() -> int:
    """The pid of a process that has just exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def spawn(cli: Cli, *args: str, **env: str) -> subprocess.Popen[str]:
    """clerk-sync as its own process, as cron runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "clerk_sync_cli", *args],
        env={**os.environ, **cli.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def count(conn: psycopg.Connection[Any], query: str = "SELECT count(*) FROM users") -> int:
    return int((conn.execute(query).fetchone() or (0,))[0])


def heartbeat_age(conn: psycopg.Connection[Any]) -> float:
    found = conn.execute(
        "SELECT extract(epoch FROM now() - heartbeat_at) FROM clerk_sync.locks"
    ).fetchone()
    assert found is not None, "no lock row"
    return float(found[0])

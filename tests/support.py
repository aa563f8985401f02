"""What the tests share besides fixtures: running the CLI as a user does, filling the
emulator, reading rows back, and the two kinds of project every command is tested against."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner, Result

from clerk_sync_cli.cli import app
from clerk_sync_cli.emulator import RunningEmulator

SECRET = "sk_test_emulator"


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

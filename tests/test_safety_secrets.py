"""Secrets never leave: not in output, errors, JSON, or when a server echoes them back."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from clerk_sync_cli.emulator import RunningEmulator

from .conftest import Cli

LIVE_KEY = "sk_live_" + "S3cr3tK3yMaterial" * 3


class EchoingClerk(BaseHTTPRequestHandler):
    """A broken Clerk that puts the request's Authorization header in its answers."""

    status = 400

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        body = json.dumps(
            {
                "errors": [
                    {
                        "message": f"bad request from {auth}",
                        "long_message": f"you sent {auth}",
                        "code": auth,
                    }
                ]
            }
        ).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Echo", auth)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=[400, 401, 503])
def echoing_clerk(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Echo", (EchoingClerk,), {"status": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_server_echoing_the_key_never_gets_it_printed(
    cli: Cli, db: psycopg.Connection[Any], echoing_clerk: str
) -> None:
    for command in (["backfill"], ["diff", "--dry-run"], ["user", "user_abc"]):
        for mode in ([], ["--json"]):
            result = cli(
                *command,
                *mode,
                CLERK_API_URL=echoing_clerk,
                CLERK_SECRET_KEY=LIVE_KEY,
                CLERK_SYNC_MAX_ATTEMPTS="2",
                CLERK_SYNC_RETRY_SECONDS="5",
            )
            assert result.exit_code in (2, 5), result.stderr
            everything = result.stdout + result.stderr
            assert "S3cr3tK3yMaterial" not in everything
            assert "Traceback" not in everything
            if mode:
                assert json.loads(result.stdout)["status"] == "failed"


def test_database_password_never_printed_in_any_failure(
    emulator: RunningEmulator, cli: Cli
) -> None:
    password = "pw-Sup3rS3cret-42"
    for url in (
        f"postgresql://app:{password}@127.0.0.1:9/app",  # unreachable
        f"postgresql://app:{password}@127.0.0.1:9/app?sslmode=bogus",  # rejected option
        f"postgresql://app:{password}@[::1/app",  # malformed
    ):
        for mode in ([], ["--json"]):
            result = cli("diff", *mode, DATABASE_URL=url)
            assert result.exit_code in (2, 5), result.stderr
            assert password not in result.stdout + result.stderr
            assert "Traceback" not in result.stdout + result.stderr


def test_invalid_numeric_settings_name_the_variable(cli: Cli) -> None:
    result = cli("diff", CLERK_SYNC_MAX_ATTEMPTS="lots", CLERK_SECRET_KEY=LIVE_KEY)
    assert result.exit_code == 2
    assert "CLERK_SYNC_MAX_ATTEMPTS" in result.stderr
    assert "S3cr3tK3yMaterial" not in result.stdout + result.stderr


def test_same_email_under_two_clerk_ids_is_kept_for_both(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    a = emulator.emulator.create_user(first_name="A", email="shared@example.com")
    b = emulator.emulator.create_user(first_name="B", email="shared@example.com")
    doc = cli.json("backfill")
    assert doc["applied"]["create"] == 2
    assert db.execute(
        "SELECT count(*) FROM users WHERE email = 'shared@example.com'"
    ).fetchone() == (2,)
    assert {a["id"], b["id"]} == {r[0] for r in db.execute("SELECT clerk_id FROM users")}

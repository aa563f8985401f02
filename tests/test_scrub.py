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

from .support import Cli

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


# -- no fragment of a secret, anywhere --------------------------------------------------------------

#: A password generated the way Supabase's are, holding what a URL reserves.
RESERVED_PASSWORD = "Xk9/q@Zr%4t:Lm2w#Vb"


def fragments(secret: str, size: int = 8) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def leaked(text: str, secret: str) -> set[str]:
    return {piece for piece in fragments(secret) if piece in text}


@pytest.mark.parametrize("char", ["/", "@", "%", "#", "?"])
def test_a_password_with_an_unencoded_reserved_character_is_refused_quoting_none_of_it(
    cli: Cli, char: str
) -> None:
    password = f"pw{char}Sup3rS3cret42"
    url = f"postgresql://app:{password}@db.example.supabase.co:5432/postgres"
    for mode in ([], ["--json"]):
        result = cli("diff", "--dry-run", *mode, DATABASE_URL=url)
        assert result.exit_code == 2, result.stderr
        everything = result.stdout + result.stderr
        assert "percent-encode" in everything.lower()
        for piece in ("pw", "Sup3rS3cret42", "app:", password):
            assert piece not in everything.replace("app: ", ""), piece
        assert "Traceback" not in everything


@pytest.mark.parametrize("encoded", [False, True])
def test_a_password_with_colons_or_percent_encoded_works_and_is_never_printed(
    cli: Cli, encoded: bool
) -> None:
    from urllib.parse import quote

    password = RESERVED_PASSWORD if encoded else "Xk9:q:Zr4t:Lm2wVbqq"
    written = quote(password, safe="") if encoded else password
    url = f"postgresql://app:{written}@127.0.0.1:9/app"  # reachable by nobody: exit 5
    for mode in ([], ["--json"]):
        result = cli("diff", "--dry-run", *mode, DATABASE_URL=url)
        assert result.exit_code == 5, result.stderr
        everything = result.stdout + result.stderr
        assert "127.0.0.1:9" in everything
        assert not leaked(everything, password)
        assert not leaked(everything, written)


class HeaderEchoingClerk:
    """A broken upstream that sends the request's Authorization header back as a malformed
    header line: the HTTP client's own error then quotes the whole key."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(65536).decode("latin-1")
                auth = next(
                    (
                        line.split(": ", 1)[1]
                        for line in request.split("\r\n")
                        if line.lower().startswith("authorization:")
                    ),
                    "",
                )
                conn.sendall(f"HTTP/1.1 200 OK\r\n{auth}\r\nContent-Length: 2\r\n\r\n[]".encode())

    def close(self) -> None:
        self.sock.close()


def test_a_key_echoed_in_a_malformed_header_reaches_no_output_and_no_history(
    cli: Cli, db: psycopg.Connection[Any]
) -> None:
    echo = HeaderEchoingClerk()
    try:
        for mode in ([], ["--json"]):
            result = cli(
                "backfill",
                *mode,
                CLERK_API_URL=echo.url,
                CLERK_SECRET_KEY=LIVE_KEY,
                CLERK_SYNC_MAX_ATTEMPTS="2",
                CLERK_SYNC_RETRY_SECONDS="5",
            )
            assert result.exit_code == 5, result.stderr
            everything = result.stdout + result.stderr
            assert "illegal header" in everything  # the client's own error, scrubbed
            assert not leaked(everything, LIVE_KEY.removeprefix("sk_live_"))
    finally:
        echo.close()
    stored = json.dumps(db.execute("SELECT summary FROM clerk_sync.runs").fetchall())
    assert "illegal header" in stored
    assert not leaked(stored, LIVE_KEY.removeprefix("sk_live_"))
    # `status` needs only the database: with no key to scrub by, what it shows is clean
    status = cli("status", "--json", CLERK_SECRET_KEY="")
    assert not leaked(status.stdout + status.stderr, LIVE_KEY.removeprefix("sk_live_"))


def test_a_malformed_ping_url_is_a_configuration_error_before_the_run(
    cli: Cli, db: psycopg.Connection[Any]
) -> None:
    for url in ("https://[hc-ping.com/abc", "ftp://hc-ping.com/abc", "https://hc-ping.com:port/x"):
        result = cli("sync", "--ping-url", url)
        assert result.exit_code == 2, result.stderr
        assert "CLERK_SYNC_PING_URL" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert "abc" not in result.stderr
    assert db.execute("SELECT count(*) FROM clerk_sync.runs").fetchone() == (0,)


def test_an_unexpected_error_quoting_the_key_is_scrubbed_before_it_is_cut_short(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one place for errors nobody expected (exit 70): the message is cut at 300
    characters, inside the key here, and no piece of the key survives in what is printed."""
    import typer

    from clerk_sync_cli.cli import handle_errors
    from clerk_sync_cli.report import Reporter
    from clerk_sync_cli.settings import load_settings

    monkeypatch.delenv("CLERK_SYNC_DEBUG", raising=False)
    load_settings(clerk_secret_key=LIVE_KEY)  # what every command does first
    padding = "x" * (300 - len("internal error: RuntimeError: ") - 20)
    with pytest.raises(typer.Exit) as ended, handle_errors(Reporter(), "backfill"):
        raise RuntimeError(f"{padding}{LIVE_KEY}")  # the cut falls inside the key
    assert ended.value.exit_code == 70
    printed = capsys.readouterr()
    assert "internal error" in printed.err
    assert "S3cr3tK3y" not in printed.out + printed.err
    assert not leaked(printed.out + printed.err, LIVE_KEY.removeprefix("sk_live_"))

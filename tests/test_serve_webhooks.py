"""clerk-sync serve end to end: a real ``serve`` process over real HTTP, a real Postgres, the
emulator as Clerk, and every delivery signed by Svix's own library (an independent signer).

The rules under test (each test names the one it guards): verify first; refuse what is too
big, not JSON or sent with the wrong method; never a 500 for what a sender controls, never an
echo of the payload; exactly once in any order (svix-id, Clerk's ``updated_at``); deletion is a
tombstone nothing reactivates; the same write path as backfill; the instance pin; no run lock;
503 while the database is down; several processes behave as one; the log line and
``status --json``'s webhook section.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import random
import secrets
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from svix.webhooks import Webhook

from clerk_sync_cli.emulator import RunningEmulator
from clerk_sync_cli.errors import ClerkSyncError
from clerk_sync_cli.settings import Settings

from .serving import (
    ServeProcess,
    free_port,
    refused_start,
    serve_environment,
    serve_processes,
)
from .support import BOTH_SCHEMAS, SECRET, Cli, populate, rows, spawn

T = TypeVar("T")

WEBHOOK_PATH = "/api/webhooks/clerk"
SIGNING_SECRET = "whsec_" + base64.b64encode(b"clerk-sync serve tests: key one!").decode()
SECOND_SECRET = "whsec_" + base64.b64encode(b"clerk-sync serve tests: key two!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"not the endpoint's signing key..").decode()
INSTANCE = "ins_emulator"  # the emulator's instance (EmulatorConfig.instance_id)
MiB = 1024 * 1024
OUTCOMES = {"applied", "unchanged", "duplicate", "stale", "deleted", "ignored"}
#: What the user.deleted event itself answers: the spec's "deleted" ("the user is tombstoned")
#: or "applied" (the deactivation was written) both read right. Any event for a user already
#: tombstoned answers "deleted".
DELETION = ("applied", "deleted")

#: Put into every payload: it must never come back in a response, nor reach the log.
MARKER = "payload-marker-7f3a9c"
CLIENT_IP = "203.0.113.77"
USER_AGENT = "Mozilla/5.0 (marker-agent-41d2)"

EXAMPLE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "clerk_user_example.json").read_text()
)


# -- deliveries ---------------------------------------------------------------------------------


def new_msg_id() -> str:
    return "msg_" + secrets.token_hex(13)


def event(kind: str, data: Mapping[str, Any], *, instance_id: str = INSTANCE) -> dict[str, Any]:
    """Clerk's envelope, with the personal data Clerk adds (IP, user agent)."""
    return {
        "data": dict(data),
        "object": "event",
        "type": kind,
        "timestamp": int(time.time() * 1000),
        "instance_id": instance_id,
        "event_attributes": {"http_request": {"client_ip": CLIENT_IP, "user_agent": USER_AGENT}},
    }


def deleted(user_id: str, **envelope: Any) -> dict[str, Any]:
    return event("user.deleted", {"object": "user", "id": user_id, "deleted": True}, **envelope)


def encode(doc: Mapping[str, Any] | bytes) -> bytes:
    return doc if isinstance(doc, bytes) else json.dumps(doc).encode()


def svix_headers(
    body: bytes, msg_id: str, *, secret: str = SIGNING_SECRET, when: datetime | None = None
) -> dict[str, str]:
    """The three headers, the signature made by Svix's library."""
    when = (when or datetime.now(UTC)).replace(microsecond=0)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(when.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, when, body.decode()),
    }


def hmac_headers(
    body: bytes, msg_id: str, stamp: str, secret: str = SIGNING_SECRET
) -> dict[str, str]:
    """The same scheme by hand, for what Svix's library cannot sign (bytes that are not UTF-8,
    a timestamp that is not a date)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.digest(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256)
    return {
        "svix-id": msg_id,
        "svix-timestamp": stamp,
        "svix-signature": "v1," + base64.b64encode(digest).decode(),
    }


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str | bytes],
    content_type: str | None = "application/json",
) -> httpx.Response:
    sent = dict(headers)
    if content_type is not None:
        sent["content-type"] = content_type
    # Svix gives up on an attempt after 15 s: every answer must come sooner
    return httpx.post(url, content=body, headers=sent, timeout=15)


def outcome(response: httpx.Response) -> str:
    assert response.is_success, f"{response.status_code}: {response.text}"
    found = response.json()["outcome"]
    assert found in OUTCOMES, found
    assert MARKER not in response.text
    return str(found)


def concurrently(calls: list[Callable[[], T]]) -> list[T]:
    """Run ``calls`` at once (released together by a barrier); their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait(timeout=20)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


# -- serve as its own process -------------------------------------------------------------------


def serve_env(cli: Cli, env: Mapping[str, str | None]) -> dict[str, str]:
    """What ``spawn`` gives a command, with the signing secret set (``None`` unsets a name)."""
    settings = {
        "CLERK_WEBHOOK_SIGNING_SECRET": SIGNING_SECRET,
        # the sign-in endpoints are on, as by default (tests/test_serve_signin.py tests them)
        "CLERK_AUTHORIZED_PARTIES": "http://localhost:3000",
        **env,
    }
    return serve_environment(cli.env, settings)


@dataclass
class Serve(ServeProcess):
    @property
    def hook(self) -> str:
        return self.url + WEBHOOK_PATH

    def signed(
        self, doc: Mapping[str, Any] | bytes, msg_id: str | None = None, **sign: Any
    ) -> Callable[[], httpx.Response]:
        """A delivery signed now, to be sent later (or from another thread)."""
        body = encode(doc)
        headers = svix_headers(body, msg_id or new_msg_id(), **sign)
        return lambda: post(self.hook, body, headers)

    def deliver(
        self, doc: Mapping[str, Any] | bytes, msg_id: str | None = None, **sign: Any
    ) -> httpx.Response:
        return self.signed(doc, msg_id, **sign)()

    def healthz(self) -> int:
        return httpx.get(self.url + "/healthz", timeout=15).status_code


@contextmanager
def serving(
    cli: Cli,
    logs: Path,
    *args: str,
    count: int = 1,
    env: Mapping[str, str | None] | None = None,
) -> Iterator[list[Serve]]:
    """``count`` ``clerk-sync serve`` processes, healthy; always stopped afterwards."""
    with serve_processes(Serve, logs, args, serve_env(cli, env or {}), count) as servers:
        yield servers


@pytest.fixture
def server(cli: Cli, db: psycopg.Connection[Any], tmp_path: Path) -> Iterator[Serve]:
    """One serve on the test database (its tables made by init-db, or the existing app's)."""
    with serving(cli, tmp_path) as [one]:
        yield one


# -- the database -------------------------------------------------------------------------------

AUDIT = """
CREATE SCHEMA test_audit;
CREATE TABLE test_audit.writes (clerk_id text, op text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION test_audit.record() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO test_audit.writes (clerk_id, op)
    VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.clerk_id ELSE NEW.clerk_id END, TG_OP);
    RETURN NULL;
END $fn$;
CREATE TRIGGER zz_test_audit AFTER INSERT OR UPDATE OR DELETE ON public.users
    FOR EACH ROW EXECUTE FUNCTION test_audit.record();
"""


def audit(db: psycopg.Connection[Any]) -> None:
    """Record every row written to ``users`` (even a no-op UPDATE), by the test's trigger."""
    db.execute(AUDIT)


def writes(db: psycopg.Connection[Any], clerk_id: str | None = None) -> list[str]:
    if clerk_id is None:
        found = db.execute("SELECT op FROM test_audit.writes ORDER BY at").fetchall()
    else:
        found = db.execute(
            "SELECT op FROM test_audit.writes WHERE clerk_id = %s ORDER BY at", (clerk_id,)
        ).fetchall()
    return [op for (op,) in found]


def row(db: psycopg.Connection[Any], clerk_id: str) -> dict[str, Any] | None:
    found = rows(db, "SELECT * FROM users WHERE clerk_id = %s", clerk_id)
    assert len(found) <= 1
    return found[0] if found else None


def settings_rows(db: psycopg.Connection[Any], user_uuid: Any) -> int:
    found = db.execute(
        "SELECT count(*) FROM user_monitoring_settings WHERE user_id = %s", (user_uuid,)
    ).fetchone()
    return int(found[0]) if found else 0


def make_user(emulator: RunningEmulator, tag: str, **fields: Any) -> dict[str, Any]:
    """A user in the emulator, with names that appear nowhere else (so a log can be searched)."""
    return emulator.emulator.create_user(
        first_name=f"Zebedee{tag}",
        last_name=f"Quaxley{tag}",
        email=f"zebedee.{tag.lower()}@example.com",
        unsafe_metadata={"note": MARKER},
        **fields,
    )


def newer(user: Mapping[str, Any], ms: int = 1000, **fields: Any) -> dict[str, Any]:
    """Another version of ``user``, ``ms`` later (earlier when negative) by Clerk's clock."""
    return {**copy.deepcopy(dict(user)), **fields, "updated_at": int(user["updated_at"]) + ms}


# -- starting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "", "   ", "whsec_!!not-base64!!"])
def test_serve_refuses_to_start_without_a_signing_secret(
    cli: Cli, db: psycopg.Connection[Any], secret: str | None
) -> None:
    env = serve_env(cli, {"CLERK_WEBHOOK_SIGNING_SECRET": secret})
    process = refused_start(env, "a usable signing secret")
    out, err = process.stdout, process.stderr
    assert process.returncode == 2, err
    # one error line naming the variable (and, as every command does, an indented hint)
    error, *hint = err.strip().splitlines()
    assert error.startswith("error: ")
    assert "CLERK_WEBHOOK_SIGNING_SECRET" in error
    assert len(hint) <= 1 and all(line.startswith("  ") for line in hint), err
    assert "Traceback" not in out + err
    assert "not-base64" not in out + err


def test_the_secret_never_shows_in_help(cli: Cli) -> None:
    result = cli("serve", "--help", CLERK_WEBHOOK_SIGNING_SECRET=SIGNING_SECRET)
    assert result.exit_code == 0, result.output
    assert "--webhook-signing-secret" in result.output
    key = SIGNING_SECRET.removeprefix("whsec_")
    assert key not in result.output + result.stderr


# -- verify first, and what is refused before or without it --------------------------------------


def test_unsigned_and_badly_signed_deliveries_are_refused(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    user = make_user(emulator, "Sig")
    body = encode(event("user.created", user))
    msg_id = new_msg_id()
    good = svix_headers(body, msg_id)
    value = good["svix-signature"].removeprefix("v1,")
    now = datetime.now(UTC)

    def without(name: str) -> dict[str, str]:
        return {k: v for k, v in good.items() if k != name}

    cases: dict[str, tuple[Mapping[str, str | bytes], bytes]] = {
        "altered body": (good, body.replace(b"zebedee.sig@", b"mallory.sig@")),
        "body with a trailing newline": (good, body + b"\n"),
        "wrong secret": (svix_headers(body, msg_id, secret=OTHER_SECRET), body),
        "svix-id missing": (without("svix-id"), body),
        "svix-timestamp missing": (without("svix-timestamp"), body),
        "svix-signature missing": (without("svix-signature"), body),
        "no svix headers at all": ({}, body),
        "svix-id of another message": ({**good, "svix-id": new_msg_id()}, body),
        "svix-timestamp changed": (
            {**good, "svix-timestamp": str(int(good["svix-timestamp"]) + 1)},
            body,
        ),
        "svix-timestamp garbage": ({**good, "svix-timestamp": "yesterday"}, body),
        "svix-timestamp in ms (signed)": (
            hmac_headers(body, msg_id, str(int(time.time() * 1000))),
            body,
        ),
        "stale: 6 minutes ago (signed)": (
            svix_headers(body, msg_id, when=now - timedelta(minutes=6)),
            body,
        ),
        "future: in 6 minutes (signed)": (
            svix_headers(body, msg_id, when=now + timedelta(minutes=6)),
            body,
        ),
        "stale: a day ago (signed)": (
            svix_headers(body, msg_id, when=now - timedelta(days=1)),
            body,
        ),
        "signature empty": ({**good, "svix-signature": ""}, body),
        "signature garbage": ({**good, "svix-signature": "garbage"}, body),
        "v1 without comma": ({**good, "svix-signature": "v1"}, body),
        "v1 with bad base64": ({**good, "svix-signature": "v1,AAAA"}, body),
        "only v1a": ({**good, "svix-signature": f"v1a,{value}"}, body),
        "only v2": ({**good, "svix-signature": f"v2,{value}"}, body),
        "the value without a version": ({**good, "svix-signature": value}, body),
        "a thousand decoys": ({**good, "svix-signature": " ".join(["v1,AAAA"] * 1000)}, body),
        "not ASCII": ({**good, "svix-signature": b"v1,\xff\xfe\xfd"}, body),
    }
    problems = []
    for name, (headers, sent) in cases.items():
        response = post(server.hook, sent, headers)
        if response.status_code not in (400, 401):
            problems.append(f"{name}: {response.status_code} {response.text[:200]}")
        if MARKER in response.text or "zebedee" in response.text.lower():
            problems.append(f"{name}: the response echoes the payload")
    assert problems == []
    assert row(db, user["id"]) is None, "a refused delivery wrote the user"
    # the refusals did not spend the message id: Svix's retry, signed right, goes through
    assert outcome(post(server.hook, body, svix_headers(body, msg_id))) == "applied"
    assert row(db, user["id"]) is not None


def test_wrong_method_type_or_size_is_refused_and_never_a_500(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    user = make_user(emulator, "Transport")
    doc = event("user.created", user)
    body = encode(doc)
    problems = []

    def expect(name: str, response: httpx.Response, *statuses: int) -> None:
        if response.status_code not in statuses:
            problems.append(f"{name}: {response.status_code} (wanted {statuses})")
        if MARKER in response.text:
            problems.append(f"{name}: the response echoes the payload")

    for method in ("GET", "PUT", "PATCH", "DELETE"):
        response = httpx.request(
            method, server.hook, content=body, headers=svix_headers(body, new_msg_id()), timeout=15
        )
        expect(method, response, 405)

    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        response = post(server.hook, body, svix_headers(body, new_msg_id()), content_type)
        expect(f"content-type {content_type}", response, 415)
    for name, bad in {
        "not JSON": b"this is not json " + MARKER.encode(),
        "truncated JSON": body[: len(body) // 2],
        "not UTF-8": b'{"type": "user.created", "data": "\xff\xfe' + MARKER.encode() + b'"}',
    }.items():
        headers = hmac_headers(bad, new_msg_id(), str(int(time.time())))
        expect(name, post(server.hook, bad, headers), 415)

    over = encode({**doc, "padding": ""})
    over = encode({**doc, "padding": "x" * (MiB + 1 - len(over))})
    assert len(over) == MiB + 1
    expect("1 MiB + 1 byte", post(server.hook, over, svix_headers(over, new_msg_id())), 413)
    assert problems == []
    assert row(db, user["id"]) is None

    # the limits are exactly that: 1 MiB is taken, and so is JSON with a charset
    exact = encode({**doc, "padding": ""})
    exact = encode({**doc, "padding": "x" * (MiB - len(exact))})
    assert len(exact) == MiB
    assert outcome(post(server.hook, exact, svix_headers(exact, new_msg_id()))) == "applied"
    other = make_user(emulator, "Charset")
    charset = encode(event("user.created", other))
    response = post(
        server.hook, charset, svix_headers(charset, new_msg_id()), "application/json; charset=utf-8"
    )
    assert outcome(response) == "applied"


def _raw_exchange(
    port: int, head: bytes, chunks: Iterator[bytes], *, limit: int
) -> tuple[int | None, int]:
    """Send ``head``, then ``chunks`` until the server answers (or ``limit`` bytes went out).
    Returns the status it answered (None: no answer within 10 s) and the body bytes sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable or sent >= limit:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server stopped reading and closed: its answer is queued
                break
            sent += len(chunk)
        try:
            answer = sock.recv(65536)
        except OSError:
            answer = b""
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return status, sent


def _head(port: int, length_header: str) -> bytes:
    stamp = str(int(time.time()))
    return (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\n{length_header}\r\n"
        f"svix-id: {new_msg_id()}\r\nsvix-timestamp: {stamp}\r\n"
        # well-formed, unverifiable until the body is read: size is what must decide
        f"svix-signature: v1,{base64.b64encode(secrets.token_bytes(32)).decode()}\r\n\r\n"
    ).encode()


def test_an_oversized_body_is_refused_without_being_read(server: Serve) -> None:
    chunk = b"a" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"

    def endless() -> Iterator[bytes]:
        yield b'6\r\n{"a":"\r\n'
        while True:
            yield framed

    limit = 16 * MiB
    status, sent = _raw_exchange(
        server.port, _head(server.port, "Transfer-Encoding: chunked"), endless(), limit=limit
    )
    assert status == 413, f"answered {status} after {sent} bytes of a chunked body"
    assert sent < limit, "serve kept reading a chunked body far past 1 MiB"

    for declared in (MiB + 1, 10 * 1024 * MiB):
        # the length says it all: the answer must come without the body ever being sent
        status, _ = _raw_exchange(
            server.port, _head(server.port, f"Content-Length: {declared}"), iter(()), limit=0
        )
        assert status == 413, f"Content-Length {declared}: {status} (None: it waited for the body)"

    assert server.healthz() == 200


def test_a_verified_but_unprocessable_body_is_400_with_a_reason(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    user = make_user(emulator, "Unprocessable")
    no_id = {k: v for k, v in user.items() if k != "id"}
    cases = {
        "user.updated without an id": event("user.updated", no_id),
        "user.created with a numeric id": event("user.created", {**user, "id": 42}),
        "user.created with a path for an id": event(
            "user.created", {**user, "id": "../etc/passwd"}
        ),
        "user.deleted without an id": event("user.deleted", {"object": "user", "deleted": True}),
        "user.updated without data": {
            k: v for k, v in event("user.updated", user).items() if k != "data"
        },
        "user.updated with a list for data": {**event("user.updated", user), "data": [user]},
    }
    problems = []
    for name, doc in cases.items():
        response = server.deliver(doc)
        if response.status_code != 400:
            problems.append(f"{name}: {response.status_code} {response.text[:200]}")
        elif not response.text.strip():
            problems.append(f"{name}: 400 without a reason")
        if MARKER in response.text or "zebedee" in response.text.lower():
            problems.append(f"{name}: the response echoes the payload")
    for name, bare in {
        "an array": [event("user.created", user)],
        "a string": "user.created",
    }.items():
        response = server.deliver(json.dumps(bare).encode())
        if response.status_code not in (400, 415):
            problems.append(f"envelope that is {name}: {response.status_code}")
    assert problems == []
    assert rows(db) == []


# -- the write path -----------------------------------------------------------------------------


@BOTH_SCHEMAS
def test_a_webhook_writes_the_row_backfill_writes(
    server: Serve, cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    """Same write path: the realistic user (two emails, an OAuth avatar) through a webhook,
    and through backfill, gives the same row; each path sees the other's row as unchanged."""
    clerk = emulator.emulator
    realistic = {k: v for k, v in EXAMPLE.items() if k not in ("id", "object")}
    ada = clerk.create_user(user_id=EXAMPLE["id"], **realistic)
    other = make_user(emulator, "Backfilled")
    audit(db)

    assert outcome(server.deliver(event("user.created", ada))) == "applied"
    by_webhook = row(db, ada["id"])
    assert by_webhook is not None
    assert by_webhook["email"] == "ada@example.com"
    assert by_webhook["is_active"] is True
    assert settings_rows(db, by_webhook["id"]) == 1, "no settings row for the new user"

    # a sync sees nothing to change in the webhook's row
    plan = cli.json("diff", "--dry-run")
    assert [c["clerk_id"] for c in plan["changes"]] == [other["id"]], plan["changes"]

    # and the webhook sees nothing to change in backfill's row: no write at all
    assert cli("backfill").exit_code == 0
    backfilled = row(db, other["id"])
    assert backfilled is not None
    before = writes(db)
    assert (
        outcome(server.deliver(event("user.updated", clerk.get_user(other["id"]) or {})))
        == "unchanged"
    )
    assert writes(db) == before, "an unchanged delivery wrote the row"
    assert row(db, other["id"]) == backfilled  # updated_at included

    # byte for byte: the row backfill writes for Ada is the one the webhook wrote
    db.execute("DELETE FROM user_monitoring_settings WHERE user_id = %s", (by_webhook["id"],))
    db.execute("DELETE FROM users WHERE clerk_id = %s", (ada["id"],))
    assert cli("backfill").exit_code == 0
    by_backfill = row(db, ada["id"])
    assert by_backfill is not None

    def strip(found: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in found.items() if k not in ("id", "updated_at")}

    assert strip(by_webhook) == strip(by_backfill)


def test_replays_and_concurrent_duplicates_write_once(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    audit(db)
    first = make_user(emulator, "Replayed")
    msg_id = new_msg_id()
    assert outcome(server.deliver(event("user.created", first), msg_id)) == "applied"
    # Svix's retry: the same id, signed again with a new timestamp
    assert outcome(server.deliver(event("user.created", first), msg_id)) == "duplicate"
    assert writes(db, first["id"]) == ["INSERT"]
    stored = row(db, first["id"])
    # the same content under a new id: nothing to do, nothing written, updated_at untouched
    assert outcome(server.deliver(event("user.updated", first))) == "unchanged"
    assert writes(db, first["id"]) == ["INSERT"]
    assert row(db, first["id"]) == stored

    # eight deliveries of one message at the same moment
    second = make_user(emulator, "Concurrent")
    shared = new_msg_id()
    sends = [server.signed(event("user.created", second), shared) for _ in range(8)]
    outcomes = sorted(outcome(r) for r in concurrently(sends))
    assert outcomes == ["applied"] + ["duplicate"] * 7
    assert writes(db, second["id"]) == ["INSERT"]
    assert len(rows(db)) == 2


def test_an_older_version_never_overwrites_a_newer_one(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    clerk = emulator.emulator
    user = make_user(emulator, "Versions")
    versions = [user] + [clerk.update_user(user["id"], first_name=f"Gen{i}") for i in range(1, 7)]
    assert [v["updated_at"] for v in versions] == sorted({v["updated_at"] for v in versions})

    def first_name() -> str:
        found = row(db, user["id"])
        assert found is not None
        return str(found["first_name"])

    # an update before the creation (no ordering guarantee): it creates the row
    assert outcome(server.deliver(event("user.updated", versions[3]))) == "applied"
    assert first_name() == "Gen3"
    audit(db)
    assert outcome(server.deliver(event("user.created", versions[0]))) == "stale"
    assert outcome(server.deliver(event("user.updated", versions[2]))) == "stale"
    assert first_name() == "Gen3"
    assert writes(db) == [], "a stale version was written"
    assert outcome(server.deliver(event("user.updated", versions[4]))) == "applied"
    assert first_name() == "Gen4"

    # the rest at once, in a random order: the newest wins
    late = [1, 2, 5, 6]
    random.shuffle(late)
    sends = [server.signed(event("user.updated", versions[i])) for i in late]
    found = dict(zip(late, (outcome(r) for r in concurrently(sends)), strict=True))
    assert found[6] == "applied"
    assert found[1] == found[2] == "stale"
    assert found[5] in ("applied", "stale")
    assert first_name() == "Gen6"


def test_user_deleted_is_a_tombstone_nothing_reactivates(
    server: Serve, cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    users = populate(emulator, 3)
    assert cli("backfill").exit_code == 0
    gone = users[0]
    before = row(db, gone["id"])
    assert before is not None
    audit(db)

    msg_id = new_msg_id()
    assert outcome(server.deliver(deleted(gone["id"]), msg_id)) in DELETION
    after = row(db, gone["id"])
    assert after is not None, "user.deleted removed the row"
    assert (after["id"], after["is_active"]) == (before["id"], False)
    assert settings_rows(db, before["id"]) == 1
    assert outcome(server.deliver(deleted(gone["id"]), msg_id)) == "duplicate"

    # late or later versions of the user: none brings it back
    assert outcome(server.deliver(event("user.created", gone))) == "deleted"
    later = newer(gone, 60_000, first_name="Revenant")
    assert outcome(server.deliver(event("user.updated", later))) == "deleted"
    assert outcome(server.deliver(deleted(gone["id"]))) in ("deleted", "unchanged")
    assert row(db, gone["id"])["is_active"] is False  # type: ignore[index]

    # nor does a sync that still sees the user in Clerk (its list lags behind the event)
    assert emulator.emulator.get_user(gone["id"]) is not None
    assert cli("backfill").exit_code == 0
    assert cli("diff").exit_code == 0
    final = row(db, gone["id"])
    assert final is not None
    assert (final["id"], final["is_active"]) == (before["id"], False)
    assert "DELETE" not in writes(db)
    assert [r["is_active"] for r in rows(db) if r["clerk_id"] != gone["id"]] == [True, True]


def test_a_deletion_before_the_creation_creates_no_active_row(
    server: Serve, cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    ghost = make_user(emulator, "Ghost")
    # nothing to deactivate: any answer but a new active row will do
    assert outcome(server.deliver(deleted(ghost["id"]))) in (*DELETION, "unchanged")

    def active() -> list[dict[str, Any]]:
        return rows(db, "SELECT * FROM users WHERE clerk_id = %s AND is_active", ghost["id"])

    assert active() == []
    assert outcome(server.deliver(event("user.created", ghost))) == "deleted"
    assert outcome(server.deliver(event("user.updated", newer(ghost)))) == "deleted"
    assert active() == []
    assert cli("backfill").exit_code == 0  # Clerk still lists the user
    assert active() == []


def test_other_event_types_are_acknowledged_and_ignored(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    user = make_user(emulator, "Bystander")
    others = {
        "session.created": {"object": "session", "id": "sess_2x8kQ", "user_id": user["id"]},
        "email.created": {
            "object": "email",
            "id": "ema_2x8kQ",
            "to_email_address": user["email_addresses"][0]["email_address"],
        },
        "organization.created": {"object": "organization", "id": "org_2x8kQ", "name": MARKER},
        "organizationMembership.created": {
            "object": "organization_membership",
            "public_user_data": {"user_id": user["id"]},
        },
        "role.created": {"object": "role", "id": "role_1"},
    }
    for kind, data in others.items():
        response = server.deliver(event(kind, data))
        assert outcome(response) == "ignored", kind
    assert rows(db) == []


# -- the instance pin ---------------------------------------------------------------------------


def test_an_event_from_another_instance_is_409_and_writes_nothing(
    server: Serve, cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    users = populate(emulator, 2)
    assert cli("backfill").exit_code == 0  # pins the emulator's instance
    before = rows(db)
    audit(db)
    stranger = make_user(emulator, "Stranger")
    for doc in (
        event("user.created", stranger, instance_id="ins_someone_else"),
        event(
            "user.updated", newer(users[0], first_name="Hijacked"), instance_id="ins_someone_else"
        ),
        deleted(users[1]["id"], instance_id="ins_someone_else"),
    ):
        response = server.deliver(doc)
        assert response.status_code == 409, (doc["type"], response.status_code, response.text)
        assert MARKER not in response.text
    assert writes(db) == []
    assert rows(db) == before
    # the pinned instance's events still go through
    assert outcome(server.deliver(event("user.created", stranger))) == "applied"


def test_the_first_event_pins_the_instance(
    server: Serve, cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    assert db.execute("SELECT count(*) FROM clerk_sync.instance").fetchone() == (0,)
    first = make_user(emulator, "Pioneer")
    assert (
        outcome(server.deliver(event("user.created", first, instance_id="ins_first_seen")))
        == "applied"
    )
    assert db.execute("SELECT instance_id FROM clerk_sync.instance").fetchall() == [
        ("ins_first_seen",)
    ]
    second = make_user(emulator, "Latecomer")
    response = server.deliver(event("user.created", second))  # the emulator's instance
    assert response.status_code == 409, response.text
    assert row(db, second["id"]) is None
    # the pin is the one every run checks: backfill with the emulator's key is refused
    assert cli("backfill").exit_code == 3


# -- secrets ------------------------------------------------------------------------------------


def test_rotation_every_given_secret_verifies(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator, tmp_path: Path
) -> None:
    with serving(
        cli,
        tmp_path,
        "--webhook-signing-secret",
        f"{SIGNING_SECRET} {SECOND_SECRET}",
        env={"CLERK_WEBHOOK_SIGNING_SECRET": None},
    ) as [one]:
        old, new, third = (make_user(emulator, tag) for tag in ("Old", "New", "Third"))
        assert outcome(one.deliver(event("user.created", old), secret=SIGNING_SECRET)) == "applied"
        assert outcome(one.deliver(event("user.created", new), secret=SECOND_SECRET)) == "applied"
        assert one.deliver(event("user.created", third), secret=OTHER_SECRET).status_code in (
            400,
            401,
        )
        # Svix signs with both during a rotation: one header, two entries
        body = encode(event("user.updated", newer(third)))
        headers = svix_headers(body, new_msg_id(), secret=OTHER_SECRET)
        headers["svix-signature"] += (
            " " + svix_headers(body, headers["svix-id"], secret=SECOND_SECRET)["svix-signature"]
        )
        assert outcome(post(one.hook, body, headers)) == "applied"
        one.stop()
        for secret in (SIGNING_SECRET, SECOND_SECRET):
            assert secret.removeprefix("whsec_") not in one.log()
    assert {r["clerk_id"] for r in rows(db)} == {old["id"], new["id"], third["id"]}


def test_the_secret_can_come_from_dotenv(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator, tmp_path: Path
) -> None:
    dotenv = Path(".env")  # the working directory: tmp_path
    dotenv.write_text(f"CLERK_WEBHOOK_SIGNING_SECRET={SECOND_SECRET}\n")
    dotenv.chmod(0o600)
    with serving(cli, tmp_path, env={"CLERK_WEBHOOK_SIGNING_SECRET": None}) as [one]:
        user = make_user(emulator, "Dotenv")
        assert outcome(one.deliver(event("user.created", user), secret=SECOND_SECRET)) == "applied"
        assert one.deliver(event("user.updated", newer(user))).status_code in (400, 401)


# -- the database going away --------------------------------------------------------------------


class PgProxy:
    """A TCP front for the test database on 127.0.0.1 that can go down (refusing connections,
    cutting the open ones) and come back on the same port."""

    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        host = str(params.get("host") or "localhost")
        port = int(params.get("port") or 5432)
        self._unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._tcp = (host, port)
        self.port = free_port()
        self.dsn = make_conninfo(dsn, host="127.0.0.1", port=str(self.port))
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def _upstream(self) -> socket.socket:
        if self._unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self._unix)
            return sock
        return socket.create_connection(self._tcp)

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = self._upstream()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._cut(src)
            self._cut(dst)

    def _cut(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            live = list(self._open)
        for sock in live:
            self._cut(sock)


@pytest.fixture
def proxy(dsn: str) -> Iterator[PgProxy]:
    front = PgProxy(dsn)
    front.up()
    yield front
    front.down()


def test_database_down_is_503_then_the_retry_applies(
    cli: Cli,
    db: psycopg.Connection[Any],
    emulator: RunningEmulator,
    proxy: PgProxy,
    tmp_path: Path,
) -> None:
    with serving(cli, tmp_path, env={"DATABASE_URL": proxy.dsn}) as [one]:
        user = make_user(emulator, "Patient")
        msg_id = new_msg_id()
        proxy.down()
        started = time.monotonic()
        assert one.healthz() == 503
        response = one.deliver(event("user.created", user), msg_id)
        assert response.status_code == 503, response.text  # so Svix retries
        assert time.monotonic() - started < 15, "answers while the database is down took too long"
        assert MARKER not in response.text
        assert row(db, user["id"]) is None

        proxy.up()
        deadline = time.monotonic() + 20
        while one.healthz() != 200:
            assert time.monotonic() < deadline, "healthz did not recover with the database"
            time.sleep(0.1)
        # Svix's retry of the same message: applied, not taken for a duplicate
        assert outcome(one.deliver(event("user.created", user), msg_id)) == "applied"
        assert row(db, user["id"]) is not None
        assert one.process.poll() is None


# -- alongside runs and other processes ---------------------------------------------------------


def test_a_webhook_during_a_running_diff_leaves_the_newest_version(
    server: Serve, cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    """The diff plans from what Clerk's list said (an older version); the webhook brings a
    newer one while the diff holds the run lock; the diff's write must not undo it."""
    clerk = emulator.emulator
    users = populate(emulator, 1001)  # three pages: the diff takes a while
    target = users[500]
    assert cli("backfill").exit_code == 0
    listed = clerk.update_user(target["id"], first_name="FromTheList")
    newest = newer(listed, 60_000, first_name="FromTheWebhook")
    clerk.configure(latency_ms=600)
    diff = spawn(cli, "diff", "--json")
    try:
        deadline = time.monotonic() + 20
        while db.execute("SELECT count(*) FROM clerk_sync.locks").fetchone() == (0,):
            assert diff.poll() is None, diff.communicate()
            assert time.monotonic() < deadline, "the diff never took its lock"
            time.sleep(0.02)
        response = server.deliver(event("user.updated", newest))
        assert diff.poll() is None, "the diff finished before the webhook: no overlap tested"
        assert outcome(response) == "applied"  # it did not wait for, nor take, the run lock
        assert db.execute("SELECT count(*) FROM clerk_sync.locks").fetchone() == (1,)
        out, err = diff.communicate(timeout=120)
    finally:
        if diff.poll() is None:
            diff.kill()
            diff.communicate()
    assert diff.returncode == 0, err
    assert json.loads(out)["status"] == "ok"
    found = row(db, target["id"])
    assert found is not None
    assert found["first_name"] == "FromTheWebhook"


def test_two_serve_processes_on_one_database_behave_as_one(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator, tmp_path: Path
) -> None:
    audit(db)
    with serving(cli, tmp_path, count=2) as [left, right]:
        for n in range(5):
            user = make_user(emulator, f"Twin{n}")
            msg_id = new_msg_id()
            doc = event("user.created", user)
            outcomes = sorted(
                outcome(r)
                for r in concurrently([left.signed(doc, msg_id), right.signed(doc, msg_id)])
            )
            assert outcomes == ["applied", "duplicate"], (n, outcomes)
            assert writes(db, user["id"]) == ["INSERT"]
            # two versions at once, one to each: the newer wins
            old, new = newer(user, 1000, first_name="Older"), newer(user, 2000, first_name="Newer")
            concurrently(
                [left.signed(event("user.updated", old)), right.signed(event("user.updated", new))]
            )
            assert row(db, user["id"])["first_name"] == "Newer"  # type: ignore[index]
    assert len(rows(db)) == 5


# -- what it reports ----------------------------------------------------------------------------


def test_status_reports_webhooks_and_each_event_logs_one_line(
    server: Serve, cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    quiet = cli.json("status")["webhooks"]
    assert quiet["last_event_at"] is None
    assert quiet["receiving"] is False
    assert {k: v for k, v in quiet["last_24h"].items() if v} == {}

    user = make_user(emulator, "Logged")
    sent: list[tuple[str, str, str]] = []  # (svix-id, type, outcome)

    def send(doc: dict[str, Any], msg_id: str | None = None) -> None:
        msg_id = msg_id or new_msg_id()
        sent.append((msg_id, doc["type"], outcome(server.deliver(doc, msg_id))))

    created = new_msg_id()
    send(event("user.created", user), created)
    send(event("user.created", user), created)
    send(event("user.updated", user))
    send(event("user.updated", newer(user, -1000, first_name="Zebolder")))
    send(event("session.created", {"object": "session", "id": "sess_1", "user_id": user["id"]}))
    send(deleted(user["id"]))
    send(event("user.updated", newer(user, 5000)))
    found = [o for _, _, o in sent]
    assert found[:5] == ["applied", "duplicate", "unchanged", "stale", "ignored"]
    assert found[5] in DELETION
    assert found[6] == "deleted"

    loud = cli.json("status")["webhooks"]
    assert loud["receiving"] is True
    assert {k: v for k, v in loud["last_24h"].items() if v} == dict(Counter(found))
    last = datetime.fromisoformat(loud["last_event_at"])
    assert last.tzinfo is not None
    assert abs((datetime.now(UTC) - last).total_seconds()) < 120

    server.stop()  # flushes whatever it buffered
    log = server.log()
    for msg_id, kind, result in sent:
        lines = [line for line in log.splitlines() if msg_id in line]
        expected = 2 if msg_id == created else 1
        assert len(lines) == expected, (msg_id, lines)
        line = lines[0] if expected == 1 else next(x for x in lines if result in x)
        assert kind in line, line
        assert result in line, line
        if result != "ignored":
            assert user["id"] in line, line
    for secret_piece in (
        user["email_addresses"][0]["email_address"],
        user["first_name"],
        user["last_name"],
        "Zebolder",
        MARKER,
        CLIENT_IP,
        USER_AGENT,
        SIGNING_SECRET.removeprefix("whsec_"),
    ):
        assert secret_piece not in log, f"{secret_piece!r} is in serve's output"


# -- as a library -------------------------------------------------------------------------------


@contextmanager
def running_uvicorn(app: Any) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_create_app_mounted_in_fastapi_serves_the_webhook(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    from fastapi import FastAPI

    from clerk_sync_cli.web import create_app

    settings = Settings(
        database_url=cli.env["DATABASE_URL"],
        clerk_secret_key=SECRET,
        clerk_api_url=emulator.base_url,
        clerk_webhook_signing_secret=SIGNING_SECRET,
    )
    backend = FastAPI()

    @backend.get("/api/own")
    def own() -> dict[str, bool]:
        return {"own": True}

    backend.mount("/clerk", create_app(settings, signin=False))
    user = make_user(emulator, "Mounted")
    with running_uvicorn(backend) as url:
        assert httpx.get(url + "/clerk/healthz", timeout=15).status_code == 200
        body = encode(event("user.created", user))
        assert (
            outcome(post(url + "/clerk" + WEBHOOK_PATH, body, svix_headers(body, new_msg_id())))
            == "applied"
        )
        refused = post(
            url + "/clerk" + WEBHOOK_PATH,
            body,
            svix_headers(body, new_msg_id(), secret=OTHER_SECRET),
        )
        assert refused.status_code in (400, 401)
        assert httpx.get(url + "/api/own", timeout=15).json() == {"own": True}
    found = row(db, user["id"])
    assert found is not None
    assert found["is_active"] is True


@BOTH_SCHEMAS
def test_deliveries_beyond_the_connections_wait_then_get_503_and_nothing_is_lost(
    cli: Cli,
    db: psycopg.Connection[Any],
    emulator: RunningEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One connection, held by a delivery stuck behind a row lock: the next delivery waits
    for it in the event loop, and past the wait answers 503 (Svix retries) instead of piling
    up threads; once the lock goes, both deliveries apply."""
    from clerk_sync_cli import web

    monkeypatch.setattr(web, "POOL_WAIT_S", 0.5)
    settings = one_connection(cli, emulator)
    stuck, other = make_user(emulator, "Stuck"), make_user(emulator, "Other")
    with running_uvicorn(web.create_app(settings, signin=False)) as url:
        hook = url + WEBHOOK_PATH

        def deliver(doc: Mapping[str, Any], msg_id: str) -> httpx.Response:
            body = encode(doc)
            return post(hook, body, svix_headers(body, msg_id))

        assert outcome(deliver(event("user.created", stuck), new_msg_id())) == "applied"
        with psycopg.connect(cli.env["DATABASE_URL"]) as locker:
            locker.execute(
                "SELECT 1 FROM clerk_sync.user_versions WHERE clerk_id = %s FOR UPDATE",
                (stuck["id"],),
            )
            first_id, second_id = new_msg_id(), new_msg_id()
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(
                    deliver, event("user.updated", newer(stuck, first_name="Late")), first_id
                )
                time.sleep(0.3)  # the first holds the only connection, waiting on the lock
                started = time.monotonic()
                second = deliver(event("user.created", other), second_id)
                waited = time.monotonic() - started
                assert second.status_code == 503, second.text
                assert "every database connection was busy" in second.json()["error"]
                assert 0.4 < waited < 4, waited
                locker.rollback()  # the lock goes: the first delivery goes on
                assert outcome(first.result(timeout=15)) == "applied"
        # Svix's retry of the refused one applies it: nothing lost
        assert outcome(deliver(event("user.created", other), second_id)) == "applied"
    for user, name in ((stuck, "Late"), (other, other["first_name"])):
        found = row(db, user["id"])
        assert found is not None
        assert found["first_name"] == name


@BOTH_SCHEMAS
def test_deliveries_that_arrive_together_are_applied_together_each_answered_alone(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator, tmp_path: Path
) -> None:
    """One connection, held while a burst queues: the burst is applied in one transaction
    (its delivery rows share it), yet each delivery is answered for itself: a duplicate, a
    stale version, another instance (409) and a user the database refuses (400) neither
    fail nor block the rest, and the refused ones give their claims back for Svix's retry."""
    stuck = make_user(emulator, "Holder")
    fresh = [make_user(emulator, f"Burst{i}") for i in range(5)]
    twice = make_user(emulator, "Twice")
    gone, refused, stranger = (make_user(emulator, tag) for tag in ("Gone", "Refused", "Alien"))
    with serving(cli, tmp_path, env={"CLERK_SYNC_SERVE_CONNECTIONS": "1"}) as [server]:
        for user in (stuck, twice, gone):
            assert outcome(server.deliver(event("user.created", user))) == "applied"
        db.execute(
            "ALTER TABLE users ADD CONSTRAINT test_refuses CHECK (first_name <> 'Refusable')"
        )
        shared = new_msg_id()
        burst = {
            **{f"fresh {i}": server.signed(event("user.created", u)) for i, u in enumerate(fresh)},
            "shared": server.signed(event("user.created", fresh[0]), shared),
            "shared again": server.signed(event("user.created", fresh[0]), shared),
            "newer": server.signed(event("user.updated", newer(twice, 2000, first_name="New"))),
            "older": server.signed(event("user.updated", newer(twice, 1000, first_name="Old"))),
            "deleted": server.signed(deleted(gone["id"])),
            "ignored": server.signed(event("session.created", {"object": "session"})),
            "alien": server.signed(event("user.created", stranger, instance_id="ins_other")),
            "refused": server.signed(
                event("user.created", {**refused, "first_name": "Refusable"}), "msg_refused"
            ),
        }
        answers = queued_together(server, cli, stuck, burst)
    got = summary(answers)
    assert all(got[f"fresh {i}"] == (200, "applied") for i in range(1, 5)), got
    # one user's deliveries take turns: the first applies, the same version again is
    # unchanged, the same svix-id again a duplicate
    assert sorted([got["fresh 0"], got["shared"], got["shared again"]]) == sorted(
        [(200, "applied"), (200, "unchanged"), (200, "duplicate")]
    ), got
    assert got["newer"] == (200, "applied"), got
    assert got["older"] in ((200, "applied"), (200, "stale")), got  # whichever came first
    assert got["deleted"] == (200, "applied"), got
    assert got["ignored"] == (200, "ignored"), got
    assert got["alien"][0] == 409, got
    assert got["refused"][0] == 400 and "refused the user" in answers["refused"].text, got
    # the rows: every applied change, the newest version, nothing from the refused ones
    for user in fresh:
        assert row(db, user["id"]) is not None
    assert (row(db, twice["id"]) or {})["first_name"] == "New"
    assert (row(db, gone["id"]) or {})["is_active"] is False
    assert row(db, stranger["id"]) is None and row(db, refused["id"]) is None
    # one transaction for the burst, but for the second delivery of a user, which waits
    together = [u["id"] for u in fresh[1:]] + [stranger["id"], refused["id"]]
    found = db.execute(
        "SELECT count(*), count(DISTINCT xmin::text) FROM clerk_sync.webhook_events "
        "WHERE clerk_id = ANY(%s) OR event_type IN ('user.deleted', 'session.created')",
        (together,),
    ).fetchone()
    assert found is not None and found[0] == len(together) + 2, found
    assert found[1] <= 2, found  # one, unless a slow machine let some arrive after the rest
    claims = db.execute(
        "SELECT svix_id, claimed, outcome FROM clerk_sync.webhook_events "
        "WHERE svix_id = 'msg_refused' OR clerk_id = %s",
        (stranger["id"],),
    ).fetchall()
    assert sorted((claimed, outcome_) for _, claimed, outcome_ in claims) == [
        (False, "invalid"),
        (False, "refused"),
    ]


@BOTH_SCHEMAS
def test_a_delivery_that_fails_its_batch_is_answered_alone_and_the_rest_apply(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A failure no single user explains (here the database refuses one delivery's row)
    undoes the batch's transaction; each of its deliveries is then applied on its own."""
    stuck = make_user(emulator, "Keeper")
    users = [make_user(emulator, f"Batch{i}") for i in range(4)]  # the last one: poisoned
    with serving(cli, tmp_path, env={"CLERK_SYNC_SERVE_CONNECTIONS": "1"}) as [server]:
        assert outcome(server.deliver(event("user.created", stuck))) == "applied"
        db.execute(POISON)  # clerk_sync's tables exist now, on a project init-db never saw too
        burst = {f"user {i}": server.signed(event("user.created", users[i])) for i in range(3)}
        burst["poison"] = server.signed(event("user.created", users[3]), "msg_poison")
        answers = queued_together(server, cli, stuck, burst)
    got = summary(answers)
    assert [got[f"user {i}"] for i in range(3)] == [(200, "applied")] * 3, got
    assert got["poison"] == (500, "poisoned delivery"), got  # the database's, not the sender's
    for user in users[:3]:
        assert row(db, user["id"]) is not None
    assert row(db, users[3]["id"]) is None


POISON = """
CREATE FUNCTION public.test_poison() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.svix_id = 'msg_poison' THEN
        RAISE EXCEPTION 'poisoned delivery' USING ERRCODE = '22023';
    END IF;
    RETURN NEW;
END $fn$;
CREATE TRIGGER test_poison BEFORE INSERT ON clerk_sync.webhook_events
    FOR EACH ROW EXECUTE FUNCTION public.test_poison();
"""


def queued_together(
    server: Serve, cli: Cli, stuck: Mapping[str, Any], burst: Mapping[str, Callable[[], Any]]
) -> dict[str, httpx.Response]:
    """Send ``burst`` while a delivery for ``stuck`` holds serve's only connection (waiting on
    a row lock), so that all of it waits in serve's queue; their answers by name."""
    with psycopg.connect(cli.env["DATABASE_URL"]) as locker:
        locker.execute(
            "SELECT 1 FROM clerk_sync.user_versions WHERE clerk_id = %s FOR UPDATE",
            (stuck["id"],),
        )
        with ThreadPoolExecutor(len(burst) + 1) as pool:
            holder = pool.submit(
                server.deliver, event("user.updated", newer(stuck, first_name="Held"))
            )
            time.sleep(0.5)  # it holds the only connection, waiting on the lock
            sent = {name: pool.submit(send) for name, send in burst.items()}
            time.sleep(1.5)  # the burst waits in serve's queue
            locker.rollback()
            assert outcome(holder.result(timeout=15)) == "applied"
            return {name: future.result(timeout=15) for name, future in sent.items()}


def summary(answers: Mapping[str, httpx.Response]) -> dict[str, tuple[int, str]]:
    """Each answer's status and outcome (the start of its error for a refusal)."""
    return {
        name: (r.status_code, r.json().get("outcome") or r.json().get("error", "")[:40])
        for name, r in answers.items()
    }


def test_time_waited_for_a_worker_is_not_waited_again_for_a_connection(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    """A delivery that already waited 9.8 s in serve's queue, whose batch then finds every
    connection held (by sign-ins, say), is answered 503 within the 10 s from its arrival,
    not after another 10 s: Svix gives up after 15."""
    from clerk_sync_cli.events import parse_event
    from clerk_sync_cli.receive import Item, Receiver
    from clerk_sync_cli.signatures import Delivery
    from clerk_sync_cli.web import make_backend

    settings = one_connection(cli, emulator)
    backend = make_backend(settings)
    backend.target()  # as after serve's first delivery: the tables read
    user = make_user(emulator, "Patient")
    late = Item(
        Delivery(new_msg_id(), int(time.time())),
        parse_event(encode(event("user.created", user))),
        started=time.monotonic() - 9.8,
    )
    receiver = Receiver(backend)
    try:
        with backend.pool.store():  # the only connection, held
            started = time.monotonic()
            (result,) = receiver.receive_many([late])
            waited = time.monotonic() - started
        assert isinstance(result, ClerkSyncError) and result.http_status == 503, result
        assert "every database connection was busy" in result.message
        assert 0.4 < waited < 2, waited
        (result,) = receiver.receive_many([late])  # Svix's retry, a connection free
        assert not isinstance(result, ClerkSyncError) and result.outcome == "applied", result
    finally:
        backend.pool.close()
    assert row(db, user["id"]) is not None


def one_connection(cli: Cli, emulator: RunningEmulator) -> Settings:
    """Settings for an app (or a backend) with one database connection, in this process."""

    return Settings(
        database_url=cli.env["DATABASE_URL"],
        clerk_secret_key=SECRET,
        clerk_api_url=emulator.base_url,
        clerk_webhook_signing_secret=SIGNING_SECRET,
        clerk_sync_serve_connections=1,
    )


def test_webhooks_leave_half_the_connections_free(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Two connections, deliveries for two users both stuck behind row locks: one batch holds
    one connection, the other delivery waits its turn, and the second connection stays free
    for what else serve answers (here /healthz, which needs one; a sign-in does too)."""
    first, second = make_user(emulator, "Blocked"), make_user(emulator, "Waiting")
    with serving(cli, tmp_path, env={"CLERK_SYNC_SERVE_CONNECTIONS": "2"}) as [server]:
        for user in (first, second):
            assert outcome(server.deliver(event("user.created", user))) == "applied"
        with psycopg.connect(cli.env["DATABASE_URL"]) as locker:
            locker.execute(
                "SELECT 1 FROM clerk_sync.user_versions WHERE clerk_id = ANY(%s) FOR UPDATE",
                ([first["id"], second["id"]],),
            )
            with ThreadPoolExecutor(2) as pool:
                sent = [
                    pool.submit(server.deliver, event("user.updated", newer(u, first_name="Late")))
                    for u in (first, second)
                ]
                time.sleep(0.5)
                started = time.monotonic()
                assert server.healthz() == 200
                assert time.monotonic() - started < 2
                locker.rollback()
                assert [outcome(f.result(timeout=15)) for f in sent] == ["applied", "applied"]
    for user in (first, second):
        assert (row(db, user["id"]) or {})["first_name"] == "Late"

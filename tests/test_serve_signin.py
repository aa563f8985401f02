"""clerk-sync serve's sign-in API end to end: a real ``serve`` process over real HTTP, a real
Postgres, the emulator as Clerk (its JWKS, its PEM key, the session tokens it mints), and every
forged token made here with PyJWT or by hand.

The rules under test: ``POST /api/v1/users/sync`` writes the token's user as Clerk has it (the
body is ignored) through the one write path, and answers the guide's ``UserResponse``;
``GET /api/v1/users/profile`` and ``/settings`` read the table only; every bad token is a 401
with a short reason (never a 500, never an echo); a user Clerk no longer has is deactivated and
tombstoned; Clerk's 429 or outage is a 503 with Retry-After and writes nothing; repeated
sign-ins within a minute cost at most one Clerk call; CORS for the authorized parties only;
``CLERK_JWT_KEY`` (literal ``\\n`` too) or the JWKS, fetched once and refetched at most once a
minute; ``CLERK_AUTHORIZED_PARTIES`` required unless ``--no-signin``; ordering against
webhooks and the instance pin.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from clerk_sync_cli.emulator import RunningEmulator

from .serving import (
    ServeProcess,
    free_port,
    refused_start,
    serve_environment,
    serve_processes,
)
from .support import SECRET, Cli, populate, rows, scratch_database

SYNC = "/api/v1/users/sync"
PROFILE = "/api/v1/users/profile"
SETTINGS = "/api/v1/users/settings"
WEBHOOK = "/api/webhooks/clerk"
SIGNING_SECRET = "whsec_" + base64.b64encode(b"clerk-sync sign-in tests: key 1!").decode()
#: The app's origins (CLERK_AUTHORIZED_PARTIES) and one that is not.
APP = "http://localhost:3000"
OTHER_APP = "https://app.example.com"
PARTIES = f"{APP}, {OTHER_APP}"
FOREIGN = "https://evil.example.net"
INSTANCE = "ins_emulator"  # EmulatorConfig.instance_id, what GET /v1/instance answers
#: The guide's UserResponse.
USER_RESPONSE = {
    "id",
    "clerk_id",
    "email",
    "first_name",
    "last_name",
    "profile_image_url",
    "is_active",
    "created_at",
    "updated_at",
}
#: The users columns every way in writes from Clerk's user.
SYNCED = ("clerk_id", "email", "first_name", "last_name", "profile_image_url", "is_active")
USER_CALLS = "GET /v1/users/{id}"
JWKS_CALLS = "GET /v1/jwks"

EXAMPLE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "clerk_user_example.json").read_text()
)


# -- tokens -------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(doc: Mapping[str, Any]) -> str:
    return b64url(json.dumps(doc, separators=(",", ":")).encode())


def claims_for(user_id: str, *, azp: str | None = APP, ttl_s: int = 60) -> dict[str, Any]:
    """A session token's claims as Clerk sets them, for tokens forged here."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "sid": "sess_" + secrets.token_hex(12),
        "iss": "https://clerk.emulator.test",
        "exp": now + ttl_s,
        "nbf": now - 5,
        "iat": now,
        "jti": secrets.token_hex(10),
        "v": 2,
    }
    if azp is not None:
        claims["azp"] = azp
    return claims


def unsigned(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes) -> str:
    """A JWT assembled by hand (what PyJWT refuses to make)."""
    return f"{b64url_json(header)}.{b64url_json(claims)}.{b64url(signature)}"


def hs256_with(secret: bytes, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """The classic forgery: HS256 with the instance's public key bytes as the HMAC secret."""
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    digest = hmac.digest(secret, signing_input.encode(), hashlib.sha256)
    return f"{signing_input}.{b64url(digest)}"


def rsa_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class JwtKey:
    """The emulator's session-token key, as GET /_emulator/jwt-key shows it."""

    kid: str
    pem: str


def jwt_key(emulator: RunningEmulator) -> JwtKey:
    response = httpx.get(
        emulator.control_url + "/jwt-key",
        headers={"Authorization": f"Bearer {SECRET}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["pem"].startswith("-----BEGIN PUBLIC KEY-----"), doc
    return JwtKey(str(doc["kid"]), str(doc["pem"]))


def token(emulator: RunningEmulator, user_id: str, **options: Any) -> str:
    """A session token the emulator mints (signed by the instance's key)."""
    minted = emulator.emulator.session_token(user_id, **options)
    assert isinstance(minted, str) and minted.count(".") == 2, minted
    return minted


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# -- webhooks (for ordering against sign-in) -----------------------------------------------------


def delivery(doc: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A webhook body and its Svix headers (the scheme by hand: HMAC-SHA256 of id.ts.body)."""
    body = json.dumps(doc).encode()
    msg_id = "msg_" + secrets.token_hex(13)
    stamp = str(int(time.time()))
    key = base64.b64decode(SIGNING_SECRET.removeprefix("whsec_"))
    digest = hmac.digest(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256)
    return body, {
        "svix-id": msg_id,
        "svix-timestamp": stamp,
        "svix-signature": "v1," + base64.b64encode(digest).decode(),
        "content-type": "application/json",
    }


def event(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "data": dict(data),
        "object": "event",
        "type": kind,
        "timestamp": int(time.time() * 1000),
        "instance_id": INSTANCE,
        "event_attributes": {"http_request": {"client_ip": "", "user_agent": ""}},
    }


# -- serve as its own process -------------------------------------------------------------------


def serve_env(cli: Cli, env: Mapping[str, str | None]) -> dict[str, str]:
    """What a user sets for serve: the CLI's environment, the signing secret, the authorized
    parties, and ``env`` on top (``None`` unsets a name)."""
    settings = {
        "CLERK_WEBHOOK_SIGNING_SECRET": SIGNING_SECRET,
        "CLERK_AUTHORIZED_PARTIES": PARTIES,
        **env,
    }
    return serve_environment(cli.env, settings)


@dataclass
class Serve(ServeProcess):
    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=15, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=15, **kwargs)

    def sync(self, value: str, **kwargs: Any) -> httpx.Response:
        return self.post(SYNC, headers=bearer(value), **kwargs)

    def deliver(self, doc: Mapping[str, Any]) -> httpx.Response:
        body, headers = delivery(doc)
        return self.post(WEBHOOK, content=body, headers=headers)


@contextmanager
def serving(
    cli: Cli, logs: Path, *args: str, env: Mapping[str, str | None] | None = None
) -> Iterator[Serve]:
    """One healthy ``clerk-sync serve`` process, always stopped afterwards."""
    with serve_processes(Serve, logs, args, serve_env(cli, env or {})) as [server]:
        yield server


@pytest.fixture
def pem(emulator: RunningEmulator) -> str:
    return jwt_key(emulator).pem


@pytest.fixture
def server(cli: Cli, db: psycopg.Connection[Any], pem: str, tmp_path: Path) -> Iterator[Serve]:
    """One serve on the test database (made by init-db), verifying with CLERK_JWT_KEY."""
    with serving(cli, tmp_path, env={"CLERK_JWT_KEY": pem}) as one:
        yield one


# -- the database -------------------------------------------------------------------------------


def row(db: psycopg.Connection[Any], clerk_id: str) -> dict[str, Any] | None:
    found = rows(db, "SELECT * FROM users WHERE clerk_id = %s", clerk_id)
    assert len(found) <= 1
    return found[0] if found else None


def tombstoned(db: psycopg.Connection[Any], clerk_id: str) -> bool:
    found = db.execute(
        "SELECT deleted_at IS NOT NULL FROM clerk_sync.user_versions WHERE clerk_id = %s",
        (clerk_id,),
    ).fetchone()
    return bool(found and found[0])


def settings_rows(db: psycopg.Connection[Any], user_uuid: Any) -> int:
    found = db.execute(
        "SELECT count(*) FROM user_monitoring_settings WHERE user_id = %s", (user_uuid,)
    ).fetchone()
    return int(found[0]) if found else 0


def written(db: psycopg.Connection[Any]) -> dict[str, int]:
    """How many rows each table clerk-sync writes holds (to show nothing was written)."""
    counts = {}
    for table in (
        "users",
        "user_monitoring_settings",
        "clerk_sync.user_versions",
        "clerk_sync.instance",
    ):
        found = db.execute(f"SELECT count(*) FROM {table}").fetchone()
        counts[table] = int(found[0]) if found else 0
    return counts


def user_calls(emulator: RunningEmulator) -> int:
    return int(emulator.emulator.stats()["by_endpoint"].get(USER_CALLS, 0))


def jwks_calls(emulator: RunningEmulator) -> int:
    return int(emulator.emulator.stats()["by_endpoint"].get(JWKS_CALLS, 0))


def as_document(found: Mapping[str, Any]) -> dict[str, Any]:
    """A users row as the guide's UserResponse carries it (JSON: uuid as text, ISO times)."""
    return {
        name: (
            found[name].isoformat()
            if isinstance(found[name], datetime)
            else str(found[name])
            if name == "id"
            else found[name]
        )
        for name in USER_RESPONSE
    }


def assert_user_response(doc: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """``doc`` is the guide's UserResponse of ``found``, the row, times in ISO 8601."""
    assert set(doc) == USER_RESPONSE, sorted(doc)
    for name in ("created_at", "updated_at"):
        assert isinstance(doc[name], str), (name, doc[name])
        assert datetime.fromisoformat(doc[name]) == found[name], (name, doc[name])
    assert doc["id"] == str(found["id"])
    assert {k: doc[k] for k in SYNCED} == {k: found[k] for k in SYNCED}


def clerk_values(user: Mapping[str, Any]) -> dict[str, Any]:
    """What the table should hold for a Clerk user (the primary email, the image)."""
    primary = next(
        e["email_address"]
        for e in user["email_addresses"]
        if e["id"] == user["primary_email_address_id"]
    )
    return {
        "clerk_id": user["id"],
        "email": primary,
        "first_name": user["first_name"],
        "last_name": user["last_name"],
        "profile_image_url": user.get("image_url") or user.get("profile_image_url"),
        "is_active": True,
    }


@pytest.fixture
def second_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """Another empty database, for writing the same user by another way."""
    with scratch_database(pg_admin_dsn) as fresh:
        yield fresh


def make_user(emulator: RunningEmulator, tag: str, **fields: Any) -> dict[str, Any]:
    return emulator.emulator.create_user(
        first_name=f"Signin{tag}",
        last_name=f"Tester{tag}",
        email=f"signin.{tag.lower()}@example.com",
        **fields,
    )


# -- sign-in writes the row every other way writes ---------------------------------------------


def test_a_signin_writes_the_row_user_apply_writes(
    server: Serve,
    cli: Cli,
    db: psycopg.Connection[Any],
    emulator: RunningEmulator,
    second_dsn: str,
) -> None:
    """The realistic user (two emails, an OAuth avatar): 200 with its UserResponse, the row
    Clerk's values give, its settings row, the emulator's instance pinned; and the very row
    `clerk-sync user ID --apply` writes for it in another database."""
    clerk = emulator.emulator
    realistic = {k: v for k, v in EXAMPLE.items() if k not in ("id", "object")}
    ada = clerk.create_user(user_id=EXAMPLE["id"], **realistic)
    populate(emulator, 2)
    assert db.execute("SELECT count(*) FROM clerk_sync.instance").fetchone() == (0,)

    response = server.sync(token(emulator, ada["id"]))
    assert response.status_code == 200, response.text
    found = row(db, ada["id"])
    assert found is not None
    assert_user_response(response.json(), found)
    assert {k: found[k] for k in clerk_values(ada)} == clerk_values(ada)
    assert found["email"] == "ada@example.com"  # the primary one, not the first listed
    assert settings_rows(db, found["id"]) == 1
    assert len(rows(db)) == 1, "the sign-in wrote other users"
    instance = httpx.get(emulator.base_url + "/instance", headers=bearer(SECRET), timeout=10)
    assert db.execute("SELECT instance_id FROM clerk_sync.instance").fetchall() == [
        (instance.json()["id"],)
    ]

    # the same user by the CLI, in a database of its own
    other = Cli({**cli.env, "DATABASE_URL": second_dsn})
    assert other("init-db").exit_code == 0
    applied = other("user", ada["id"], "--apply")
    assert applied.exit_code == 0, applied.output + applied.stderr
    with psycopg.connect(second_dsn, autocommit=True) as conn:
        by_cli = row(conn, ada["id"])
    assert by_cli is not None

    def synced(found: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in found.items() if k not in ("id", "updated_at")}

    assert synced(found) == synced(by_cli)

    # and in this database, `user --apply` finds nothing to change in the sign-in's row
    again = cli("user", ada["id"], "--apply")
    assert again.exit_code == 0, again.output + again.stderr
    assert row(db, ada["id"]) == found


def test_the_body_is_ignored(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    """The guide's frontend sends the user's data in the body: a forged one (another user's
    id, another email and name) changes nothing; nor does a body that is not JSON."""
    mallory = make_user(emulator, "Mallory")
    victim = make_user(emulator, "Victim")
    forged = {
        "clerk_id": victim["id"],
        "id": victim["id"],
        "email": "attacker@evil.example.net",
        "email_addresses": [{"email_address": "attacker@evil.example.net"}],
        "first_name": "Forged",
        "last_name": "Name",
        "profile_image_url": "https://evil.example.net/x.png",
        "image_url": "https://evil.example.net/x.png",
        "is_active": False,
    }
    response = server.sync(token(emulator, mallory["id"]), json=forged)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["clerk_id"] == mallory["id"]
    assert "evil" not in response.text
    assert "Forged" not in response.text
    found = row(db, mallory["id"])
    assert found is not None
    assert {k: found[k] for k in clerk_values(mallory)} == clerk_values(mallory)
    assert row(db, victim["id"]) is None, "the body's clerk_id was written"

    # a body that is not JSON, a body that is huge: the same answer, the token decides
    other = make_user(emulator, "Garbage")
    response = server.post(
        SYNC,
        headers={**bearer(token(emulator, other["id"])), "content-type": "text/plain"},
        content=b"\xff\xfe not json {",
    )
    assert response.status_code == 200, response.text
    assert response.json()["clerk_id"] == other["id"]
    assert row(db, victim["id"]) is None


# -- tokens -------------------------------------------------------------------------------------


def test_every_bad_token_is_401_with_a_short_reason_and_no_echo(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator, pem: str
) -> None:
    user = make_user(emulator, "Target")
    uid = user["id"]
    key = jwt_key(emulator)
    good = token(emulator, uid)
    header = jwt.get_unverified_header(good)
    assert header["alg"] == "RS256"
    claims = jwt.decode(good, options={"verify_signature": False})
    stranger = rsa_private_key()
    now = time.time()

    def other_rsa(alg: str = "RS256", **extra: Any) -> str:
        return jwt.encode(
            {**claims_for(uid), **extra}, stranger, algorithm=alg, headers={"kid": key.kid}
        )

    tokens: dict[str, str] = {
        "alg none": unsigned({"alg": "none", "typ": "JWT"}, claims, b""),
        "alg none, kid kept": unsigned({**header, "alg": "none"}, claims, b""),
        "alg None (spelling)": unsigned({**header, "alg": "None"}, claims, b""),
        "HS256 with the PEM as secret": hs256_with(
            pem.encode(), {**header, "alg": "HS256"}, claims
        ),
        "HS256 with the PEM, no trailing newline": hs256_with(
            pem.strip().encode(), {**header, "alg": "HS256"}, claims
        ),
        "HS256 with the DER key as secret": hs256_with(
            serialization.load_pem_public_key(pem.encode()).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            {**header, "alg": "HS256"},
            claims,
        ),
        "HS512 with the PEM as secret": unsigned(
            {**header, "alg": "HS512"},
            claims,
            hmac.digest(
                pem.encode(),
                f"{b64url_json({**header, 'alg': 'HS512'})}.{b64url_json(claims)}".encode(),
                hashlib.sha512,
            ),
        ),
        "RS256 by another key": other_rsa(),
        "RS512 by another key": other_rsa("RS512"),
        "PS256 by another key": other_rsa("PS256"),
        "ES256": jwt.encode(
            claims_for(uid),
            ec.generate_private_key(ec.SECP256R1()),
            algorithm="ES256",
            headers={"kid": key.kid},
        ),
        "RS256 header, the signature of another token": ".".join(
            [*good.split(".")[:2], other_rsa().split(".")[2]]
        ),
        "claims altered after signing": ".".join(
            [
                good.split(".")[0],
                b64url_json({**claims, "sub": "user_2zzzzzzzzzzzzzzzzzzzzzzzzzz"}),
                good.split(".")[2],
            ]
        ),
        "signature stripped": ".".join([*good.split(".")[:2], ""]),
        "expired 30 s ago": token(emulator, uid, now=now - 90, ttl_s=60),
        "expired 6 min ago": token(emulator, uid, now=now - 420, ttl_s=60),
        "nbf in a minute": token(emulator, uid, nbf=int(now) + 60),
        "iat in a minute": token(emulator, uid, iat=int(now) + 60),
        "no exp": token(emulator, uid, exp=None),
        "exp not a number": token(emulator, uid, exp="tomorrow"),
        "azp of a foreign origin": token(emulator, uid, azp=FOREIGN),
        "azp missing": token(emulator, uid, azp=None),
        "azp empty": token(emulator, uid, azp=""),
        "azp a prefix of a party": token(emulator, uid, azp="http://localhost:30"),
        "azp a party plus a path": token(emulator, uid, azp=APP + ".evil.example.net"),
        "sub missing": token(emulator, uid, sub=None),
        "sub a session id": token(emulator, uid, sub="sess_2x8kQm3VbN7pLr4TzYw1HcDeFgA"),
        "sub with a path": token(emulator, uid, sub=f"{uid}/../../instance"),
        "sub not a string": token(emulator, uid, sub=12345),
        # (an unknown kid with the instance's own signature is refused in JWKS mode, below;
        # with CLERK_JWT_KEY the one key verifies whatever kid a token names, as Clerk's does)
        "RS256 by another key, unknown kid": jwt.encode(
            claims_for(uid), stranger, algorithm="RS256", headers={"kid": "kid_forged"}
        ),
        "garbage": "garbage",
        "three dots of garbage": "a.b.c",
        "not base64": "!!!.???.***",
        "header not JSON": f"{b64url(b'not json')}.{good.split('.')[1]}.{good.split('.')[2]}",
        "10 KiB token": good + "A" * 10_240,
    }
    headers: dict[str, dict[str, str]] = {name: bearer(value) for name, value in tokens.items()} | {
        "no Authorization": {},
        "Bearer alone": {"Authorization": "Bearer"},
        "Bearer, no token": {"Authorization": "Bearer"},
        "Basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "Basic x": {"Authorization": "Basic x"},
        "the token without a scheme": {"Authorization": good},
        "garbage header": {"Authorization": "\x01garbage\x7f"},
        "10 KiB header of garbage": {"Authorization": "Bearer " + "x" * 10_240},
    }
    before_calls = user_calls(emulator)
    for name, sent in headers.items():
        for method, path in (("POST", SYNC), ("GET", PROFILE), ("GET", SETTINGS)):
            response = httpx.request(method, server.url + path, headers=sent, timeout=15)
            where = f"{name}: {method} {path}"
            assert response.status_code == 401, (where, response.status_code, response.text)
            detail = response.json().get("detail")
            assert isinstance(detail, str) and 0 < len(detail) <= 200, (where, response.text)
            value = sent.get("Authorization", "")
            for part in (value.removeprefix("Bearer ").strip(), *value.split(".")):
                if len(part) >= 8:
                    assert part not in response.text, (where, "echoed the token")
    assert user_calls(emulator) == before_calls, "a bad token made serve call Clerk"
    assert row(db, uid) is None
    log = server.log()
    assert good.split(".")[2] not in log, "the log holds a token"
    assert "Traceback" not in log, log

    # the good token still works, and one expired within the 5 s leeway too
    response = server.sync(token(emulator, uid, now=time.time() - 62, ttl_s=60))
    assert response.status_code == 200, response.text
    assert server.sync(good).status_code == 200
    found = row(db, uid)
    assert found is not None
    assert found["is_active"] is True


def test_clerk_jwt_key_with_literal_newlines_verifies_without_network(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator, pem: str, tmp_path: Path
) -> None:
    """CLERK_JWT_KEY as .env files and containers carry it (``\\n`` for each newline), from
    the environment and from .env: tokens verify, the JWKS is never fetched."""
    escaped = pem.strip().replace("\n", "\\n")
    assert "\n" not in escaped
    alice, bob = make_user(emulator, "Escaped"), make_user(emulator, "Dotenv")
    emulator.emulator.reset_stats()
    with serving(cli, tmp_path, env={"CLERK_JWT_KEY": escaped}) as server:
        response = server.sync(token(emulator, alice["id"]))
        assert response.status_code == 200, response.text
        assert server.get(PROFILE, headers=bearer(token(emulator, alice["id"]))).is_success
    (tmp_path / ".env").write_text(f'CLERK_JWT_KEY="{escaped}"\n')
    with serving(cli, tmp_path) as server:
        response = server.sync(token(emulator, bob["id"]))
        assert response.status_code == 200, response.text
    assert jwks_calls(emulator) == 0
    assert row(db, alice["id"]) is not None
    assert row(db, bob["id"]) is not None


def test_without_clerk_jwt_key_the_jwks_is_fetched_once_and_cached(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator, tmp_path: Path
) -> None:
    """No CLERK_JWT_KEY: the instance's JWKS, fetched once for many sign-ins; a storm of
    tokens naming unknown kids refetches it at most once a minute."""
    users = [make_user(emulator, f"Jwks{i}") for i in range(3)]
    emulator.emulator.reset_stats()
    with serving(cli, tmp_path, env={"CLERK_JWT_KEY": None}) as server:
        assert jwks_calls(emulator) == 0, "the JWKS was fetched before any sign-in"
        for user in users:
            for _ in range(2):
                response = server.sync(token(emulator, user["id"]))
                assert response.status_code == 200, response.text
            assert server.get(PROFILE, headers=bearer(token(emulator, user["id"]))).is_success
        assert jwks_calls(emulator) == 1

        for i in range(25):
            forged = token(emulator, users[0]["id"], kid=f"kid_unknown_{i}")
            response = server.sync(forged)
            assert response.status_code == 401, (i, response.text)
        assert jwks_calls(emulator) <= 2, emulator.emulator.stats()["by_endpoint"]
        # the cached key still verifies
        assert server.sync(token(emulator, users[1]["id"])).status_code == 200
        assert jwks_calls(emulator) <= 2


def test_a_first_unknown_kid_fetches_the_jwks_once(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Unknown kids first, on a fresh serve: one fetch, then none however many follow, and the
    good token after them verifies from that fetch."""
    user = make_user(emulator, "Kidstorm")
    emulator.emulator.reset_stats()
    with serving(cli, tmp_path, env={"CLERK_JWT_KEY": None}) as server:
        for i in range(30):
            response = server.sync(token(emulator, user["id"], kid=f"kid_forged_{i}"))
            assert response.status_code == 401, (i, response.text)
        assert 1 <= jwks_calls(emulator) <= 2, emulator.emulator.stats()["by_endpoint"]
        fetched = jwks_calls(emulator)
        assert server.sync(token(emulator, user["id"])).status_code == 200
        assert jwks_calls(emulator) == fetched


# -- Clerk's answers ----------------------------------------------------------------------------


def test_a_user_clerk_no_longer_has_is_deactivated_and_tombstoned(
    server: Serve, cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    """Clerk's 404: the row is kept, deactivated, tombstoned like a user.deleted webhook, the
    answer 404; no later sync, webhook or backfill brings it back."""
    clerk = emulator.emulator
    others = populate(emulator, 2)
    gone = make_user(emulator, "Gone")
    assert cli("backfill").exit_code == 0
    before = row(db, gone["id"])
    assert before is not None
    assert before["is_active"] is True
    tokens = [token(emulator, gone["id"], ttl_s=120) for _ in range(3)]
    clerk.delete_user(gone["id"])

    response = server.sync(tokens[0])
    assert response.status_code == 404, response.text
    assert isinstance(response.json().get("detail"), str)
    after = row(db, gone["id"])
    assert after is not None, "the row was removed"
    assert (after["id"], after["is_active"]) == (before["id"], False)
    assert settings_rows(db, before["id"]) == 1
    assert tombstoned(db, gone["id"])
    assert [r["is_active"] for r in rows(db) if r["clerk_id"] != gone["id"]] == [True, True]

    # signing in again: still 404, still inactive
    response = server.sync(tokens[1])
    assert response.status_code == 404, response.text
    assert row(db, gone["id"])["is_active"] is False  # type: ignore[index]

    # a webhook carrying a later version of the user: refused as deleted
    later = {**copy.deepcopy(gone), "updated_at": gone["updated_at"] + 60_000}
    later["first_name"] = "Revenant"
    hooked = server.deliver(event("user.updated", later))
    assert hooked.is_success, hooked.text
    assert hooked.json()["outcome"] == "deleted"

    # a backfill and another sign-in afterwards leave it deactivated (Clerk never reuses an
    # id; a backfill that still lists a deleted user is in tests/test_serve_webhooks.py)
    assert cli("backfill").exit_code == 0
    response = server.sync(tokens[2])
    assert response.status_code == 404, response.text
    final = row(db, gone["id"])
    assert final is not None
    assert (final["id"], final["is_active"], final["first_name"]) == (
        before["id"],
        False,
        before["first_name"],
    )
    assert {r["clerk_id"] for r in rows(db)} == {gone["id"], *(u["id"] for u in others)}


def test_clerk_rate_limiting_or_down_is_503_with_retry_after_and_writes_nothing(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    clerk = emulator.emulator
    user = make_user(emulator, "Throttled")
    before = written(db)

    clerk.configure(throttle_every=1, retry_after=2)
    response = server.sync(token(emulator, user["id"]))
    assert response.status_code == 503, response.text
    assert isinstance(response.json().get("detail"), str)
    retry = response.headers.get("retry-after")
    assert retry is not None and retry.isdigit() and 1 <= int(retry) <= 2, response.headers
    assert written(db) == before
    # while Clerk asked to wait, another sign-in is 503 too (and need not ask Clerk again)
    calls = user_calls(emulator)
    again = server.sync(token(emulator, user["id"]))
    assert again.status_code == 503, again.text
    assert again.headers.get("retry-after"), again.headers
    assert user_calls(emulator) - calls <= 1
    assert written(db) == before

    # Clerk down: 500s
    clerk.configure(throttle_every=0, fail_every=1)
    time.sleep(int(retry) + 0.2)
    response = server.sync(token(emulator, user["id"]))
    assert response.status_code == 503, response.text
    assert response.headers.get("retry-after", "").isdigit(), response.headers
    assert written(db) == before

    # Clerk back: the next sign-in writes the user
    clerk.configure(fail_every=0)
    deadline = time.monotonic() + 10
    while (response := server.sync(token(emulator, user["id"]))).status_code == 503:
        assert time.monotonic() < deadline, response.text
        time.sleep(float(response.headers.get("retry-after", "1")))
    assert response.status_code == 200, response.text
    assert row(db, user["id"]) is not None


def test_clerk_unreachable_is_503_with_retry_after(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator, pem: str, tmp_path: Path
) -> None:
    user = make_user(emulator, "Unreachable")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with serving(cli, tmp_path, env={"CLERK_JWT_KEY": pem, "CLERK_API_URL": dead}) as server:
        response = server.sync(token(emulator, user["id"]))
    assert response.status_code == 503, response.text
    assert response.headers.get("retry-after", "").isdigit(), response.headers
    assert rows(db) == []


def test_repeated_signins_within_a_minute_call_clerk_once(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    user = make_user(emulator, "Refresher")
    other = make_user(emulator, "Neighbour")
    emulator.emulator.reset_stats()
    first = server.sync(token(emulator, user["id"]))
    assert first.status_code == 200, first.text
    for _ in range(10):
        response = server.sync(token(emulator, user["id"]))
        assert response.status_code == 200, response.text
        assert response.json() == first.json()
    assert user_calls(emulator) <= 1, emulator.emulator.stats()["by_endpoint"]
    # another user is fetched for its own first sign-in
    assert server.sync(token(emulator, other["id"])).status_code == 200
    assert user_calls(emulator) <= 2


# -- the reads ----------------------------------------------------------------------------------


def test_profile_and_settings_read_the_tokens_user_from_the_table(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    user = make_user(emulator, "Reader")
    bystander = make_user(emulator, "Bystander")

    def auth() -> dict[str, str]:
        return bearer(token(emulator, user["id"]))

    for path in (PROFILE, SETTINGS):
        response = server.get(path, headers=auth())
        assert response.status_code == 404, (path, response.text)
        assert isinstance(response.json().get("detail"), str)

    synced = server.sync(token(emulator, user["id"]))
    assert synced.status_code == 200, synced.text
    assert server.sync(token(emulator, bystander["id"])).status_code == 200
    emulator.emulator.reset_stats()

    profile = server.get(PROFILE, headers=auth())
    assert profile.status_code == 200, profile.text
    assert profile.json() == synced.json()
    found = row(db, user["id"])
    assert found is not None
    assert_user_response(profile.json(), found)

    # settings: the row, whatever its columns (a column the app added included)
    db.execute("ALTER TABLE user_monitoring_settings ADD COLUMN theme text DEFAULT 'dark'")
    db.execute(
        "UPDATE user_monitoring_settings SET alert_frequency = 'weekly' WHERE user_id = %s",
        (found["id"],),
    )
    settings = server.get(SETTINGS, headers=auth())
    assert settings.status_code == 200, settings.text
    doc = settings.json()
    assert doc["user_id"] == str(found["id"])
    assert (doc["alert_frequency"], doc["theme"]) == ("weekly", "dark")
    assert doc["monitoring_enabled"] is True
    assert datetime.fromisoformat(doc["created_at"])
    assert user_calls(emulator) == 0, "profile or settings called Clerk"

    # no endpoint takes a user id: whatever names another user, the token's user is served
    for path in (
        f"{PROFILE}?clerk_id={bystander['id']}",
        f"{PROFILE}?user_id={bystander['id']}",
        f"{SETTINGS}?clerk_id={bystander['id']}",
    ):
        response = server.get(path, headers=auth())
        assert response.status_code == 200, (path, response.text)
        assert bystander["id"] not in response.text, path
    for path in (f"/api/v1/users/{bystander['id']}", f"{PROFILE}/{bystander['id']}"):
        response = server.get(path, headers=auth())
        assert response.status_code in (404, 405), (path, response.status_code)

    # the settings row gone: 404, the profile still 200
    db.execute("DELETE FROM user_monitoring_settings WHERE user_id = %s", (found["id"],))
    assert server.get(SETTINGS, headers=auth()).status_code == 404
    assert server.get(PROFILE, headers=auth()).status_code == 200


# -- CORS ---------------------------------------------------------------------------------------


def test_cors_for_the_authorized_parties_only(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    user = make_user(emulator, "Cors")

    def preflight(origin: str, path: str = SYNC, method: str = "POST") -> httpx.Response:
        return httpx.options(
            server.url + path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization, content-type",
            },
            timeout=15,
        )

    for origin in (APP, OTHER_APP):
        for path, method in ((SYNC, "POST"), (PROFILE, "GET"), (SETTINGS, "GET")):
            response = preflight(origin, path, method)
            where = (origin, path)
            assert response.status_code in (200, 204), (where, response.status_code)
            assert response.headers.get("access-control-allow-origin") == origin, where
            allowed = response.headers.get("access-control-allow-headers", "").lower()
            assert "authorization" in allowed, (where, response.headers)
            assert method in response.headers.get("access-control-allow-methods", ""), where
            assert response.headers.get("access-control-allow-origin") != "*"

    for origin in (FOREIGN, "null", APP + ".evil.example.net", "http://localhost:3001"):
        response = preflight(origin)
        assert "access-control-allow-origin" not in response.headers, (origin, response.headers)

    # the actual requests: the allowed origin may read the answer (the 401's too), no other
    response = server.post(SYNC, headers={"Origin": APP, **bearer(token(emulator, user["id"]))})
    assert response.status_code == 200, response.text
    assert response.headers.get("access-control-allow-origin") == APP
    refused = server.post(SYNC, headers={"Origin": APP, **bearer("garbage")})
    assert refused.status_code == 401
    assert refused.headers.get("access-control-allow-origin") == APP
    foreign = server.get(
        PROFILE, headers={"Origin": FOREIGN, **bearer(token(emulator, user["id"]))}
    )
    assert "access-control-allow-origin" not in foreign.headers, foreign.headers


# -- ordering and the instance pin --------------------------------------------------------------


def test_a_signin_never_overwrites_a_newer_webhook_version(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    """Clerk's GET may lag a webhook already applied: the older version it answers is not
    written over the newer one; and an older webhook after a sign-in changes nothing."""
    clerk = emulator.emulator
    user = make_user(emulator, "Ordered")
    newer = {**copy.deepcopy(user), "updated_at": user["updated_at"] + 60_000}
    newer["first_name"] = "FromWebhook"
    hooked = server.deliver(event("user.updated", newer))
    assert hooked.is_success and hooked.json()["outcome"] == "applied", hooked.text

    response = server.sync(token(emulator, user["id"]))
    assert response.status_code == 200, response.text
    assert response.json()["first_name"] == "FromWebhook"
    assert row(db, user["id"])["first_name"] == "FromWebhook"  # type: ignore[index]

    # the other way round: a sign-in writes Clerk's latest, then a stale webhook arrives
    second = make_user(emulator, "Second")
    updated = clerk.update_user(second["id"], first_name="Latest")
    response = server.sync(token(emulator, second["id"]))
    assert response.status_code == 200
    assert response.json()["first_name"] == "Latest"
    stale = server.deliver(event("user.created", second))
    assert stale.is_success and stale.json()["outcome"] == "stale", stale.text
    assert row(db, second["id"])["first_name"] == "Latest"  # type: ignore[index]
    assert updated["updated_at"] > second["updated_at"]


def test_a_table_pinned_to_another_instance_is_refused_and_written_nothing(
    server: Serve, db: psycopg.Connection[Any], emulator: RunningEmulator
) -> None:
    user = make_user(emulator, "Pinned")
    db.execute(
        "INSERT INTO clerk_sync.instance (instance_id, environment_type) "
        "VALUES ('ins_someone_else', 'production')"
    )
    before = written(db)
    response = server.sync(token(emulator, user["id"]))
    assert response.status_code == 409, response.text
    assert isinstance(response.json().get("detail"), str)
    assert written(db) == before
    assert db.execute("SELECT instance_id FROM clerk_sync.instance").fetchall() == [
        ("ins_someone_else",)
    ]


# -- starting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("parties", [None, "", "   "])
def test_serve_refuses_to_start_without_authorized_parties(
    cli: Cli, db: psycopg.Connection[Any], pem: str, parties: str | None
) -> None:
    env = serve_env(cli, {"CLERK_AUTHORIZED_PARTIES": parties, "CLERK_JWT_KEY": pem})
    process = refused_start(env, "CLERK_AUTHORIZED_PARTIES")
    out, err = process.stdout, process.stderr
    assert process.returncode == 2, (process.returncode, err)
    assert "Traceback" not in out + err
    # one error line naming the variable (and, as every command has, at most one indented hint)
    error, *hint = err.strip().splitlines()
    assert error.startswith("error: ") and "CLERK_AUTHORIZED_PARTIES" in error, err
    assert len(hint) <= 1 and all(line.startswith("  ") for line in hint), err


def test_no_signin_starts_without_authorized_parties_and_serves_no_signin_api(
    cli: Cli, db: psycopg.Connection[Any], emulator: RunningEmulator, tmp_path: Path
) -> None:
    user = make_user(emulator, "Nosignin")
    env: dict[str, str | None] = {"CLERK_AUTHORIZED_PARTIES": None, "CLERK_JWT_KEY": None}
    with serving(cli, tmp_path, "--no-signin", env=env) as server:
        for method, path in (("POST", SYNC), ("GET", PROFILE), ("GET", SETTINGS)):
            response = httpx.request(
                method,
                server.url + path,
                headers=bearer(token(emulator, user["id"])),
                timeout=15,
            )
            assert response.status_code == 404, (path, response.status_code, response.text)
        preflight = httpx.options(
            server.url + SYNC,
            headers={"Origin": APP, "Access-Control-Request-Method": "POST"},
            timeout=15,
        )
        assert "access-control-allow-origin" not in preflight.headers
        # the webhook endpoint is still there, and still verifies
        hooked = server.deliver(event("user.created", user))
        assert hooked.is_success and hooked.json()["outcome"] == "applied", hooked.text
    assert row(db, user["id"]) is not None

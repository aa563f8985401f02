"""Clerk session tokens, verified as Clerk's own verifiers do, before ``serve`` trusts a sign-in.

A session token is a JWT signed RS256 by the instance's key. Only RS256 is accepted (never
``none``, never an HMAC algorithm: an HS256 token "signed" with the public key as its secret
is the classic forgery). The key is ``CLERK_JWT_KEY`` (the PEM public key from Clerk's
dashboard: no network call) or the instance's JWKS from the Backend API, cached and fetched
again at most once a minute for a ``kid`` it does not hold. Then the times (``exp`` required;
``nbf`` and ``iat`` not in the future; 5 s leeway), ``azp`` (one of the authorized parties;
required) and ``sub`` (a Clerk user id). Every refusal is a :class:`UnauthorizedError` (401)
with a short reason that never quotes the token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from clerk_sync_cli.errors import ClerkDataError, ConfigError, UnauthorizedError
from clerk_sync_cli.mapping import CLERK_ID_PATTERN

LEEWAY_S = 5
#: Least time between two JWKS fetches for an unknown ``kid``.
JWKS_REFETCH_S = 60.0
#: A longer Authorization header is not a session token (Clerk's are ~1 KiB).
MAX_TOKEN = 8 * 1024


@dataclass(frozen=True)
class Session:
    """Who a verified token speaks for."""

    user_id: str
    session_id: str | None
    origin: str


class Keys(Protocol):
    def key(self, kid: str | None) -> RSAPublicKey: ...


class PemKey:
    """``CLERK_JWT_KEY``: the instance's public key as Clerk's dashboard shows it. A value
    with literal ``\\n`` (as ``.env`` files and containers often carry it) works too."""

    def __init__(self, pem: str) -> None:
        text = pem.strip().replace("\\n", "\n")
        try:
            key = load_pem_public_key(text.encode())
        except ValueError:
            raise ConfigError(
                "CLERK_JWT_KEY is not a PEM public key.",
                "Clerk dashboard → Configure → API keys → Show JWT public key → PEM public key.",
            ) from None
        if not isinstance(key, RSAPublicKey):
            raise ConfigError("CLERK_JWT_KEY is not an RSA public key, as Clerk's are.")
        self._key = key

    def key(self, kid: str | None) -> RSAPublicKey:
        return self._key


class Jwks:
    """The instance's keys from ``GET /v1/jwks``, cached; fetched again for an unknown ``kid``
    at most once every :data:`JWKS_REFETCH_S` seconds, so forged ``kid``s cannot make
    ``serve`` hammer Clerk."""

    def __init__(
        self, fetch: Callable[[], Mapping[str, Any]], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, RSAPublicKey] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def key(self, kid: str | None) -> RSAPublicKey:
        if not kid:
            raise UnauthorizedError("the token names no key (kid)")
        with self._lock:
            found = self._keys.get(kid)
            if found is None and self._may_fetch():
                self._keys = _rsa_keys(self._fetch())
                self._fetched_at = self._clock()
                found = self._keys.get(kid)
        if found is None:
            raise UnauthorizedError("the token is signed by a key this instance does not have")
        return found

    def _may_fetch(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= JWKS_REFETCH_S


def _rsa_keys(jwks: Mapping[str, Any]) -> dict[str, RSAPublicKey]:
    listed = jwks.get("keys")
    if not isinstance(listed, list):
        raise ClerkDataError("Clerk's /jwks answer has no keys.")
    keys: dict[str, RSAPublicKey] = {}
    for entry in listed:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or not entry.get("kid"):
            continue
        try:
            key = jwt.PyJWK(entry, algorithm="RS256").key
        except (jwt.PyJWKError, ValueError, TypeError):
            continue
        if isinstance(key, RSAPublicKey):
            keys[str(entry["kid"])] = key
    return keys


def bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer …`` header."""
    if not authorization:
        raise UnauthorizedError("missing Authorization: Bearer <Clerk session token>")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("the Authorization header is not Bearer <token>")
    if len(token) > MAX_TOKEN:
        raise UnauthorizedError("the token is too long to be a Clerk session token")
    return token


def verify_session(token: str, keys: Keys, parties: Collection[str], *, now: float) -> Session:
    """The session ``token`` proves, checked at ``now`` (Unix seconds)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise UnauthorizedError("the token is not a JWT") from None
    if header.get("alg") != "RS256":
        raise UnauthorizedError("the token's algorithm is not RS256")
    kid = header.get("kid")
    key = keys.key(kid if isinstance(kid, str) else None)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.InvalidSignatureError:
        raise UnauthorizedError("the token's signature is not valid") from None
    except jwt.PyJWTError:
        raise UnauthorizedError("the token cannot be read") from None
    check_times(claims, now)
    origin = claims.get("azp")
    if not isinstance(origin, str) or not origin:
        raise UnauthorizedError("the token has no azp (authorized party)")
    if origin.rstrip("/") not in parties:
        raise UnauthorizedError("the token's azp is not an authorized party")
    user = claims.get("sub")
    if not isinstance(user, str) or not CLERK_ID_PATTERN.fullmatch(user):
        raise UnauthorizedError("the token's sub is not a Clerk user id")
    sid = claims.get("sid")
    return Session(user, sid if isinstance(sid, str) else None, origin.rstrip("/"))


def check_times(claims: Mapping[str, Any], now: float, leeway: float = LEEWAY_S) -> None:
    """``exp`` required and not passed, ``nbf`` and ``iat`` not in the future (each within
    ``leeway`` seconds). Pure, with the clock passed in."""
    exp = _number(claims, "exp", required=True)
    assert exp is not None
    if now > exp + leeway:
        raise UnauthorizedError("the token has expired")
    nbf = _number(claims, "nbf", required=False)
    if nbf is not None and now + leeway < nbf:
        raise UnauthorizedError("the token is not valid yet (nbf)")
    iat = _number(claims, "iat", required=False)
    if iat is not None and now + leeway < iat:
        raise UnauthorizedError("the token was issued in the future (iat)")


def _number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise UnauthorizedError(f"the token has no {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnauthorizedError(f"the token's {name} is not a number")
    return float(value)

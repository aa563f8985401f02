"""The emulated instance's session-token keys: its JWKS (``GET /v1/jwks``), its PEM public
key (what Clerk's dashboard shows as ``CLERK_JWT_KEY``), and session tokens minted for its
users as Clerk's Frontend API issues them (RS256, 60 s, ``sub``/``sid``/``azp``/``iss``/``exp``
/``nbf``/``iat``/``jti``/``v``). For tests and the demo; forged tokens are the tests' own job.

The RSA key is made on first use, so an emulator that never signs starts as fast as before.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from clerk_sync_cli.emulator.ids import b62

#: Clerk's session tokens live a minute (refreshed in the background by its SDKs).
TOKEN_TTL_S = 60
ISSUER = "https://emulator.clerk.accounts.dev"
#: ``session_token(…, azp=OMIT)`` leaves ``azp`` out.
OMIT = None


@dataclass(frozen=True)
class _Key:
    kid: str
    private: rsa.RSAPrivateKey


class SessionKeys:
    def __init__(self) -> None:
        self._keys: list[_Key] = []  # the newest first: it signs
        self._lock = threading.Lock()

    def _current(self) -> _Key:
        with self._lock:
            if not self._keys:
                self._keys.append(_new_key())
            return self._keys[0]

    def rotate(self, *, keep_old: bool = True) -> str:
        """A new signing key; the old ones stay listed in the JWKS unless ``keep_old`` is off."""
        key = _new_key()
        with self._lock:
            self._keys = [key, *self._keys] if keep_old else [key]
        return key.kid

    def jwks(self) -> dict[str, Any]:
        self._current()
        with self._lock:
            keys = list(self._keys)
        listed = []
        for key in keys:
            jwk = RSAAlgorithm.to_jwk(key.private.public_key(), as_dict=True)
            listed.append({"use": "sig", "kty": "RSA", "kid": key.kid, "alg": "RS256", **jwk})
            listed[-1]["kid"] = key.kid
        return {"keys": listed}

    def public_pem(self) -> dict[str, str]:
        key = self._current()
        pem = key.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"kid": key.kid, "pem": pem.decode()}

    def mint(
        self,
        user_id: str,
        *,
        azp: str | None = "http://localhost:3000",
        ttl_s: float = TOKEN_TTL_S,
        now: float | None = None,
        kid: str | None = None,
        **overrides: Any,
    ) -> str:
        """A session token for ``user_id``; ``overrides`` set claims (None leaves one out)."""
        key = self._current()
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "sub": user_id,
            "sid": "sess_" + b62(os.urandom(20)),
            "azp": azp,
            "iss": ISSUER,
            "iat": issued,
            "nbf": issued - 10,
            "exp": int(issued + ttl_s),
            "jti": b62(os.urandom(15)),
            "v": 2,
        }
        claims.update(overrides)
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": kid or key.kid})


def _new_key() -> _Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _Key("ins_" + b62(os.urandom(20)), private)

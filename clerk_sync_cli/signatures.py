"""Webhook signatures as Svix signs Clerk's deliveries (the Standard Webhooks scheme). Pure.

A delivery carries ``svix-id``, ``svix-timestamp`` (Unix seconds) and ``svix-signature``: one
or more space-separated ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``. The key is the
base64 after ``whsec_`` in the signing secret Clerk's dashboard shows. Several secrets (a
rotation) are all accepted; signatures of other versions (``v1a``, asymmetric) are passed
over. The Standard Webhooks names (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``) are read when the ``svix-`` ones are absent, as its libraries do. Comparison is constant-time; a timestamp more than five minutes away is refused, so a
captured delivery cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: How far a delivery's timestamp may be from this machine's clock, either way.
TOLERANCE_S = 5 * 60

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix, not a secret
_ID = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no space: what Svix ids are
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_MAX_SIGNATURES = 32  # more entries than any rotation needs: a malformed header


class SignatureError(Exception):
    """A delivery that is not provably from Clerk. ``status``: 400 for a malformed or missing
    header, 401 for a stale timestamp or no valid signature. The message never quotes what
    the sender sent."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SecretError(ValueError):
    """A signing secret that is not ``whsec_`` followed by base64 (message quotes none of it)."""


@dataclass(frozen=True)
class Delivery:
    """The verified identity of a delivery: Svix's message id and its timestamp (seconds)."""

    id: str
    timestamp: int


def secret_key(secret: str) -> bytes:
    """The HMAC key of one signing secret (``whsec_<base64>``; the prefix may be left off)."""
    encoded = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(
            "the webhook signing secret is not valid: expected whsec_ followed by base64, "
            "as Clerk's dashboard shows it"
        ) from None
    if len(key) < 16:
        raise SecretError("the webhook signing secret is too short to be Clerk's")
    return key


def parse_secrets(value: str) -> tuple[bytes, ...]:
    """The keys of space-separated signing secrets (several during a rotation)."""
    keys = tuple(secret_key(part) for part in value.split())
    if not keys:
        raise SecretError("no webhook signing secret given")
    return keys


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The base64 HMAC-SHA256 of ``id.timestamp.body``, as a ``v1`` entry carries it."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    return base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers Svix sends with ``body`` (for the emulator and the tests)."""
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(timestamp),
        "svix-signature": "v1," + signature(secret_key(secret), msg_id, timestamp, body),
    }


def verify(
    keys: Sequence[bytes], headers: Mapping[str, str], body: bytes, *, now: float
) -> Delivery:
    """Check a delivery's headers and body against ``keys`` at time ``now`` (Unix seconds).
    Returns the delivery's id and timestamp; raises :class:`SignatureError` otherwise."""
    # Svix's names, else the Standard Webhooks ones (``webhook-id``, …), as its libraries do
    prefix = "svix" if "svix-id" in headers or "webhook-id" not in headers else "webhook"
    msg_id = headers.get(f"{prefix}-id")
    stamp = headers.get(f"{prefix}-timestamp")
    signatures = headers.get(f"{prefix}-signature")
    if not msg_id or not stamp or not signatures:
        missing = [
            name
            for name, value in (
                (f"{prefix}-id", msg_id),
                (f"{prefix}-timestamp", stamp),
                (f"{prefix}-signature", signatures),
            )
            if not value
        ]
        raise SignatureError(400, f"missing webhook header: {', '.join(missing)}")
    if not _ID.fullmatch(msg_id):
        raise SignatureError(400, f"malformed {prefix}-id header")
    if not _TIMESTAMP.fullmatch(stamp):
        raise SignatureError(400, f"malformed {prefix}-timestamp header")
    timestamp = int(stamp)
    if abs(now - timestamp) > TOLERANCE_S:
        raise SignatureError(401, "webhook timestamp too far from now (stale or from the future)")
    entries = signatures.split()
    if not entries or len(entries) > _MAX_SIGNATURES:
        raise SignatureError(400, f"malformed {prefix}-signature header")
    offered: list[bytes] = []
    for entry in entries:
        version, comma, value = entry.partition(",")
        if not comma or not version:
            raise SignatureError(400, f"malformed {prefix}-signature header")
        if version == "v1":
            offered.append(value.encode())
    if not offered:
        raise SignatureError(401, "no v1 signature on the webhook")
    for key in keys:
        expected = signature(key, msg_id, timestamp, body).encode()
        matched = False
        for candidate in offered:  # every one compared, in constant time each
            matched |= hmac.compare_digest(expected, candidate)
        if matched:
            return Delivery(msg_id, timestamp)
    raise SignatureError(
        401, "webhook signature does not match (check CLERK_WEBHOOK_SIGNING_SECRET)"
    )

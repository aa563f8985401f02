"""Clerk's user JSON, decoded only as far as the sync reads it.

A page of ``GET /users`` is ~1.1 MB for 500 users, nearly all of it fields the sync never
reads (metadata, verifications, external accounts). :func:`decode_page` decodes it straight
into :class:`ClerkUser` structs of the ten fields :func:`~clerk_sync_cli.mapping.map_user`
reads, in native code, skipping every other field unread: ~4x faster than building the
whole document as dicts (benchmarks/RESULTS.md).

The fast decoder expects Clerk's shape. A page of any other shape (an email address that is
not an object, a user that is not an object, a body that is not an array) is decoded whole
by the standard library instead and converted by :func:`from_object`, which keeps the odd
values as they are for ``map_user`` to judge: both ways give equal structs for the same
user, so there is one mapping, and nothing the old dict path accepted is refused. The
standard library also reads what the fast decoder refuses as JSON although Python can hold
it (a lone surrogate escape), so such a user is mapped with a warning, not a failed run.

The annotations say what the fast decoder checks. Structs built by :func:`from_object` may
hold anything, as JSON does: readers check types where they use them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import msgspec


class EmailAddress(msgspec.Struct):
    """The two fields of one of a user's ``email_addresses`` the sync reads."""

    id: Any = None
    email_address: Any = None


class ClerkUser(msgspec.Struct):
    """The fields of a Clerk user object the sync reads; every other one is skipped."""

    id: Any = None
    first_name: Any = None
    last_name: Any = None
    image_url: Any = None
    profile_image_url: Any = None  # deprecated by Clerk, read when image_url is empty
    primary_email_address_id: Any = None
    email_addresses: list[EmailAddress] | None = None
    banned: Any = False
    created_at: Any = None
    updated_at: Any = None


_PAGE = msgspec.json.Decoder(list[ClerkUser])


def decode_page(body: bytes) -> Any:
    """A user list's body: a list of :class:`ClerkUser` (or, for an entry that is not an
    object, the entry as JSON has it); a body that is JSON but not an array, as it is.
    Raises ``ValueError`` for a body that is not JSON (truncated, say)."""
    try:
        return _PAGE.decode(body)
    except msgspec.DecodeError:  # another shape (ValidationError), or not JSON to msgspec
        pass
    doc = decode_json(body)
    return [from_object(entry) for entry in doc] if isinstance(doc, list) else doc


def decode_json(body: bytes) -> Any:
    """Any JSON document, as plain Python (``GET /users/{id}``, a page of another shape):
    everything JSON allows, lone surrogate escapes included. ``ValueError`` if not JSON."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def from_object(raw: Any) -> ClerkUser | Any:
    """A user decoded as plain JSON (a webhook's ``data``, ``GET /users/{id}``, a page of
    another shape) as a :class:`ClerkUser`; anything that is not an object, unchanged."""
    if isinstance(raw, ClerkUser) or not isinstance(raw, Mapping):
        return raw
    addresses = raw.get("email_addresses")
    if isinstance(addresses, list):
        addresses = [
            EmailAddress(a.get("id"), a.get("email_address")) if isinstance(a, Mapping) else a
            for a in addresses
        ]
    return ClerkUser(
        id=raw.get("id"),
        first_name=raw.get("first_name"),
        last_name=raw.get("last_name"),
        image_url=raw.get("image_url"),
        profile_image_url=raw.get("profile_image_url"),
        primary_email_address_id=raw.get("primary_email_address_id"),
        email_addresses=addresses,
        banned=raw.get("banned", False),
        created_at=raw.get("created_at"),
        updated_at=raw.get("updated_at"),
    )

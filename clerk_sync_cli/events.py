"""Clerk's webhook events, read from a verified body. Pure: bytes in, an :class:`Event` out.

Clerk's envelope is ``{"data": …, "object": "event", "type": …, "timestamp": …,
"instance_id": …}``. ``user.created`` and ``user.updated`` carry the whole user, as the
Backend API returns it; ``user.deleted`` carries ``{"object": "user", "id": …, "deleted":
true}``. Other types are read only as far as their type, to be acknowledged and ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from clerk_sync_cli.errors import InvalidEventError
from clerk_sync_cli.mapping import CLERK_ID_PATTERN

CREATED = "user.created"
UPDATED = "user.updated"
DELETED = "user.deleted"
#: The event types clerk-sync acts on; every other one is acknowledged and ignored.
HANDLED = (CREATED, UPDATED, DELETED)


class NotJsonError(InvalidEventError):
    """The body is not a JSON document (answered 415)."""

    http_status = 415


@dataclass(frozen=True)
class Event:
    type: str
    instance_id: str | None
    clerk_id: str | None  # None for an event clerk-sync ignores
    user: dict[str, Any] | None  # the whole user, for user.created and user.updated

    @property
    def handled(self) -> bool:
        return self.type in HANDLED


def parse_event(body: bytes) -> Event:
    """The event in a delivery's body; :class:`InvalidEventError` (or :class:`NotJsonError`)
    saying what is wrong, quoting nothing from the body."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise NotJsonError("the webhook body is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidEventError("the webhook body is not a JSON object")
    kind = doc.get("type")
    if not isinstance(kind, str) or not kind or len(kind) > 100 or not kind.isprintable():
        raise InvalidEventError("the webhook has no event type")
    if kind not in HANDLED:
        return Event(kind, _instance(doc, required=False), None, None)
    data = doc.get("data")
    if not isinstance(data, dict):
        raise InvalidEventError(f"{kind}: data is not an object")
    clerk_id = data.get("id")
    if not isinstance(clerk_id, str) or not CLERK_ID_PATTERN.fullmatch(clerk_id):
        raise InvalidEventError(f"{kind}: data has no valid user id")
    instance = _instance(doc, required=True)
    if kind == DELETED:
        if data.get("deleted") is not True:
            raise InvalidEventError(f"{kind}: data does not say deleted")
        return Event(kind, instance, clerk_id, None)
    return Event(kind, instance, clerk_id, data)


def _instance(doc: dict[str, Any], *, required: bool) -> str | None:
    value = doc.get("instance_id")
    if isinstance(value, str) and value.startswith("ins_") and 4 < len(value) <= 255:
        return value
    if required:
        raise InvalidEventError("the webhook has no valid instance_id")
    return None

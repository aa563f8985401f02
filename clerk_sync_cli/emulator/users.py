"""The live users: the virtual base population plus an overlay of changes, in two sorted views.

Mutations are an overlay (modified and added users, deleted ids) merged into the
``created_at`` and ``updated_at`` views at O(log n) per page. A deleted user keeps a tombstone
(its last ``(created_at, id)``), so a cursor on it still has a position.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from clerk_sync_cli.emulator.config import EmulatorConfig
from clerk_sync_cli.emulator.ids import USER_PREFIX, b62, blake
from clerk_sync_cli.emulator.population import Population, day
from clerk_sync_cli.emulator.render import (
    Spec,
    clerk_image,
    email_json,
    json_bytes,
    render_user,
    verification,
)
from clerk_sync_cli.emulator.views import Key, Ref, View


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_timestamps(fields: Mapping[str, Any]) -> None:
    """created_at / updated_at drive the sort orders: they must stay integers."""
    for name in ("created_at", "updated_at"):
        if name in fields:
            value = fields[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer (ms since epoch)")


class UserStore:
    """Every live user, by id and in both view orders. Public methods take :attr:`lock`."""

    def __init__(self, config: EmulatorConfig) -> None:
        #: the one lock of the whole emulator (reentrant: public methods call each other)
        self.lock = threading.RLock()
        self.base = base = Population(config)
        self._overlay: dict[str, dict[str, Any]] = {}  # modified base users + added users
        self._overlay_bytes: dict[str, bytes] = {}
        self._mod_by_idx: dict[int, str] = {}  # base index -> id, for modified base users
        self._deleted_idx: set[int] = set()
        #: deleted id -> last (created_at, id)
        self.tombs: dict[str, Key] = {}
        self.cview = View("created_at", base)
        self.uview = View("updated_at", base)
        self._clock = base.updated(base.n - 1) if base.n else 0
        self._added_seq = 0

    # -- view references -----------------------------------------------------------------------

    def ref_bytes(self, ref: Ref) -> bytes:
        if isinstance(ref, str):
            return self._overlay_bytes[ref]
        i = self.base.pos_to_index(ref)
        mid = self._mod_by_idx.get(i)
        return self._overlay_bytes[mid] if mid is not None else self.base.user_bytes(i)

    def ref_id(self, ref: Ref) -> str:
        return ref if isinstance(ref, str) else self.base.ids.user_id(self.base.pos_to_index(ref))

    def ref_time(self, ref: Ref, name: str) -> int:
        """``created_at`` or ``updated_at`` of a view reference."""
        if isinstance(ref, str):
            return int(self._overlay[ref][name])
        i = self.base.pos_to_index(ref)
        mid = self._mod_by_idx.get(i)
        return int(self._overlay[mid][name]) if mid is not None else self.base.value(name, i)

    def lookup(self, uid: str) -> Ref | None:
        """The live user ``uid`` as a view reference, or None."""
        if uid in self._overlay:
            return uid
        i = self.base.ids.decode(uid)
        if i is None or i in self._deleted_idx:
            return None
        return self.base.index_to_pos(i)

    def key_of(self, name: str, uid: str) -> Key | None:
        """(value, id) of a live user in order ``name``; None if not live."""
        user = self._overlay.get(uid)
        if user is not None:
            return int(user[name]), uid
        i = self.base.ids.decode(uid)
        if i is None or i in self._deleted_idx:
            return None
        return self.base.value(name, i), uid

    # -- mutations -----------------------------------------------------------------------------

    def _tick(self) -> int:
        """A strictly increasing 'now' in ms for updated_at (and default created_at)."""
        self._clock = max(_now_ms(), self._clock + 1)
        return self._clock

    def _store(self, uid: str, user: dict[str, Any], base_index: int | None) -> None:
        """(Re)place an overlay user in both views."""
        self._overlay[uid] = user
        self._overlay_bytes[uid] = json_bytes(user)
        self.uview.put(uid, int(user["updated_at"]))
        if base_index is None:
            self.cview.put(uid, int(user["created_at"]))
            return
        self._mod_by_idx[base_index] = uid
        pos = self.base.index_to_pos(base_index)
        self.uview.exclude(pos)
        if int(user["created_at"]) == self.base.created(base_index):
            self.cview.drop(uid)
            self.cview.include(pos)
        else:
            self.cview.exclude(pos)
            self.cview.put(uid, int(user["created_at"]))

    def _live_user(self, uid: str) -> tuple[dict[str, Any], int | None]:
        """A mutable copy of a live user and its base index; KeyError if there is none."""
        user = self._overlay.get(uid)
        i = self.base.ids.decode(uid)
        if user is not None:
            return json.loads(self._overlay_bytes[uid]), i
        if i is None or i in self._deleted_idx:
            raise KeyError(uid)
        return json.loads(self.base.user_bytes(i)), i

    def _taken(self, uid: str) -> bool:
        return uid in self._overlay or uid in self.tombs or self.base.ids.decode(uid) is not None

    def _new_id(self) -> str:
        while True:
            self._added_seq += 1
            seed = self.base.hkey + b"added" + self._added_seq.to_bytes(8, "little")
            uid = USER_PREFIX + b62(blake(seed)[:26])
            if not self._taken(uid):
                return uid

    def create_user(
        self,
        first_name: str | None,
        last_name: str | None,
        email: str | None,
        banned: bool,
        created_at: int | None,
        user_id: str | None,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """Add a user signed up with an email code (see :meth:`Emulator.create_user`)."""
        if "id" in extra or "object" in extra:
            raise ValueError("use user_id= to choose the id; 'object' is always 'user'")
        _check_timestamps(extra if created_at is None else {**extra, "created_at": created_at})
        with self.lock:
            if user_id is None:
                uid = self._new_id()
            else:
                if not isinstance(user_id, str) or not user_id:
                    raise ValueError("user_id must be a non-empty string")
                if self._taken(user_id):
                    raise ValueError(f"user id {user_id} is already taken")
                uid = user_id
            now = self._tick()
            created = now if created_at is None else int(created_at)
            d = blake(self.base.hkey + uid.encode())
            s = Spec(
                id=uid,
                first_name=first_name,
                last_name=last_name,
                created_at=created,
                updated_at=now,
                banned=banned,
            )
            s.image_url = clerk_image("default", "rid", uid)
            s.last_sign_in_at, s.last_active_at = created, day(created)
            if email is not None:
                email_id = "idn_2" + b62(d[:26])
                verified = verification(
                    "verification_otp", "verified", "email_code", 1, created + 600_000
                )
                s.emails = [email_json(email_id, email, verified, "[]", created, created)]
                s.primary_email_id = email_id
            user: dict[str, Any] = json.loads(render_user(s))
            user.update(extra)
            self._store(uid, user, None)
            return json.loads(self._overlay_bytes[uid])  # type: ignore[no-any-return]

    def update_user(self, user_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Shallow-merge ``fields`` into a user (see :meth:`Emulator.update_user`)."""
        if "id" in fields or "object" in fields:
            raise ValueError("'id' and 'object' cannot be changed")
        _check_timestamps(fields)
        with self.lock:
            user, base_index = self._live_user(user_id)
            now = self._tick()
            if "email" in fields:
                self._set_primary_email(user, fields.pop("email"), now)
            user.update(fields)
            if "updated_at" not in fields:
                user["updated_at"] = now
            self._store(user_id, user, base_index)
            return json.loads(self._overlay_bytes[user_id])  # type: ignore[no-any-return]

    def _set_primary_email(self, user: dict[str, Any], email: Any, now: int) -> None:
        if not isinstance(email, str):
            raise ValueError("email must be a string")
        addresses: list[dict[str, Any]] = list(user.get("email_addresses") or [])
        primary_id = user.get("primary_email_address_id")
        for n, item in enumerate(addresses):
            if item.get("id") == primary_id:
                addresses[n] = {**item, "email_address": email, "updated_at": now}
                break
        else:
            new_id = "idn_2" + b62(blake(self.base.hkey + f"{user['id']}:{now}".encode())[:26])
            verified = verification("verification_otp", "verified", "email_code", 1, now)
            addresses.append(json.loads(email_json(new_id, email, verified, "[]", now, now)))
            user["primary_email_address_id"] = new_id
        user["email_addresses"] = addresses

    def delete_user(self, user_id: str) -> None:
        """Delete a user; KeyError if there is no such live user."""
        with self.lock:
            user = self._overlay.get(user_id)
            i = self.base.ids.decode(user_id)
            if user is None and (i is None or i in self._deleted_idx):
                raise KeyError(user_id)
            if user is not None:
                self.tombs[user_id] = (int(user["created_at"]), user_id)
                del self._overlay[user_id]
                del self._overlay_bytes[user_id]
            self.cview.drop(user_id)
            self.uview.drop(user_id)
            if i is not None:
                self._mod_by_idx.pop(i, None)
                self._deleted_idx.add(i)
                pos = self.base.index_to_pos(i)
                self.cview.exclude(pos)
                self.uview.exclude(pos)
                self.tombs.setdefault(user_id, (self.base.created(i), user_id))

    # -- reading -------------------------------------------------------------------------------

    def warm(self, count: int | None) -> int:
        with self.lock:
            return self.base.warm(count)

    def cache_stats(self) -> dict[str, int]:
        with self.lock:
            return self.base.cache_stats()

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        with self.lock:
            try:
                return self._live_user(user_id)[0]
            except KeyError:
                return None

    def user_ids(self) -> list[str]:
        """All live ids in ``+created_at`` order (O(n))."""
        with self.lock:
            return [self.ref_id(ref) for ref in self.cview.iter_up(0)]

    def count(self) -> int:
        with self.lock:
            n = self.base.n
            return n - len(self._deleted_idx) + len(self._overlay) - len(self._mod_by_idx)

    def edge_case_ids(self) -> dict[str, list[str]]:
        """Live base users per edge-case kind (as generated; later updates are not tracked)."""
        with self.lock:
            return {
                kind: [self.base.ids.user_id(i) for i in idxs if i not in self._deleted_idx]
                for kind, idxs in self.base.edge_case_indices().items()
            }

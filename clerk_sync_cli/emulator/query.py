"""The list and count engine: which users one ``GET /v1/users`` page holds, in which order.

Order is total: ties in the sort field are broken by user id (ascending), nulls sort last, and
a descending order is exactly the reverse of the ascending one; strings compare by code point.
Unfiltered created_at / updated_at pages, and created_at windows, are found by position in
O(log n + page); other filters walk that order testing each user; other orders and ``user_id``
lists collect and sort every match (O(users)).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from clerk_sync_cli.emulator.config import MAX_LIMIT, EmulatorConfig
from clerk_sync_cli.emulator.errors import ApiError, invalid, not_found
from clerk_sync_cli.emulator.filters import Filters, Params, int_param, parse_filters, str_param
from clerk_sync_cli.emulator.ids import mix64
from clerk_sync_cli.emulator.users import UserStore
from clerk_sync_cli.emulator.views import Key, Ref, View

_VIEW_ORDERS = ("created_at", "updated_at")  # served from the two sorted views
_ORDER_FIELDS: tuple[str, ...] = (
    *_VIEW_ORDERS,
    "email_address",
    "web3wallet",
    "first_name",
    "last_name",
    "phone_number",
    "username",
    "last_active_at",
    "last_sign_in_at",
)
_INT_ORDERS = frozenset({"created_at", "updated_at", "last_active_at", "last_sign_in_at"})
#: order_by fields that sort by the user's primary identifier: (list, primary id, value) keys.
_PRIMARY_ORDERS: dict[str, tuple[str, str, str]] = {
    "email_address": ("email_addresses", "primary_email_address_id", "email_address"),
    "phone_number": ("phone_numbers", "primary_phone_number_id", "phone_number"),
    "web3wallet": ("web3_wallets", "primary_web3_wallet_id", "web3_wallet"),
}


def _order_value(user: dict[str, Any], name: str) -> int | str | None:
    """The value ``order_by=name`` sorts ``user`` by (None: null, which sorts last)."""
    value: Any
    if name in _PRIMARY_ORDERS:
        list_key, id_key, value_key = _PRIMARY_ORDERS[name]
        primary = user.get(id_key)
        value = None
        for item in user.get(list_key) or ():
            if primary is not None and isinstance(item, dict) and item.get("id") == primary:
                value = item.get(value_key)
                break
    else:
        value = user.get(name)
    if name in _INT_ORDERS:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    return value if value is None or isinstance(value, str) else str(value)


def _salted(salt: int, uid: str) -> int:
    """A tie-break that orders the same ids differently for each salt."""
    digest = hashlib.blake2b(uid.encode(), digest_size=8, key=salt.to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little")


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One validated ``GET /v1/users`` request."""

    limit: int
    offset: int
    order: str  # one of _ORDER_FIELDS
    desc: bool
    filters: Filters
    cursor: str | None  # starting_after


def parse_list_query(params: Params) -> ListQuery:
    """``limit``, ``offset``, ``order_by``, the filters and ``starting_after``, or a 422."""
    limit = int_param(params, "limit", 10)
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid("limit", f"limit must be between 1 and {MAX_LIMIT}")
    offset = int_param(params, "offset", 0)
    if offset < 0:
        raise invalid("offset", "offset must be greater than or equal to 0")
    raw_order = str_param(params, "order_by") or "-created_at"
    desc = raw_order.startswith("-")
    name = raw_order[1:] if raw_order[:1] in "+-" else raw_order
    if name not in _ORDER_FIELDS:
        raise invalid(
            "order_by",
            f"order_by {raw_order!r} is not supported: use [+-] and one of "
            f"{', '.join(_ORDER_FIELDS)} (send '+' url-encoded as %2B)",
        )
    filters = parse_filters(params)
    cursor = str_param(params, "starting_after")
    if cursor:
        if name != "created_at":
            raise invalid("starting_after", "starting_after requires order_by ±created_at")
        if offset:
            raise invalid("starting_after", "starting_after cannot be used with an offset")
    return ListQuery(limit, offset, name, desc, filters, cursor)


class QueryEngine:
    """Pages and counts over a :class:`UserStore`; callers hold its lock."""

    def __init__(self, users: UserStore, config: EmulatorConfig) -> None:
        self._users = users
        self.config = config
        self._salt_seq = 0

    def page(self, query: ListQuery, limit: int) -> list[Ref]:
        """The users of one list page (up to ``limit``), in order."""
        cursor = query.cursor
        if cursor and cursor in self._users.tombs and self.config.deleted_cursor != "continue":
            self._refuse_deleted_cursor(cursor)
            return []
        salt = self._next_salt() if self.config.unstable_ties and not cursor else None
        return self._select(
            query.filters, query.order, query.desc, cursor, query.offset, limit, salt
        )

    def count(self, filters: Filters) -> int:
        """How many live users match ``filters``."""
        if filters.include is None and self._keeper(filters, "created_at") is None:
            lo, hi = self._bounds(filters.after, filters.before)
            return hi - lo
        return len(self._collect(filters, "created_at", False, None, None))

    # -- cursors and salts ---------------------------------------------------------------------

    def _refuse_deleted_cursor(self, cursor: str) -> None:
        """The ``deleted_cursor`` answer to a cursor whose user is gone; returns for "empty"."""
        mode = self.config.deleted_cursor
        long_message = f"No user was found with id {cursor}"
        if mode == "422":
            raise invalid("starting_after", long_message)
        if mode == "404":
            raise not_found(long_message)
        if mode == "400":
            raise ApiError(
                400, "bad_request", "bad request", long_message, {"param_name": "starting_after"}
            )

    def _next_salt(self) -> int:
        """A fresh tie-break salt for one request (``unstable_ties``), reproducible per seed."""
        self._salt_seq += 1
        return mix64(self._users.base.k_tie ^ mix64(self._salt_seq))

    def _cursor_key(self, cursor: str) -> Key:
        users = self._users
        key = users.key_of("created_at", cursor) or users.tombs.get(cursor)
        if key is None:
            i = users.base.ids.decode(cursor)
            if i is None:
                raise invalid("starting_after", f"No user was found with id {cursor}")
            key = (users.base.created(i), cursor)
        return key

    def _cursor_bound(self, cursor: str, desc: bool) -> Key:
        """Ascending: the least (created_at, id) after the cursor; descending: the key that
        every user after the cursor sorts below. ``cursor_ties="skip"``: its whole millisecond
        is passed over."""
        t, uid = self._cursor_key(cursor)
        if self.config.cursor_ties == "skip":
            return (t, "") if desc else (t + 1, "")
        return (t, uid) if desc else (t, uid + "\x00")

    # -- pages ---------------------------------------------------------------------------------

    def _bounds(self, after: int | None, before: int | None) -> tuple[int, int]:
        view = self._users.cview
        lo = 0 if after is None else view.rank_lt((after + 1, ""))
        hi = self._users.count() if before is None else view.rank_lt((before, ""))
        return lo, max(lo, hi)

    def _select(
        self,
        filters: Filters,
        name: str,
        desc: bool,
        cursor: str | None,
        offset: int,
        limit: int,
        salt: int | None,
    ) -> list[Ref]:
        """One list page, by the cheapest path that answers the request exactly.

        Unfiltered created_at / updated_at pages (and created_at windows) are found by position;
        other filters walk a view testing each user; other orders, a user_id list and ties
        shuffled under filters collect every match and sort it.
        """
        if filters.include is None and name in _VIEW_ORDERS:
            keep = self._keeper(filters, name)
            if keep is None:
                return self._range(name, desc, filters, cursor, offset, limit, salt=salt)
            if salt is None:
                return self._range(name, desc, filters, cursor, offset, limit, keep=keep)
        return self._collect(filters, name, desc, cursor, salt)[offset:][:limit]

    def _keeper(self, filters: Filters, name: str) -> Callable[[Ref], bool] | None:
        """A test for what a walk of view ``name`` does not answer by position, or None."""
        bounded = name != "created_at" and (filters.after, filters.before) != (None, None)
        if not (filters.exclude or filters.tests or bounded):
            return None
        after = -math.inf if filters.after is None else filters.after
        before = math.inf if filters.before is None else filters.before
        users = self._users

        def keep(ref: Ref) -> bool:
            if filters.exclude and users.ref_id(ref) in filters.exclude:
                return False
            if bounded and not after < users.ref_time(ref, "created_at") < before:
                return False
            return not filters.tests or filters.matches(json.loads(users.ref_bytes(ref)))

        return keep

    def _range(
        self,
        name: str,
        desc: bool,
        filters: Filters,
        cursor: str | None,
        offset: int,
        limit: int,
        *,
        keep: Callable[[Ref], bool] | None = None,
        salt: int | None = None,
    ) -> list[Ref]:
        """A page of one view: O(log n + page) by position; with ``keep``, a walk from the
        start of the range testing each user (only for filters a position cannot answer)."""
        view = self._users.cview if name == "created_at" else self._users.uview
        if view is self._users.cview:
            lo, hi = self._bounds(filters.after, filters.before)
        else:
            lo, hi = 0, self._users.count()
        if desc:
            top = hi
            if cursor:
                top = min(hi, view.rank_lt(self._cursor_bound(cursor, True)))
            if keep is not None:
                walk = itertools.islice(view.iter_down(top), max(0, top - lo))
                return list(itertools.islice(filter(keep, walk), offset, offset + limit))
            top -= offset
            n = min(limit, top - lo)
            if n <= 0:
                return []
            if salt is not None:
                return self._shuffled(view, top - n, top, True, salt)
            return list(itertools.islice(view.iter_down(top), n))
        start = lo
        if cursor:
            start = max(lo, view.rank_lt(self._cursor_bound(cursor, False)))
        if keep is not None:
            walk = itertools.islice(view.iter_up(start), max(0, hi - start))
            return list(itertools.islice(filter(keep, walk), offset, offset + limit))
        start += offset
        n = min(limit, hi - start)
        if n <= 0:
            return []
        if salt is not None:
            return self._shuffled(view, start, start + n, False, salt)
        return list(itertools.islice(view.iter_up(start), n))

    def _shuffled(self, view: View, a: int, b: int, desc: bool, salt: int) -> list[Ref]:
        """Merged indices ``[a, b)`` of ``view`` with ties ordered by a salted hash of the id.

        The tie groups cut by the page's edges are read whole, so the page is one slice of a
        total order (a different one per salt), as one database query without a tie-breaker is.
        """
        first = view.value(next(view.iter_up(a)))
        last = view.value(next(view.iter_up(b - 1)))
        g0 = view.rank_lt((first, ""))
        g1 = view.rank_lt((last + 1, ""))
        window = list(itertools.islice(view.iter_up(g0), g1 - g0))
        ref_id = self._users.ref_id
        window.sort(key=lambda ref: (view.value(ref), _salted(salt, ref_id(ref))))
        if desc:
            window.reverse()
            return window[g1 - b : g1 - a]
        return window[a - g0 : b - g0]

    def _collect(
        self, filters: Filters, name: str, desc: bool, cursor: str | None, salt: int | None
    ) -> list[Ref]:
        """Every live user matching ``filters``, sorted by ``name`` (nulls last ascending, first
        descending), ties by id or, with ``salt``, by a salted hash of it. O(users) or
        O(user_id list): each candidate is parsed when a filter or the order needs its fields."""
        users = self._users
        candidates: Iterable[Ref]
        if filters.include is not None:
            found = (users.lookup(uid) for uid in dict.fromkeys(filters.include))
            candidates = [ref for ref in found if ref is not None]
        else:
            lo, hi = self._bounds(filters.after, filters.before)
            candidates = itertools.islice(users.cview.iter_up(lo), hi - lo)
        after = -math.inf if filters.after is None else filters.after
        before = math.inf if filters.before is None else filters.before
        parse = bool(filters.tests) or name not in _VIEW_ORDERS
        keyed: list[tuple[tuple[int, int | str, int | str], Ref]] = []
        for ref in candidates:
            uid = users.ref_id(ref)
            if uid in filters.exclude or not after < users.ref_time(ref, "created_at") < before:
                continue
            value: int | str | None
            if parse:
                user = json.loads(users.ref_bytes(ref))
                if not filters.matches(user):
                    continue
                value = _order_value(user, name)
            else:
                value = users.ref_time(ref, name)
            tie = uid if salt is None else _salted(salt, uid)
            keyed.append(((0, value, tie) if value is not None else (1, 0, tie), ref))
        keyed.sort(key=lambda kr: kr[0], reverse=desc)
        if cursor:  # created_at order only (checked by the caller): values are never null
            bound = (0, *self._cursor_bound(cursor, desc))
            keyed = [kr for kr in keyed if (kr[0] < bound if desc else kr[0] >= bound)]
        return [ref for _, ref in keyed]

"""A sort order over the live users: the base population merged with the overlay, by position.

A :class:`View` never materializes the order: live base positions are "all but ``excl``" and
overlay users a short sorted list, so the k-th user, or the rank of a key, is found in O(log n).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from clerk_sync_cli.emulator.population import Population

Ref = int | str  # a base position (int) or an overlay user id (str)
Key = tuple[int, str]


class View:
    """One sort order: live base positions (all minus ``excl``) merged with overlay keys ``y``."""

    __slots__ = ("base", "excl", "field", "y", "ykey")

    def __init__(self, field_name: str, base: Population) -> None:
        self.field = field_name
        self.base = base
        self.excl: list[int] = []  # sorted base positions that are not served from the base
        self.y: list[Key] = []  # sorted (field value, id) of overlay users in this view
        self.ykey: dict[str, Key] = {}

    # -- changes -------------------------------------------------------------------------------

    def exclude(self, pos: int) -> None:
        j = bisect.bisect_left(self.excl, pos)
        if j == len(self.excl) or self.excl[j] != pos:
            self.excl.insert(j, pos)

    def include(self, pos: int) -> None:
        j = bisect.bisect_left(self.excl, pos)
        if j < len(self.excl) and self.excl[j] == pos:
            del self.excl[j]

    def put(self, uid: str, value: int) -> None:
        self.drop(uid)
        key = (value, uid)
        bisect.insort(self.y, key)
        self.ykey[uid] = key

    def drop(self, uid: str) -> None:
        key = self.ykey.pop(uid, None)
        if key is not None:
            del self.y[bisect.bisect_left(self.y, key)]

    # -- positions -----------------------------------------------------------------------------

    def value(self, ref: Ref) -> int:
        """The sort field's value of a user of this view."""
        return self.ykey[ref][0] if isinstance(ref, str) else self.base.value(self.field, ref)

    def _x_len(self) -> int:
        return self.base.n - len(self.excl)

    def _x_select(self, a: int) -> int:
        """Base position of the a-th (0-based) base position not excluded from this view."""
        excl = self.excl
        if not excl or excl[0] > a:
            return a
        lo, hi = a, a + len(excl)
        while lo < hi:
            mid = (lo + hi) // 2
            if mid + 1 - bisect.bisect_right(excl, mid) >= a + 1:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def rank_lt(self, key: Key) -> int:
        """Number of live users in this view sorting strictly before ``key``."""
        r = self.base.rank_lt(self.field, key)
        return r - bisect.bisect_left(self.excl, r) + bisect.bisect_left(self.y, key)

    def _split(self, k: int) -> tuple[int, int]:
        """How many of the first ``k`` users of this view come from the base and the overlay."""
        y = self.y
        if not y:
            return k, 0
        lo, hi = max(0, k - self._x_len()), min(k, len(y))
        while lo < hi:
            b = (lo + hi) // 2
            if y[b] < self.base.key(self.field, self._x_select(k - b - 1)):
                lo = b + 1
            else:
                hi = b
        return k - lo, lo

    # -- walks ---------------------------------------------------------------------------------

    def _x_up(self, a: int) -> Iterator[int]:
        if a >= self._x_len():
            return
        excl, n = self.excl, self.base.n
        p = self._x_select(a)
        j = bisect.bisect_right(excl, p)
        while p < n:
            yield p
            p += 1
            while j < len(excl) and excl[j] == p:
                p += 1
                j += 1

    def _x_down(self, a: int) -> Iterator[int]:
        """Live base positions from the a-th downwards."""
        if a < 0:
            return
        excl = self.excl
        p = self._x_select(a)
        j = bisect.bisect_left(excl, p) - 1
        while p >= 0:
            yield p
            p -= 1
            while j >= 0 and excl[j] == p:
                p -= 1
                j -= 1

    def iter_up(self, k: int) -> Iterator[Ref]:
        """Users of this view in ascending order from merged index ``k``."""
        a, b = self._split(k)
        y, name, base_key = self.y, self.field, self.base.key
        xs = self._x_up(a)
        xp = next(xs, None)
        xkey: Key | None = None
        while True:
            if b < len(y):
                if xp is not None:
                    if xkey is None:
                        xkey = base_key(name, xp)
                    if xkey < y[b]:
                        yield xp
                        xp, xkey = next(xs, None), None
                        continue
                yield y[b][1]
                b += 1
            elif xp is None:
                return
            else:
                yield xp
                yield from xs
                return

    def iter_down(self, k: int) -> Iterator[Ref]:
        """Users of this view in descending order, starting just below merged index ``k``."""
        a, b = self._split(k)
        b -= 1
        y, name, base_key = self.y, self.field, self.base.key
        xs = self._x_down(a - 1)
        xp = next(xs, None)
        xkey: Key | None = None
        while True:
            if b >= 0:
                if xp is not None:
                    if xkey is None:
                        xkey = base_key(name, xp)
                    if xkey > y[b]:
                        yield xp
                        xp, xkey = next(xs, None), None
                        continue
                yield y[b][1]
                b -= 1
            elif xp is None:
                return
            else:
                yield xp
                yield from xs
                return

"""A list that keeps its first items and counts all of them: what a run reports (changes,
warnings, failures, notes) stays bounded in memory and in ``--json`` whatever upstream sends,
and the totals stay true."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")

#: How many of each a run keeps (the totals are always kept).
KEEP = 1000


class Capped(Generic[T]):
    def __init__(self, cap: int = KEEP) -> None:
        self.cap = cap
        self.total = 0
        self._items: list[T] = []

    def append(self, item: T) -> None:
        self.total += 1
        if len(self._items) < self.cap:
            self._items.append(item)

    def extend(self, items: Iterable[T]) -> None:
        for item in items:
            self.append(item)

    @property
    def truncated(self) -> bool:
        return self.total > len(self._items)

    def __len__(self) -> int:
        """How many are kept (``total`` says how many there were)."""
        return len(self._items)

    def __bool__(self) -> bool:
        return self.total > 0

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        return self._items[index]

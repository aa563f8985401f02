"""Windows of Clerk's user list by ``created_at``: what a full walk splits the list into, what
the store checkpoints per window, and what the client walks. Pure: no I/O, no imports from
the client or the store, so both can depend on it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """A slice of the list by ``created_at`` (ms): strictly after ``after``, strictly before
    ``before``; None is open-ended. Neighbouring windows overlap by a millisecond so that the
    whole list is covered whether Clerk's bounds are inclusive or exclusive."""

    no: int
    after: int | None = None
    before: int | None = None

    def params(self) -> dict[str, int]:
        params = {}
        if self.after is not None:
            params["created_at_after"] = self.after
        if self.before is not None:
            params["created_at_before"] = self.before
        return params


def split_windows(oldest: int, newest: int, count: int) -> list[Window]:
    """``count`` windows of equal time span covering every ``created_at``, the first open
    below and the last open above (so sign-ups during the walk land in it)."""
    count = max(1, min(count, newest - oldest))
    bounds = [oldest + (newest - oldest) * k // count for k in range(1, count)]
    lows: list[int | None] = [None, *(b - 1 for b in bounds)]
    highs: list[int | None] = [*bounds, None]
    return [Window(n, lo, hi) for n, (lo, hi) in enumerate(zip(lows, highs, strict=True))]

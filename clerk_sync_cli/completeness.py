"""Did the full walk read every user Clerk has? A cursor walk may skip users (Clerk's cursor
is not documented to be stable across ties or deletions), so the walk notes where it may have
(:class:`WalkMarks`), the users read are compared with Clerk's count after the walk
(:func:`account_for_everyone`), and a shortfall is re-read with ``created_at`` filters alone
(:func:`recover`). A run that still cannot account for everyone is partial: no watermark, no
deactivation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from clerk_sync_cli.apply import Failure
from clerk_sync_cli.clerk import ClerkClient, Window, at_ms, sweep
from clerk_sync_cli.pages import Prepared, prepare, write_page
from clerk_sync_cli.run import Completeness, RunState


@dataclass
class WalkMarks:
    """Where a cursor walk may have missed users, whatever Clerk's cursor does: the
    millisecond of each page's last user (users sharing it may be skipped), and where each
    window's walk ended (an empty page for a deleted cursor ends it early)."""

    boundaries: set[int] = field(default_factory=set)
    ends: dict[int, tuple[Window, int]] = field(default_factory=dict)  # window no -> (window, ms)
    rejected: int = 0  # listed users that could not be read

    def mark(self, window: Window, page: Prepared, last: bool) -> None:
        if last:
            start = page.last_created_ms
            if start is None:  # an empty last page: from the window's start, or the last mark
                previous = self.ends.get(window.no)
                start = previous[1] if previous else (window.after or 0) + 1
            self.ends[window.no] = (window, start)
        elif page.last_created_ms is not None:
            self.boundaries.add(page.last_created_ms)
            self.ends[window.no] = (window, page.last_created_ms)


def account_for_everyone(run: RunState, marks: WalkMarks) -> int | None:
    """Compare the users the walk read with Clerk's count after it. Every user that exists
    after the walk — sign-ups during it included — is in that count, so a sign-up that was
    read offsets nothing and one that was not is missing like any other. If users are
    missing, re-read what a cursor may skip with created_at filters alone, and count again.
    Returns Clerk's count if every user is accounted for; otherwise records the shortfall
    (status partial, no watermark, no deactivation) and returns None."""
    after = run.client.count_users()
    read = run.seen_count() + marks.rejected
    recovered = 0
    if read < after:
        recovered = recover(run, marks)
        after = run.client.count_users()
        read = run.seen_count() + marks.rejected
    complete = read >= after
    run.result.completeness = Completeness(run.listed_before, after, read, recovered, complete)
    if complete:
        return after
    incomplete(run, f"Clerk has {after} users but only {read} could be read")
    return None


def incomplete(run: RunState, why: str) -> None:
    """Record that the walk could not account for every user: the run is partial, records
    no watermark and deactivates nothing; the next run tries again."""
    shortfall = (
        f"{why}; the run is not complete (no deactivation, no watermark). The next run tries again."
    )
    run.result.walk_complete = False
    run.note(shortfall)
    run.result.failures.append(Failure(None, f"incomplete listing: {shortfall}"))


def recover(run: RunState, marks: WalkMarks) -> int:
    """Re-read what a cursor may have skipped (see :class:`WalkMarks`) with created_at
    filters alone, once a run; returns how many users that found that the walk had not."""
    if run.recovered:
        return 0
    run.recovered = True
    found_before = run.seen_count()
    for users in _recovery_pages(run.client, marks, run.options.page_size):
        write_page(run, prepare(users, run.target.schema))
    recovered = run.seen_count() - found_before
    if recovered:
        run.note(f"The cursor walk missed {recovered} users; re-read with created_at filters.")
    return recovered


def _recovery_pages(client: ClerkClient, marks: WalkMarks, limit: int) -> Iterator[list[Any]]:
    for ms in sorted(marks.boundaries):
        yield from at_ms(client, ms, limit=limit)
    for window, start in marks.ends.values():
        yield from sweep(client, start, window.before, limit=limit)

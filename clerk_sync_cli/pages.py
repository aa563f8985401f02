"""A page of Clerk's users on its way to the table: mapped in the worker that fetched it
(:func:`prepare`, pure), then written in one transaction (:func:`write_page`) through the
apply unit, with the run's lock refreshed and its checkpoint moved in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clerk_sync_cli.apply import Outcome, apply_users
from clerk_sync_cli.clerk import Page
from clerk_sync_cli.decoding import ClerkUser
from clerk_sync_cli.mapping import MappedUser, RejectedUser, map_user
from clerk_sync_cli.project import SchemaInfo
from clerk_sync_cli.run import RunState
from clerk_sync_cli.store import checkpoints
from clerk_sync_cli.store.connection import Cursor


@dataclass(frozen=True)
class Prepared:
    """A page of users, mapped: what the unit of work needs, without the raw JSON."""

    mapped: list[MappedUser | RejectedUser]
    newest_ms: int | None  # the newest updated_at on the page
    size: int
    last_created_ms: int | None = None  # the newest created_at on the page


def prepare(users: Sequence[Any], schema: SchemaInfo) -> Prepared:
    """Map a page (pure; runs in the fetching worker, so raw pages never queue up)."""
    return Prepared(
        [map_user(raw, schema.limits) for raw in users],
        _newest(users, "updated_at"),
        len(users),
        _newest(users, "created_at"),
    )


def _newest(users: Sequence[Any], name: str) -> int | None:
    stamps = [getattr(u, name) for u in users if isinstance(u, ClerkUser)]
    return max((t for t in stamps if isinstance(t, int) and not isinstance(t, bool)), default=None)


def write_page(run: RunState, page: Prepared, at: Page | None = None) -> int:
    """One page of users, one unit of work (the full walk's and ``sync``'s alike): compare,
    plan and write them through the apply unit, refresh the lock and move the checkpoint of
    the window the page came from (``at``), all in one transaction (two round trips when
    nothing changed). Returns how many users Clerk sent that could not be read."""
    known = run.known([m.row.clerk_id for m in page.mapped if isinstance(m, MappedUser)])

    def unit(cur: Cursor) -> Outcome:
        outcome = apply_users(cur, run.target, page.mapped, seen_by=run.id, known=known)
        if at is not None and run.id is not None and run.locked:
            checkpoints.checkpoint(cur, run.id, at.window.no, at.cursor, at.last)
        return outcome

    outcome = run.store.atomic(unit, locked_by=run.lease, pipelined=True)
    run.saw(outcome.users)
    run.result.add(outcome)
    if page.newest_ms is not None:
        run.result.newest_ms = max(page.newest_ms, run.result.newest_ms or page.newest_ms)
    return outcome.rejected

"""Webhook deliveries (``clerk_sync.webhook_events``): each verified delivery's outcome, and
the claim that makes a Svix message apply once.

:func:`claim_many` inserts each delivery's row before anything is written, in the writer's own
transaction: a second delivery of the same ``svix-id`` (a retry, or the same message at the
same moment on another connection or another ``serve`` process) waits on the unique index
until the first commits, then finds it claimed. If the first rolls back, its claim goes too,
and the retry applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from clerk_sync_cli.states import WebhookOutcome
from clerk_sync_cli.store.connection import Cursor

#: How long a delivery's row is kept: far beyond Svix's retry schedule (about 28 hours).
KEEP_DAYS = 30


def claim_many(cur: Cursor, deliveries: Sequence[tuple[str, str, str | None]]) -> dict[str, int]:
    """Claim each (svix_id, event type, clerk_id) for this transaction, in svix_id order (two
    transactions claiming overlapping sets take turns, never deadlock); returns the rows of
    those claimed, by svix_id: one missing was applied already."""
    if not deliveries:
        return {}
    ordered = sorted(deliveries)
    cur.execute(
        "INSERT INTO clerk_sync.webhook_events (svix_id, event_type, clerk_id, outcome, claimed) "
        "SELECT svix_id, event_type, clerk_id, %s, true "
        "FROM unnest(%s::text[], %s::text[], %s::text[]) AS d(svix_id, event_type, clerk_id) "
        "ORDER BY svix_id "
        "ON CONFLICT (svix_id) WHERE claimed DO NOTHING RETURNING svix_id, id",
        (WebhookOutcome.PENDING, *(list(column) for column in zip(*ordered, strict=True))),
    )
    return {str(svix_id): int(row_id) for svix_id, row_id in cur.fetchall()}


@dataclass(frozen=True)
class Settled:
    """A claimed delivery's outcome; ``claimed`` false gives the claim back (a refused or
    invalid delivery: Svix's retry is applied once the cause is fixed)."""

    outcome: WebhookOutcome
    claimed: bool = True


def settle_many(cur: Cursor, settled: Sequence[tuple[int, Settled, float]]) -> None:
    """Record each claimed delivery's (row id, outcome, ms), in the transaction that claimed
    it."""
    if not settled:
        return
    cur.execute(
        "UPDATE clerk_sync.webhook_events w "
        "SET outcome = s.outcome, claimed = s.claimed, ms = s.ms "
        "FROM unnest(%s::bigint[], %s::text[], %s::boolean[], %s::float8[]) "
        "AS s(id, outcome, claimed, ms) WHERE w.id = s.id",
        (
            [row_id for row_id, _, _ in settled],
            [str(s.outcome) for _, s, _ in settled],
            [s.claimed for _, s, _ in settled],
            [ms for _, _, ms in settled],
        ),
    )


def note_many(
    cur: Cursor, deliveries: Sequence[tuple[str, str, str | None, WebhookOutcome, float]]
) -> None:
    """Record deliveries that claim nothing (duplicates, refusals, invalid bodies), each
    (svix_id, event type, clerk_id, outcome, ms): for ``status``, and so that a retry of a
    refused one is still applied once fixed."""
    if not deliveries:
        return
    columns = [list(column) for column in zip(*deliveries, strict=True)]
    cur.execute(
        "INSERT INTO clerk_sync.webhook_events (svix_id, event_type, clerk_id, outcome, "
        "claimed, ms) SELECT svix_id, event_type, clerk_id, outcome, false, ms "
        "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[]) "
        "AS d(svix_id, event_type, clerk_id, outcome, ms)",
        (columns[0], columns[1], columns[2], [str(o) for o in columns[3]], columns[4]),
    )


def prune(cur: Cursor) -> int:
    """Forget deliveries older than :data:`KEEP_DAYS`; returns how many."""
    cur.execute(
        "DELETE FROM clerk_sync.webhook_events WHERE received_at < now() - make_interval(days => %s)",
        (KEEP_DAYS,),
    )
    return cur.rowcount


@dataclass(frozen=True)
class WebhookSummary:
    """The webhook side for ``status``: the last delivery, and outcomes over the last 24 h."""

    last_event_at: datetime | None
    last_24h: dict[str, int] = field(default_factory=dict)

    @property
    def receiving(self) -> bool:
        return bool(self.last_24h)


def summary(cur: Cursor) -> WebhookSummary | None:
    """None when the bookkeeping predates webhooks (a read-only command migrates nothing)."""
    cur.execute("SELECT to_regclass('clerk_sync.webhook_events') IS NOT NULL")
    found = cur.fetchone()
    if not found or not found[0]:
        return None
    cur.execute("SELECT max(received_at) FROM clerk_sync.webhook_events")
    last = cur.fetchone()
    cur.execute(
        "SELECT outcome, count(*) FROM clerk_sync.webhook_events "
        "WHERE received_at > now() - interval '24 hours' AND outcome <> %s "
        "GROUP BY outcome ORDER BY outcome",
        (WebhookOutcome.PENDING,),
    )
    counts = {str(outcome): int(n) for outcome, n in cur.fetchall()}
    return WebhookSummary(last[0] if last else None, counts)

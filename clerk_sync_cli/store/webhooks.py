"""Webhook deliveries (``clerk_sync.webhook_events``): each verified delivery's outcome, and
the claim that makes a Svix message apply once.

:func:`claim` inserts the delivery's row before anything is written, in the writer's own
transaction: a second delivery of the same ``svix-id`` (a retry, or the same message at the
same moment on another connection or another ``serve`` process) waits on the unique index
until the first commits, then finds it claimed. If the first rolls back, its claim goes too,
and the retry applies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from clerk_sync_cli.states import WebhookOutcome
from clerk_sync_cli.store.connection import Cursor

#: How long a delivery's row is kept: far beyond Svix's retry schedule (about 28 hours).
KEEP_DAYS = 30


def claim(cur: Cursor, svix_id: str, event_type: str, clerk_id: str | None) -> int | None:
    """Claim ``svix_id`` for this transaction; None when it was applied already."""
    cur.execute(
        "INSERT INTO clerk_sync.webhook_events (svix_id, event_type, clerk_id, outcome, claimed) "
        "VALUES (%s, %s, %s, %s, true) ON CONFLICT (svix_id) WHERE claimed DO NOTHING "
        "RETURNING id",
        (svix_id, event_type, clerk_id, WebhookOutcome.PENDING),
    )
    row = cur.fetchone()
    return None if row is None else int(row[0])


def settle(cur: Cursor, claimed: int, outcome: WebhookOutcome, ms: float) -> None:
    """Record the outcome of a claimed delivery (in the transaction that claimed it)."""
    cur.execute(
        "UPDATE clerk_sync.webhook_events SET outcome = %s, ms = %s WHERE id = %s",
        (outcome, ms, claimed),
    )


def note(
    cur: Cursor,
    svix_id: str,
    event_type: str,
    clerk_id: str | None,
    outcome: WebhookOutcome,
    ms: float,
) -> None:
    """Record a delivery that claims nothing (a duplicate, a refusal, an invalid body): for
    ``status``, and so that a retry of a refused one is still applied once fixed."""
    cur.execute(
        "INSERT INTO clerk_sync.webhook_events "
        "(svix_id, event_type, clerk_id, outcome, claimed, ms) VALUES (%s, %s, %s, %s, false, %s)",
        (svix_id, event_type, clerk_id, outcome, ms),
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

"""The names of the states a run, a sync and the lock can be in: one definition each, used
in the run history (``clerk_sync.runs.status``), the ``--json`` documents and the report.

They are :class:`~enum.StrEnum`: each compares equal to, and serialises as, its value, so what
the database and the JSON documents hold is unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """How a run ended (or that it has not), as ``clerk_sync.runs.status`` records it."""

    RUNNING = "running"
    OK = "ok"
    PARTIAL = "partial"  # some users could not be synced (listed as failures)
    REFUSED = "refused"  # a safety guard refused to act
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped with checkpoints: the next run of its command resumes
    SKIPPED = "skipped"  # another run held the lock
    CRASHED = "crashed"  # found running by a later run, its process gone
    STALE = "stale"  # shown by ``status`` only: running, its lock not heard from in time


#: Runs whose listing completed: what a full reconcile must have ended with to count as one.
COMPLETED = (RunStatus.OK, RunStatus.PARTIAL)
#: Runs left behind with checkpoints, which a later run may resume.
RESUMABLE = (RunStatus.RUNNING, RunStatus.INTERRUPTED)


class SyncMode(StrEnum):
    """What ``sync`` read: the users changed since the watermark, everyone, or nothing."""

    WATERMARK = "watermark"
    FULL = "full"
    NONE = "none"


class LockState(StrEnum):
    FREE = "free"
    HELD = "held"
    STALE = "stale"


class WebhookOutcome(StrEnum):
    """What became of a verified webhook delivery (``clerk_sync.webhook_events.outcome``, the
    ``outcome`` of ``serve``'s answer and of its log line)."""

    APPLIED = "applied"  # a row was written (created, updated, reactivated or deactivated)
    UNCHANGED = "unchanged"  # the row already held this version
    DUPLICATE = "duplicate"  # this svix-id was applied already: nothing done
    STALE = "stale"  # a newer version of the user was applied already
    DELETED = "deleted"  # Clerk deleted the user: no later event writes it again
    IGNORED = "ignored"  # an event type clerk-sync does not act on
    REFUSED = "refused"  # another Clerk instance than the pinned one (409)
    INVALID = "invalid"  # signed, but the body cannot be processed (400)
    PENDING = "pending"  # claimed, being processed (never left so once committed)


#: Outcomes answered 2xx: the delivery is done, and its svix-id claimed.
ANSWERED = (
    WebhookOutcome.APPLIED,
    WebhookOutcome.UNCHANGED,
    WebhookOutcome.STALE,
    WebhookOutcome.DELETED,
    WebhookOutcome.IGNORED,
)

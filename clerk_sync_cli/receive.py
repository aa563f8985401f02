"""A verified webhook event, applied: one transaction per delivery, through the apply unit.

In that transaction, in order: claim the delivery's ``svix-id`` (a second delivery of it
waits, then finds it claimed: a duplicate), check the event's Clerk instance against the
pinned one (the first event pins, as a writing run does), then write: ``user.created`` and
``user.updated`` map the user and hand it to :func:`apply.apply_users` (the version gate there
keeps an older version from overwriting a newer one, and a deleted user deleted);
``user.deleted`` tombstones the user and deactivates its row (:func:`apply.delete_user`).
Nothing here takes the run lock: a webhook must answer within Svix's 15 s, and the gate's row
lock is what orders it against a running ``backfill`` or ``diff``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from clerk_sync_cli import events
from clerk_sync_cli.apply import Target, apply_users, delete_user
from clerk_sync_cli.backend import Backend
from clerk_sync_cli.errors import InstanceMismatchError, InvalidEventError
from clerk_sync_cli.events import Event
from clerk_sync_cli.history import Instance
from clerk_sync_cli.mapping import FieldWarning, RejectedUser, map_user
from clerk_sync_cli.pinning import admit_instance
from clerk_sync_cli.signatures import Delivery
from clerk_sync_cli.states import WebhookOutcome
from clerk_sync_cli.store import webhooks
from clerk_sync_cli.store.connection import Cursor
from clerk_sync_cli.store.versions import Refusal

#: Deliveries between two prunes of old delivery rows, per process.
PRUNE_EVERY = 10_000

MISMATCH_HINT = (
    "Nothing was written. Point this Clerk instance's webhook at the database it fills, or "
    "re-pin with a run of `clerk-sync backfill --allow-instance-change` using its key."
)


@dataclass(frozen=True)
class Receipt:
    """What became of one delivery."""

    outcome: WebhookOutcome
    warnings: tuple[FieldWarning, ...] = ()


class Receiver:
    """Applies verified events to the app's tables (``backend``), from any thread."""

    def __init__(self, backend: Backend, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self._pool = backend.pool
        self._clock = clock
        self._count = 0

    def receive(self, delivery: Delivery, event: Event) -> Receipt:
        """Apply ``event`` once; raises InstanceMismatchError (409) or InvalidEventError (400)
        having written nothing but the delivery's row, DatabaseUnavailableError (503)."""
        target = self.backend.target()
        started = self._clock()
        with self._pool.store() as store:
            try:
                receipt = store.atomic(
                    lambda cur: self._apply(cur, target, delivery, event, started),
                    pipelined=True,  # BEGIN, the settling and COMMIT ride with the rest
                )
            except (InstanceMismatchError, InvalidEventError) as exc:
                refused = (
                    WebhookOutcome.REFUSED
                    if isinstance(exc, InstanceMismatchError)
                    else WebhookOutcome.INVALID
                )
                store.run(
                    webhooks.note,
                    delivery.id,
                    event.type,
                    event.clerk_id,
                    refused,
                    self._ms(started),
                )
                raise
            self._count += 1
            if self._count % PRUNE_EVERY == 1:
                store.run(webhooks.prune)
        return receipt

    def _apply(
        self, cur: Cursor, target: Target, delivery: Delivery, event: Event, started: float
    ) -> Receipt:
        claimed = webhooks.claim(cur, delivery.id, event.type, event.clerk_id)
        if claimed is None:
            webhooks.note(
                cur,
                delivery.id,
                event.type,
                event.clerk_id,
                WebhookOutcome.DUPLICATE,
                self._ms(started),
            )
            return Receipt(WebhookOutcome.DUPLICATE)
        receipt = Receipt(WebhookOutcome.IGNORED)
        if event.handled:
            assert event.instance_id is not None  # parse_event requires it
            admit_instance(cur, Instance(event.instance_id), MISMATCH_HINT)
            receipt = _write(cur, target, event)
        webhooks.settle(cur, claimed, receipt.outcome, self._ms(started))
        return receipt

    def _ms(self, started: float) -> float:
        return round((self._clock() - started) * 1000, 2)


def _write(cur: Cursor, target: Target, event: Event) -> Receipt:
    """Write the event's user through the apply unit, in the delivery's transaction."""
    assert event.clerk_id is not None
    if event.type == events.DELETED:
        changed = delete_user(cur, target, event.clerk_id)
        return Receipt(WebhookOutcome.APPLIED if changed else WebhookOutcome.UNCHANGED)
    mapped = map_user(event.user, target.schema.limits)
    if isinstance(mapped, RejectedUser):
        raise InvalidEventError(f"{event.type}: {mapped.problem}")
    outcome = apply_users(cur, target, [mapped])
    if outcome.failures:  # the app's constraints refused the values
        raise InvalidEventError(
            f"{event.type}: the database refused the user: {outcome.failures[0].problem}"
        )
    refused = outcome.refused.get(event.clerk_id)
    if refused is not None:
        stale = refused is Refusal.STALE
        return Receipt(WebhookOutcome.STALE if stale else WebhookOutcome.DELETED)
    applied = sum(outcome.applied.values()) > 0
    return Receipt(
        WebhookOutcome.APPLIED if applied else WebhookOutcome.UNCHANGED, tuple(outcome.warnings)
    )

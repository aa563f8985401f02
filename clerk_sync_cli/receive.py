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

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from clerk_sync_cli import events
from clerk_sync_cli.apply import Target, apply_users, delete_user
from clerk_sync_cli.errors import InstanceMismatchError, InvalidEventError
from clerk_sync_cli.events import Event
from clerk_sync_cli.history import Instance
from clerk_sync_cli.mapping import FieldWarning, RejectedUser, map_user
from clerk_sync_cli.project import schema_info
from clerk_sync_cli.signatures import Delivery
from clerk_sync_cli.states import WebhookOutcome
from clerk_sync_cli.store import bookkeeping, pin, schema, webhooks
from clerk_sync_cli.store.connection import Cursor
from clerk_sync_cli.store.pool import Pool
from clerk_sync_cli.store.versions import Refusal
from clerk_sync_cli.tables import Tables

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
    """Applies verified events to the app's tables, sharing ``pool`` among threads."""

    def __init__(
        self, pool: Pool, tables: Tables, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._pool = pool
        self._tables = tables
        self._clock = clock
        self._target: Target | None = None
        self._ready = threading.Lock()
        self._count = 0

    def check(self) -> None:
        """Reach the database (``/healthz``): DatabaseUnavailableError when it cannot."""
        with self._pool.store(timeout=5.0) as store:
            store.run(lambda cur: cur.execute("SELECT 1"))

    def prepare(self) -> Target:
        """Bring the bookkeeping up to date and read the app's tables, once (again after a
        failure: the server starts, and answers 503, while the database is down)."""
        with self._ready:
            if self._target is None:
                with self._pool.store() as store:
                    store.run(bookkeeping.migrate)
                    project = store.run(schema.read, self._tables)
                self._target = Target(self._tables, schema_info(project, writing=True))
            return self._target

    def receive(self, delivery: Delivery, event: Event) -> Receipt:
        """Apply ``event`` once; raises InstanceMismatchError (409) or InvalidEventError (400)
        having written nothing but the delivery's row, DatabaseUnavailableError (503)."""
        target = self.prepare()
        started = self._clock()
        with self._pool.store() as store:
            try:
                receipt = store.atomic(
                    lambda cur: self._apply(cur, target, delivery, event, started)
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
            _check_instance(cur, event.instance_id)
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


def _check_instance(cur: Cursor, instance_id: str) -> None:
    """The event's instance must be the pinned one; with no pin yet, it is pinned."""
    pinned = pin.read(cur)
    if pinned is None:
        pin.pin(cur, Instance(instance_id), None, replace=False)
        pinned = pin.read(cur)  # another delivery may have pinned first
    if pinned is not None and pinned.instance.id != instance_id:
        raise InstanceMismatchError(
            f"the event is from Clerk instance {instance_id}, but the table is pinned to "
            f"instance {pinned.instance.describe()}",
            MISMATCH_HINT,
        )

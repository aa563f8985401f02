"""Verified webhook events, applied: one transaction per batch of deliveries, through the
apply unit.

:meth:`Receiver.receive_many` takes the deliveries that arrived together (``serve`` batches
them, :mod:`clerk_sync_cli.batching`: at most one per ``svix-id`` and one per user) and, in
one transaction, in order: claims their ``svix-id``\\ s (a second delivery of one waits, then
finds it claimed: a duplicate), checks each event's Clerk instance against the pinned one (the
first event pins, as a writing run does), then writes: ``user.created`` and ``user.updated``
map their users and hand them to :func:`apply.apply_users` at once (the version gate there
keeps an older version from overwriting a newer one, and a deleted user deleted);
``user.deleted`` tombstones its user and deactivates the row (:func:`apply.delete_user`).
A delivery refused (another instance) or invalid (a user that cannot be mapped or that the
database refuses) gives its claim back in the same transaction, writes nothing, and is
answered alone; the others commit. Nothing here takes the run lock: a webhook must answer
within Svix's 15 s, and the gate's row locks are what order it against a running ``backfill``
or ``diff``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clerk_sync_cli import events
from clerk_sync_cli.apply import Target, apply_users, delete_user
from clerk_sync_cli.backend import Backend
from clerk_sync_cli.errors import (
    ClerkSyncError,
    DatabaseUnavailableError,
    InstanceMismatchError,
    InvalidEventError,
)
from clerk_sync_cli.events import Event
from clerk_sync_cli.history import Instance
from clerk_sync_cli.mapping import FieldWarning, MappedUser, RejectedUser, map_user
from clerk_sync_cli.pinning import mismatch, pinned_instance
from clerk_sync_cli.signatures import Delivery
from clerk_sync_cli.states import WebhookOutcome
from clerk_sync_cli.store import webhooks
from clerk_sync_cli.store.connection import Cursor
from clerk_sync_cli.store.pool import WAIT_S
from clerk_sync_cli.store.versions import Refusal

#: Deliveries between two prunes of old delivery rows, per process.
PRUNE_EVERY = 10_000
#: The least a batch waits for a connection, however long its deliveries waited for a worker.
MIN_POOL_WAIT_S = 0.5

MISMATCH_HINT = (
    "Nothing was written. Point this Clerk instance's webhook at the database it fills, or "
    "re-pin with a run of `clerk-sync backfill --allow-instance-change` using its key."
)


@dataclass(frozen=True)
class Item:
    """One verified delivery to apply, and when it arrived (the clock's seconds)."""

    delivery: Delivery
    event: Event
    started: float


@dataclass(frozen=True)
class Receipt:
    """What became of one delivery."""

    outcome: WebhookOutcome
    warnings: tuple[FieldWarning, ...] = ()


#: A delivery's answer: its receipt, or the error it is answered with (409, 400, 503).
Result = Receipt | ClerkSyncError


class Receiver:
    """Applies verified events to the app's tables (``backend``), from any thread."""

    def __init__(self, backend: Backend, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self._pool = backend.pool
        self._clock = clock
        self._count = 0

    def receive_many(self, items: Sequence[Item]) -> list[Result]:
        """Apply ``items`` (distinct ``svix-id``\\ s and users) in one transaction; a result
        per item, in order. If the transaction as a whole fails for a reason other than the
        database being unreachable, each item is applied again on its own, so one delivery
        never decides the answer of another."""
        # one deadline from arrival: the time an item waited for a worker is not waited again
        # for a connection (held by sign-ins, say), so the answer comes within Svix's 15 s
        waited = self._clock() - min(item.started for item in items)
        try:
            target = self.backend.target()
            with self._pool.store(max(MIN_POOL_WAIT_S, WAIT_S - waited)) as store:
                results = store.atomic(
                    lambda cur: self._apply(cur, target, items),
                    pipelined=True,  # BEGIN, the settling and COMMIT ride with the rest
                )
                before, self._count = self._count, self._count + len(items)
                if before % PRUNE_EVERY == 0 or before // PRUNE_EVERY != self._count // PRUNE_EVERY:
                    store.run(webhooks.prune)  # at the first batch, then every PRUNE_EVERY
                return results
        except DatabaseUnavailableError as exc:  # a retry of each alone would wait as long
            return [exc] * len(items)
        except ClerkSyncError as exc:
            if len(items) == 1:
                return [exc]
        return [result for item in items for result in self.receive_many([item])]

    def _apply(self, cur: Cursor, target: Target, items: Sequence[Item]) -> list[Result]:
        users = [i.event.clerk_id for i in items if i.event.clerk_id is not None]
        assert len({i.delivery.id for i in items}) == len(items), "one item per svix-id"
        assert len(set(users)) == len(users), "one item per user"
        ids = webhooks.claim_many(
            cur, [(i.delivery.id, i.event.type, i.event.clerk_id) for i in items]
        )
        results: dict[int, Result] = {}
        claimed = {n: ids[i.delivery.id] for n, i in enumerate(items) if i.delivery.id in ids}
        duplicates = [n for n in range(len(items)) if n not in claimed]
        for n in duplicates:
            results[n] = Receipt(WebhookOutcome.DUPLICATE)
        handled = [n for n in claimed if items[n].event.handled]
        if handled:
            pinned = pinned_instance(cur, _instance(items[handled[0]].event))
            for n in handled:
                refusal = mismatch(_instance(items[n].event), pinned, MISMATCH_HINT)
                if refusal is not None:
                    results[n] = refusal
        writes = [n for n in handled if n not in results]
        results.update(_write(cur, target, {n: items[n].event for n in writes}))
        for n in claimed:
            results.setdefault(n, Receipt(WebhookOutcome.IGNORED))
        done = self._clock()
        webhooks.note_many(
            cur,
            [(*_row(items[n]), WebhookOutcome.DUPLICATE, _ms(items[n], done)) for n in duplicates],
        )
        webhooks.settle_many(
            cur, [(claimed[n], _outcome(results[n]), _ms(items[n], done)) for n in claimed]
        )
        return [results[n] for n in range(len(items))]


def _write(cur: Cursor, target: Target, written: dict[int, Event]) -> dict[int, Result]:
    """Write the events' users through the apply unit, in the deliveries' transaction: the
    deletions one by one, the rest in one call (one event per user)."""
    results: dict[int, Result] = {}
    mapped: dict[int, MappedUser] = {}
    for n, event in written.items():
        assert event.clerk_id is not None
        if event.type == events.DELETED:
            changed = delete_user(cur, target, event.clerk_id)
            results[n] = Receipt(WebhookOutcome.APPLIED if changed else WebhookOutcome.UNCHANGED)
            continue
        user = map_user(event.user, target.schema.limits)
        if isinstance(user, RejectedUser):
            results[n] = InvalidEventError(f"{event.type}: {user.problem}")
        else:
            mapped[n] = user
    if not mapped:
        return results
    outcome = apply_users(cur, target, list(mapped.values()))
    failed = {f.clerk_id: f.problem for f in outcome.failures}
    for n, user in mapped.items():
        clerk_id, kind = user.row.clerk_id, written[n].type
        refused = outcome.refused.get(clerk_id)
        if clerk_id in failed:  # the app's constraints refused the values
            problem = failed[clerk_id]
            results[n] = InvalidEventError(f"{kind}: the database refused the user: {problem}")
        elif refused is not None:
            stale = refused is Refusal.STALE
            results[n] = Receipt(WebhookOutcome.STALE if stale else WebhookOutcome.DELETED)
        elif clerk_id in outcome.written:
            results[n] = Receipt(WebhookOutcome.APPLIED, user.warnings)
        else:
            results[n] = Receipt(WebhookOutcome.UNCHANGED, user.warnings)
    return results


def _instance(event: Event) -> Instance:
    assert event.instance_id is not None  # parse_event requires it of a handled event
    return Instance(event.instance_id)


def _row(item: Item) -> tuple[str, str, str | None]:
    return item.delivery.id, item.event.type, item.event.clerk_id


def _ms(item: Item, done: float) -> float:
    return round((done - item.started) * 1000, 2)


def _outcome(result: Result) -> webhooks.Settled:
    """The delivery row's outcome, and whether it keeps its claim (a refused or invalid one
    gives it back, so that Svix's retry is applied once the cause is fixed)."""
    if isinstance(result, InstanceMismatchError):
        return webhooks.Settled(WebhookOutcome.REFUSED, claimed=False)
    if isinstance(result, ClerkSyncError):
        return webhooks.Settled(WebhookOutcome.INVALID, claimed=False)
    return webhooks.Settled(result.outcome, claimed=True)

"""``clerk-sync status``: the last runs (each with the status to show), the last successful
full reconcile, the pinned instance, the lock, what ``sync`` starts from, and the webhook side
(the last delivery, outcomes over the last 24 h). Reads only."""

from __future__ import annotations

from dataclasses import dataclass

from clerk_sync_cli.history import LockInfo, Pin, RunRecord, SyncState, lock_state, run_state
from clerk_sync_cli.states import LockState
from clerk_sync_cli.store import bookkeeping, lock, pin, runs, webhooks
from clerk_sync_cli.store.connection import Store


@dataclass
class StatusReport:
    runs: list[tuple[RunRecord, str]]
    last_full: RunRecord | None
    pin: Pin | None
    lock: LockInfo
    state: SyncState
    bookkeeping: bool = True  # clerk-sync's schema exists (else nothing has run yet)
    webhooks: webhooks.WebhookSummary | None = None  # None: bookkeeping older than webhooks

    @property
    def in_progress(self) -> bool:
        return self.lock.state == LockState.HELD


def collect_status(store: Store, *, limit: int = 10, stale_after_s: float = 600.0) -> StatusReport:
    """Read the run history and the lock; write nothing (a crashed run is only reported; the
    next writing run marks it crashed and takes its lock over)."""
    free = lock_state(None, None, None, None, stale=False)
    if not store.run(bookkeeping.read).usable:
        return StatusReport([], None, None, free, SyncState(), bookkeeping=False)
    holder = store.run(lock.holder)
    info = (
        lock_state(
            holder.run_id,
            holder.host,
            holder.pid,
            holder.heartbeat_age_s,
            stale=holder.is_stale(stale_after_s),
        )
        if holder
        else free
    )
    recent = [
        (run, run_state(run, info, process_alive=lock.process_alive))
        for run in store.run(runs.recent, limit)
    ]
    pinned = store.run(pin.read)
    state = store.run(runs.sync_state, pinned.instance.id) if pinned else SyncState()
    return StatusReport(
        recent,
        store.run(runs.last_full_reconcile),
        pinned,
        info,
        state,
        webhooks=store.run(webhooks.summary),
    )

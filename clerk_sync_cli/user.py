"""``clerk-sync user ID``: one user as Clerk, the table and the settings table have it, with
the change a sync would make; ``--apply`` writes it through the apply unit as a writing run
does (recorded as a ``user`` run, under the writer lock). Nothing is written on a guess: a
404 that is not Clerk's own, or one no positive control backs, leaves the row as it is."""

from __future__ import annotations

from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from clerk_sync_cli.apply import Target, apply_users, deactivate
from clerk_sync_cli.clerk import ClerkClient
from clerk_sync_cli.deletions import LOOKUP_HINT, lookup_problem
from clerk_sync_cli.errors import ClerkSyncError, LockHeldError, UnconfirmedError
from clerk_sync_cli.history import Instance
from clerk_sync_cli.mapping import FieldWarning, MappedUser, RejectedUser, UserRow, map_user
from clerk_sync_cli.pinning import decide, record
from clerk_sync_cli.plan import ACTIONS, Action, Change, plan_deactivation, plan_user
from clerk_sync_cli.project import schema_info
from clerk_sync_cli.states import RunStatus
from clerk_sync_cli.store import Lease, bookkeeping, lock, runs, schema, users, versions
from clerk_sync_cli.store.connection import Store

#: Why the version gate kept ``user --apply`` from writing.
REFUSED = {
    versions.Refusal.STALE: "not written: a newer version of this user was applied already",
    versions.Refusal.DELETED: "not written: Clerk deleted this user (a webhook or run said so)",
}


@dataclass
class UserReport:
    clerk_id: str
    clerk: dict[str, Any] | None
    mapped: UserRow | None
    row: dict[str, Any] | None
    settings: dict[str, Any] | None
    changes: list[Change]
    warnings: list[FieldWarning]
    applied: bool = False
    problem: str | None = None

    @property
    def found(self) -> bool:
        return self.clerk is not None or self.row is not None


def inspect_user(
    client: ClerkClient,
    store: Store,
    clerk_id: str,
    *,
    apply: bool = False,
    allow_instance_change: bool = False,
    stale_after_s: float = 600.0,
) -> UserReport:
    """Clerk's record, the table row and the settings row, with the planned change.
    ``apply`` writes it as a writing run does: recorded as a ``user`` run, under the lock."""
    info = schema_info(store.run(schema.read, store.tables), writing=apply)
    target = Target(store.tables, info, gated=apply or store.run(versions.exists))
    instance = Instance.from_clerk(client.get_instance())
    decision = decide(
        store,
        instance,
        has_history=store.run(bookkeeping.read).usable,
        allow_change=allow_instance_change,
        dry_run=not apply,
    )
    report = _look(client, store, target, clerk_id)
    if report.problem is not None or not apply:
        return report  # nothing is written on a guess
    store.run(bookkeeping.migrate)
    lease = _user_lease(store, stale_after_s)
    try:
        store.run(runs.set_instance, lease.run_id, instance)
        record(store, instance, decision, lease.run_id)
        _write(client, store, target, report, lease)
    except BaseException as exc:
        _end_user_run(store, lease, report, exc)
        raise
    _end_user_run(store, lease, report)
    report.row, report.settings = store.run(users.row_and_settings, store.tables, clerk_id)
    return report


def _look(client: ClerkClient, store: Store, target: Target, clerk_id: str) -> UserReport:
    """Read the user from Clerk and the table, and plan the change (writes nothing)."""
    unconfirmed: str | None = None
    try:
        raw = client.get_user(clerk_id)
    except UnconfirmedError as exc:  # a 404 that is not Clerk's: Clerk may well have the user
        raw, unconfirmed = None, exc.message
    existing = store.run(
        users.fetch, store.tables, clerk_id, can_read_settings=target.schema.can_read_settings
    )
    row, settings = store.run(users.row_and_settings, store.tables, clerk_id)
    report = UserReport(clerk_id, raw, None, row, settings, [], [])
    if raw is not None:
        mapped = map_user(raw, target.schema.limits)
        if isinstance(mapped, RejectedUser):
            report.problem = mapped.problem
            return report
        report.mapped, report.warnings = mapped.row, list(mapped.warnings)
        report.changes = plan_user(mapped.row, existing)
    elif existing is not None and existing.is_active is not False:
        unconfirmed = unconfirmed or lookup_problem(client, lambda: client.other_user_id(clerk_id))
        if unconfirmed is None:
            report.changes = [plan_deactivation(existing)]
        else:
            unconfirmed = f"not deactivated: could not confirm with Clerk ({unconfirmed})"
    elif unconfirmed is not None:
        unconfirmed = f"could not confirm with Clerk whether it has this user ({unconfirmed})"
    if unconfirmed is not None:
        if not report.found:
            raise UnconfirmedError(f"{clerk_id}: {unconfirmed}.", LOOKUP_HINT)
        report.problem = unconfirmed
    return report


def _write(
    client: ClerkClient, store: Store, target: Target, report: UserReport, lease: Lease
) -> None:
    """Apply the planned change through the apply unit, under the run's lease."""
    writes = [c for c in report.changes if c.action is not Action.UNCHANGED]
    if any(c.action is Action.DEACTIVATE for c in writes):
        store.atomic(lambda cur: deactivate(cur, target, writes), locked_by=lease)
    elif writes:
        assert report.mapped is not None
        mapped = MappedUser(report.mapped, tuple(report.warnings))  # as _look mapped it
        outcome = store.atomic(lambda cur: apply_users(cur, target, [mapped]), locked_by=lease)
        if outcome.failures:
            report.problem = outcome.failures[0].problem
        elif outcome.refused:
            report.problem = REFUSED[outcome.refused[report.clerk_id]]
    report.applied = bool(writes) and report.problem is None


def _user_lease(store: Store, stale_after_s: float) -> Lease:
    """Start a ``user`` run and take the writer lock for it; while another run holds the lock,
    record the run as skipped and raise LockHeldError (nothing is written)."""
    run_id = store.run(runs.start, "user", dry_run=False)
    try:
        return lock.acquire(store, run_id, stale_after_s=stale_after_s)
    except LockHeldError as exc:
        store.run(runs.finish, run_id, RunStatus.SKIPPED, {"error": exc.message})
        raise


def _end_user_run(
    store: Store, lease: Lease, report: UserReport, error: BaseException | None = None
) -> None:
    """Record how the ``user`` run ended and release its lock."""
    counts = Counter(c.action for c in report.changes)
    summary: dict[str, Any] = {
        "clerk_id": report.clerk_id,
        "counts": {a.value: counts[a] for a in ACTIONS},
        "applied": {
            a.value: counts[a] if report.applied and a is not Action.UNCHANGED else 0
            for a in ACTIONS
        },
        "failures": int(report.problem is not None),
    }
    if error is None:
        status = RunStatus.PARTIAL if report.problem else RunStatus.OK
        store.run(runs.finish, lease.run_id, status, summary, lease=lease)
        return
    summary["error"] = error.message if isinstance(error, ClerkSyncError) else type(error).__name__
    with suppress(ClerkSyncError):
        store.run(runs.finish, lease.run_id, RunStatus.FAILED, summary, lease=lease)

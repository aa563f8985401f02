"""The sync itself: walk Clerk, diff each page against the table, write in batches, and
deactivate only what Clerk confirms is gone. Client and store are passed in."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from clerk_sync_cli.clerk import ClerkClient
from clerk_sync_cli.errors import BatchDataError, ClerkSyncError, ExitCode
from clerk_sync_cli.mapping import FieldWarning, MappedUser, RejectedUser, UserRow, map_user
from clerk_sync_cli.plan import (
    ACTIONS,
    Action,
    Change,
    DbUser,
    DeactivationGuard,
    plan_deactivation,
    plan_user,
)
from clerk_sync_cli.store import SchemaInfo, Store

WRITES = (Action.CREATE, Action.UPDATE, Action.REACTIVATE, Action.SETTINGS_MISSING)


class Progress(Protocol):
    def start(self, total: int | None) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...


class NoProgress:
    def start(self, total: int | None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


#: Asked before applying deactivations (a TTY prompt); gets the changes, answers yes or no.
Confirm = Callable[[Sequence[Change]], bool]


@dataclass(frozen=True)
class SyncOptions:
    command: str
    dry_run: bool = False
    deactivate: bool = False
    guard: DeactivationGuard = field(default_factory=DeactivationGuard)
    batch_size: int = 2000
    changes_cap: int = 1000


@dataclass(frozen=True)
class Failure:
    """A user that could not be synced this run."""

    clerk_id: str | None
    problem: str


@dataclass
class SyncResult:
    command: str
    dry_run: bool
    status: str = "ok"  # ok | partial | refused | failed
    clerk_users: int = 0
    db_users: int = 0
    counts: Counter[Action] = field(default_factory=Counter)
    applied: Counter[Action] = field(default_factory=Counter)
    changes: list[Change] = field(default_factory=list)
    warnings: list[FieldWarning] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    refusal: str | None = None
    duration_s: float = 0.0
    changes_cap: int = 1000

    @property
    def drift(self) -> bool:
        return any(self.counts[a] for a in ACTIONS if a is not Action.UNCHANGED)

    def record(self, changes: Sequence[Change]) -> None:
        for change in changes:
            self.counts[change.action] += 1
            if change.action is not Action.UNCHANGED and len(self.changes) < self.changes_cap:
                self.changes.append(change)

    def exit_code(self, *, fail_on_drift: bool = False) -> ExitCode:
        if self.status == "refused":
            return ExitCode.REFUSED
        if self.status == "partial":
            return ExitCode.PARTIAL
        if fail_on_drift and self.drift:
            return ExitCode.DRIFT
        return ExitCode.OK

    def summary(self) -> dict[str, Any]:
        """What the run history keeps."""
        return {
            "clerk_users": self.clerk_users,
            "db_users": self.db_users,
            "counts": {a.value: self.counts[a] for a in ACTIONS},
            "applied": {a.value: self.applied[a] for a in ACTIONS},
            "refusal": self.refusal,
            "failures": len(self.failures),
        }


def reconcile(
    client: ClerkClient,
    store: Store,
    options: SyncOptions,
    *,
    progress: Progress | None = None,
    confirm: Confirm | None = None,
) -> SyncResult:
    """Make the table match Clerk: ``backfill`` (no deactivation) or ``diff`` (full)."""
    started = time.monotonic()
    progress = progress or NoProgress()
    result = SyncResult(options.command, options.dry_run, changes_cap=options.changes_cap)
    schema = store.inspect()
    result.db_users, active_rows = store.count_active()
    listed_before = client.count_users()
    run_id = store.start_run(options.command, options.dry_run)
    try:
        progress.start(listed_before)
        rejected = _walk(client, store, schema, run_id, options, result, progress)
        progress.finish()
        if options.deactivate:
            listed_after = client.count_users()
            reason = _incomplete_listing(result.clerk_users, rejected, listed_before, listed_after)
            if reason:
                result.notes.append(f"Deactivation skipped: {reason}")
            else:
                _deactivate(client, store, run_id, options, result, active_rows, confirm)
    except ClerkSyncError as exc:
        result.status = "failed"
        result.duration_s = time.monotonic() - started
        _finish(store, run_id, result, error=exc.message)
        raise
    if result.failures and result.status == "ok":
        result.status = "partial"
    result.duration_s = time.monotonic() - started
    _finish(store, run_id, result)
    return result


def _finish(store: Store, run_id: int, result: SyncResult, error: str | None = None) -> None:
    summary = result.summary()
    if error:
        summary["error"] = error
    try:
        store.finish_run(run_id, result.status, summary)
    except ClerkSyncError:
        if error is None:
            raise


def _walk(
    client: ClerkClient,
    store: Store,
    schema: SchemaInfo,
    run_id: int,
    options: SyncOptions,
    result: SyncResult,
    progress: Progress,
) -> int:
    """Page through Clerk, plan each page, write full batches. Returns users rejected."""
    pending: list[Change] = []
    rejected = 0
    for page in client.iter_pages():
        rows: dict[str, UserRow] = {}
        for mapped in map(lambda raw: map_user(raw, schema.limits), page):
            if isinstance(mapped, RejectedUser):
                rejected += 1
                result.failures.append(Failure(mapped.clerk_id, mapped.problem))
                continue
            assert isinstance(mapped, MappedUser)
            if mapped.row.clerk_id not in rows:
                rows[mapped.row.clerk_id] = mapped.row
                result.warnings.extend(mapped.warnings)
        fresh, existing = store.see_and_fetch(run_id, list(rows))
        changes = [
            change
            for clerk_id in rows
            if clerk_id in fresh
            for change in plan_user(rows[clerk_id], existing.get(clerk_id))
        ]
        result.clerk_users += len(fresh)
        result.record(changes)
        pending.extend(c for c in changes if c.action in WRITES)
        if not options.dry_run and len(pending) >= options.batch_size:
            _apply(store, schema, pending, result)
            pending = []
        progress.advance(len(page))
    if pending and not options.dry_run:
        _apply(store, schema, pending, result)
    return rejected


def _apply(store: Store, schema: SchemaInfo, changes: list[Change], result: SyncResult) -> None:
    """Write one batch atomically. If the database refuses its data, split it in halves until
    the refused users are isolated; they are reported and the rest is written."""
    rows = [c.row for c in changes if c.row is not None]
    repair = [c.clerk_id for c in changes if c.action is Action.SETTINGS_MISSING]
    if not schema.has_settings_trigger:
        repair += [c.clerk_id for c in changes if c.action is Action.CREATE]
    try:
        inserted, updated, repaired = store.upsert(rows, repair_settings_for=repair)
    except BatchDataError as exc:
        if len(changes) == 1:
            result.failures.append(Failure(changes[0].clerk_id, exc.message))
            return
        by_user: dict[str, list[Change]] = {}
        for change in changes:
            by_user.setdefault(change.clerk_id, []).append(change)
        groups = list(by_user.values())
        if len(groups) == 1:
            result.failures.append(Failure(changes[0].clerk_id, exc.message))
            return
        half = len(groups) // 2
        _apply(store, schema, [c for g in groups[:half] for c in g], result)
        _apply(store, schema, [c for g in groups[half:] for c in g], result)
        return
    for change in changes:
        if change.action is Action.CREATE and change.clerk_id in inserted:
            result.applied[Action.CREATE] += 1
        elif change.action in (Action.UPDATE, Action.REACTIVATE) and change.clerk_id in updated:
            result.applied[change.action] += 1
        elif change.action is Action.SETTINGS_MISSING and change.clerk_id in repaired:
            result.applied[Action.SETTINGS_MISSING] += 1


def _incomplete_listing(seen: int, rejected: int, before: int, after: int) -> str | None:
    """Why the listing cannot be trusted to infer deletions, or None."""
    listed = seen + rejected
    if rejected:
        return f"{rejected} listed users could not be read, so the listing is not trustworthy."
    if listed < min(before, after):
        return (
            f"the walk saw {listed} users but Clerk counts {before} before and {after} after; "
            "the listing looks incomplete. Rerun later."
        )
    return None


def _deactivate(
    client: ClerkClient,
    store: Store,
    run_id: int,
    options: SyncOptions,
    result: SyncResult,
    active_rows: int,
    confirm: Confirm | None,
) -> None:
    """Deactivate active rows whose users Clerk no longer lists, each confirmed by a 404."""
    count, _ = store.unseen_active(run_id, limit=0)
    refusal = options.guard.refusal(count, active_rows, result.clerk_users)
    if refusal:
        result.counts[Action.DEACTIVATE] = count
        result.status, result.refusal = "refused", refusal
        return
    _, candidates = store.unseen_active(run_id, limit=count)
    confirmed: list[DbUser] = []
    for row in candidates:
        try:
            present = client.get_user(row.clerk_id)
        except ClerkSyncError as exc:
            result.failures.append(
                Failure(
                    row.clerk_id, f"not deactivated: could not confirm with Clerk ({exc.message})"
                )
            )
            continue
        if present is None:
            confirmed.append(row)
        else:
            result.notes.append(
                f"{row.clerk_id} was missing from the listing but Clerk still has it; left active."
            )
    changes = [plan_deactivation(row) for row in confirmed]
    result.record(changes)
    if not changes or options.dry_run:
        return
    if confirm is not None and not confirm(changes):
        result.status, result.refusal = "refused", "Deactivation declined at the prompt."
        return
    done = store.deactivate([c.clerk_id for c in changes])
    result.applied[Action.DEACTIVATE] += len(done)


# -- one user ---------------------------------------------------------------------------------


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
    client: ClerkClient, store: Store, clerk_id: str, *, apply: bool = False
) -> UserReport:
    """Clerk's record, the table row and the settings row, with the planned change."""
    schema = store.inspect()
    raw = client.get_user(clerk_id)
    existing = store.fetch_user(clerk_id)
    row, settings = store.fetch_row_and_settings(clerk_id)
    report = UserReport(clerk_id, raw, None, row, settings, [], [])
    if raw is not None:
        mapped = map_user(raw, schema.limits)
        if isinstance(mapped, RejectedUser):
            report.problem = mapped.problem
            return report
        report.mapped, report.warnings = mapped.row, list(mapped.warnings)
        report.changes = plan_user(mapped.row, existing)
    elif existing is not None and existing.is_active is not False:
        report.changes = [plan_deactivation(existing)]
    if not apply:
        return report
    writes = [c for c in report.changes if c.action is not Action.UNCHANGED]
    if any(c.action is Action.DEACTIVATE for c in writes):
        store.deactivate([clerk_id])
    elif writes:
        result = SyncResult("user", False)
        _apply(store, schema, writes, result)
        if result.failures:
            report.problem = result.failures[0].problem
    report.applied = bool(writes) and report.problem is None
    report.row, report.settings = store.fetch_row_and_settings(clerk_id)
    return report

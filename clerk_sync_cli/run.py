"""One reconcile run's state, in one object the steps of :mod:`clerk_sync_cli.sync` take:
what it was asked (:class:`SyncOptions`), what it talks to (the client, the store), where it
writes (:class:`apply.Target`), its bookkeeping (id, lease, what is left to walk, whom it has
seen) and what it reports (:class:`SyncResult`, the ``--json`` document's source)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from clerk_sync_cli.apply import Failure, Outcome, Target
from clerk_sync_cli.capped import Capped
from clerk_sync_cli.clerk import PAGE_LIMIT, ClerkClient, Window
from clerk_sync_cli.errors import ExitCode
from clerk_sync_cli.history import Baseline
from clerk_sync_cli.mapping import FieldWarning
from clerk_sync_cli.plan import ACTIONS, Action, Change, DbUser, DeactivationGuard
from clerk_sync_cli.states import RunStatus, SyncMode
from clerk_sync_cli.store import Lease, Store, checkpoints, users
from clerk_sync_cli.store.bookkeeping import Bookkeeping
from clerk_sync_cli.store.versions import Refusal

#: Windows of the list walked at once, all under the one --max-rps pace. At Clerk's ~300 ms a
#: page, 16 in flight make ~50 requests/s: more than half a production key's limit (100/s),
#: and a development key's (10/s) paces them anyway. Parsing is capped apart (clerk.PARSERS),
#: so more walkers cost only the pages they hold (benchmarks/RESULTS.md: 8 missed 6x at 100k).
DEFAULT_CONCURRENCY = 16


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
    page_size: int = PAGE_LIMIT  # users read and written per transaction
    concurrency: int = DEFAULT_CONCURRENCY  # windows of the list walked at once
    changes_cap: int = 1000
    stale_after_s: float = 600.0  # a lock holder silent this long is presumed dead
    resume: bool = True
    allow_instance_change: bool = False  # re-pin to the key's instance instead of refusing
    # `sync`: read only the users changed since the watermark, newest first ...
    incremental: bool = False
    overlap_s: float = 600.0  # ... reaching this far below the watermark,
    max_recent_pages: int = 20  # ... for at most this many pages (then the full walk),
    full: bool = True  # ... and run the full reconcile when it is needed (else report it)


@dataclass(frozen=True)
class Completeness:
    """Whether the full walk read every user Clerk has: Clerk's count before the walk and
    after it (and after any recovery), the users read, and those the recovery found."""

    clerk_before: int
    clerk_after: int
    read: int
    recovered: int
    complete: bool


@dataclass
class SyncResult:
    command: str
    dry_run: bool
    run_id: int | None = None
    status: RunStatus = RunStatus.OK  # ok | partial | refused | failed | interrupted
    clerk_users: int = 0
    db_users: int = 0
    counts: Counter[Action] = field(default_factory=Counter)
    applied: Counter[Action] = field(default_factory=Counter)
    changes: list[Change] = field(default_factory=list)
    # bounded: the first KEEP of each are kept, and their totals
    warnings: Capped[FieldWarning] = field(default_factory=Capped)
    failures: Capped[Failure] = field(default_factory=Capped)
    notes: Capped[str] = field(default_factory=Capped)
    refusal: str | None = None
    duration_s: float = 0.0
    changes_cap: int = 1000
    requests: int = 0
    # history and `sync`
    mode: SyncMode | None = None  # sync: what it read
    full_reason: str | None = None  # sync: why the full reconcile ran (or is needed)
    since_ms: int | None = None  # sync: read users changed at or after this (watermark - overlap)
    pages: int = 0  # sync: pages of the newest-changed-first walk
    newest_ms: int | None = None  # the newest updated_at read
    walk_complete: bool = False  # every user the walk had to read was read
    walk_failures: int = 0  # users read but not written (rejected or refused by the database)
    completeness: Completeness | None = None  # after a full walk: did it read every user?
    baseline: Baseline | None = None  # after a full reconcile: table rows and Clerk's count
    watermark_ms: int | None = None  # recorded for the next sync
    previous_watermark_ms: int | None = None
    #: users the version gate kept from being written, by why (a webhook was newer, or Clerk
    #: deleted them since the walk read them)
    gated: Counter[str] = field(default_factory=Counter)

    @property
    def full_needed(self) -> bool:
        """A full reconcile is needed and did not run (``sync --no-full``)."""
        return self.full_reason is not None and self.mode is not SyncMode.FULL

    @property
    def drift(self) -> bool:
        return any(self.counts[a] for a in ACTIONS if a is not Action.UNCHANGED)

    def record(self, changes: Sequence[Change]) -> None:
        for change in changes:
            self.counts[change.action] += 1
            if change.action is not Action.UNCHANGED and len(self.changes) < self.changes_cap:
                self.changes.append(change)

    def add(self, outcome: Outcome) -> None:
        """Count what one call of the apply unit found and did."""
        self.record(outcome.changes)
        self.counts[Action.UNCHANGED] += outcome.unchanged
        self.applied.update(outcome.applied)
        self.failures.extend(outcome.failures)
        self.warnings.extend(outcome.warnings)
        self.walk_failures += len(outcome.failures)
        self.gated.update(outcome.refused.values())

    def gate_note(self) -> str | None:
        """What the version gate kept from being written, worth a note at the end of a run."""
        if not self.gated:
            return None
        stale, deleted = self.gated[Refusal.STALE], self.gated[Refusal.DELETED]
        parts = []
        if stale:
            parts.append(f"{stale} already had a newer version (written by a webhook meanwhile)")
        if deleted:
            parts.append(
                f"{deleted} were deleted in Clerk (a webhook or run said so; kept deactivated)"
            )
        verb = "Would not write" if self.dry_run else "Did not write"
        return f"{verb} {sum(self.gated.values())} user(s) as read: " + "; ".join(parts) + "."

    def refuse(self, why: str) -> None:
        self.status, self.refusal = RunStatus.REFUSED, why

    def exit_code(self, *, fail_on_drift: bool = False) -> ExitCode:
        if self.status is RunStatus.REFUSED:
            return ExitCode.REFUSED
        if self.status is RunStatus.PARTIAL:
            return ExitCode.PARTIAL
        if self.full_needed:
            return ExitCode.DRIFT
        if fail_on_drift and self.drift:
            return ExitCode.DRIFT
        return ExitCode.OK

    def summary(self) -> dict[str, Any]:
        """What the run history keeps."""
        summary: dict[str, Any] = {
            "clerk_users": self.clerk_users,
            "db_users": self.db_users,
            "counts": {a.value: self.counts[a] for a in ACTIONS},
            "applied": {a.value: self.applied[a] for a in ACTIONS},
            "refusal": self.refusal,
            "failures": self.failures.total,
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
        }
        if self.mode is not None:
            summary.update(mode=self.mode, full_reason=self.full_reason, pages=self.pages)
        if self.baseline is not None:
            summary["baseline"] = {
                "table_rows": self.baseline.table_rows,
                "clerk_users": self.baseline.clerk_users,
            }
        return summary


@dataclass
class RunState:
    """Everything one reconcile run holds, handed from step to step.

    ``id`` None: a read-only run, which records nothing; ``lease`` None: it holds no lock;
    ``todo`` None: the walk is not planned yet; ``resumable``: a later run may resume it from
    its checkpoints. A writing run records the users it has seen in ``clerk_sync.run_seen``; a
    read-only run keeps them in ``seen`` as their 64-bit hashes (about 60 bytes a user). Two
    ids that collide could only make a dry run count one user too few; ``listed`` keeps one
    id it saw whole, for the check before deletions are trusted."""

    client: ClerkClient
    store: Store
    options: SyncOptions
    target: Target
    result: SyncResult
    progress: Progress
    confirm: Confirm | None = None
    bookkeeping: Bookkeeping | None = None
    id: int | None = None
    lease: Lease | None = None
    todo: list[tuple[Window, str | None]] | None = None
    resumed: bool = False
    resumable: bool = True
    seen: set[int] | None = None
    listed: str | None = None
    recovered: bool = False  # the full walk's recovery read has run
    listed_before: int = 0  # Clerk's count before the walk
    active_rows: int = 0  # active rows in the table before the run

    @property
    def locked(self) -> bool:
        return self.lease is not None

    @property
    def has_history(self) -> bool:
        """clerk-sync's own tables exist and can be read (pin, watermark, history)."""
        return self.bookkeeping is not None and self.bookkeeping.usable

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def known(self, clerk_ids: Sequence[str]) -> set[str]:
        """Of these users, those a read-only run has already seen (a writing run: none)."""
        if self.seen is None:
            return set()
        return {clerk_id for clerk_id in clerk_ids if hash(clerk_id) in self.seen}

    def saw(self, clerk_ids: Sequence[str]) -> None:
        """A read-only run's memory of whom it has seen (once the unit is done: a reconnect
        reruns it)."""
        if self.seen is not None:
            self.seen.update(hash(clerk_id) for clerk_id in clerk_ids)
            self.listed = self.listed or next(iter(clerk_ids), None)

    def seen_count(self) -> int:
        if self.seen is not None:
            return len(self.seen)
        assert self.id is not None
        return self.store.run(checkpoints.seen_count, self.id)

    def one_listed(self) -> str | None:
        """A user this run saw in Clerk's listing, if any."""
        if self.seen is not None:
            return self.listed
        assert self.id is not None
        return self.store.run(checkpoints.one_seen, self.id)

    def unseen_active(self, limit: int) -> tuple[int, list[DbUser]]:
        """Active rows whose users this run did not see: (how many, the first ``limit``)."""
        tables = self.store.tables
        if self.seen is not None:
            seen = self.seen
            return self.store.run(
                users.active_not_in, tables, lambda clerk_id: hash(clerk_id) in seen, limit
            )
        assert self.id is not None
        return self.store.run(users.unseen_active, tables, self.id, limit)

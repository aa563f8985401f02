"""The sync itself: walk Clerk, diff each page against the table, write each page in one
transaction, and deactivate only what Clerk confirms is gone. Client and store are passed in.

A writing run holds the one writer lock and checkpoints, per ``created_at`` window, the last
user whose page is committed; a run that crashed or was interrupted is resumed from there.

Every run reads which Clerk instance its key belongs to; the first writing run pins it, and a
run against another instance refuses. ``sync`` reads only the users changed since the last
run's watermark (newest change first) and runs the full reconcile when Clerk's count says
users were deleted (see :mod:`clerk_sync_cli.history`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from clerk_sync_cli.bookkeeping import Bookkeeping
from clerk_sync_cli.capped import Capped
from clerk_sync_cli.clerk import (
    PAGE_LIMIT,
    ClerkClient,
    Page,
    Window,
    both,
    split_windows,
    walk_concurrently,
)
from clerk_sync_cli.errors import (
    BatchDataError,
    ClerkSyncError,
    ClerkUnavailableError,
    DatabaseUnavailableError,
    ExitCode,
    InstanceMismatchError,
    LockHeldError,
    UnconfirmedError,
)
from clerk_sync_cli.history import (
    Baseline,
    Counts,
    Instance,
    LockInfo,
    Pin,
    RunRecord,
    SyncState,
    decide_pin,
    full_reconcile_reason,
    lock_state,
    next_watermark,
    run_state,
)
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
from clerk_sync_cli.project import SchemaInfo, damaged_message, schema_info
from clerk_sync_cli.store import Cursor, Lease, Store, process_alive

#: Windows of the list walked at once, all under the one --max-rps pace. At Clerk's ~300 ms a
#: page, 16 in flight make ~50 requests/s: more than half a production key's limit (100/s),
#: and a development key's (10/s) paces them anyway. Parsing is capped apart (clerk.PARSERS),
#: so more walkers cost only the pages they hold (benchmarks/RESULTS.md: 8 missed 6x at 100k).
DEFAULT_CONCURRENCY = 16

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
class Failure:
    """A user that could not be synced this run."""

    clerk_id: str | None
    problem: str


@dataclass
class SyncResult:
    command: str
    dry_run: bool
    run_id: int | None = None
    status: str = "ok"  # ok | partial | refused | failed
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
    mode: str | None = None  # sync: watermark | full | none (read nothing)
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

    @property
    def full_needed(self) -> bool:
        """A full reconcile is needed and did not run (``sync --no-full``)."""
        return self.full_reason is not None and self.mode != "full"

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
class _Run:
    """The bookkeeping of one run: its id (None: a read-only run, which records nothing),
    its lease of the writer lock (None: it holds none), what to walk (None: not planned yet),
    and whether a later run may resume it from its checkpoints.

    A writing run records the users it has seen in ``clerk_sync.run_seen``; a read-only run
    writes nothing, so it keeps them in ``seen`` as their 64-bit hashes (about 60 bytes a
    user). Two ids that collide could only make a dry run count one user too few; ``listed``
    keeps one id it saw whole, for the check before deletions are trusted."""

    id: int | None
    lease: Lease | None
    todo: list[tuple[Window, str | None]] | None = None
    resumed: bool = False
    resumable: bool = True
    seen: set[int] | None = None
    listed: str | None = None
    recovered: bool = False  # the full walk's recovery read has run
    bookkeeping: Bookkeeping | None = None

    @property
    def locked(self) -> bool:
        return self.lease is not None

    @property
    def has_history(self) -> bool:
        """clerk-sync's own tables exist and can be read (pin, watermark, history)."""
        return self.bookkeeping is not None and self.bookkeeping.usable

    def seen_count(self, store: Store) -> int:
        if self.seen is not None:
            return len(self.seen)
        assert self.id is not None
        return store.seen_count(self.id)

    def one_listed(self, store: Store) -> str | None:
        """A user this run saw in Clerk's listing, if any."""
        if self.seen is not None:
            return self.listed
        assert self.id is not None
        return store.one_seen(self.id)

    def unseen_active(self, store: Store, limit: int) -> tuple[int, list[DbUser]]:
        if self.seen is not None:
            seen = self.seen
            return store.active_not_in(lambda clerk_id: hash(clerk_id) in seen, limit)
        assert self.id is not None
        return store.unseen_active(self.id, limit)


def reconcile(
    client: ClerkClient,
    store: Store,
    options: SyncOptions,
    *,
    progress: Progress | None = None,
    confirm: Confirm | None = None,
) -> SyncResult:
    """Make the table match Clerk: ``backfill`` (no deactivation), ``diff`` (full), or
    ``sync`` (``options.incremental``: the users changed since the last run, then the full
    reconcile only when it is needed)."""
    started = time.monotonic()
    progress = progress or NoProgress()
    result = SyncResult(options.command, options.dry_run, changes_cap=options.changes_cap)
    project = store.project()
    schema = schema_info(project, writing=not options.dry_run)
    if project.damaged:
        result.notes.append(damaged_message(project))
    if not schema.can_read_settings:
        result.notes.append(
            "This role cannot read the settings table; missing settings rows are not checked."
        )
    result.db_users, active_rows = store.count_active()
    run = _begin(store, options, result)
    result.run_id = run.id
    if not run.has_history:
        result.notes.append(NO_BOOKKEEPING)
    try:
        raw_instance, listed_before = both(client.get_instance, client.count_users)
        instance = _check_instance(raw_instance, store, run, options, result)
        full = True
        if options.incremental:
            full = _sync_recent(
                client, store, schema, run, options, result, instance, listed_before
            )
        if full:
            _full_pass(
                client,
                store,
                schema,
                run,
                options,
                result,
                progress,
                listed_before,
                active_rows,
                confirm,
            )
    except BaseException as exc:
        progress.finish()
        interrupted = isinstance(
            exc, ClerkUnavailableError | DatabaseUnavailableError | KeyboardInterrupt
        )
        if isinstance(exc, InstanceMismatchError):
            result.status, result.refusal = "refused", exc.message
        elif interrupted and run.locked and run.resumable and run.todo is not None:
            result.status = "interrupted"  # the next run resumes from the checkpoints
        else:
            result.status = "failed"
        result.duration_s = time.monotonic() - started
        result.requests = client.requests
        message = exc.message if isinstance(exc, ClerkSyncError) else type(exc).__name__
        _finish(store, run, result, error=message, resumable=result.status == "interrupted")
        raise
    if result.failures and result.status == "ok":
        result.status = "partial"
    if store.reconnects:
        result.notes.append(
            f"The database connection was lost and re-opened {store.reconnects} time(s)."
        )
    result.duration_s = time.monotonic() - started
    result.requests = client.requests
    _finish(store, run, result)
    return result


def _begin(store: Store, options: SyncOptions, result: SyncResult) -> _Run:
    """Start (or resume) the run; take the lock when it writes. A resumed run gets the
    windows left to walk from its checkpoints."""
    if options.dry_run:
        return _Run(None, None, resumable=False, seen=set(), bookkeeping=store.bookkeeping())
    migrated = store.ensure_bookkeeping()
    if migrated:
        result.notes.append(
            f"Created clerk-sync's bookkeeping (schema clerk_sync): {', '.join(migrated)}."
        )
    books = store.bookkeeping()
    resumable = store.resumable_run(options.command) if options.resume else None
    run_id = resumable or store.start_run(options.command, False)
    try:
        lease = store.acquire_lock(run_id, stale_after_s=options.stale_after_s)
    except LockHeldError as exc:
        if resumable is None:
            store.finish_run(run_id, "skipped", {"error": exc.message})
        raise
    if lease.replaced is not None:
        result.notes.append(
            f"Took over the lock from run {lease.replaced.run_id}, which had stopped."
        )
    store.abandon_runs(keep=run_id, command=options.command)
    if resumable is not None:
        store.resume_run(run_id)
        saved = store.load_windows(run_id)
        result.notes.append(f"Resuming run {run_id} from its checkpoint.")
        return _Run(
            run_id,
            lease,
            [(w, cursor) for w, cursor, done in saved if not done],
            resumed=True,
            bookkeeping=books,
        )
    return _Run(run_id, lease, resumable=options.resume, bookkeeping=books)


def _check_instance(
    raw: dict[str, Any], store: Store, run: _Run, options: SyncOptions, result: SyncResult
) -> Instance:
    """Record which Clerk instance the key belongs to (``raw``: Clerk's /instance answer);
    refuse one other than the pinned instance; pin it on the first writing run."""
    instance = Instance.from_clerk(raw)
    if run.id is not None:
        store.set_run_instance(run.id, instance)
    pin = store.pinned_instance() if run.has_history else None
    decision = decide_pin(
        pin.instance if pin else None,
        instance,
        allow_change=options.allow_instance_change,
        dry_run=options.dry_run,
    )
    if decision.refusal:
        raise InstanceMismatchError(decision.refusal, INSTANCE_HINT)
    if decision.write:
        store.pin_instance(instance, run.id, replace=decision.write == "repin")
    if decision.note:
        result.notes.append(decision.note)
    return instance


NO_BOOKKEEPING = (
    "No clerk-sync bookkeeping in this database yet: no run history and no pinned instance "
    "(the first writing run creates schema clerk_sync)."
)

INSTANCE_HINT = (
    "Nothing was changed. Check CLERK_SECRET_KEY is the key of the instance that filled the "
    "table; if the table really belongs to the new instance now, rerun with "
    "--allow-instance-change (it re-pins)."
)


def _sync_recent(
    client: ClerkClient,
    store: Store,
    schema: SchemaInfo,
    run: _Run,
    options: SyncOptions,
    result: SyncResult,
    instance: Instance,
    listed_before: int,
) -> bool:
    """``sync``: write the users changed since the last watermark, then tell whether the full
    reconcile must follow (and may: not ``--no-full``)."""
    state = store.sync_state(instance.id) if run.has_history else SyncState()
    result.previous_watermark_ms = state.watermark_ms
    reason = full_reconcile_reason(state)
    result.mode = "none"
    if state.watermark_ms is not None and (reason is None or not options.full):
        result.mode = "watermark"
        result.since_ms = state.watermark_ms - round(options.overlap_s * 1000)
        reached, exact = _walk_recent(client, store, schema, run, options, result)
        result.walk_complete = reached and exact
        if not exact:
            reason = (
                "a page of users changed in one millisecond cannot be read exactly by offset; "
                "the full walk reads them by created_at"
            )
        elif not reached:
            reason = (
                f"more than {options.max_recent_pages} pages of users changed since the last "
                "run; the full walk reads them more cheaply"
            )
        elif reason is None:
            # users this run found missing but did not write (a dry run, or refused by the
            # database) are Clerk's users all the same: count their rows as if written
            unwritten = result.counts[Action.CREATE] - result.applied[Action.CREATE]
            counts = Counts(
                listed_before, store.count_active()[0] + unwritten, client.count_users()
            )
            result.clerk_users = counts.clerk_after
            reason = full_reconcile_reason(state, counts)
    result.full_reason = reason
    if reason is None:
        return False
    if options.full:
        result.mode = "full"
        return True
    result.notes.append(
        "A full reconcile is needed: run `clerk-sync sync` without --no-full, or `clerk-sync diff`."
    )
    return False


def _walk_recent(
    client: ClerkClient,
    store: Store,
    schema: SchemaInfo,
    run: _Run,
    options: SyncOptions,
    result: SyncResult,
) -> tuple[bool, bool]:
    """Write the users changed since ``result.since_ms``, newest first, a page per unit of
    work. Returns whether the walk reached that far back (not stopped by the page limit),
    and whether every page could be read exactly (see :meth:`ClerkClient.walk_recent`)."""
    assert result.since_ms is not None
    reached = False
    pages = client.walk_recent(
        result.since_ms, limit=options.page_size, max_pages=options.max_recent_pages
    )
    exact = True
    for page in pages:
        result.pages += 1
        _write_page(store, schema, run, options, result, _prepare(page.users, schema))
        reached, exact = page.done, exact and page.exact
    return reached, exact


def _full_pass(
    client: ClerkClient,
    store: Store,
    schema: SchemaInfo,
    run: _Run,
    options: SyncOptions,
    result: SyncResult,
    progress: Progress,
    listed_before: int,
    active_rows: int,
    confirm: Confirm | None,
) -> None:
    """Walk the whole list (the windows left, when resumed); then, with ``deactivate``,
    deactivate what Clerk confirms is gone and record the baseline ``sync`` compares with."""
    if run.todo is None:
        windows = _plan_windows(client, options, listed_before)
        if run.locked and run.id is not None:
            store.save_windows(run.id, windows)
        run.todo = [(w, None) for w in windows]
    progress.start(listed_before)
    marks = _WalkMarks()
    rejected = _walk(client, store, schema, run, options, result, progress, marks)
    progress.finish()
    listed_after = _account_for_everyone(
        client, store, schema, run, options, result, marks, rejected, listed_before
    )
    result.clerk_users = run.seen_count(store)
    if listed_after is None:
        return  # not every user is accounted for: the run is partial, nothing deactivated
    result.walk_complete = True
    if not options.deactivate:
        return
    reason = _incomplete_listing(result.clerk_users, rejected, listed_before, listed_after)
    if run.resumed:
        result.notes.append("Resumed an interrupted run: counts cover this part only.")
    if reason:
        result.notes.append(f"Deactivation skipped: {reason}")
        result.failures.append(Failure(None, f"deactivation skipped: {reason}"))
        return
    _deactivate(
        client,
        store,
        run,
        options,
        result,
        active_rows,
        confirm,
        recover=lambda: _recover(client, store, schema, run, options, result, marks),
    )
    if result.status != "refused" and not options.dry_run:
        result.baseline = Baseline(store.count_active()[0], listed_after)


@dataclass
class _WalkMarks:
    """Where a cursor walk may have missed users, whatever Clerk's cursor does: the
    millisecond of each page's last user (users sharing it may be skipped), and where each
    window's walk ended (an empty page for a deleted cursor ends it early)."""

    boundaries: set[int] = field(default_factory=set)
    ends: dict[int, tuple[Window, int]] = field(default_factory=dict)  # window no -> (window, ms)

    def mark(self, window: Window, page: _Prepared, last: bool) -> None:
        if last:
            start = page.last_created_ms
            if start is None:  # an empty last page: from the window's start, or the last mark
                previous = self.ends.get(window.no)
                start = previous[1] if previous else (window.after or 0) + 1
            self.ends[window.no] = (window, start)
        elif page.last_created_ms is not None:
            self.boundaries.add(page.last_created_ms)
            self.ends[window.no] = (window, page.last_created_ms)


@dataclass(frozen=True)
class Completeness:
    """Whether the full walk read every user Clerk has: Clerk's count before the walk and
    after it (and after any recovery), the users read, and those the recovery found."""

    clerk_before: int
    clerk_after: int
    read: int
    recovered: int
    complete: bool


def _account_for_everyone(
    client: ClerkClient,
    store: Store,
    schema: SchemaInfo,
    run: _Run,
    options: SyncOptions,
    result: SyncResult,
    marks: _WalkMarks,
    rejected: int,
    listed_before: int,
) -> int | None:
    """Compare the users the walk read with Clerk's count after it. Every user that exists
    after the walk — sign-ups during it included — is in that count, so a sign-up that was
    read offsets nothing and one that was not is missing like any other. If users are
    missing, re-read what a cursor may skip (see :class:`_WalkMarks`) with created_at filters
    alone, and count again. Returns Clerk's count if every user is accounted for; otherwise
    records the shortfall (status partial, no watermark, no deactivation) and returns None."""
    after = client.count_users()
    read = run.seen_count(store) + rejected
    recovered = 0
    if read < after:
        recovered = _recover(client, store, schema, run, options, result, marks)
        after = client.count_users()
        read = run.seen_count(store) + rejected
    complete = read >= after
    result.completeness = Completeness(listed_before, after, read, recovered, complete)
    if complete:
        return after
    _incomplete(result, f"Clerk has {after} users but only {read} could be read")
    return None


def _incomplete(result: SyncResult, why: str) -> None:
    """Record that the walk could not account for every user: the run is partial, records
    no watermark and deactivates nothing; the next run tries again."""
    shortfall = (
        f"{why}; the run is not complete (no deactivation, no watermark). The next run tries again."
    )
    result.walk_complete = False
    result.notes.append(shortfall)
    result.failures.append(Failure(None, f"incomplete listing: {shortfall}"))


def _recover(
    client: ClerkClient,
    store: Store,
    schema: SchemaInfo,
    run: _Run,
    options: SyncOptions,
    result: SyncResult,
    marks: _WalkMarks,
) -> int:
    """Re-read what a cursor may have skipped (see :class:`_WalkMarks`) with created_at
    filters alone, once a run; returns how many users that found that the walk had not."""
    if run.recovered:
        return 0
    run.recovered = True
    found_before = run.seen_count(store)
    for users in _recovery_pages(client, marks, options.page_size):
        _write_page(store, schema, run, options, result, _prepare(users, schema))
    recovered = run.seen_count(store) - found_before
    if recovered:
        result.notes.append(
            f"The cursor walk missed {recovered} users; re-read with created_at filters."
        )
    return recovered


def _recovery_pages(client: ClerkClient, marks: _WalkMarks, limit: int) -> Iterator[list[Any]]:
    for ms in sorted(marks.boundaries):
        yield from client.at_ms(ms, limit=limit)
    for window, start in marks.ends.values():
        yield from client.sweep(start, window.before, limit=limit)


def _plan_windows(client: ClerkClient, options: SyncOptions, listed: int) -> list[Window]:
    """One window per two pages' worth of users, up to 2 per worker (each window ends with a
    short page, so more windows cost requests); one for small lists."""
    wanted = min(2 * options.concurrency, listed // (2 * options.page_size))
    if options.concurrency <= 1 or wanted <= 1:
        return [Window(0)]
    span = client.created_at_range()
    return [Window(0)] if span is None else split_windows(span[0], span[1], wanted)


def _finish(
    store: Store,
    run: _Run,
    result: SyncResult,
    *,
    error: str | None = None,
    resumable: bool = False,
) -> None:
    if run.id is None:
        return  # a read-only run records nothing
    summary = result.summary()
    if error:
        summary["error"] = error
    try:
        if error is None and _trusted_walk(result):
            result.watermark_ms = next_watermark(
                result.previous_watermark_ms, result.newest_ms, store.run_started_ms(run.id)
            )
        store.finish_run(
            run.id,
            result.status,
            summary,
            lease=run.lease,
            resumable=resumable,
            watermark_ms=result.watermark_ms,
            prune=run.locked,
        )
    except ClerkSyncError:
        if error is None:
            raise


def _trusted_walk(result: SyncResult) -> bool:
    """Whether every user the walk had to read was read and written: only then may the next
    ``sync`` start from what this run saw. A user that failed is read again next time."""
    return not result.dry_run and result.walk_complete and not result.walk_failures


def _walk(
    client: ClerkClient,
    store: Store,
    schema: SchemaInfo,
    run: _Run,
    options: SyncOptions,
    result: SyncResult,
    progress: Progress,
    marks: _WalkMarks,
) -> int:
    """Page through Clerk; plan and write each page in one transaction, noting in ``marks``
    where the cursor may have skipped users. Returns the number of listed users that could
    not be read (rejected)."""
    assert run.todo is not None
    rejected = 0
    pages = walk_concurrently(
        client,
        run.todo,
        concurrency=options.concurrency,
        limit=options.page_size,
        prepare=lambda page: (replace(page, users=[]), _prepare(page.users, schema)),
    )
    for page, prepared in pages:

        def checkpoint(cur: Cursor, page: Page = page) -> None:
            if run.id is not None:
                store.checkpoint(cur, run.id, page.window.no, page.cursor, page.last)

        rejected += _write_page(store, schema, run, options, result, prepared, checkpoint)
        marks.mark(page.window, prepared, page.last)
        progress.advance(prepared.size)
    if client.offset_fallbacks:
        result.notes.append(
            "Clerk refused the cursor; part of the list was read with offset paging."
        )
    return rejected


@dataclass(frozen=True)
class _Prepared:
    """A page of users, mapped: what the unit of work needs, without the raw JSON."""

    mapped: list[MappedUser | RejectedUser]
    newest_ms: int | None  # the newest updated_at on the page
    size: int
    last_created_ms: int | None = None  # the newest created_at on the page


def _prepare(users: Sequence[Any], schema: SchemaInfo) -> _Prepared:
    """Map a page (pure; runs in the fetching worker, so raw pages never queue up)."""
    return _Prepared(
        [map_user(raw, schema.limits) for raw in users],
        _newest(users, "updated_at"),
        len(users),
        _newest(users, "created_at"),
    )


def _newest(users: Sequence[Any], name: str) -> int | None:
    stamps = [u.get(name) for u in users if isinstance(u, dict)]
    return max((t for t in stamps if isinstance(t, int) and not isinstance(t, bool)), default=None)


def _write_page(
    store: Store,
    schema: SchemaInfo,
    run: _Run,
    options: SyncOptions,
    result: SyncResult,
    page: _Prepared,
    checkpoint: Callable[[Cursor], None] | None = None,
) -> int:
    """One page of users, one unit of work (the full walk's and ``sync``'s alike): record
    them as seen by the run and compare them with their rows in one statement, plan the ones
    that differ, write, refresh the lock and checkpoint, all in one transaction (two round
    trips when nothing changed). Returns how many could not be read."""
    rejected = 0
    rows: dict[str, UserRow] = {}
    warnings: dict[str, Sequence[FieldWarning]] = {}
    for mapped in page.mapped:
        if isinstance(mapped, RejectedUser):
            rejected += 1
            result.failures.append(Failure(mapped.clerk_id, mapped.problem))
            continue
        if mapped.row.clerk_id not in rows:
            rows[mapped.row.clerk_id] = mapped.row
            if mapped.warnings:
                warnings[mapped.row.clerk_id] = mapped.warnings
    if page.newest_ms is not None:
        result.newest_ms = max(page.newest_ms, result.newest_ms or page.newest_ms)

    known: set[str] = set()
    if run.seen is not None:  # a read-only run: what earlier pages saw is in memory
        known = {clerk_id for clerk_id in rows if hash(clerk_id) in run.seen}

    def unit(
        cur: Cursor,
    ) -> tuple[list[Change], int, Counter[Action], list[Failure], set[str]]:
        seen_before, differing = store.see_and_compare(
            cur,
            run.id,
            [row for clerk_id, row in rows.items() if clerk_id not in known],
            can_read_settings=schema.can_read_settings,
        )
        seen_before |= known
        changes: list[Change] = []
        unchanged = 0
        for clerk_id, row in rows.items():
            if clerk_id in differing:
                changes += plan_user(row, differing[clerk_id])
            elif clerk_id not in seen_before:
                unchanged += 1
        applied: Counter[Action] = Counter()
        failures: list[Failure] = []
        writes = [c for c in changes if c.action in WRITES]
        if writes and not options.dry_run:
            _apply(store, cur, schema, writes, applied, failures)
        if checkpoint is not None and run.locked:
            checkpoint(cur)
        return changes, unchanged, applied, failures, seen_before

    changes, unchanged, applied, failures, seen_before = store.atomic(
        unit, locked_by=run.lease, pipelined=True
    )
    for clerk_id, found in warnings.items():  # once a user, however often a walk reads it
        if clerk_id not in seen_before:
            result.warnings.extend(found)
    if run.seen is not None:  # only once the unit is done (a reconnect reruns it)
        run.seen.update(hash(clerk_id) for clerk_id in rows)
        run.listed = run.listed or next(iter(rows), None)
    result.record(changes)
    result.counts[Action.UNCHANGED] += unchanged
    result.applied.update(applied)
    result.failures.extend(failures)
    result.walk_failures += rejected + len(failures)
    return rejected


def _apply(
    store: Store,
    cur: Cursor,
    schema: SchemaInfo,
    changes: list[Change],
    applied: Counter[Action],
    failures: list[Failure],
) -> None:
    """Write changes inside the page's transaction. If the database refuses their data (a
    constraint of the app's), split them in halves until the refused users are isolated:
    those are reported and everything else is written."""
    rows = [c.row for c in changes if c.row is not None]
    repair = [c.clerk_id for c in changes if c.action is Action.SETTINGS_MISSING]
    if not schema.has_settings_trigger:
        repair += [c.clerk_id for c in changes if c.action is Action.CREATE]
    try:
        inserted, updated, repaired = store.upsert(cur, rows, repair_settings_for=repair)
    except BatchDataError as exc:
        groups: dict[str, list[Change]] = {}
        for change in changes:
            groups.setdefault(change.clerk_id, []).append(change)
        if len(groups) == 1:
            failures.append(Failure(changes[0].clerk_id, exc.message))
            return
        users = list(groups.values())
        half = len(users) // 2
        _apply(store, cur, schema, [c for g in users[:half] for c in g], applied, failures)
        _apply(store, cur, schema, [c for g in users[half:] for c in g], applied, failures)
        return
    for change in changes:
        if change.action is Action.CREATE and change.clerk_id in inserted:
            applied[Action.CREATE] += 1
        elif change.action in (Action.UPDATE, Action.REACTIVATE) and change.clerk_id in updated:
            applied[change.action] += 1
        elif change.action is Action.SETTINGS_MISSING and change.clerk_id in repaired:
            applied[Action.SETTINGS_MISSING] += 1


def _incomplete_listing(seen: int, rejected: int, before: int, after: int) -> str | None:
    """Why the listing cannot be trusted to infer deletions, or None."""
    if rejected:
        return f"{rejected} listed users could not be read, so the listing is not trustworthy."
    if seen + rejected < min(before, after):
        return (
            f"the walk saw {seen} users but Clerk counts {before} before and {after} after; "
            "the listing looks incomplete. Rerun later."
        )
    return None


def _deactivate(
    client: ClerkClient,
    store: Store,
    run: _Run,
    options: SyncOptions,
    result: SyncResult,
    active_rows: int,
    confirm: Confirm | None,
    recover: Callable[[], int],
) -> None:
    """Deactivate active rows whose users Clerk no longer lists, each confirmed by Clerk's
    own 404, once a user the run listed has shown that the lookup reaches Clerk.

    A candidate Clerk still has proves the listing missed it (and that the count check was
    offset, by a deletion during the walk): the recovery read then runs (``recover``), and
    unless it finds them all, the run is incomplete and deactivates nothing."""
    count, _ = run.unseen_active(store, limit=0)
    refusal = options.guard.refusal(count, active_rows, result.clerk_users)
    if refusal:
        result.counts[Action.DEACTIVATE] = count
        result.status, result.refusal = "refused", refusal
        return
    _, candidates = run.unseen_active(store, limit=count)
    untrusted = _lookup_problem(client, lambda: run.one_listed(store)) if candidates else None
    if untrusted:
        result.notes.append(f"No deletion could be confirmed with Clerk: {untrusted}.")
    confirmed: list[DbUser] = []
    still_there = 0
    beat_every_s, beaten = options.stale_after_s / 4, time.monotonic()
    for n, row in enumerate(candidates, 1):
        # first thing, so a lookup that fails (after its retries) cannot skip it
        if run.lease is not None and (n % 100 == 0 or time.monotonic() - beaten > beat_every_s):
            store.touch(run.lease)
            beaten = time.monotonic()
        if untrusted:
            result.failures.append(
                Failure(
                    row.clerk_id, f"not deactivated: could not confirm with Clerk ({untrusted})"
                )
            )
            continue
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
            still_there += 1
            result.notes.append(
                f"{row.clerk_id} was missing from the listing but Clerk still has it; left active."
            )
    if still_there:
        recovered = recover()
        if result.completeness is not None:
            result.completeness = replace(
                result.completeness,
                read=result.completeness.read + recovered,
                recovered=result.completeness.recovered + recovered,
                complete=recovered >= still_there,
            )
        if recovered < still_there:
            _incomplete(
                result,
                f"{still_there} users missing from the listing are still in Clerk, and a "
                f"re-read with created_at filters found {recovered}",
            )
            return
    changes = [plan_deactivation(row) for row in confirmed]
    result.record(changes)
    if not changes or options.dry_run:
        return
    if confirm is not None:
        with store.heartbeat_in_background(run.lease, every_s=beat_every_s):  # a prompt waits
            agreed = confirm(changes)
        if not agreed:
            result.status, result.refusal = "refused", "Deactivation declined at the prompt."
            return
    done = store.deactivate([c.clerk_id for c in changes], lease=run.lease)
    result.applied[Action.DEACTIVATE] += len(done)


LOOKUP_HINT = (
    "Check CLERK_API_URL reaches Clerk's Backend API (https://api.clerk.com/v1) directly, "
    "not a proxy or router answering for it."
)


def _lookup_problem(client: ClerkClient, known: Callable[[], str | None]) -> str | None:
    """Why no 404 from ``GET /users/{id}`` can be trusted, or None: the positive control.
    ``known()`` names a user Clerk lists; its lookup must answer 200 with that user."""
    try:
        clerk_id = known()
        if clerk_id is None:
            return "Clerk listed no other user to check GET /users/{id} against"
        client.verify_lookup(clerk_id)
    except ClerkSyncError as exc:
        return exc.message.rstrip(".")
    return None


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
    schema = store.inspect(writing=apply)
    instance = Instance.from_clerk(client.get_instance())
    books = store.bookkeeping()
    pin = store.pinned_instance() if books.usable else None
    decision = decide_pin(
        pin.instance if pin else None,
        instance,
        allow_change=allow_instance_change,
        dry_run=not apply,
    )
    if decision.refusal:
        raise InstanceMismatchError(decision.refusal, INSTANCE_HINT)
    unconfirmed: str | None = None
    try:
        raw = client.get_user(clerk_id)
    except UnconfirmedError as exc:  # a 404 that is not Clerk's: Clerk may well have the user
        raw, unconfirmed = None, exc.message
    existing = store.fetch_user(clerk_id, can_read_settings=schema.can_read_settings)
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
        unconfirmed = unconfirmed or _lookup_problem(client, lambda: client.other_user_id(clerk_id))
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
        return report  # nothing is written on a guess
    if not apply:
        return report
    store.ensure_bookkeeping()
    lease = _user_lease(store, stale_after_s)
    try:
        store.set_run_instance(lease.run_id, instance)
        if decision.write:
            store.pin_instance(instance, lease.run_id, replace=decision.write == "repin")
        writes = [c for c in report.changes if c.action is not Action.UNCHANGED]
        if any(c.action is Action.DEACTIVATE for c in writes):
            store.deactivate([clerk_id], lease=lease)
        elif writes:
            failures: list[Failure] = []
            store.atomic(
                lambda cur: _apply(store, cur, schema, writes, Counter(), failures),
                locked_by=lease,
            )
            if failures:
                report.problem = failures[0].problem
        report.applied = bool(writes) and report.problem is None
    except BaseException as exc:
        _end_user_run(store, lease, report, exc)
        raise
    _end_user_run(store, lease, report)
    report.row, report.settings = store.fetch_row_and_settings(clerk_id)
    return report


def _user_lease(store: Store, stale_after_s: float) -> Lease:
    """Start a ``user`` run and take the writer lock for it; while another run holds the lock,
    record the run as skipped and raise LockHeldError (nothing is written)."""
    run_id = store.start_run("user", False)
    try:
        return store.acquire_lock(run_id, stale_after_s=stale_after_s)
    except LockHeldError as exc:
        store.finish_run(run_id, "skipped", {"error": exc.message})
        raise


def _end_user_run(
    store: Store, lease: Lease, report: UserReport, error: BaseException | None = None
) -> None:
    """Record how the ``user`` run ended and release its lock (as :func:`_finish` does)."""
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
        status = "partial" if report.problem else "ok"
        store.finish_run(lease.run_id, status, summary, lease=lease)
        return
    summary["error"] = error.message if isinstance(error, ClerkSyncError) else type(error).__name__
    with suppress(ClerkSyncError):
        store.finish_run(lease.run_id, "failed", summary, lease=lease)


# -- status -------------------------------------------------------------------------------------


@dataclass
class StatusReport:
    """What ``status`` shows: the last runs (each with the status to show), the last
    successful full reconcile, the pinned instance, the lock and what ``sync`` starts from."""

    runs: list[tuple[RunRecord, str]]
    last_full: RunRecord | None
    pin: Pin | None
    lock: LockInfo
    state: SyncState
    bookkeeping: bool = True  # clerk-sync's schema exists (else nothing has run yet)

    @property
    def in_progress(self) -> bool:
        return self.lock.state == "held"


def collect_status(store: Store, *, limit: int = 10, stale_after_s: float = 600.0) -> StatusReport:
    """Read the run history and the lock; write nothing (a crashed run is only reported; the
    next writing run marks it crashed and takes its lock over)."""
    if not store.bookkeeping().usable:
        free = lock_state(None, None, None, None, stale=False)
        return StatusReport([], None, None, free, SyncState(), bookkeeping=False)
    holder = store.lock_holder()
    lock = (
        lock_state(
            holder.run_id,
            holder.host,
            holder.pid,
            holder.heartbeat_age_s,
            stale=holder.is_stale(stale_after_s),
        )
        if holder
        else lock_state(None, None, None, None, stale=False)
    )
    runs = [
        (run, run_state(run, lock, process_alive=process_alive)) for run in store.recent_runs(limit)
    ]
    pin = store.pinned_instance()
    state = store.sync_state(pin.instance.id) if pin else SyncState()
    return StatusReport(runs, store.last_full_reconcile(), pin, lock, state)

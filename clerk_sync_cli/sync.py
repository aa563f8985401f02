"""The reconcile itself, as a list of named steps over one :class:`run.RunState`: start the
run (take the lock when it writes), check the Clerk instance, read what changed (``sync``),
walk the whole list when needed, account for every user, deactivate what Clerk confirms is
gone, and record how it ended. Client and store are passed in.

A writing run holds the one writer lock and checkpoints, per ``created_at`` window, the last
user whose page is committed; a run that crashed or was interrupted is resumed from there.

Every run reads which Clerk instance its key belongs to; the first writing run pins it, and a
run against another instance refuses. ``sync`` reads only the users changed since the last
run's watermark (newest change first) and runs the full reconcile when Clerk's count says
users were deleted (see :mod:`clerk_sync_cli.history`).
"""

from __future__ import annotations

import time
from dataclasses import replace

from clerk_sync_cli.apply import Failure, Target
from clerk_sync_cli.clerk import (
    ClerkClient,
    Page,
    Window,
    both,
    created_at_range,
    split_windows,
    walk_concurrently,
    walk_recent,
)
from clerk_sync_cli.completeness import WalkMarks, account_for_everyone
from clerk_sync_cli.deletions import deactivate_missing, incomplete_listing
from clerk_sync_cli.errors import (
    ClerkSyncError,
    ClerkUnavailableError,
    DatabaseUnavailableError,
    InstanceMismatchError,
    LockHeldError,
)
from clerk_sync_cli.history import (
    Baseline,
    Counts,
    Instance,
    SyncState,
    full_reconcile_reason,
    next_watermark,
)
from clerk_sync_cli.pages import Prepared, prepare, write_page
from clerk_sync_cli.pinning import check_instance
from clerk_sync_cli.plan import Action
from clerk_sync_cli.project import damaged_message, schema_info
from clerk_sync_cli.run import (
    DEFAULT_CONCURRENCY,
    Confirm,
    NoProgress,
    Progress,
    RunState,
    SyncOptions,
    SyncResult,
)
from clerk_sync_cli.states import RunStatus, SyncMode
from clerk_sync_cli.store import bookkeeping, checkpoints, lock, pin, runs, schema, users, versions
from clerk_sync_cli.store.connection import Store

__all__ = ["DEFAULT_CONCURRENCY", "Failure", "SyncOptions", "SyncResult", "reconcile"]

NO_BOOKKEEPING = (
    "No clerk-sync bookkeeping in this database yet: no run history and no pinned instance "
    "(the first writing run creates schema clerk_sync)."
)


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
    run = _look_at_the_table(client, store, options, progress or NoProgress(), confirm)
    _begin(run)
    try:
        instance = _read_instance(run)
        if not options.incremental or _sync_recent(run, instance):
            _full_pass(run)
    except BaseException as exc:
        _end(run, started, exc)
        raise
    _end(run, started)
    return run.result


def _look_at_the_table(
    client: ClerkClient,
    store: Store,
    options: SyncOptions,
    progress: Progress,
    confirm: Confirm | None,
) -> RunState:
    """What the run needs to know of the app's tables before it starts."""
    project = store.run(schema.read, store.tables)
    info = schema_info(project, writing=not options.dry_run)
    result = SyncResult(options.command, options.dry_run, changes_cap=options.changes_cap)
    run = RunState(
        client,
        store,
        options,
        Target(
            store.tables,
            info,
            dry_run=options.dry_run,
            gated=not options.dry_run or store.run(versions.exists),
        ),
        result,
        progress,
        confirm,
    )
    if project.damaged:
        run.note(damaged_message(project))
    if not info.can_read_settings:
        run.note("This role cannot read the settings table; missing settings rows are not checked.")
    result.db_users, run.active_rows = store.run(users.count_active, store.tables)
    return run


def _begin(run: RunState) -> None:
    """Start (or resume) the run; take the lock when it writes. A resumed run gets the
    windows left to walk from its checkpoints."""
    store, options = run.store, run.options
    if options.dry_run:
        run.resumable, run.seen = False, set()
        run.bookkeeping = store.run(bookkeeping.read)
    else:
        _begin_writing(run)
    run.result.run_id = run.id
    if not run.has_history:
        run.note(NO_BOOKKEEPING)


def _begin_writing(run: RunState) -> None:
    store, options = run.store, run.options
    migrated = store.run(bookkeeping.migrate)
    if migrated:
        run.note(f"Created clerk-sync's bookkeeping (schema clerk_sync): {', '.join(migrated)}.")
    run.bookkeeping = store.run(bookkeeping.read)
    resumable = store.run(runs.resumable, options.command) if options.resume else None
    run.id = resumable or store.run(runs.start, options.command, dry_run=False)
    try:
        run.lease = lock.acquire(store, run.id, stale_after_s=options.stale_after_s)
    except LockHeldError as exc:
        if resumable is None:
            store.run(runs.finish, run.id, RunStatus.SKIPPED, {"error": exc.message})
        raise
    if run.lease.replaced is not None:
        run.note(f"Took over the lock from run {run.lease.replaced.run_id}, which had stopped.")
    store.run(runs.abandon_others, run.id, options.command)
    run.resumable = options.resume
    if resumable is not None:
        store.run(runs.resume, run.id)
        saved = store.run(checkpoints.load_windows, run.id)
        run.todo = [(w, cursor) for w, cursor, done in saved if not done]
        run.resumed = True
        run.note(f"Resuming run {run.id} from its checkpoint.")


def _read_instance(run: RunState) -> Instance:
    """Which Clerk instance the key belongs to (refused unless it is the pinned one), and
    Clerk's count of users before the walk. A key an earlier writing run confirmed belongs to
    the pinned instance (:meth:`ClerkClient.has_key`) is not asked about again: one request
    fewer a run (a cron ``sync`` every few minutes makes 5 instead of 6)."""
    client = run.client
    pinned = run.store.run(pin.read) if run.has_history else None
    if pinned is not None and pinned.key_check and client.has_key(pinned.key_check):
        run.listed_before = client.count_users()
        instance = pinned.instance
        if run.id is not None:
            run.store.run(runs.set_instance, run.id, instance)
        return instance
    raw, run.listed_before = both(client.get_instance, client.count_users)
    instance = Instance.from_clerk(raw)
    if run.id is not None:
        run.store.run(runs.set_instance, run.id, instance)
    note = check_instance(
        run.store,
        instance,
        run.id,
        has_history=run.has_history,
        allow_change=run.options.allow_instance_change,
        dry_run=run.options.dry_run,
    )
    if note:
        run.note(note)
    if not run.options.dry_run:  # the pin is this instance now: remember the key is its
        run.store.run(pin.confirm_key, instance, client.key_check())
    return instance


def _sync_recent(run: RunState, instance: Instance) -> bool:
    """``sync``: write the users changed since the last watermark, then tell whether the full
    reconcile must follow (and may: not ``--no-full``)."""
    result, options = run.result, run.options
    state = run.store.run(runs.sync_state, instance.id) if run.has_history else SyncState()
    result.previous_watermark_ms = state.watermark_ms
    reason = full_reconcile_reason(state)
    result.mode = SyncMode.NONE
    if state.watermark_ms is not None and (reason is None or not options.full):
        result.mode = SyncMode.WATERMARK
        result.since_ms = state.watermark_ms - round(options.overlap_s * 1000)
        reached, exact = _walk_recent(run)
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
            reason = full_reconcile_reason(state, _counts_after_recent(run))
    result.full_reason = reason
    if reason is None:
        return False
    if options.full:
        result.mode = SyncMode.FULL
        return True
    run.note(
        "A full reconcile is needed: run `clerk-sync sync` without --no-full, or `clerk-sync diff`."
    )
    return False


def _counts_after_recent(run: RunState) -> Counts:
    """Clerk's count before and after, and the table's rows, after the recent walk. Users it
    found missing but did not write (a dry run, or refused by the database) are Clerk's users
    all the same: their rows count as if written."""
    result = run.result
    unwritten = result.counts[Action.CREATE] - result.applied[Action.CREATE]
    rows = run.store.run(users.count_active, run.store.tables)[0] + unwritten
    counts = Counts(run.listed_before, rows, run.client.count_users())
    result.clerk_users = counts.clerk_after
    return counts


def _walk_recent(run: RunState) -> tuple[bool, bool]:
    """Write the users changed since ``result.since_ms``, newest first, a page per unit of
    work. Returns whether the walk reached that far back (not stopped by the page limit),
    and whether every page could be read exactly (see :func:`clerk.walking.walk_recent`)."""
    assert run.result.since_ms is not None
    reached, exact = False, True
    pages = walk_recent(
        run.client,
        run.result.since_ms,
        limit=run.options.page_size,
        max_pages=run.options.max_recent_pages,
    )
    for page in pages:
        run.result.pages += 1
        write_page(run, prepare(page.users, run.target.schema))
        reached, exact = page.done, exact and page.exact
    return reached, exact


def _full_pass(run: RunState) -> None:
    """Walk the whole list (the windows left, when resumed) and account for every user;
    then, with ``deactivate``, deactivate what Clerk confirms is gone and record the
    baseline ``sync`` compares with."""
    result, options = run.result, run.options
    if run.todo is None:
        windows = _plan_windows(run)
        if run.locked and run.id is not None:
            run.store.run(checkpoints.save_windows, run.id, windows)
        run.todo = [(w, None) for w in windows]
    run.progress.start(run.listed_before)
    marks = _walk(run)
    run.progress.finish()
    listed_after = account_for_everyone(run, marks)
    result.clerk_users = run.seen_count()
    if listed_after is None:
        return  # not every user is accounted for: the run is partial, nothing deactivated
    result.walk_complete = True
    if not options.deactivate:
        return
    reason = incomplete_listing(result.clerk_users, marks.rejected, run.listed_before, listed_after)
    if run.resumed:
        run.note("Resumed an interrupted run: counts cover this part only.")
    if reason:
        run.note(f"Deactivation skipped: {reason}")
        result.failures.append(Failure(None, f"deactivation skipped: {reason}"))
        return
    deactivate_missing(run, marks)
    if result.status is not RunStatus.REFUSED and not options.dry_run:
        result.baseline = Baseline(
            run.store.run(users.count_active, run.store.tables)[0], listed_after
        )


def _plan_windows(run: RunState) -> list[Window]:
    """One window per two pages' worth of users, up to 2 per worker (each window ends with a
    short page, so more windows cost requests); one for small lists."""
    options = run.options
    wanted = min(2 * options.concurrency, run.listed_before // (2 * options.page_size))
    if options.concurrency <= 1 or wanted <= 1:
        return [Window(0)]
    span = created_at_range(run.client)
    return [Window(0)] if span is None else split_windows(span[0], span[1], wanted)


def _walk(run: RunState) -> WalkMarks:
    """Page through Clerk; plan and write each page in one transaction, noting where the
    cursor may have skipped users (and how many listed users could not be read)."""
    assert run.todo is not None
    marks = WalkMarks()
    schema_ = run.target.schema

    def mapped(page: Page) -> tuple[Page, Prepared]:
        return replace(page, users=[]), prepare(page.users, schema_)

    pages = walk_concurrently(
        run.client,
        run.todo,
        concurrency=run.options.concurrency,
        limit=run.options.page_size,
        prepare=mapped,
    )
    for page, prepared in pages:
        marks.rejected += write_page(run, prepared, at=page)
        marks.mark(page.window, prepared, page.last)
        run.progress.advance(prepared.size)
    if run.client.offset_fallbacks:
        run.note("Clerk refused the cursor; part of the list was read with offset paging.")
    return marks


def _end(run: RunState, started: float, error: BaseException | None = None) -> None:
    """Settle the run's status and record how it ended (a read-only run records nothing)."""
    result = run.result
    if error is not None:
        run.progress.finish()
        interrupted = isinstance(
            error, ClerkUnavailableError | DatabaseUnavailableError | KeyboardInterrupt
        )
        if isinstance(error, InstanceMismatchError):
            result.refuse(error.message)
        elif interrupted and run.locked and run.resumable and run.todo is not None:
            result.status = RunStatus.INTERRUPTED  # the next run resumes from the checkpoints
        else:
            result.status = RunStatus.FAILED
    else:
        if result.failures and result.status is RunStatus.OK:
            result.status = RunStatus.PARTIAL
        gated = result.gate_note()
        if gated:
            run.note(gated)
        if run.store.reconnects:
            run.note(
                f"The database connection was lost and re-opened {run.store.reconnects} time(s)."
            )
    result.duration_s = time.monotonic() - started
    result.requests = run.client.requests
    if run.id is None:
        return
    summary = result.summary()
    message = None
    if error is not None:
        message = error.message if isinstance(error, ClerkSyncError) else type(error).__name__
        summary["error"] = message
    try:
        if error is None and _trusted_walk(result):
            result.watermark_ms = next_watermark(
                result.previous_watermark_ms,
                result.newest_ms,
                run.store.run(runs.started_ms, run.id),
            )
        run.store.run(
            runs.finish,
            run.id,
            result.status,
            summary,
            lease=run.lease,
            resumable=result.status is RunStatus.INTERRUPTED,
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

"""The run history (``clerk_sync.runs``): a run's start, its instance, its end (which also
releases its lease and frees its scratch rows), which run may be resumed, and what ``sync``
and ``status`` read back. Every function takes the transaction's cursor first."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from clerk_sync_cli.history import FULL_COMMANDS, Baseline, Instance, RunRecord, SyncState
from clerk_sync_cli.states import COMPLETED, RESUMABLE, RunStatus
from clerk_sync_cli.store.connection import Cursor, one
from clerk_sync_cli.store.lock import Lease, this_process

#: Finished runs older than this are deleted by the next writing run (a 5-minute cron makes
#: ~105k a year), except what ``sync`` and ``status`` read: each instance's newest watermark
#: and baseline, the newest full reconcile, and any run a later one may resume.
RUN_HISTORY_DAYS = 90

# The runs `sync` and `status` read back (sync_state, last_full_reconcile), and so what
# PRUNE_RUNS must keep: one definition each. FULL_RECONCILE takes FULL_RECONCILE_PARAMS.
WATERMARK_RUN = "NOT dry_run AND watermark_ms IS NOT NULL"
BASELINE_RUN = "NOT dry_run AND summary ? 'baseline'"
FULL_RECONCILE = (
    "NOT dry_run AND status = ANY(%s) AND (command = ANY(%s) OR summary->>'mode' = 'full')"
)
FULL_RECONCILE_PARAMS = ([str(s) for s in COMPLETED], list(FULL_COMMANDS))

PRUNE_RUNS = (
    "WITH gone AS (DELETE FROM clerk_sync.runs r "
    "WHERE r.finished_at < now() - make_interval(days => %s) "
    "AND r.id NOT IN (SELECT DISTINCT ON (instance_id) id FROM clerk_sync.runs "
    f"WHERE {WATERMARK_RUN} ORDER BY instance_id, id DESC) "
    "AND r.id NOT IN (SELECT DISTINCT ON (instance_id) id FROM clerk_sync.runs "
    f"WHERE {BASELINE_RUN} ORDER BY instance_id, id DESC) "
    f"AND r.id NOT IN (SELECT id FROM clerk_sync.runs WHERE {FULL_RECONCILE} "
    "ORDER BY id DESC LIMIT 1) "
    "AND NOT EXISTS (SELECT 1 FROM clerk_sync.run_windows w WHERE w.run_id = r.id) "
    "RETURNING r.id) "
    "DELETE FROM clerk_sync.run_seen WHERE run_id IN (SELECT id FROM gone)"
)

# boot_id and pid_ns through to_jsonb: a table older than migration 005 reads as None
_RUN_COLUMNS = (
    "id, command, dry_run, status, started_at, finished_at, coalesce(summary, '{}'::jsonb), "
    "instance_id, environment_type, host, pid, watermark_ms, "
    "to_jsonb(runs)->>'boot_id', to_jsonb(runs)->>'pid_ns'"
)


def start(cur: Cursor, command: str, *, dry_run: bool) -> int:
    """Record a run as running, and where it runs (host, pid, boot, PID namespace)."""
    here = this_process()
    cur.execute(
        "INSERT INTO clerk_sync.runs (command, dry_run, status, host, pid, boot_id, pid_ns) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (command, dry_run, RunStatus.RUNNING, here.host, here.pid, here.boot_id, here.pid_ns),
    )
    return int(one(cur)[0])


def set_instance(cur: Cursor, run_id: int, instance: Instance) -> None:
    """Record which Clerk instance the run reads."""
    cur.execute(
        "UPDATE clerk_sync.runs SET instance_id = %s, environment_type = %s WHERE id = %s",
        (instance.id, instance.environment_type, run_id),
    )


def started_ms(cur: Cursor, run_id: int) -> int:
    """When the run (first) started, in ms since the epoch, by the database's clock."""
    cur.execute(
        "SELECT (extract(epoch FROM started_at) * 1000)::bigint FROM clerk_sync.runs WHERE id = %s",
        (run_id,),
    )
    return int(one(cur)[0])


def finish(
    cur: Cursor,
    run_id: int,
    status: RunStatus,
    summary: dict[str, Any],
    *,
    lease: Lease | None = None,
    resumable: bool = False,
    watermark_ms: int | None = None,
    prune: bool = False,
) -> None:
    """Record how the run ended and release its ``lease``, in one transaction. Unless
    ``resumable`` (an interrupted run the next one continues), its scratch rows and
    checkpoints are dropped. ``prune`` (writing runs): delete history older than
    :data:`RUN_HISTORY_DAYS`.

    With a lease, all of it happens only while the lease is still held: a run whose lock
    was taken over raises LockHeldError and records nothing (the run that took over may
    have resumed this very run id; its history row and checkpoints are that run's now)."""
    assert lease is None or lease.run_id == run_id
    if lease is not None:
        lease.release(cur)
    cur.execute(
        "UPDATE clerk_sync.runs SET status = %s, finished_at = now(), "
        "summary = coalesce(summary, '{}'::jsonb) || %s, "
        "watermark_ms = coalesce(%s, watermark_ms) WHERE id = %s",
        (status, Jsonb(summary), watermark_ms, run_id),
    )
    if not resumable:
        cur.execute("DELETE FROM clerk_sync.run_seen WHERE run_id = %s", (run_id,))
        cur.execute("DELETE FROM clerk_sync.run_windows WHERE run_id = %s", (run_id,))
    if prune:
        cur.execute(PRUNE_RUNS, (RUN_HISTORY_DAYS, *FULL_RECONCILE_PARAMS))


def resumable(cur: Cursor, command: str) -> int | None:
    """The newest run of ``command`` that was left running (crashed) with checkpoints."""
    cur.execute(
        "SELECT r.id FROM clerk_sync.runs r WHERE r.command = %s AND NOT r.dry_run "
        "AND r.status = ANY(%s) AND EXISTS (SELECT 1 FROM clerk_sync.run_windows w "
        "WHERE w.run_id = r.id) ORDER BY r.id DESC LIMIT 1",
        (command, [str(s) for s in RESUMABLE]),
    )
    row = cur.fetchone()
    return int(row[0]) if row else None


def resume(cur: Cursor, run_id: int) -> None:
    cur.execute(
        "UPDATE clerk_sync.runs SET status = %s, finished_at = NULL, "
        "summary = coalesce(summary, '{}'::jsonb) || "
        "jsonb_build_object('resumed_at', now()) WHERE id = %s",
        (RunStatus.RUNNING, run_id),
    )


def abandon_others(cur: Cursor, keep: int, command: str) -> None:
    """Once run ``keep`` holds the lock, no other writing run is alive. One left
    ``running`` crashed: with checkpoints it becomes ``interrupted``, for the next run of
    its own command to resume (a frequent ``sync`` must not discard a nightly ``diff``'s
    progress); without, ``crashed``. Older interrupted runs of ``command`` are superseded
    by ``keep``: crashed, and their scratch rows freed."""
    running, interrupted, crashed = RunStatus.RUNNING, RunStatus.INTERRUPTED, RunStatus.CRASHED
    cur.execute(
        "UPDATE clerk_sync.runs r SET finished_at = coalesce(r.finished_at, now()), "
        "status = CASE WHEN r.status = %s AND EXISTS (SELECT 1 FROM "
        "clerk_sync.run_windows w WHERE w.run_id = r.id) THEN %s ELSE %s END "
        "WHERE NOT r.dry_run AND r.id <> %s AND (r.status = %s "
        "OR (r.status = %s AND r.command = %s)) RETURNING r.id, r.status",
        (running, interrupted, crashed, keep, running, interrupted, command),
    )
    gone = [run_id for run_id, status in cur.fetchall() if status == crashed]
    if gone:
        cur.execute("DELETE FROM clerk_sync.run_seen WHERE run_id = ANY(%s)", (gone,))
        cur.execute("DELETE FROM clerk_sync.run_windows WHERE run_id = ANY(%s)", (gone,))


def sync_state(cur: Cursor, instance_id: str) -> SyncState:
    """The newest watermark and full-reconcile baseline recorded against this instance."""
    cur.execute(
        "SELECT watermark_ms FROM clerk_sync.runs WHERE instance_id = %s "
        f"AND {WATERMARK_RUN} ORDER BY id DESC LIMIT 1",
        (instance_id,),
    )
    mark = cur.fetchone()
    cur.execute(
        "SELECT (summary->'baseline'->>'table_rows')::bigint, "
        "(summary->'baseline'->>'clerk_users')::bigint FROM clerk_sync.runs "
        f"WHERE instance_id = %s AND {BASELINE_RUN} ORDER BY id DESC LIMIT 1",
        (instance_id,),
    )
    base = cur.fetchone()
    return SyncState(
        watermark_ms=int(mark[0]) if mark else None,
        baseline=Baseline(int(base[0]), int(base[1])) if base else None,
    )


def recent(cur: Cursor, limit: int) -> list[RunRecord]:
    cur.execute(f"SELECT {_RUN_COLUMNS} FROM clerk_sync.runs ORDER BY id DESC LIMIT %s", (limit,))
    return [RunRecord(*row) for row in cur.fetchall()]


def last_full_reconcile(cur: Cursor) -> RunRecord | None:
    """The newest full reconcile that was not a dry run and completed (ok or partial)."""
    cur.execute(
        f"SELECT {_RUN_COLUMNS} FROM clerk_sync.runs WHERE {FULL_RECONCILE} "
        "ORDER BY id DESC LIMIT 1",
        FULL_RECONCILE_PARAMS,
    )
    row = cur.fetchone()
    return RunRecord(*row) if row else None

"""The Postgres side: schema checks, reads, batched writes, the run lock and checkpoints.
The only module with SQL.

Every unit of work is one short transaction (so Supabase's transaction pooler works) that sets
its own statement and lock timeouts and is all-or-nothing. :meth:`Store.atomic` reruns a unit
on a fresh connection when the connection is lost. Writes are set-based: one statement per
page over arrays, never a round trip per user, and a row whose values already match is never
touched (no ``updated_at`` bump, no dead tuple).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pydantic_core
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Json, Jsonb

from clerk_sync_cli import bookkeeping
from clerk_sync_cli.bookkeeping import Bookkeeping
from clerk_sync_cli.clerk import Window
from clerk_sync_cli.errors import (
    BatchDataError,
    ClerkSyncError,
    DatabaseUnavailableError,
    LockHeldError,
    SchemaError,
)
from clerk_sync_cli.history import (
    FULL_COMMANDS,
    Baseline,
    Instance,
    Origin,
    Pin,
    RunRecord,
    SyncState,
)
from clerk_sync_cli.mapping import SYNCED_FIELDS, UserRow
from clerk_sync_cli.plan import DbUser
from clerk_sync_cli.project import (
    GRANTS_HINT,
    Project,
    SchemaInfo,
    drop_trigger_sql,
    read_project,
    schema_info,
)
from clerk_sync_cli.settings import describe_dsn
from clerk_sync_cli.tables import Tables

T = TypeVar("T")
Cursor = psycopg.Cursor[Any]
STATE_SCHEMA = "clerk_sync"
LOCK_NAME = "sync"
#: Finished runs older than this are deleted by the next writing run (a 5-minute cron makes
#: ~105k a year), except what ``sync`` and ``status`` read: each instance's newest watermark
#: and baseline, the newest full reconcile, and any run a later one may resume.
RUN_HISTORY_DAYS = 90


@dataclass(frozen=True)
class LockHolder:
    """The lock row as read: its run (for display), where that run's process runs, its token
    (None: taken by a clerk-sync older than migration 005) and its heartbeat, exactly."""

    run_id: int
    host: str
    pid: int
    heartbeat_age_s: float
    heartbeat_at: datetime
    token: str | None = None
    boot_id: str | None = None
    pid_ns: str | None = None

    @property
    def origin(self) -> Origin:
        return Origin(self.host, self.pid, self.boot_id, self.pid_ns)

    def is_stale(self, stale_after_s: float) -> bool:
        """Silent for too long, or a process known to be gone (see :func:`process_alive`)."""
        if self.heartbeat_age_s > stale_after_s:
            return True
        return not process_alive(self.origin)


@dataclass(frozen=True)
class Lease:
    """One acquisition of the writer lock, for run ``run_id``. ``token`` is this
    acquisition's alone: the heartbeat, the check before each commit and the release go by
    it, so a run that resumes another's run id never shares its lease. ``replaced``: the
    stale holder this acquisition took over, if any."""

    run_id: int
    token: str = field(repr=False)
    replaced: LockHolder | None = None


def _held(holder: LockHolder, stale_after_s: float) -> LockHeldError:
    return LockHeldError(
        f"Another clerk-sync run holds the lock (run {holder.run_id}, pid {holder.pid} "
        f"on {holder.host}, last heard from {holder.heartbeat_age_s:.0f}s ago).",
        "Nothing was changed. It will be taken over if that run stays silent for "
        f"{stale_after_s / 60:.0f} minutes.",
    )


def _lost() -> LockHeldError:
    return LockHeldError(
        "Another clerk-sync run took over the lock (this run was silent too long); stopping.",
        "Nothing from this page was applied.",
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _read_link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


@cache
def _boot_and_pid_ns() -> tuple[str | None, str | None]:
    """This boot's id and this process's PID namespace (neither changes while it runs)."""
    return _read_text("/proc/sys/kernel/random/boot_id"), _read_link("/proc/self/ns/pid")


def this_process() -> Origin:
    """Where this process runs, as recorded with a run and a lock."""
    boot_id, pid_ns = _boot_and_pid_ns()
    return Origin(socket.gethostname(), os.getpid(), boot_id, pid_ns)


def process_alive(origin: Origin) -> bool:
    """False only when the process is known to be gone: it ran on this host, in this boot and
    in this PID namespace (all three known and equal to ours), and no process has its pid.
    Anywhere else (another host, or a container sharing this hostname) the pid means nothing
    here, so the process is presumed alive: only its heartbeat can tell."""
    here = this_process()
    if origin.pid is None or origin.boot_id is None or origin.pid_ns is None:
        return True
    if (origin.host, origin.boot_id, origin.pid_ns) != (here.host, here.boot_id, here.pid_ns):
        return True
    return _process_alive(origin.pid)


def connect(dsn: str, *, application_name: str = "clerk-sync") -> psycopg.Connection[Any]:
    """Open a connection fit for poolers (no server-side prepares), or a clear error."""
    target = describe_dsn(dsn)
    try:
        return psycopg.connect(
            dsn,
            autocommit=True,
            prepare_threshold=None,
            application_name=application_name,
            connect_timeout=10,
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(
            f"Cannot connect to Postgres at {target.host}:{target.port} "
            f"(database {target.dbname}, user {target.user}): {_reason(exc, dsn)}",
            "Check DATABASE_URL and that the server is running and reachable.",
        ) from None


def _reason(exc: BaseException, dsn: str | None = None) -> str:
    """The first line of a driver error, with any password removed."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^connection failed: ", "", text)
    if dsn:
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
        if password:
            text = text.replace(str(password), "***")
    return text[:300]


#: The SQL type of each :class:`UserRow` field, to read rows sent as JSON.
ROW_TYPES = {
    "clerk_id": "text",
    **{name: "text" for name in SYNCED_FIELDS if name != "is_active"},
    "is_active": "boolean",
    "created_at": "timestamptz",
}


def _incoming(alias: str) -> sql.Composed:
    """A page of :class:`UserRow` sent as one JSON parameter (see :func:`_rows_json`), as a
    relation: one set-based statement a page. JSON rather than arrays: pydantic-core writes it
    in native code, where psycopg builds binary arrays element by element in Python."""
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind))
        for name, kind in ROW_TYPES.items()
    )
    return sql.SQL("json_to_recordset(%s) AS {}({})").format(sql.Identifier(alias), columns)


def _rows_json(rows: Sequence[UserRow]) -> Json:
    return Json([vars(row) for row in rows], dumps=pydantic_core.to_json)


# The runs `sync` and `status` read back (Store.sync_state, Store.last_full_reconcile), and
# so what PRUNE_RUNS must keep: one definition each. FULL_RECONCILE takes FULL_COMMANDS.
WATERMARK_RUN = "NOT dry_run AND watermark_ms IS NOT NULL"
BASELINE_RUN = "NOT dry_run AND summary ? 'baseline'"
FULL_RECONCILE = (
    "NOT dry_run AND status IN ('ok', 'partial') "
    "AND (command = ANY(%s) OR summary->>'mode' = 'full')"
)

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


def _one(cur: Cursor) -> Any:
    record = cur.fetchone()
    assert record is not None, "query returns exactly one row"
    return record


class Store:
    """Reads and writes the app's tables and clerk-sync's own ``clerk_sync`` schema."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        tables: Tables | None = None,
        *,
        statement_timeout_ms: int = 60_000,
        lock_timeout_ms: int = 10_000,
        reconnect_attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._pipeline: psycopg.Pipeline | None = None
        self.tables = tables or Tables()
        self.reconnect_attempts = reconnect_attempts
        self.reconnects = 0
        self._sleep = sleep
        # one statement (pipeline mode takes no multi-statement strings); true = SET LOCAL
        self._timeouts = sql.SQL(
            "SELECT set_config('statement_timeout', {}, true), set_config('lock_timeout', {}, true)"
        ).format(sql.Literal(f"{statement_timeout_ms}ms"), sql.Literal(f"{lock_timeout_ms}ms"))

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def check_connection(self) -> None:
        """Connect now, so a bad DATABASE_URL fails before anything else happens."""
        _ = self.conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self, *, pipelined: bool = False) -> Iterator[Cursor]:
        """One atomic unit of work with timeouts set; driver failures become clear errors.

        ``pipelined``: statements are sent without waiting for each answer (psycopg's pipeline
        mode); the unit waits only where it reads a result, and at COMMIT. A page costs two
        round trips instead of six, which matters most when the GIL is busy with the walk."""
        try:
            if pipelined:
                with self._pipelined_transaction() as cur:
                    yield cur
            else:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    cur.execute(self._timeouts)
                    yield cur
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            raise BatchDataError(_reason(exc)) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SchemaError(
                f"The database role lacks a privilege: {_reason(exc)}", GRANTS_HINT
            ) from None
        except psycopg.OperationalError as exc:
            self.close()
            raise DatabaseUnavailableError(
                f"The database connection failed: {_reason(exc)}",
                "Nothing from the interrupted page was applied; rerun to converge.",
            ) from None

    @contextmanager
    def _pipelined_transaction(self) -> Iterator[Cursor]:
        """BEGIN and COMMIT by hand in pipeline mode: COMMIT is answered by the Sync that closes
        the pipeline, the unit's only wait besides the results it reads (psycopg's
        ``transaction()`` waits on entry and twice on exit inside a pipeline). Savepoints
        inside must be explicit statements too (see :meth:`upsert`). If anything fails, the
        transaction is rolled back once the pipeline is closed."""
        conn = self.conn
        cur = conn.cursor()
        try:
            with conn.pipeline() as pipeline:
                self._pipeline = pipeline
                cur.execute("BEGIN")
                cur.execute(self._timeouts)
                yield cur
                cur.execute("COMMIT")
        except BaseException:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                with suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            raise
        finally:
            self._pipeline = None
            cur.close()

    def _resync(self) -> None:
        """After an error in pipeline mode, end the aborted stretch so statements run again
        (the error itself was raised where its result was read)."""
        if self._pipeline is not None:
            with suppress(psycopg.Error):
                self._pipeline.sync()

    def atomic(
        self,
        work: Callable[[Cursor], T],
        *,
        locked_by: Lease | None = None,
        pipelined: bool = False,
    ) -> T:
        """Run ``work`` in one transaction; if the connection fails (dropped, restarted,
        timed out), roll back, reconnect and run it again, a bounded number of times.

        ``locked_by``: the unit belongs to the run holding this lease of the writer lock; the
        lease's heartbeat is refreshed in the same transaction, and if another run has taken
        the lock over (this one was silent too long) the unit stops before it commits."""
        for attempt in range(self.reconnect_attempts + 1):
            try:
                with self.transaction(pipelined=pipelined) as cur:
                    if locked_by is None:
                        return work(cur)
                    with self.conn.cursor() as lock:
                        self._heartbeat(lock, locked_by)
                        value = work(cur)
                        self._check_heartbeat(lock)
                    return value
            except DatabaseUnavailableError:
                if attempt == self.reconnect_attempts:
                    raise
                self.reconnects += 1
                self._sleep(min(0.5 * 2**attempt, 5.0))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- schema ------------------------------------------------------------------------------

    def project(self) -> Project:
        """The app's tables, triggers and this role's privileges (reads only)."""
        return self.atomic(lambda cur: read_project(cur, self.tables))

    def inspect(self, *, writing: bool = True) -> SchemaInfo:
        """Check the tables have what the sync relies on; say exactly what is missing.
        ``writing``: the run will write (it needs INSERT and UPDATE, not only SELECT)."""
        return schema_info(self.project(), writing=writing)

    def bookkeeping(self) -> Bookkeeping:
        """What exists of clerk-sync's own schema (reads only; creates nothing)."""
        return self.atomic(bookkeeping.read)

    def ensure_bookkeeping(self) -> list[str]:
        """Create or migrate clerk-sync's own schema (a writing run's first step); returns the
        migrations applied."""
        return self.atomic(bookkeeping.migrate)

    # -- runs, lock, checkpoints --------------------------------------------------------------

    def start_run(self, command: str, dry_run: bool) -> int:
        """Record a run as running, and where it runs (host, pid, boot, PID namespace)."""
        here = this_process()

        def insert(cur: Cursor) -> int:
            cur.execute(
                "INSERT INTO clerk_sync.runs "
                "(command, dry_run, status, host, pid, boot_id, pid_ns) "
                "VALUES (%s, %s, 'running', %s, %s, %s, %s) RETURNING id",
                (command, dry_run, here.host, here.pid, here.boot_id, here.pid_ns),
            )
            return int(_one(cur)[0])

        return self.atomic(insert)

    def set_run_instance(self, run_id: int, instance: Instance) -> None:
        """Record which Clerk instance the run reads."""

        def update(cur: Cursor) -> None:
            cur.execute(
                "UPDATE clerk_sync.runs SET instance_id = %s, environment_type = %s WHERE id = %s",
                (instance.id, instance.environment_type, run_id),
            )

        self.atomic(update)

    def run_started_ms(self, run_id: int) -> int:
        """When the run (first) started, in ms since the epoch, by the database's clock."""

        def read(cur: Cursor) -> int:
            cur.execute(
                "SELECT (extract(epoch FROM started_at) * 1000)::bigint "
                "FROM clerk_sync.runs WHERE id = %s",
                (run_id,),
            )
            return int(_one(cur)[0])

        return self.atomic(read)

    def finish_run(
        self,
        run_id: int,
        status: str,
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

        def finish(cur: Cursor) -> None:
            if lease is not None:
                cur.execute(
                    "DELETE FROM clerk_sync.locks WHERE name = %s AND token = %s RETURNING 1",
                    (LOCK_NAME, lease.token),
                )
                if cur.fetchone() is None:
                    raise LockHeldError(
                        "Another clerk-sync run took over the lock (this run was silent too "
                        "long); its end was not recorded.",
                        "The run history is the other run's now.",
                    )
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
                cur.execute(PRUNE_RUNS, (RUN_HISTORY_DAYS, list(FULL_COMMANDS)))

        self.atomic(finish)

    def lock_holder(self) -> LockHolder | None:
        """The lock row, if any. Reads a lock table older than migration 005 too (``status``
        and ``doctor`` migrate nothing): the columns it lacks read as None."""

        def read(cur: Cursor) -> LockHolder | None:
            cur.execute(
                "SELECT run_id, host, pid, extract(epoch FROM now() - heartbeat_at), "
                "heartbeat_at, to_jsonb(l)->>'token', to_jsonb(l)->>'boot_id', "
                "to_jsonb(l)->>'pid_ns' FROM clerk_sync.locks l WHERE name = %s",
                (LOCK_NAME,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            run_id, host, pid, age, heartbeat_at, token, boot_id, pid_ns = row
            return LockHolder(
                int(run_id), host, int(pid), float(age), heartbeat_at, token, boot_id, pid_ns
            )

        return self.atomic(read)

    def acquire_lock(self, run_id: int, *, stale_after_s: float) -> Lease:
        """Take the one writer lock for run ``run_id``: a new lease, with a token of its own.
        Raises LockHeldError while a live run holds it.

        A stale holder (a crashed run) is replaced only if it is still exactly the holder read
        (same token, same heartbeat to the microsecond): one that was heard from in between
        keeps the lock, and of two runs taking over at once (both resuming the same crashed
        run, say) exactly one wins."""
        here = this_process()
        token = secrets.token_hex(16)
        mine = (run_id, token, here.host, here.pid, here.boot_id, here.pid_ns)
        holder = self.lock_holder()
        if holder is not None and not holder.is_stale(stale_after_s):
            raise _held(holder, stale_after_s)

        def take(cur: Cursor) -> bool:
            if holder is None:
                cur.execute(
                    "INSERT INTO clerk_sync.locks "
                    "(name, run_id, token, host, pid, boot_id, pid_ns) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (name) DO NOTHING RETURNING 1",
                    (LOCK_NAME, *mine),
                )
            else:
                cur.execute(
                    "UPDATE clerk_sync.locks SET run_id = %s, token = %s, host = %s, pid = %s, "
                    "boot_id = %s, pid_ns = %s, acquired_at = now(), heartbeat_at = now() "
                    "WHERE name = %s AND token IS NOT DISTINCT FROM %s AND heartbeat_at = %s "
                    "RETURNING 1",
                    (*mine, LOCK_NAME, holder.token, holder.heartbeat_at),
                )
            return cur.fetchone() is not None

        if not self.atomic(take):  # another run took it (or its holder spoke) in between
            winner = self.lock_holder()
            if winner is None:
                raise LockHeldError(
                    "Another clerk-sync run holds the lock.", "Nothing was changed."
                )
            if winner.token != token:  # else: ours, committed before a lost connection
                raise _held(winner, stale_after_s)
        return Lease(run_id, token, holder)

    def _heartbeat(self, cur: Cursor, lease: Lease) -> None:
        """Refresh the lease (the row stays locked by this transaction until it ends); the
        answer is read by :meth:`_check_heartbeat`, in pipeline mode with the next one's."""
        cur.execute(
            "UPDATE clerk_sync.locks SET heartbeat_at = now() WHERE name = %s AND token = %s "
            "RETURNING 1",
            (LOCK_NAME, lease.token),
        )

    def _check_heartbeat(self, cur: Cursor) -> None:
        if cur.fetchone() is None:
            raise _lost()

    def resumable_run(self, command: str) -> int | None:
        """The newest run of ``command`` that was left running (crashed) with checkpoints."""

        def find(cur: Cursor) -> int | None:
            cur.execute(
                "SELECT r.id FROM clerk_sync.runs r WHERE r.command = %s AND NOT r.dry_run "
                "AND r.status IN ('running', 'interrupted') AND EXISTS (SELECT 1 FROM clerk_sync.run_windows w "
                "WHERE w.run_id = r.id) ORDER BY r.id DESC LIMIT 1",
                (command,),
            )
            row = cur.fetchone()
            return int(row[0]) if row else None

        return self.atomic(find)

    def resume_run(self, run_id: int) -> None:
        def mark(cur: Cursor) -> None:
            cur.execute(
                "UPDATE clerk_sync.runs SET status = 'running', finished_at = NULL, "
                "summary = coalesce(summary, '{}'::jsonb) || "
                "jsonb_build_object('resumed_at', now()) WHERE id = %s",
                (run_id,),
            )

        self.atomic(mark)

    def abandon_runs(self, keep: int, command: str) -> None:
        """Once run ``keep`` holds the lock, no other writing run is alive. One left
        ``running`` crashed: with checkpoints it becomes ``interrupted``, for the next run of
        its own command to resume (a frequent ``sync`` must not discard a nightly ``diff``'s
        progress); without, ``crashed``. Older interrupted runs of ``command`` are superseded
        by ``keep``: crashed, and their scratch rows freed."""

        def abandon(cur: Cursor) -> None:
            cur.execute(
                "UPDATE clerk_sync.runs r SET finished_at = coalesce(r.finished_at, now()), "
                "status = CASE WHEN r.status = 'running' AND EXISTS (SELECT 1 FROM "
                "clerk_sync.run_windows w WHERE w.run_id = r.id) THEN 'interrupted' "
                "ELSE 'crashed' END "
                "WHERE NOT r.dry_run AND r.id <> %s AND (r.status = 'running' "
                "OR (r.status = 'interrupted' AND r.command = %s)) RETURNING r.id, r.status",
                (keep, command),
            )
            gone = [run_id for run_id, status in cur.fetchall() if status == "crashed"]
            if gone:
                cur.execute("DELETE FROM clerk_sync.run_seen WHERE run_id = ANY(%s)", (gone,))
                cur.execute("DELETE FROM clerk_sync.run_windows WHERE run_id = ANY(%s)", (gone,))

        self.atomic(abandon)

    def save_windows(self, run_id: int, windows: Sequence[Window]) -> None:
        def save(cur: Cursor) -> None:
            cur.executemany(
                "INSERT INTO clerk_sync.run_windows (run_id, window_no, created_after, created_before) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(run_id, w.no, w.after, w.before) for w in windows],
            )

        self.atomic(save)

    def load_windows(self, run_id: int) -> list[tuple[Window, str | None, bool]]:
        def load(cur: Cursor) -> list[tuple[Window, str | None, bool]]:
            cur.execute(
                "SELECT window_no, created_after, created_before, cursor, done "
                "FROM clerk_sync.run_windows WHERE run_id = %s ORDER BY window_no",
                (run_id,),
            )
            return [
                (Window(no, lo, hi), cursor, done) for no, lo, hi, cursor, done in cur.fetchall()
            ]

        return self.atomic(load)

    def touch(self, lease: Lease) -> None:
        """Refresh the lease between units of work (during long confirmation loops)."""
        self.atomic(lambda cur: None, locked_by=lease)

    @contextmanager
    def heartbeat_in_background(self, lease: Lease | None, *, every_s: float) -> Iterator[None]:
        """Keep ``lease`` fresh from a background thread while the caller waits on something
        that is not the database (a prompt), every ``every_s`` seconds. The thread uses this
        store, so the caller must not meanwhile; it is stopped and joined on exit. If the
        lease is lost, the thread stops; the caller's next unit of work finds out."""
        if lease is None:
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                try:
                    self.touch(lease)
                except LockHeldError:
                    return
                except ClerkSyncError:
                    continue  # the database is away: try again next time

        thread = threading.Thread(target=beat, name="clerk-sync-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def checkpoint(
        self, cur: Cursor, run_id: int, window_no: int, cursor: str | None, done: bool
    ) -> None:
        cur.execute(
            "UPDATE clerk_sync.run_windows SET cursor = %s, done = %s WHERE run_id = %s AND window_no = %s",
            (cursor, done, run_id, window_no),
        )

    def seen_count(self, run_id: int) -> int:
        def count(cur: Cursor) -> int:
            cur.execute("SELECT count(*) FROM clerk_sync.run_seen WHERE run_id = %s", (run_id,))
            return int(_one(cur)[0])

        return self.atomic(count)

    def one_seen(self, run_id: int) -> str | None:
        """One user run ``run_id`` saw in Clerk's listing (any), or None."""

        def read(cur: Cursor) -> str | None:
            cur.execute(
                "SELECT clerk_id FROM clerk_sync.run_seen WHERE run_id = %s LIMIT 1", (run_id,)
            )
            found = cur.fetchone()
            return None if found is None else str(found[0])

        return self.atomic(read)

    # -- instance pin and history ---------------------------------------------------------------

    def pinned_instance(self) -> Pin | None:
        def read(cur: Cursor) -> Pin | None:
            cur.execute(
                "SELECT instance_id, environment_type, pinned_at, pinned_by_run "
                "FROM clerk_sync.instance"
            )
            row = cur.fetchone()
            return Pin(Instance(row[0], row[1]), row[2], row[3]) if row else None

        return self.atomic(read)

    def pin_instance(self, instance: Instance, run_id: int | None, *, replace: bool) -> None:
        """Pin ``instance``; an existing pin is kept unless ``replace``."""
        action = (
            "DO UPDATE SET instance_id = EXCLUDED.instance_id, "
            "environment_type = EXCLUDED.environment_type, pinned_at = now(), "
            "pinned_by_run = EXCLUDED.pinned_by_run"
            if replace
            else "DO NOTHING"
        )

        def pin(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO clerk_sync.instance (instance_id, environment_type, pinned_by_run) "
                "VALUES (%s, %s, %s) ON CONFLICT (singleton) " + action,
                (instance.id, instance.environment_type, run_id),
            )

        self.atomic(pin)

    def sync_state(self, instance_id: str) -> SyncState:
        """The newest watermark and full-reconcile baseline recorded against this instance."""

        def read(cur: Cursor) -> SyncState:
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

        return self.atomic(read)

    # boot_id and pid_ns through to_jsonb: a table older than migration 005 reads as None
    _RUN_COLUMNS = (
        "id, command, dry_run, status, started_at, finished_at, coalesce(summary, '{}'::jsonb), "
        "instance_id, environment_type, host, pid, watermark_ms, "
        "to_jsonb(runs)->>'boot_id', to_jsonb(runs)->>'pid_ns'"
    )

    def recent_runs(self, limit: int) -> list[RunRecord]:
        def read(cur: Cursor) -> list[RunRecord]:
            cur.execute(
                f"SELECT {self._RUN_COLUMNS} FROM clerk_sync.runs ORDER BY id DESC LIMIT %s",
                (limit,),
            )
            return [RunRecord(*row) for row in cur.fetchall()]

        return self.atomic(read)

    def last_full_reconcile(self) -> RunRecord | None:
        """The newest full reconcile that was not a dry run and completed (ok or partial)."""

        def read(cur: Cursor) -> RunRecord | None:
            cur.execute(
                f"SELECT {self._RUN_COLUMNS} FROM clerk_sync.runs WHERE {FULL_RECONCILE} "
                "ORDER BY id DESC LIMIT 1",
                (list(FULL_COMMANDS),),
            )
            row = cur.fetchone()
            return RunRecord(*row) if row else None

        return self.atomic(read)

    # -- reads -------------------------------------------------------------------------------

    def _user_select(self, can_read_settings: bool = True) -> sql.Composed:
        has_settings = (
            sql.SQL("EXISTS (SELECT 1 FROM {settings} s WHERE s.user_id = u.id)").format(
                settings=self.tables.settings_ident()
            )
            if can_read_settings
            else sql.SQL("true")
        )
        return sql.SQL(
            "SELECT u.id::text, u.clerk_id, u.email, u.first_name, u.last_name, "
            "u.profile_image_url, u.is_active, {has_settings} AS has_settings FROM {users} u"
        ).format(has_settings=has_settings, users=self.tables.users_ident())

    def see_and_compare(
        self,
        cur: Cursor,
        run_id: int | None,
        rows: Sequence[UserRow],
        *,
        can_read_settings: bool = True,
    ) -> tuple[set[str], dict[str, DbUser | None]]:
        """Record ``rows``' users as seen by run ``run_id``, and compare them with the table,
        in one statement. Returns the clerk_ids seen before (by an earlier page: skip them),
        and, for the others, the stored row of each one that may need a change: no row (None),
        a synced field that differs, or no settings row. Users not returned match already.
        ``run_id`` None (a read-only run, which records nothing): compare only.

        The comparison is the upsert's own (``IS DISTINCT FROM`` over the synced fields), so
        what it passes over the upsert would not write; :func:`plan.plan_user` decides the
        rest. Only the few rows that differ cross the wire and become Python objects."""
        fields = [sql.Identifier(c) for c in SYNCED_FIELDS]
        stored = sql.SQL(", ").join(sql.SQL("x.") + f for f in fields)
        listed = sql.SQL(", ").join(sql.SQL("i.") + f for f in fields)
        differs = sql.SQL(
            "x.clerk_id IS NULL OR NOT x.has_settings OR ({stored}) IS DISTINCT FROM ({listed})"
        ).format(stored=stored, listed=listed)
        if run_id is None:
            query = sql.SQL(
                "WITH i AS (SELECT * FROM {incoming}) SELECT i.clerk_id, false, x.* FROM i "
                "LEFT JOIN ({select}) x ON x.clerk_id = i.clerk_id WHERE {differs}"
            ).format(
                incoming=_incoming("i"),
                select=self._user_select(can_read_settings),
                differs=differs,
            )
            cur.execute(query, (_rows_json(rows),))
        else:
            query = sql.SQL(
                "WITH i AS (SELECT * FROM {incoming}), "
                "new AS (INSERT INTO clerk_sync.run_seen (run_id, clerk_id) "
                "SELECT %s, clerk_id FROM i ON CONFLICT DO NOTHING RETURNING clerk_id) "
                "SELECT i.clerk_id, new.clerk_id IS NULL AS seen_before, x.* "
                "FROM i LEFT JOIN new ON new.clerk_id = i.clerk_id "
                "LEFT JOIN ({select}) x ON x.clerk_id = i.clerk_id "
                "WHERE new.clerk_id IS NULL OR {differs}"
            ).format(
                incoming=_incoming("i"),
                select=self._user_select(can_read_settings),
                differs=differs,
            )
            cur.execute(query, (_rows_json(rows), run_id))
        seen_before: set[str] = set()
        differing: dict[str, DbUser | None] = {}
        for record in cur.fetchall():
            if record[1]:
                seen_before.add(record[0])
            else:
                differing[record[0]] = None if record[2] is None else DbUser(*record[2:])
        return seen_before, differing

    def fetch_user(self, clerk_id: str, *, can_read_settings: bool = True) -> DbUser | None:
        query = sql.SQL("{select} WHERE u.clerk_id = %s").format(
            select=self._user_select(can_read_settings)
        )

        def fetch(cur: Cursor) -> DbUser | None:
            cur.execute(query, (clerk_id,))
            record = cur.fetchone()
            return DbUser(*record) if record else None

        return self.atomic(fetch)

    def fetch_row_and_settings(
        self, clerk_id: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The whole ``users`` row and its settings row, for display."""

        def fetch(cur: Cursor) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            cur.row_factory = dict_row  # type: ignore[assignment,unused-ignore]
            cur.execute(
                sql.SQL("SELECT * FROM {} WHERE clerk_id = %s").format(self.tables.users_ident()),
                (clerk_id,),
            )
            row = cur.fetchone()
            settings = None
            if row is not None:
                cur.execute(
                    sql.SQL("SELECT * FROM {} WHERE user_id = %s").format(
                        self.tables.settings_ident()
                    ),
                    (row["id"],),
                )
                settings = cur.fetchone()
            return row, settings

        return self.atomic(fetch)

    def count_active(self) -> tuple[int, int]:
        """(all rows, active rows)."""
        query = sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE is_active IS DISTINCT FROM false) FROM {}"
        ).format(self.tables.users_ident())

        def count(cur: Cursor) -> tuple[int, int]:
            cur.execute(query)
            total, active = _one(cur)
            return int(total), int(active)

        return self.atomic(count)

    def unseen_active(self, run_id: int, limit: int) -> tuple[int, list[DbUser]]:
        """Active rows run ``run_id`` did not see in Clerk: (how many, the first ``limit``)."""
        where = sql.SQL(
            "WHERE u.is_active IS DISTINCT FROM false AND NOT EXISTS ("
            "SELECT 1 FROM clerk_sync.run_seen r WHERE r.run_id = %s AND r.clerk_id = u.clerk_id)"
        )

        def read(cur: Cursor) -> tuple[int, list[DbUser]]:
            cur.execute(
                sql.SQL("SELECT count(*) FROM {} u ").format(self.tables.users_ident()) + where,
                (run_id,),
            )
            count = int(_one(cur)[0])
            cur.execute(
                self._user_select(False)
                + sql.SQL(" ")
                + where
                + sql.SQL(" ORDER BY u.clerk_id LIMIT %s"),
                (run_id, limit),
            )
            return count, [DbUser(*record) for record in cur.fetchall()]

        return self.atomic(read)

    def active_not_in(self, seen: Callable[[str], bool], limit: int) -> tuple[int, list[DbUser]]:
        """Like :meth:`unseen_active`, for a read-only run that keeps what it saw in memory:
        streams the active rows' ids (a server-side cursor, never the whole table at once)."""
        ids = sql.SQL(
            "SELECT clerk_id FROM {} WHERE is_active IS DISTINCT FROM false ORDER BY clerk_id"
        ).format(self.tables.users_ident())

        def read(cur: Cursor) -> tuple[int, list[DbUser]]:
            count, first = 0, list[str]()
            with self.conn.cursor(name="clerk_sync_active_ids") as stream:
                stream.itersize = 10_000
                stream.execute(ids)
                for (clerk_id,) in stream:
                    if not seen(clerk_id):
                        count += 1
                        if len(first) < limit:
                            first.append(clerk_id)
            cur.execute(
                self._user_select(False)
                + sql.SQL(" WHERE u.clerk_id = ANY(%s) ORDER BY u.clerk_id"),
                (first,),
            )
            return count, [DbUser(*record) for record in cur.fetchall()]

        return self.atomic(read)

    # -- writes ------------------------------------------------------------------------------

    def upsert(
        self, cur: Cursor, rows: Sequence[UserRow], *, repair_settings_for: Sequence[str] = ()
    ) -> tuple[set[str], set[str], set[str]]:
        """Write ``rows`` in one statement and insert missing settings rows for the given ids,
        inside a savepoint of the caller's transaction (BatchDataError undoes just this part).

        Returns the clerk_ids inserted, updated, and given a settings row. A row whose stored
        values already equal Clerk's is left untouched, even if it changed since it was read.
        """
        t = self.tables
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in SYNCED_FIELDS)
        excluded = sql.SQL(", ").join(
            sql.SQL("EXCLUDED.") + sql.Identifier(c) for c in SYNCED_FIELDS
        )
        current = sql.SQL(", ").join(sql.SQL("u.") + sql.Identifier(c) for c in SYNCED_FIELDS)
        query = sql.SQL(
            "INSERT INTO {users} AS u (clerk_id, {cols}, created_at) "
            "SELECT clerk_id, {cols}, COALESCE(created_at, now()) FROM {incoming} "
            "ON CONFLICT (clerk_id) DO UPDATE SET ({cols}) = ROW({excluded}) "
            "WHERE ({current}) IS DISTINCT FROM ({excluded}) "
            "RETURNING u.clerk_id, (xmax = 0) AS inserted"
        ).format(
            users=t.users_ident(),
            cols=cols,
            excluded=excluded,
            current=current,
            incoming=_incoming("x"),
        )
        inserted: set[str] = set()
        updated: set[str] = set()
        repaired: set[str] = set()
        cur.execute("SAVEPOINT clerk_sync_batch")  # a statement: pipeline mode, see above
        try:
            if rows:
                cur.execute(query, (_rows_json(rows),))
                for clerk_id, was_inserted in cur.fetchall():
                    (inserted if was_inserted else updated).add(clerk_id)
            if repair_settings_for:
                repaired = self._repair_settings(cur, repair_settings_for)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            self._resync()
            cur.execute("ROLLBACK TO SAVEPOINT clerk_sync_batch")
            raise BatchDataError(_reason(exc)) from None
        cur.execute("RELEASE SAVEPOINT clerk_sync_batch")
        return inserted, updated, repaired

    def _repair_settings(self, cur: Cursor, clerk_ids: Sequence[str]) -> set[str]:
        query = sql.SQL(
            "WITH added AS (INSERT INTO {settings} (user_id) SELECT u.id FROM {users} u "
            "WHERE u.clerk_id = ANY(%s) "
            "AND NOT EXISTS (SELECT 1 FROM {settings} s WHERE s.user_id = u.id) "
            "ON CONFLICT DO NOTHING RETURNING user_id) "
            "SELECT u.clerk_id FROM added JOIN {users} u ON u.id = added.user_id"
        ).format(settings=self.tables.settings_ident(), users=self.tables.users_ident())
        cur.execute(query, (list(clerk_ids),))
        return {r[0] for r in cur.fetchall()}

    def deactivate(self, clerk_ids: Sequence[str], *, lease: Lease | None = None) -> set[str]:
        """Set ``is_active = false`` on these rows (never DELETE); returns the ids changed.
        ``lease``: the writer lock it is done under (checked before it commits)."""
        query = sql.SQL(
            "UPDATE {} SET is_active = false WHERE clerk_id = ANY(%s) "
            "AND is_active IS DISTINCT FROM false RETURNING clerk_id"
        ).format(self.tables.users_ident())

        def update(cur: Cursor) -> set[str]:
            cur.execute(query, (list(clerk_ids),))
            return {r[0] for r in cur.fetchall()}

        return self.atomic(update, locked_by=lease)

    # -- schema setup --------------------------------------------------------------------------

    def apply_sql(self, name: str, text: str) -> None:
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute(text.encode())
        except psycopg.Error as exc:
            raise SchemaError(f"{name} failed: {_reason(exc)}") from None

    def drop_duplicate_triggers(self) -> list[str]:
        """Drop the settings triggers clerk-sync added beside the app's own (and their
        functions, when clerk-sync's and unused), decided again inside the transaction that
        drops them; returns what was dropped."""

        def drop(cur: Cursor) -> list[str]:
            project = read_project(cur, self.tables)
            dropped = []
            for trigger in project.removable_duplicates():
                cur.execute(drop_trigger_sql(project, trigger))
                dropped.append(f"{trigger.name} ({trigger.function})")
            return dropped

        return self.atomic(drop)

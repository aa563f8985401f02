"""The connection and its transactions: the one place that opens, retries and ends them.

Every unit of work is one short transaction (so Supabase's transaction pooler works) that sets
its own statement and lock timeouts and is all-or-nothing. :meth:`Store.atomic` reruns a unit
on a fresh connection when the connection is lost; :meth:`Store.run` is the same for a
function of the other store modules, which all take the transaction's cursor first.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from clerk_sync_cli.errors import (
    BatchDataError,
    DatabaseUnavailableError,
    SchemaError,
)
from clerk_sync_cli.project import GRANTS_HINT
from clerk_sync_cli.scrub import register, scrub
from clerk_sync_cli.settings import describe_dsn
from clerk_sync_cli.tables import Tables

T = TypeVar("T")
P = ParamSpec("P")


class Cursor(psycopg.Cursor[Any]):
    """A transaction's cursor. In pipeline mode it knows its pipeline, so that after an error
    a savepoint can be rolled back (:meth:`resync`)."""

    pipeline: psycopg.Pipeline | None = None

    def resync(self) -> None:
        """After an error in pipeline mode, end the aborted stretch so statements run again
        (the error itself was raised where its result was read)."""
        if self.pipeline is not None:
            with suppress(psycopg.Error):
                self.pipeline.sync()


class Guard(Protocol):
    """What a unit of work may run under (a lease of the writer lock, :mod:`.lock`): refreshed
    at the start of the unit's transaction, and confirmed still held before it commits."""

    def refresh(self, cur: Cursor) -> None: ...

    def confirm(self, cur: Cursor) -> None: ...


def connect(dsn: str, *, application_name: str = "clerk-sync") -> psycopg.Connection[Any]:
    """Open a connection fit for poolers (no server-side prepares), or a clear error. Its
    password is scrubbed from every message from here on, however the DSN got here."""
    target = describe_dsn(dsn)
    register(str(psycopg.conninfo.conninfo_to_dict(dsn).get("password") or ""), pieces=False)
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
            f"(database {target.dbname}, user {target.user}): {reason(exc)}",
            "Check DATABASE_URL and that the server is running and reachable.",
        ) from None


def reason(exc: BaseException) -> str:
    """The first line of a driver error, scrubbed (the password never reaches a message)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^connection failed: ", "", text)
    return scrub(text)[:300]


_RENDERED: dict[tuple[Any, ...], bytes] = {}


def rendered(cur: Cursor, build: Callable[..., sql.Composable], *key: Hashable) -> bytes:
    """``build(*key)`` as the bytes ``cur``'s connection is sent, composed once per ``key``
    and client encoding. A statement composed of identifiers costs more to render than to
    run when it is small: rendering it anew took ~15% of ``serve``'s CPU per webhook
    (``benchmarks/bench_webhooks.py``, py-spy)."""
    cache_key = (build, cur.connection.info.encoding, *key)
    found = _RENDERED.get(cache_key)
    if found is None:  # two threads may both render it: the same bytes either way
        found = _RENDERED[cache_key] = build(*key).as_bytes(cur)
    return found


def one(cur: psycopg.Cursor[Any]) -> Any:
    """The row of a query that returns exactly one."""
    record = cur.fetchone()
    assert record is not None, "query returns exactly one row"
    return record


class Store:
    """The database connection clerk-sync reads and writes through, and the app's table names
    (``tables``). What is read and written is in the modules beside this one, as functions
    taking a transaction's cursor: ``store.run(runs.start, "diff", dry_run=False)``."""

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
                with self.conn.transaction(), Cursor(self.conn) as cur:
                    cur.execute(self._timeouts)
                    yield cur
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            raise BatchDataError(reason(exc)) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SchemaError(
                f"The database role lacks a privilege: {reason(exc)}", GRANTS_HINT
            ) from None
        except psycopg.OperationalError as exc:
            self.close()
            raise DatabaseUnavailableError(
                f"The database connection failed: {reason(exc)}",
                "Nothing from the interrupted page was applied; rerun to converge.",
            ) from None

    @contextmanager
    def _pipelined_transaction(self) -> Iterator[Cursor]:
        """BEGIN and COMMIT by hand in pipeline mode: COMMIT is answered by the Sync that closes
        the pipeline, the unit's only wait besides the results it reads (psycopg's
        ``transaction()`` waits on entry and twice on exit inside a pipeline). Savepoints
        inside must be explicit statements too (see :func:`users.upsert`). If anything fails,
        the transaction is rolled back once the pipeline is closed."""
        conn = self.conn
        cur = Cursor(conn)
        try:
            with conn.pipeline() as pipeline:
                cur.pipeline = pipeline
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
            cur.pipeline = None
            cur.close()

    def atomic(
        self,
        work: Callable[[Cursor], T],
        *,
        locked_by: Guard | None = None,
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
                    with Cursor(self.conn) as beat:
                        locked_by.refresh(beat)
                        value = work(cur)
                        locked_by.confirm(beat)
                    return value
            except DatabaseUnavailableError:
                if attempt == self.reconnect_attempts:
                    raise
                self.reconnects += 1
                self._sleep(min(0.5 * 2**attempt, 5.0))
        raise AssertionError("unreachable")  # pragma: no cover

    def run(
        self, work: Callable[Concatenate[Cursor, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``work(cursor, *args, **kwargs)`` as one unit of work (:meth:`atomic`)."""
        return self.atomic(lambda cur: work(cur, *args, **kwargs))

    def apply_sql(self, name: str, text: str) -> None:
        """Run a schema file as it is (several statements), in one transaction."""
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute(text.encode())
        except psycopg.Error as exc:
            raise SchemaError(f"{name} failed: {reason(exc)}") from None

"""The Postgres side: schema checks, reads and batched writes. The only module with SQL.

Every unit of work is one short transaction (so Supabase's transaction pooler works), sets its
own statement and lock timeouts, and is all-or-nothing. Writes are set-based: one statement
per batch over arrays, never a round trip per user, and a row whose values already match is
never touched (no ``updated_at`` bump, no dead tuple).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from clerk_sync_cli.errors import BatchDataError, DatabaseUnavailableError, SchemaError
from clerk_sync_cli.mapping import SYNCED_FIELDS, ColumnLimits, UserRow
from clerk_sync_cli.plan import DbUser
from clerk_sync_cli.settings import describe_dsn

STATE_SCHEMA = "clerk_sync"
REQUIRED_USER_COLUMNS = ("id", "clerk_id", *SYNCED_FIELDS, "created_at")


@dataclass(frozen=True)
class Tables:
    """Where the app's tables live. Names are composed with sql.Identifier, never pasted."""

    schema: str = "public"
    users: str = "users"
    settings: str = "user_monitoring_settings"

    def users_ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.users)

    def settings_ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.settings)


@dataclass(frozen=True)
class SchemaInfo:
    limits: ColumnLimits
    has_settings_trigger: bool


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


def _one(cur: psycopg.Cursor[Any]) -> Any:
    record = cur.fetchone()
    assert record is not None, "query returns exactly one row"
    return record


class Store:
    """Reads and writes the app's tables and clerk-sync's own ``clerk_sync`` schema."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        tables: Tables = Tables(),
        *,
        statement_timeout_ms: int = 60_000,
        lock_timeout_ms: int = 10_000,
    ) -> None:
        self.conn = conn
        self.tables = tables
        self._timeouts = sql.SQL(
            "SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}"
        ).format(sql.Literal(f"{statement_timeout_ms}ms"), sql.Literal(f"{lock_timeout_ms}ms"))

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """One atomic unit of work with timeouts set; driver failures become clear errors."""
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute(self._timeouts)
                yield cur
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            raise BatchDataError(_reason(exc)) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SchemaError(
                f"The database role lacks a privilege: {_reason(exc)}",
                "Grant SELECT, INSERT, UPDATE on the users table (see README, Safety).",
            ) from None
        except (psycopg.OperationalError, psycopg.errors.QueryCanceled) as exc:
            raise DatabaseUnavailableError(
                f"The database connection failed: {_reason(exc)}",
                "Nothing from the interrupted batch was applied; rerun to converge.",
            ) from None

    # -- schema ------------------------------------------------------------------------------

    def inspect(self) -> SchemaInfo:
        """Check the tables have what the sync relies on; say exactly what is missing."""
        t = self.tables
        with self.transaction() as cur:
            cur.execute(
                "SELECT column_name, character_maximum_length FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                (t.schema, t.users),
            )
            columns = {name: length for name, length in cur.fetchall()}
            if not columns:
                raise SchemaError(
                    f'Table "{t.schema}"."{t.users}" does not exist (or this role cannot see it).',
                    "Run `clerk-sync init-db` to create it, or check DATABASE_URL.",
                )
            missing = [c for c in REQUIRED_USER_COLUMNS if c not in columns]
            if missing:
                raise SchemaError(
                    f'Table "{t.schema}"."{t.users}" lacks column(s): {", ".join(missing)}.',
                    "clerk-sync expects the users table of the integration guide (see sql/).",
                )
            cur.execute(
                """
                SELECT EXISTS (
                    SELECT 1 FROM pg_index i
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                    WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indnatts = 1
                      AND i.indpred IS NULL AND a.attname = 'clerk_id')
                """,
                (self._qualified(t.users),),
            )
            if not _one(cur)[0]:
                raise SchemaError(
                    f'"{t.schema}"."{t.users}".clerk_id has no unique constraint; upserts need one.',
                    f'Add it: ALTER TABLE "{t.schema}"."{t.users}" ADD CONSTRAINT '
                    "users_clerk_id_key UNIQUE (clerk_id);",
                )
            cur.execute(
                "SELECT 1 FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s AND column_name = 'user_id'",
                (t.schema, t.settings),
            )
            if cur.fetchone() is None:
                raise SchemaError(
                    f'Table "{t.schema}"."{t.settings}" with a user_id column does not exist.',
                    "Run `clerk-sync init-db` to create it.",
                )
            cur.execute(
                """
                SELECT EXISTS (
                    SELECT 1 FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid
                    WHERE tg.tgrelid = to_regclass(%s) AND NOT tg.tgisinternal
                      AND (tg.tgtype & 4) <> 0  -- fires on INSERT
                      AND p.prosrc ILIKE %s)
                """,
                (self._qualified(t.users), f"%{t.settings}%"),
            )
            has_trigger = bool(_one(cur)[0])
            cur.execute("SELECT to_regnamespace(%s) IS NOT NULL", (STATE_SCHEMA,))
            if not _one(cur)[0]:
                raise SchemaError(
                    f'clerk-sync\'s own schema "{STATE_SCHEMA}" does not exist.',
                    "Run `clerk-sync init-db` once (it never changes existing tables).",
                )
        limits = ColumnLimits(
            **{name: columns.get(name) for name in ColumnLimits.__dataclass_fields__}
        )
        return SchemaInfo(limits=limits, has_settings_trigger=has_trigger)

    def _qualified(self, name: str) -> str:
        return sql.Identifier(self.tables.schema, name).as_string(self.conn)

    # -- runs --------------------------------------------------------------------------------

    def start_run(self, command: str, dry_run: bool) -> int:
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO clerk_sync.runs (command, dry_run, status) "
                "VALUES (%s, %s, 'running') RETURNING id",
                (command, dry_run),
            )
            return int(_one(cur)[0])

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        with self.transaction() as cur:
            cur.execute(
                "UPDATE clerk_sync.runs SET status = %s, finished_at = now(), summary = %s "
                "WHERE id = %s",
                (status, Jsonb(summary), run_id),
            )
            cur.execute("DELETE FROM clerk_sync.run_seen WHERE run_id = %s", (run_id,))

    # -- reads -------------------------------------------------------------------------------

    def _user_select(self) -> sql.Composed:
        return sql.SQL(
            "SELECT u.id::text, u.clerk_id, u.email, u.first_name, u.last_name, "
            "u.profile_image_url, u.is_active, "
            "EXISTS (SELECT 1 FROM {settings} s WHERE s.user_id = u.id) AS has_settings "
            "FROM {users} u"
        ).format(settings=self.tables.settings_ident(), users=self.tables.users_ident())

    def see_and_fetch(
        self, run_id: int, clerk_ids: Sequence[str]
    ) -> tuple[set[str], dict[str, DbUser]]:
        """Record ``clerk_ids`` as seen by this run; return the ones not seen before and the
        table rows of those. One round trip a page; duplicates across pages come back once."""
        query = sql.SQL(
            "WITH new AS (INSERT INTO clerk_sync.run_seen (run_id, clerk_id) "
            "SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING RETURNING clerk_id) "
            "SELECT new.clerk_id, x.* FROM new LEFT JOIN ({select}) x ON x.clerk_id = new.clerk_id"
        ).format(select=self._user_select())
        with self.transaction() as cur:
            cur.execute(query, (run_id, list(clerk_ids)))
            fresh: set[str] = set()
            rows: dict[str, DbUser] = {}
            for record in cur.fetchall():
                fresh.add(record[0])
                if record[1] is not None:
                    rows[record[0]] = DbUser(*record[1:])
        return fresh, rows

    def fetch_user(self, clerk_id: str) -> DbUser | None:
        query = sql.SQL("{select} WHERE u.clerk_id = %s").format(select=self._user_select())
        with self.transaction() as cur:
            cur.execute(query, (clerk_id,))
            record = cur.fetchone()
        return DbUser(*record) if record else None

    def fetch_row_and_settings(
        self, clerk_id: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The whole ``users`` row and its settings row, for display."""
        with self.transaction() as cur:
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

    def count_active(self) -> tuple[int, int]:
        """(all rows, active rows)."""
        query = sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE is_active IS DISTINCT FROM false) FROM {}"
        ).format(self.tables.users_ident())
        with self.transaction() as cur:
            cur.execute(query)
            total, active = _one(cur)
        return int(total), int(active)

    def unseen_active(self, run_id: int, limit: int) -> tuple[int, list[DbUser]]:
        """Active rows this run did not see in Clerk: (how many, the first ``limit``)."""
        where = sql.SQL(
            "WHERE u.is_active IS DISTINCT FROM false AND NOT EXISTS ("
            "SELECT 1 FROM clerk_sync.run_seen r WHERE r.run_id = %s AND r.clerk_id = u.clerk_id)"
        )
        with self.transaction() as cur:
            cur.execute(
                sql.SQL("SELECT count(*) FROM {} u ").format(self.tables.users_ident()) + where,
                (run_id,),
            )
            count = int(_one(cur)[0])
            cur.execute(
                self._user_select()
                + sql.SQL(" ")
                + where
                + sql.SQL(" ORDER BY u.clerk_id LIMIT %s"),
                (run_id, limit),
            )
            rows = [DbUser(*record) for record in cur.fetchall()]
        return count, rows

    # -- writes ------------------------------------------------------------------------------

    def upsert(
        self, rows: Sequence[UserRow], *, repair_settings_for: Sequence[str] = ()
    ) -> tuple[set[str], set[str], set[str]]:
        """Write ``rows`` in one statement; insert missing settings rows for the given ids.

        Returns the clerk_ids inserted, updated, and given a settings row. A row whose
        stored values already equal Clerk's is left untouched, even if it changed since read.
        """
        t = self.tables
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in SYNCED_FIELDS)
        excluded = sql.SQL(", ").join(
            sql.SQL("EXCLUDED.") + sql.Identifier(c) for c in SYNCED_FIELDS
        )
        current = sql.SQL(", ").join(sql.SQL("u.") + sql.Identifier(c) for c in SYNCED_FIELDS)
        query = sql.SQL(
            "INSERT INTO {users} AS u (clerk_id, {cols}, created_at) "
            "SELECT c, e, f, l, p, a, COALESCE(t, now()) FROM unnest("
            "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bool[], "
            "%s::timestamptz[]) AS x(c, e, f, l, p, a, t) "
            "ON CONFLICT (clerk_id) DO UPDATE SET ({cols}) = ROW({excluded}) "
            "WHERE ({current}) IS DISTINCT FROM ({excluded}) "
            "RETURNING u.clerk_id, (xmax = 0) AS inserted"
        ).format(users=t.users_ident(), cols=cols, excluded=excluded, current=current)
        inserted: set[str] = set()
        updated: set[str] = set()
        repaired: set[str] = set()
        with self.transaction() as cur:
            if rows:
                cur.execute(
                    query,
                    (
                        [r.clerk_id for r in rows],
                        [r.email for r in rows],
                        [r.first_name for r in rows],
                        [r.last_name for r in rows],
                        [r.profile_image_url for r in rows],
                        [r.is_active for r in rows],
                        [r.created_at for r in rows],
                    ),
                )
                for clerk_id, was_inserted in cur.fetchall():
                    (inserted if was_inserted else updated).add(clerk_id)
            if repair_settings_for:
                repaired = self._repair_settings(cur, repair_settings_for)
        return inserted, updated, repaired

    def _repair_settings(self, cur: psycopg.Cursor[Any], clerk_ids: Sequence[str]) -> set[str]:
        query = sql.SQL(
            "WITH added AS (INSERT INTO {settings} (user_id) SELECT u.id FROM {users} u "
            "WHERE u.clerk_id = ANY(%s) "
            "AND NOT EXISTS (SELECT 1 FROM {settings} s WHERE s.user_id = u.id) "
            "ON CONFLICT DO NOTHING RETURNING user_id) "
            "SELECT u.clerk_id FROM added JOIN {users} u ON u.id = added.user_id"
        ).format(settings=self.tables.settings_ident(), users=self.tables.users_ident())
        cur.execute(query, (list(clerk_ids),))
        return {r[0] for r in cur.fetchall()}

    def deactivate(self, clerk_ids: Sequence[str]) -> set[str]:
        """Set ``is_active = false`` on these rows (never DELETE); returns the ids changed."""
        query = sql.SQL(
            "UPDATE {} SET is_active = false WHERE clerk_id = ANY(%s) "
            "AND is_active IS DISTINCT FROM false RETURNING clerk_id"
        ).format(self.tables.users_ident())
        with self.transaction() as cur:
            cur.execute(query, (list(clerk_ids),))
            return {r[0] for r in cur.fetchall()}

    # -- schema setup --------------------------------------------------------------------------

    def apply_sql(self, name: str, text: str) -> None:
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute(text.encode())
        except psycopg.Error as exc:
            raise SchemaError(f"{name} failed: {_reason(exc)}") from None

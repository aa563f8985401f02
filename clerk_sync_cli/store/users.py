"""The app's ``users`` table and its settings rows: set-based reads and writes, a page per
statement over one JSON parameter, never a round trip per user.

A row whose values already match is never touched (no ``updated_at`` bump, no dead tuple):
the comparison and the upsert use the same ``IS DISTINCT FROM`` over the synced fields. Only
:mod:`clerk_sync_cli.apply` calls the writes; every way in goes through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Json

from clerk_sync_cli.errors import BatchDataError
from clerk_sync_cli.mapping import SYNCED_FIELDS, UserRow
from clerk_sync_cli.plan import DbUser
from clerk_sync_cli.store.connection import Cursor, one, reason, rendered
from clerk_sync_cli.tables import Tables

#: The SQL type of each :class:`UserRow` field, to read rows sent as JSON.
ROW_TYPES = {
    "clerk_id": "text",
    **{name: "text" for name in SYNCED_FIELDS if name != "is_active"},
    "is_active": "boolean",
    "created_at": "timestamptz",
    "version": "bigint",
}


def _incoming(alias: str) -> sql.Composed:
    """A page of :class:`UserRow` sent as one JSON parameter (see :func:`_rows_json`), as a
    relation: one set-based statement a page. JSON rather than arrays: msgspec writes it from
    the structs in native code, where psycopg builds binary arrays element by element in
    Python."""
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind))
        for name, kind in ROW_TYPES.items()
    )
    return sql.SQL("json_to_recordset(%s) AS {}({})").format(sql.Identifier(alias), columns)


def _rows_json(rows: Sequence[UserRow]) -> Json:
    return Json(rows, dumps=_ROWS.encode)


_ROWS = msgspec.json.Encoder()


def _fields(prefix: str) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL(prefix) + sql.Identifier(c) for c in SYNCED_FIELDS)


def _select(tables: Tables, can_read_settings: bool = True) -> sql.Composed:
    """The synced fields of rows of ``users u`` (and whether each has its settings row), as
    :class:`DbUser` reads them."""
    has_settings = (
        sql.SQL("EXISTS (SELECT 1 FROM {settings} s WHERE s.user_id = u.id)").format(
            settings=tables.settings_ident()
        )
        if can_read_settings
        else sql.SQL("true")
    )
    return sql.SQL(
        "SELECT u.id::text, u.clerk_id, u.email, u.first_name, u.last_name, "
        "u.profile_image_url, u.is_active, {has_settings} AS has_settings FROM {users} u"
    ).format(has_settings=has_settings, users=tables.users_ident())


# -- reads -------------------------------------------------------------------------------------


def see_and_compare(
    cur: Cursor,
    tables: Tables,
    run_id: int | None,
    rows: Sequence[UserRow],
    *,
    can_read_settings: bool = True,
    versions: bool = False,
) -> tuple[set[str], dict[str, DbUser | None]]:
    """Record ``rows``' users as seen by run ``run_id``, and compare them with the table,
    in one statement. Returns the clerk_ids seen before (by an earlier page: skip them),
    and, for the others, the stored row of each one that may need a change: no row (None),
    a synced field that differs, or no settings row. Users not returned match already.
    ``run_id`` None (a read-only run or a single user, which record nothing): compare only.

    The comparison is the upsert's own (``IS DISTINCT FROM`` over the synced fields), so
    what it passes over the upsert would not write; :func:`plan.plan_user` decides the
    rest. Only the few rows that differ cross the wire and become Python objects.

    ``versions`` (a writing call): also return the users whose Clerk version is not recorded
    yet, is newer than the one recorded, or is tombstoned, for the version gate
    (:mod:`~clerk_sync_cli.store.versions`) to record or refuse."""
    recording = run_id is not None
    query = rendered(cur, _compare_query, tables, can_read_settings, versions, recording)
    cur.execute(query, (_rows_json(rows), run_id) if recording else (_rows_json(rows),))
    seen_before: set[str] = set()
    differing: dict[str, DbUser | None] = {}
    for record in cur.fetchall():
        if record[1]:
            seen_before.add(record[0])
        else:
            differing[record[0]] = None if record[2] is None else DbUser(*record[2:])
    return seen_before, differing


def _compare_query(
    tables: Tables, can_read_settings: bool, versions: bool, recording: bool
) -> sql.Composed:
    """:func:`see_and_compare`'s statement; ``recording``: also record the users as seen."""
    differs = sql.SQL(
        "x.clerk_id IS NULL OR NOT x.has_settings OR ({stored}) IS DISTINCT FROM ({listed})"
    ).format(stored=_fields("x."), listed=_fields("i."))
    if versions:
        differs = sql.SQL(
            "{differs} OR NOT EXISTS (SELECT 1 FROM clerk_sync.user_versions v "
            "WHERE v.clerk_id = i.clerk_id AND v.deleted_at IS NULL "
            "AND (i.version IS NULL OR v.clerk_updated_at >= i.version))"
        ).format(differs=differs)
    select = _select(tables, can_read_settings)
    if not recording:
        return sql.SQL(
            "WITH i AS (SELECT * FROM {incoming}) SELECT i.clerk_id, false, x.* FROM i "
            "LEFT JOIN ({select}) x ON x.clerk_id = i.clerk_id WHERE {differs}"
        ).format(incoming=_incoming("i"), select=select, differs=differs)
    return sql.SQL(
        "WITH i AS (SELECT * FROM {incoming}), "
        "new AS (INSERT INTO clerk_sync.run_seen (run_id, clerk_id) "
        "SELECT %s, clerk_id FROM i ON CONFLICT DO NOTHING RETURNING clerk_id) "
        "SELECT i.clerk_id, new.clerk_id IS NULL AS seen_before, x.* "
        "FROM i LEFT JOIN new ON new.clerk_id = i.clerk_id "
        "LEFT JOIN ({select}) x ON x.clerk_id = i.clerk_id "
        "WHERE new.clerk_id IS NULL OR {differs}"
    ).format(incoming=_incoming("i"), select=select, differs=differs)


def fetch(
    cur: Cursor, tables: Tables, clerk_id: str, *, can_read_settings: bool = True
) -> DbUser | None:
    cur.execute(
        sql.SQL("{select} WHERE u.clerk_id = %s").format(select=_select(tables, can_read_settings)),
        (clerk_id,),
    )
    record = cur.fetchone()
    return DbUser(*record) if record else None


def row_and_settings(
    cur: Cursor, tables: Tables, clerk_id: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The whole ``users`` row and its settings row, whatever their columns, for display."""
    with psycopg.Cursor(cur.connection, row_factory=dict_row) as rows:
        rows.execute(
            sql.SQL("SELECT * FROM {} WHERE clerk_id = %s").format(tables.users_ident()),
            (clerk_id,),
        )
        row = rows.fetchone()
        settings = None
        if row is not None:
            rows.execute(
                sql.SQL("SELECT * FROM {} WHERE user_id = %s").format(tables.settings_ident()),
                (row["id"],),
            )
            settings = rows.fetchone()
    return row, settings


def count_active(cur: Cursor, tables: Tables) -> tuple[int, int]:
    """(all rows, active rows)."""
    cur.execute(
        sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE is_active IS DISTINCT FROM false) FROM {}"
        ).format(tables.users_ident())
    )
    total, active = one(cur)
    return int(total), int(active)


_UNSEEN = sql.SQL(
    "WHERE u.is_active IS DISTINCT FROM false AND NOT EXISTS ("
    "SELECT 1 FROM clerk_sync.run_seen r WHERE r.run_id = %s AND r.clerk_id = u.clerk_id)"
)


def unseen_active(cur: Cursor, tables: Tables, run_id: int, limit: int) -> tuple[int, list[DbUser]]:
    """Active rows run ``run_id`` did not see in Clerk: (how many, the first ``limit``)."""
    cur.execute(
        sql.SQL("SELECT count(*) FROM {} u ").format(tables.users_ident()) + _UNSEEN, (run_id,)
    )
    count = int(one(cur)[0])
    cur.execute(
        _select(tables, False) + sql.SQL(" ") + _UNSEEN + sql.SQL(" ORDER BY u.clerk_id LIMIT %s"),
        (run_id, limit),
    )
    return count, [DbUser(*record) for record in cur.fetchall()]


def active_not_in(
    cur: Cursor, tables: Tables, seen: Callable[[str], bool], limit: int
) -> tuple[int, list[DbUser]]:
    """Like :func:`unseen_active`, for a read-only run that keeps what it saw in memory:
    streams the active rows' ids (a server-side cursor, never the whole table at once)."""
    ids = sql.SQL(
        "SELECT clerk_id FROM {} WHERE is_active IS DISTINCT FROM false ORDER BY clerk_id"
    ).format(tables.users_ident())
    count, first = 0, list[str]()
    with cur.connection.cursor(name="clerk_sync_active_ids") as stream:
        stream.itersize = 10_000
        stream.execute(ids)
        for (clerk_id,) in stream:
            if not seen(clerk_id):
                count += 1
                if len(first) < limit:
                    first.append(clerk_id)
    cur.execute(
        _select(tables, False) + sql.SQL(" WHERE u.clerk_id = ANY(%s) ORDER BY u.clerk_id"),
        (first,),
    )
    return count, [DbUser(*record) for record in cur.fetchall()]


# -- writes (only through clerk_sync_cli.apply) ------------------------------------------------


def upsert(
    cur: Cursor,
    tables: Tables,
    rows: Sequence[UserRow],
    *,
    repair_settings_for: Sequence[str] = (),
) -> tuple[set[str], set[str], set[str]]:
    """Write ``rows`` in one statement and insert missing settings rows for the given ids,
    inside a savepoint of the caller's transaction (BatchDataError undoes just this part).

    Returns the clerk_ids inserted, updated, and given a settings row. A row whose stored
    values already equal Clerk's is left untouched, even if it changed since it was read.
    """
    query = rendered(cur, _upsert_query, tables)
    inserted: set[str] = set()
    updated: set[str] = set()
    repaired: set[str] = set()
    cur.execute("SAVEPOINT clerk_sync_batch")  # a statement: pipeline mode, see connection
    try:
        if rows:
            cur.execute(query, (_rows_json(rows),))
            for clerk_id, was_inserted in cur.fetchall():
                (inserted if was_inserted else updated).add(clerk_id)
        if repair_settings_for:
            repaired = _repair_settings(cur, tables, repair_settings_for)
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
        cur.resync()
        cur.execute("ROLLBACK TO SAVEPOINT clerk_sync_batch")
        raise BatchDataError(reason(exc)) from None
    cur.execute("RELEASE SAVEPOINT clerk_sync_batch")
    return inserted, updated, repaired


def _upsert_query(tables: Tables) -> sql.Composed:
    excluded = _fields("EXCLUDED.")
    return sql.SQL(
        "INSERT INTO {users} AS u (clerk_id, {cols}, created_at) "
        "SELECT clerk_id, {cols}, COALESCE(created_at, now()) FROM {incoming} "
        "ON CONFLICT (clerk_id) DO UPDATE SET ({cols}) = ROW({excluded}) "
        "WHERE ({current}) IS DISTINCT FROM ({excluded}) "
        "RETURNING u.clerk_id, (xmax = 0) AS inserted"
    ).format(
        users=tables.users_ident(),
        cols=_fields(""),
        excluded=excluded,
        current=_fields("u."),
        incoming=_incoming("x"),
    )


def _repair_settings(cur: Cursor, tables: Tables, clerk_ids: Sequence[str]) -> set[str]:
    query = sql.SQL(
        "WITH added AS (INSERT INTO {settings} (user_id) SELECT u.id FROM {users} u "
        "WHERE u.clerk_id = ANY(%s) "
        "AND NOT EXISTS (SELECT 1 FROM {settings} s WHERE s.user_id = u.id) "
        "ON CONFLICT DO NOTHING RETURNING user_id) "
        "SELECT u.clerk_id FROM added JOIN {users} u ON u.id = added.user_id"
    ).format(settings=tables.settings_ident(), users=tables.users_ident())
    cur.execute(query, (list(clerk_ids),))
    return {r[0] for r in cur.fetchall()}


def deactivate(cur: Cursor, tables: Tables, clerk_ids: Sequence[str]) -> set[str]:
    """Set ``is_active = false`` on these rows (never DELETE); returns the ids changed."""
    cur.execute(
        sql.SQL(
            "UPDATE {} SET is_active = false WHERE clerk_id = ANY(%s) "
            "AND is_active IS DISTINCT FROM false RETURNING clerk_id"
        ).format(tables.users_ident()),
        (list(clerk_ids),),
    )
    return {r[0] for r in cur.fetchall()}

"""What a writing run leaves so that it can be resumed and trusted: the ``created_at``
windows it walks with the cursor reached in each (``clerk_sync.run_windows``), and the users
it saw in Clerk's listing (``clerk_sync.run_seen``, written by :func:`users.see_and_compare`)."""

from __future__ import annotations

from collections.abc import Sequence

from clerk_sync_cli.store.connection import Cursor, one
from clerk_sync_cli.windows import Window


def save_windows(cur: Cursor, run_id: int, windows: Sequence[Window]) -> None:
    cur.executemany(
        "INSERT INTO clerk_sync.run_windows (run_id, window_no, created_after, created_before) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        [(run_id, w.no, w.after, w.before) for w in windows],
    )


def load_windows(cur: Cursor, run_id: int) -> list[tuple[Window, str | None, bool]]:
    """Each window of the run, the cursor its last committed page ended at, and if done."""
    cur.execute(
        "SELECT window_no, created_after, created_before, cursor, done "
        "FROM clerk_sync.run_windows WHERE run_id = %s ORDER BY window_no",
        (run_id,),
    )
    return [(Window(no, lo, hi), cursor, done) for no, lo, hi, cursor, done in cur.fetchall()]


def checkpoint(cur: Cursor, run_id: int, window_no: int, cursor: str | None, done: bool) -> None:
    """Where the window's walk is, in the transaction of the page that got there."""
    cur.execute(
        "UPDATE clerk_sync.run_windows SET cursor = %s, done = %s "
        "WHERE run_id = %s AND window_no = %s",
        (cursor, done, run_id, window_no),
    )


def seen_count(cur: Cursor, run_id: int) -> int:
    cur.execute("SELECT count(*) FROM clerk_sync.run_seen WHERE run_id = %s", (run_id,))
    return int(one(cur)[0])


def one_seen(cur: Cursor, run_id: int) -> str | None:
    """One user run ``run_id`` saw in Clerk's listing (any), or None."""
    cur.execute("SELECT clerk_id FROM clerk_sync.run_seen WHERE run_id = %s LIMIT 1", (run_id,))
    found = cur.fetchone()
    return None if found is None else str(found[0])

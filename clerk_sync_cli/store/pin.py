"""The Clerk instance the table belongs to (``clerk_sync.instance``, one row): pinned by the
first writing run, compared by every later one (:func:`history.decide_pin` decides)."""

from __future__ import annotations

from clerk_sync_cli.history import Instance, Pin
from clerk_sync_cli.store.connection import Cursor


def read(cur: Cursor) -> Pin | None:
    # key_check through to_jsonb: a read-only run may meet bookkeeping from before migration 007
    cur.execute(
        "SELECT instance_id, environment_type, pinned_at, pinned_by_run, "
        "to_jsonb(i) ->> 'key_check' FROM clerk_sync.instance i"
    )
    row = cur.fetchone()
    return Pin(Instance(row[0], row[1]), row[2], row[3], row[4]) if row else None


def pin(cur: Cursor, instance: Instance, run_id: int | None, *, replace: bool) -> None:
    """Pin ``instance``; an existing pin is kept unless ``replace``."""
    action = (
        "DO UPDATE SET instance_id = EXCLUDED.instance_id, "
        "environment_type = EXCLUDED.environment_type, pinned_at = now(), "
        "pinned_by_run = EXCLUDED.pinned_by_run, key_check = NULL"
        if replace
        else "DO NOTHING"
    )
    cur.execute(
        "INSERT INTO clerk_sync.instance (instance_id, environment_type, pinned_by_run) "
        "VALUES (%s, %s, %s) ON CONFLICT (singleton) " + action,
        (instance.id, instance.environment_type, run_id),
    )


def confirm_key(cur: Cursor, instance: Instance, key_check: str) -> None:
    """Record that the key behind ``key_check`` belongs to ``instance``, if it is the pinned
    one (a run that re-pinned meanwhile keeps its own)."""
    cur.execute(
        "UPDATE clerk_sync.instance SET key_check = %s WHERE instance_id = %s",
        (key_check, instance.id),
    )

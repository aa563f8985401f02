"""The Clerk instance the table belongs to (``clerk_sync.instance``, one row): pinned by the
first writing run, compared by every later one (:func:`history.decide_pin` decides)."""

from __future__ import annotations

from clerk_sync_cli.history import Instance, Pin
from clerk_sync_cli.store.connection import Cursor


def read(cur: Cursor) -> Pin | None:
    cur.execute(
        "SELECT instance_id, environment_type, pinned_at, pinned_by_run FROM clerk_sync.instance"
    )
    row = cur.fetchone()
    return Pin(Instance(row[0], row[1]), row[2], row[3]) if row else None


def pin(cur: Cursor, instance: Instance, run_id: int | None, *, replace: bool) -> None:
    """Pin ``instance``; an existing pin is kept unless ``replace``."""
    action = (
        "DO UPDATE SET instance_id = EXCLUDED.instance_id, "
        "environment_type = EXCLUDED.environment_type, pinned_at = now(), "
        "pinned_by_run = EXCLUDED.pinned_by_run"
        if replace
        else "DO NOTHING"
    )
    cur.execute(
        "INSERT INTO clerk_sync.instance (instance_id, environment_type, pinned_by_run) "
        "VALUES (%s, %s, %s) ON CONFLICT (singleton) " + action,
        (instance.id, instance.environment_type, run_id),
    )

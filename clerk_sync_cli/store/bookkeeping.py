"""clerk-sync's own bookkeeping (schema ``clerk_sync``): what is there, and the versioned
migrations that bring it up to date. Database side, like the rest of :mod:`clerk_sync_cli.store`.

No separate setup step: the first writing run that needs the schema creates it
(:func:`migrate`), in one transaction under a transaction-scoped advisory lock, so two runs
starting at once create it once (and it works through transaction poolers). Each migration
applied is recorded in ``clerk_sync.migrations``. Read-only commands only :func:`read` and
create nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from clerk_sync_cli import ddl
from clerk_sync_cli.errors import SchemaError
from clerk_sync_cli.store.connection import Cursor

SCHEMA = "clerk_sync"
#: pg_advisory_xact_lock key of the migrations ("clerk-sy" as 8 bytes)
MIGRATION_LOCK = int.from_bytes(b"clerk-sy", "big")
PRINT_HINT = (
    "Have an admin run `clerk-sync init-db --print` in Supabase's SQL editor (it creates only "
    "the clerk_sync schema on a project that has its tables), or grant the privilege."
)


@dataclass(frozen=True)
class Bookkeeping:
    """What the database holds of clerk-sync's bookkeeping, as this role sees it."""

    present: bool  # the clerk_sync schema exists
    version: int | None  # newest migration applied; 0 for a schema made by an older init-db
    usable: bool  # the tables the commands read exist and this role may read them
    latest: int  # the newest migration this clerk-sync ships

    @property
    def current(self) -> bool:
        return self.present and self.version == self.latest


def read(cur: Cursor) -> Bookkeeping:
    cur.execute(
        """
        SELECT to_regnamespace('clerk_sync') IS NOT NULL,
               to_regclass('clerk_sync.migrations') IS NOT NULL,
               to_regclass('clerk_sync.runs') IS NOT NULL
               AND to_regclass('clerk_sync.locks') IS NOT NULL
               AND to_regclass('clerk_sync.instance') IS NOT NULL
               AND EXISTS (SELECT 1 FROM information_schema.columns
                           WHERE table_schema = 'clerk_sync' AND table_name = 'runs'
                             AND column_name = 'watermark_ms'),
               CASE WHEN to_regnamespace('clerk_sync') IS NULL THEN false
                    ELSE has_schema_privilege('clerk_sync', 'USAGE') END
        """
    )
    record = cur.fetchone()
    assert record is not None
    present, has_migrations, tables, usage = record
    version: int | None = None
    usable = bool(tables and usage)
    if usable:
        cur.execute(
            "SELECT has_table_privilege('clerk_sync.runs', 'SELECT') "
            "AND has_table_privilege('clerk_sync.locks', 'SELECT') "
            "AND has_table_privilege('clerk_sync.instance', 'SELECT')"
        )
        usable = bool((cur.fetchone() or (False,))[0])
    if present and has_migrations and usage:
        cur.execute(
            "SELECT CASE WHEN has_table_privilege('clerk_sync.migrations', 'SELECT') "
            "THEN (SELECT coalesce(max(version), 0) FROM clerk_sync.migrations) END"
        )
        found = (cur.fetchone() or (None,))[0]
        version = None if found is None else int(found)
    elif present:
        version = 0
    return Bookkeeping(bool(present), version, usable, ddl.latest_version())


def migrate(cur: Cursor) -> list[str]:
    """Bring the bookkeeping up to date inside the caller's transaction; returns the names of
    the migrations applied (none when it is current)."""
    if read(cur).current:
        return []
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    _check_may_create(cur)
    cur.execute(ddl.MIGRATIONS_PREAMBLE.encode())
    cur.execute("SELECT version FROM clerk_sync.migrations")
    applied = {int(row[0]) for row in cur.fetchall()}
    done = []
    for file in ddl.migrations():
        if file.version in applied:
            continue
        cur.execute(file.text.encode())
        cur.execute(
            "INSERT INTO clerk_sync.migrations (version, name) VALUES (%s, %s)",
            (file.version, file.name),
        )
        done.append(file.name)
    return done


def _check_may_create(cur: Cursor) -> None:
    """One clear message, naming the privilege, instead of the driver's."""
    cur.execute(
        """
        SELECT current_user, current_database(), to_regnamespace('clerk_sync') IS NOT NULL,
               has_database_privilege(current_database(), 'CREATE'),
               CASE WHEN to_regnamespace('clerk_sync') IS NULL THEN false
                    ELSE has_schema_privilege('clerk_sync', 'CREATE') END
        """
    )
    record = cur.fetchone()
    assert record is not None
    role, database, present, on_database, on_schema = record
    if not present and not on_database:
        raise SchemaError(
            f'Role {role} may not create clerk-sync\'s schema "{SCHEMA}": it needs the CREATE '
            f"privilege on database {database} (GRANT CREATE ON DATABASE {database} TO {role};).",
            PRINT_HINT,
        )
    if present and not on_schema:
        raise SchemaError(
            f'Role {role} may not update clerk-sync\'s schema "{SCHEMA}": it needs the CREATE '
            f"privilege on that schema (or to own it).",
            PRINT_HINT,
        )

"""``clerk-sync doctor``: a read-only preflight of a real project, one check a line.

The checks themselves are pure functions of what was read (:class:`Facts`); :func:`gather`
reads it, each area on its own, so one that fails (Clerk unreachable, say) is reported as
such and the others still run. Nothing here writes, except :func:`fix`, which ``--fix``
calls: it drops only the settings trigger clerk-sync itself added beside the app's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from clerk_sync_cli.errors import ClerkSyncError
from clerk_sync_cli.history import Instance, Pin, RunRecord
from clerk_sync_cli.project import (
    REQUIRED_USER_COLUMNS,
    Project,
    damaged_message,
    drop_trigger_sql,
)
from clerk_sync_cli.settings import DatabaseTarget, connection_kind
from clerk_sync_cli.store import LockHolder, Store, bookkeeping, lock, pin, runs, schema
from clerk_sync_cli.store.bookkeeping import Bookkeeping


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    area: str
    name: str
    level: Level
    detail: str
    fix: str | None = None


@dataclass
class ClerkFacts:
    key_kind: str
    pace_rps: float
    instance: Instance | None = None
    users: int | None = None
    error: str | None = None


@dataclass
class DatabaseFacts:
    target: DatabaseTarget
    project: Project | None = None
    bookkeeping: Bookkeeping | None = None
    pin: Pin | None = None
    lock: LockHolder | None = None
    last_run: RunRecord | None = None
    last_full: RunRecord | None = None
    fixed: list[str] = field(default_factory=list)  # what --fix dropped
    error: str | None = None


@dataclass
class Facts:
    settings: list[tuple[str, str]]  # (variable, where it came from)
    env_file: str | None  # a warning about .env's permissions, or None
    clerk: ClerkFacts | None  # None: no usable key or URL (the settings check says why)
    database: DatabaseFacts | None  # None: no usable DATABASE_URL
    setting_errors: list[str] = field(default_factory=list)
    stale_after_s: float = 600.0


# -- reading --------------------------------------------------------------------------------------


def gather_clerk(
    facts: ClerkFacts, get_instance: Callable[[], Any], count: Callable[[], int]
) -> None:
    try:
        facts.instance = Instance.from_clerk(get_instance())
        facts.users = count()
    except ClerkSyncError as exc:
        facts.error = exc.message


def gather_database(facts: DatabaseFacts, store: Store, *, fix: bool = False) -> None:
    """Read the database's side; with ``fix``, first drop the settings trigger(s) clerk-sync
    added beside the app's own (decided inside the transaction that drops them)."""
    try:
        store.check_connection()
        if fix:
            facts.fixed = store.run(schema.drop_duplicate_triggers, store.tables)
        facts.project = store.run(schema.read, store.tables)
        facts.bookkeeping = store.run(bookkeeping.read)
        if facts.bookkeeping.usable:
            facts.pin = store.run(pin.read)
            facts.lock = store.run(lock.holder)
            recent = store.run(runs.recent, 1)
            facts.last_run = recent[0] if recent else None
            facts.last_full = store.run(runs.last_full_reconcile)
    except ClerkSyncError as exc:
        facts.error = exc.message


# -- judging ----------------------------------------------------------------------------------------


def diagnose(facts: Facts) -> list[Check]:
    checks = settings_checks(facts)
    if facts.clerk is not None:
        checks += clerk_checks(facts.clerk)
    if facts.database is not None:
        checks += database_checks(facts.database)
        project = facts.database.project
        if project is not None:
            checks += project_checks(project)
            if facts.database.bookkeeping is not None:
                checks += bookkeeping_checks(facts.database, facts.clerk, facts.stale_after_s)
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.level is Level.FAIL for c in checks)


def settings_checks(facts: Facts) -> list[Check]:
    shown = ", ".join(
        f"{name} ({source})" for name, source in facts.settings if source != "not set"
    )
    unset = [name for name, source in facts.settings if source == "not set"]
    checks = [
        Check(
            "settings",
            "variables",
            Level.FAIL if facts.setting_errors else Level.OK,
            (shown or "none set") + (f"; not set: {', '.join(unset)}" if unset else ""),
            " ".join(facts.setting_errors) or None,
        )
    ]
    if facts.env_file:
        checks.append(Check("settings", ".env", Level.WARN, facts.env_file, "chmod 600 .env"))
    return checks


def clerk_checks(clerk: ClerkFacts) -> list[Check]:
    if clerk.error or clerk.instance is None:
        return [
            Check(
                "clerk",
                "reachable",
                Level.FAIL,
                clerk.error or "no answer",
                "Check CLERK_SECRET_KEY (Clerk dashboard → API keys) and CLERK_API_URL.",
            )
        ]
    env = clerk.instance.environment_type or "unknown environment"
    checks = [
        Check(
            "clerk",
            "key",
            Level.OK,
            f"accepted ({clerk.key_kind}); instance {clerk.instance.id} ({env}), "
            f"{clerk.users} users",
        ),
        Check(
            "clerk",
            "pace",
            Level.OK,
            f"{clerk.pace_rps:g} requests/s (under the key's rate limit; --max-rps to change)",
        ),
    ]
    if clerk.key_kind.startswith("sk_test") and env == "production":
        checks.append(Check("clerk", "key kind", Level.WARN, "a test key on a production instance"))
    return checks


def database_checks(db: DatabaseFacts) -> list[Check]:
    kind, meaning = connection_kind(db.target.host, db.target.port)
    if db.error or db.project is None:
        return [
            Check(
                "postgres",
                "reachable",
                Level.FAIL,
                db.error or "no answer",
                "Check DATABASE_URL and that the server is reachable.",
            )
        ]
    project = db.project
    return [
        Check(
            "postgres",
            "reachable",
            Level.OK,
            f"PostgreSQL {project.server_version} at {db.target}, as role {project.role}",
        ),
        Check("postgres", "connection", Level.OK, f"{kind}: {meaning}"),
    ]


def project_checks(project: Project) -> list[Check]:
    t = project.tables
    users = f"{t.schema}.{t.users}"
    if not project.users_exists:
        return [
            Check(
                "users table",
                "exists",
                Level.FAIL,
                f"{users} does not exist (or this role cannot see it)",
                "On a project without it: clerk-sync init-db (creates the guide's tables). "
                "Otherwise set CLERK_SYNC_SCHEMA / CLERK_SYNC_USERS_TABLE.",
            )
        ]
    checks = [_privileges(project), _columns(project), _unique(project), *_rls(project)]
    return [*checks, _updated_at(project), _settings_rows(project)]


def _privileges(project: Project) -> Check:
    t = project.tables
    lacking = [p for p in ("SELECT", "INSERT", "UPDATE") if p not in project.privileges.users]
    settings_lacking = [p for p in ("SELECT", "INSERT") if p not in project.privileges.settings]
    detail = (
        f"role {project.role}: {'/'.join(sorted(project.privileges.users)) or 'nothing'} on "
        f"{t.users}, {'/'.join(sorted(project.privileges.settings)) or 'nothing'} on {t.settings}"
    )
    if "SELECT" in lacking:
        return Check(
            "postgres",
            "privileges",
            Level.FAIL,
            detail,
            f"GRANT SELECT, INSERT, UPDATE ON {t.schema}.{t.users} TO {project.role};",
        )
    if lacking or settings_lacking:
        return Check(
            "postgres",
            "privileges",
            Level.WARN,
            detail + ": enough for read-only commands (--dry-run, user, status) only",
            f"GRANT SELECT, INSERT, UPDATE ON {t.schema}.{t.users} TO {project.role}; "
            f"GRANT SELECT, INSERT ON {t.schema}.{t.settings} TO {project.role};",
        )
    return Check("postgres", "privileges", Level.OK, detail)


def _columns(project: Project) -> Check:
    missing = [c for c in REQUIRED_USER_COLUMNS if c not in project.columns]
    if missing:
        return Check(
            "users table",
            "columns",
            Level.FAIL,
            f"lacks {', '.join(missing)}",
            "clerk-sync expects the integration guide's users table (see sql/app/).",
        )
    lengths = ", ".join(
        f"{name} {project.columns[name] or 'unlimited'}"
        for name in ("clerk_id", "email", "first_name", "last_name", "profile_image_url")
    )
    return Check("users table", "columns", Level.OK, f"all present; lengths: {lengths}")


def _unique(project: Project) -> Check:
    users = f"{project.tables.schema}.{project.tables.users}"
    if project.unique_clerk_id:
        return Check("users table", "unique clerk_id", Level.OK, "a unique index on clerk_id")
    return Check(
        "users table",
        "unique clerk_id",
        Level.FAIL,
        "no unique constraint on clerk_id: upserts need one",
        f"ALTER TABLE {users} ADD CONSTRAINT users_clerk_id_key UNIQUE (clerk_id);",
    )


def _rls(project: Project) -> list[Check]:
    checks = []
    if project.rls_applies:
        checks.append(
            Check(
                "users table",
                "row-level security",
                Level.FAIL,
                f"on, and it applies to role {project.role}: it would hide rows",
                "Connect as the table owner or a role with BYPASSRLS (Supabase: postgres).",
            )
        )
    else:
        state = "on; this role bypasses it" if project.rls else "off"
        checks.append(Check("users table", "row-level security", Level.OK, state))
    if project.exposed_to:
        checks.append(
            Check(
                "users table",
                "exposure",
                Level.WARN,
                f"readable by {', '.join(project.exposed_to)} with row-level security off: "
                "Supabase's Data API serves every row to them",
                f"ALTER TABLE {project.tables.schema}.{project.tables.users} ENABLE ROW LEVEL SECURITY;",
            )
        )
    return checks


def _settings_rows(project: Project) -> Check:
    triggers = project.settings_triggers
    if len(triggers) == 1:
        return Check(
            "settings rows",
            "trigger",
            Level.OK,
            f"created by trigger {triggers[0].name} ({triggers[0].function})",
        )
    if not triggers:
        return Check(
            "settings rows",
            "trigger",
            Level.WARN,
            f"no trigger on {project.tables.users} creates {project.tables.settings} rows: "
            "clerk-sync creates missing ones itself, but the app's own sign-ups get none",
        )
    removable = project.removable_duplicates()
    if removable:
        fix = "clerk-sync doctor --fix (drops " + ", ".join(t.name for t in removable) + ")"
    else:
        fix = (
            "None of them is certainly clerk-sync's, so --fix leaves them: keep the app's and "
            "drop the other yourself, e.g. "
            + "; ".join(drop_trigger_sql(project, t).as_string(None) for t in triggers[1:])
        )
    return Check("settings rows", "trigger", Level.FAIL, damaged_message(project), fix)


def _updated_at(project: Project) -> Check:
    triggers = project.updated_at_triggers
    names = ", ".join(f"{t.name} ({t.function})" for t in triggers)
    if len(triggers) == 1:
        return Check("users table", "updated_at", Level.OK, f"kept current by {names}")
    if not triggers:
        return Check(
            "users table",
            "updated_at",
            Level.WARN,
            "no trigger keeps updated_at current (clerk-sync does not set it)",
        )
    return Check(
        "users table",
        "updated_at",
        Level.WARN,
        f"{len(triggers)} triggers keep updated_at: {names} (harmless, one is enough)",
    )


def bookkeeping_checks(
    db: DatabaseFacts, clerk: ClerkFacts | None, stale_after_s: float
) -> list[Check]:
    books = db.bookkeeping
    assert books is not None
    if not books.present:
        return [
            Check(
                "bookkeeping",
                "schema",
                Level.OK,
                "none yet: the first writing run creates schema clerk_sync"
                + ("" if _may_create(db) else ", but this role may not"),
                None if _may_create(db) else CREATE_HINT,
            )
        ]
    if not books.usable:
        return [
            Check(
                "bookkeeping",
                "schema",
                Level.WARN,
                "schema clerk_sync exists but this role cannot read it",
                "GRANT USAGE ON SCHEMA clerk_sync and SELECT on its tables to this role.",
            )
        ]
    version = "made by an older init-db" if books.version == 0 else f"version {books.version}"
    checks = [
        Check(
            "bookkeeping",
            "schema",
            Level.OK if books.current else Level.WARN,
            f"clerk_sync, {version} (this clerk-sync: {books.latest})",
            None if books.current else "The next writing run (or clerk-sync init-db) migrates it.",
        )
    ]
    checks.append(_pin(db.pin, clerk))
    if db.lock is None:
        checks.append(Check("bookkeeping", "lock", Level.OK, "free"))
    else:
        stale = db.lock.is_stale(stale_after_s)
        checks.append(
            Check(
                "bookkeeping",
                "lock",
                Level.WARN if stale else Level.OK,
                f"{'stale' if stale else 'held'}: run {db.lock.run_id} (pid {db.lock.pid} on "
                f"{db.lock.host}), last heard from {db.lock.heartbeat_age_s:.0f}s ago",
            )
        )
    last = db.last_run
    checks.append(
        Check(
            "bookkeeping",
            "last run",
            Level.OK,
            "none yet"
            if last is None
            else f"run {last.id}: {last.command}, {last.status}, {last.started_at:%Y-%m-%d %H:%M} UTC",
        )
    )
    full = db.last_full
    checks.append(
        Check(
            "bookkeeping",
            "full reconcile",
            Level.OK,
            "none yet (clerk-sync diff --dry-run, then clerk-sync diff)"
            if full is None
            else f"run {full.id} ({full.command}), {full.started_at:%Y-%m-%d %H:%M} UTC",
        )
    )
    return checks


CREATE_HINT = (
    "GRANT CREATE ON DATABASE to this role, or have an admin run `clerk-sync init-db --print`."
)


def _may_create(db: DatabaseFacts) -> bool:
    return db.project is not None and db.project.privileges.create_on_database


def _pin(pin: Pin | None, clerk: ClerkFacts | None) -> Check:
    if pin is None:
        return Check(
            "bookkeeping", "instance", Level.OK, "not pinned yet (the first writing run pins it)"
        )
    pinned = f"{pin.instance.id} ({pin.instance.environment_type or 'unknown'})"
    if clerk is None or clerk.instance is None:
        return Check("bookkeeping", "instance", Level.OK, f"pinned to {pinned}")
    if clerk.instance.id != pin.instance.id:
        return Check(
            "bookkeeping",
            "instance",
            Level.FAIL,
            f"the table is pinned to {pinned}, but the key belongs to {clerk.instance.id}",
            "Use the key of the pinned instance, or run with --allow-instance-change to re-pin.",
        )
    return Check("bookkeeping", "instance", Level.OK, f"pinned to {pinned}, the key's instance")

"""What the app's own schema holds: the users and settings tables, their triggers, row-level
security and this role's privileges, as values (read by :mod:`clerk_sync_cli.store.schema`),
and what a run can do with them (:func:`schema_info`). Pure; :mod:`clerk_sync_cli.doctor`
judges the rest.

Every object clerk-sync creates carries a COMMENT starting with ``clerk-sync``. Triggers an
older ``init-db`` created (before those marks) are recognised by their exact name, function
and function body; anything else is the app's, and is never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from psycopg import sql

from clerk_sync_cli.errors import RefusedError, SchemaError
from clerk_sync_cli.mapping import SYNCED_FIELDS, ColumnLimits
from clerk_sync_cli.tables import Tables

MARK = "clerk-sync"

#: What the ``init-db`` of clerk-sync 0.1 created (sql/004_triggers.sql), before it marked its
#: objects: the trigger's name, its function, and the function's body with white space folded.
LEGACY_SETTINGS_TRIGGER = "create_user_monitoring_settings_trigger"
LEGACY_SETTINGS_FUNCTION = "public.create_user_monitoring_settings()"
LEGACY_SETTINGS_BODY = (
    "BEGIN INSERT INTO public.user_monitoring_settings (user_id) VALUES (NEW.id) "
    "ON CONFLICT (user_id) DO NOTHING; RETURN NEW; END"
)
LEGACY_SETTINGS_CONFIG = ("search_path=public, pg_temp",)


def _fold(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class Trigger:
    name: str
    function: str  # schema-qualified and quoted: schema.name(args)
    before: bool
    on_insert: bool
    on_update: bool
    enabled: bool
    source: str  # the function's body
    security_definer: bool
    config: tuple[str, ...]
    comment: str | None  # the trigger's
    function_comment: str | None
    function_shared: bool  # another trigger also executes the function

    def creates_rows_in(self, table: str) -> bool:
        """An AFTER INSERT trigger whose function inserts into ``table``."""
        body = self.source.lower()
        return (
            not self.before
            and self.on_insert
            and "insert" in body
            and table.lower() in body.replace('"', "")
        )

    def touches_updated_at(self) -> bool:
        return self.before and self.on_update and "updated_at" in self.source.lower()

    @property
    def marked_ours(self) -> bool:
        return bool(self.comment and self.comment.startswith(MARK))

    @property
    def legacy_ours(self) -> bool:
        """The settings trigger an unmarked older init-db created, known by all of its name,
        its function and that function's exact body and settings."""
        return (
            self.name == LEGACY_SETTINGS_TRIGGER
            and self.function == LEGACY_SETTINGS_FUNCTION
            and _fold(self.source) == LEGACY_SETTINGS_BODY
            and self.security_definer
            and self.config == LEGACY_SETTINGS_CONFIG
        )

    @property
    def ours(self) -> bool:
        return self.marked_ours or self.legacy_ours

    @property
    def function_ours(self) -> bool:
        """The function too is clerk-sync's (and so may go with the trigger)."""
        marked = bool(self.function_comment and self.function_comment.startswith(MARK))
        return (marked and self.marked_ours) or self.legacy_ours


@dataclass(frozen=True)
class Privileges:
    users: frozenset[str]  # of SELECT, INSERT, UPDATE
    settings: frozenset[str]  # of SELECT, INSERT
    create_on_database: bool


@dataclass(frozen=True)
class Project:
    """The app's tables as this role sees them (``users_exists`` False: nothing else read)."""

    tables: Tables
    role: str
    database: str
    server_version: str
    users_exists: bool
    settings_exists: bool = False
    columns: dict[str, int | None] = field(default_factory=dict)  # name → max length
    settings_columns: tuple[str, ...] = ()
    unique_clerk_id: bool = False
    rls: bool = False
    rls_forced: bool = False
    owner: bool = False
    superuser: bool = False
    bypass_rls: bool = False
    policy_sees_all: bool = (
        False  # a permissive USING (true) policy for this role, none restrictive
    )
    exposed_to: tuple[str, ...] = ()  # Supabase API roles that may read users without RLS
    triggers: tuple[Trigger, ...] = ()
    privileges: Privileges = field(
        default_factory=lambda: Privileges(frozenset(), frozenset(), False)
    )

    @property
    def settings_triggers(self) -> list[Trigger]:
        return [t for t in self.triggers if t.enabled and t.creates_rows_in(self.tables.settings)]

    @property
    def updated_at_triggers(self) -> list[Trigger]:
        return [t for t in self.triggers if t.enabled and t.touches_updated_at()]

    @property
    def rls_applies(self) -> bool:
        """Row-level security would filter what this role reads (and so hide users)."""
        exempt = self.superuser or self.bypass_rls or (self.owner and not self.rls_forced)
        return self.rls and not (exempt or self.policy_sees_all)

    @property
    def damaged(self) -> bool:
        """More than one trigger creates settings rows: new users cannot be inserted."""
        return len(self.settings_triggers) > 1

    def removable_duplicates(self) -> list[Trigger]:
        """On a damaged project, the settings triggers clerk-sync added beside the app's own
        (known with certainty); never the last one."""
        if not self.damaged:
            return []
        ours = [t for t in self.settings_triggers if t.ours]
        theirs = [t for t in self.settings_triggers if not t.ours]
        return ours if theirs else ours[1:]


def drop_trigger_sql(project: Project, trigger: Trigger) -> sql.Composed:
    """The statements that remove one of clerk-sync's triggers (and its function, when it is
    clerk-sync's and no other trigger uses it)."""
    users = sql.Identifier(project.tables.schema, project.tables.users)
    parts = [
        sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(trigger.name), users),
    ]
    if trigger.function_ours and not trigger.function_shared:
        parts.append(sql.SQL("DROP FUNCTION {}").format(sql.SQL(trigger.function)))
    return sql.SQL("; ").join(parts)


GRANTS_HINT = "See README → Safety → least-privilege role for the grants clerk-sync needs."
REQUIRED_USER_COLUMNS = ("id", "clerk_id", *SYNCED_FIELDS, "created_at")


@dataclass(frozen=True)
class SchemaInfo:
    """What a run needs to know of the app's schema."""

    limits: ColumnLimits
    has_settings_trigger: bool
    can_read_settings: bool = True


def schema_info(project: Project, *, writing: bool) -> SchemaInfo:
    """Whether a run may go on against ``project``: what it needs, or the exact problem.
    ``writing``: it will insert and update (a read-only run needs SELECT only)."""
    t = project.tables
    users_name = f'"{t.schema}"."{t.users}"'
    if not project.users_exists or not project.columns:
        raise SchemaError(
            f"Table {users_name} does not exist (or this role cannot see it).",
            "Run `clerk-sync init-db` to create it (on a project without one), or check "
            "DATABASE_URL and CLERK_SYNC_SCHEMA / CLERK_SYNC_USERS_TABLE.",
        )
    missing = [c for c in REQUIRED_USER_COLUMNS if c not in project.columns]
    if missing:
        raise SchemaError(
            f"Table {users_name} lacks column(s): {', '.join(missing)}.",
            "clerk-sync expects the users table of the integration guide (see sql/app/).",
        )
    needed = ("SELECT", "INSERT", "UPDATE") if writing else ("SELECT",)
    lacking = [p for p in needed if p not in project.privileges.users]
    if lacking:
        raise SchemaError(
            f"Role {project.role} lacks {', '.join(lacking)} on {users_name}.", GRANTS_HINT
        )
    if project.rls_applies:
        raise RefusedError(
            f"Row-level security on {users_name} applies to role {project.role}: it could hide "
            "rows, and clerk-sync would then recreate or deactivate users wrongly. Refusing to run.",
            "Connect as the table owner or a role with BYPASSRLS (Supabase: postgres or service_role).",
        )
    if not project.unique_clerk_id:
        raise SchemaError(
            f"{users_name}.clerk_id has no unique constraint; upserts need one.",
            f"Add it: ALTER TABLE {users_name} ADD CONSTRAINT users_clerk_id_key UNIQUE (clerk_id);",
        )
    can_read_settings = "SELECT" in project.privileges.settings
    if can_read_settings and "user_id" not in project.settings_columns:
        raise SchemaError(
            f'Table "{t.schema}"."{t.settings}" with a user_id column does not exist.',
            "Run `clerk-sync init-db` to create it (on a project without one).",
        )
    if writing and project.damaged:
        raise SchemaError(damaged_message(project), DAMAGED_HINT)
    limits = ColumnLimits(
        **{name: project.columns.get(name) for name in ColumnLimits.__dataclass_fields__}
    )
    return SchemaInfo(
        limits=limits,
        has_settings_trigger=bool(project.settings_triggers),
        can_read_settings=can_read_settings,
    )


DAMAGED_HINT = (
    "Run `clerk-sync doctor` to see them and `clerk-sync doctor --fix` to drop the one "
    "clerk-sync added (the app's own is kept)."
)


def damaged_message(project: Project) -> str:
    names = ", ".join(f"{t.name} ({t.function})" for t in project.settings_triggers)
    return (
        f"{len(project.settings_triggers)} triggers on {project.tables.users} create settings "
        f"rows: {names}. New users cannot be inserted (the second insert of each settings row "
        "violates its unique key), by clerk-sync or by the app."
    )

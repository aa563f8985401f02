"""The app's schema as the database has it (read without changing anything), and the one
change ``doctor --fix`` makes to it: dropping the settings triggers clerk-sync added beside
the app's own. What the values mean is :mod:`clerk_sync_cli.project`'s; clerk-sync's own
schema and its migrations are :mod:`.bookkeeping`'s."""

from __future__ import annotations

from psycopg import sql

from clerk_sync_cli.project import Privileges, Project, Trigger, drop_trigger_sql
from clerk_sync_cli.store.connection import Cursor, one
from clerk_sync_cli.tables import Tables


def _qualified(tables: Tables, name: str) -> str:
    return sql.Identifier(tables.schema, name).as_string(None)


def read(cur: Cursor, tables: Tables) -> Project:
    """Everything :class:`Project` holds, in a handful of catalog queries."""
    users, settings = _qualified(tables, tables.users), _qualified(tables, tables.settings)
    cur.execute(
        "SELECT current_user, current_database(), current_setting('server_version'), "
        "to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL, "
        "has_database_privilege(current_database(), 'CREATE')",
        (users, settings),
    )
    role, database, version, users_exists, settings_exists, create_db = one(cur)
    base = Project(tables, role, database, version, bool(users_exists), bool(settings_exists))
    if not users_exists:
        return base
    cur.execute(
        "SELECT column_name, character_maximum_length FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (tables.schema, tables.users),
    )
    columns = {name: length for name, length in cur.fetchall()}
    cur.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (tables.schema, tables.settings),
    )
    settings_columns = tuple(r[0] for r in cur.fetchall())
    cur.execute(
        """
        SELECT c.relrowsecurity, c.relforcerowsecurity,
               pg_has_role(current_user, c.relowner, 'USAGE'), r.rolsuper, r.rolbypassrls,
               EXISTS (
                   SELECT 1 FROM pg_index i
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                   WHERE i.indrelid = c.oid AND i.indisunique AND i.indnatts = 1
                     AND i.indpred IS NULL AND a.attname = 'clerk_id'),
               EXISTS (
                   SELECT 1 FROM pg_policy p
                   WHERE p.polrelid = c.oid AND p.polpermissive AND p.polcmd IN ('*', 'r')
                     AND pg_get_expr(p.polqual, p.polrelid) = 'true'
                     AND (0 = ANY(p.polroles) OR EXISTS (
                         SELECT 1 FROM unnest(p.polroles) AS pr(oid)
                         WHERE pg_has_role(current_user, pr.oid, 'USAGE'))))
               AND NOT EXISTS (
                   SELECT 1 FROM pg_policy p
                   WHERE p.polrelid = c.oid AND NOT p.polpermissive
                     AND (0 = ANY(p.polroles) OR EXISTS (
                         SELECT 1 FROM unnest(p.polroles) AS pr(oid)
                         WHERE pg_has_role(current_user, pr.oid, 'USAGE')))),
               ARRAY(SELECT a.rolname FROM pg_roles a
                     WHERE a.rolname IN ('anon', 'authenticated')
                       AND NOT c.relrowsecurity
                       AND has_table_privilege(a.oid, c.oid, 'SELECT') ORDER BY 1)
        FROM pg_class c JOIN pg_roles r ON r.rolname = current_user
        WHERE c.oid = to_regclass(%s)
        """,
        (users,),
    )
    rls, forced, owner, superuser, bypass, unique, sees_all, exposed = one(cur)
    cur.execute(
        "SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE']) p "
        "WHERE has_table_privilege(to_regclass(%s), p)",
        (users,),
    )
    on_users = frozenset(r[0] for r in cur.fetchall())
    on_settings: frozenset[str] = frozenset()
    if settings_exists:
        cur.execute(
            "SELECT p FROM unnest(ARRAY['SELECT', 'INSERT']) p "
            "WHERE has_table_privilege(to_regclass(%s), p)",
            (settings,),
        )
        on_settings = frozenset(r[0] for r in cur.fetchall())
    cur.execute(
        """
        SELECT tg.tgname,
               quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '('
               || pg_get_function_identity_arguments(p.oid) || ')',
               (tg.tgtype & 2) <> 0,
               (tg.tgtype & 4) <> 0, (tg.tgtype & 16) <> 0, tg.tgenabled <> 'D',
               p.prosrc, p.prosecdef, coalesce(p.proconfig, '{}'),
               obj_description(tg.oid, 'pg_trigger'), obj_description(p.oid, 'pg_proc'),
               (SELECT count(*) FROM pg_trigger o WHERE o.tgfoid = tg.tgfoid) > 1
        FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE tg.tgrelid = to_regclass(%s) AND NOT tg.tgisinternal
          AND (tg.tgtype & 1) <> 0  -- FOR EACH ROW
        ORDER BY tg.tgname
        """,
        (users,),
    )
    triggers = tuple(
        Trigger(
            name,
            function,
            bool(before),
            bool(on_insert),
            bool(on_update),
            bool(enabled),
            source or "",
            bool(definer),
            tuple(config),
            comment,
            function_comment,
            bool(shared),
        )
        for (
            name,
            function,
            before,
            on_insert,
            on_update,
            enabled,
            source,
            definer,
            config,
            comment,
            function_comment,
            shared,
        ) in cur.fetchall()
    )
    return Project(
        tables,
        role,
        database,
        version,
        True,
        bool(settings_exists),
        columns,
        settings_columns,
        bool(unique),
        bool(rls),
        bool(forced),
        bool(owner),
        bool(superuser),
        bool(bypass),
        bool(sees_all),
        tuple(exposed),
        triggers,
        Privileges(on_users, on_settings, bool(create_db)),
    )


def drop_duplicate_triggers(cur: Cursor, tables: Tables) -> list[str]:
    """Drop the settings triggers clerk-sync added beside the app's own (and their
    functions, when clerk-sync's and unused), decided again inside the transaction that
    drops them; returns what was dropped."""
    project = read(cur, tables)
    dropped = []
    for trigger in project.removable_duplicates():
        cur.execute(drop_trigger_sql(project, trigger))
        dropped.append(f"{trigger.name} ({trigger.function})")
    return dropped

"""The SQL of ``sql/``, found both in a checkout and in an installed wheel.

Two sets, with different rules:

* ``sql/app/``: the integration guide's app schema (users, settings, their triggers,
  ``uuid_generate_v4``). Created only as a set, and only on a project without a users table:
  on any other project it changes nothing. Rendered for the configured table names.
* ``sql/migrations/``: clerk-sync's own bookkeeping in the ``clerk_sync`` schema, versioned
  (``NNN_name.sql``; the applied versions are recorded in ``clerk_sync.migrations``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from clerk_sync_cli.tables import Tables


@dataclass(frozen=True)
class SqlFile:
    name: str
    text: str

    @property
    def version(self) -> int:
        return int(self.name.split("_", 1)[0])


def sql_dir() -> Path:
    """``clerk_sync_cli/sql`` inside a wheel; the checkout's top-level ``sql/`` otherwise."""
    packaged = Path(str(resources.files("clerk_sync_cli"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


def _files(folder: str) -> list[SqlFile]:
    files = sorted((sql_dir() / folder).glob("[0-9][0-9][0-9]_*.sql"))
    if not files:
        raise FileNotFoundError(f"no SQL files in {sql_dir() / folder}")
    return [SqlFile(path.name, path.read_text(encoding="utf-8")) for path in files]


def migrations() -> list[SqlFile]:
    """clerk-sync's bookkeeping migrations, oldest first."""
    return _files("migrations")


def latest_version() -> int:
    return migrations()[-1].version


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def app_files(tables: Tables) -> list[SqlFile]:
    """The guide's app schema for these table names (names are quoted, never spliced raw)."""
    schema = quote_ident(tables.schema)
    users = f"{schema}.{quote_ident(tables.users)}"
    settings = f"{schema}.{quote_ident(tables.settings)}"
    tokens = {
        "@users_lit@": quote_literal(users),
        "@settings_lit@": quote_literal(settings),
        "@users@": users,
        "@settings@": settings,
        "@schema@": schema,
    }
    rendered = []
    for file in _files("app"):
        text = file.text
        for token, value in tokens.items():
            text = text.replace(token, value)
        rendered.append(SqlFile(file.name, text))
    return rendered


def migrations_script() -> str:
    """The bookkeeping as one script that also records its versions, so a later run sees them
    as applied (for a role that may not create schemas: an admin pastes it)."""
    parts = [MIGRATIONS_PREAMBLE]
    for file in migrations():
        parts.append(f"-- ===== migrations/{file.name} =====\n{file.text.rstrip()}\n")
        parts.append(
            "INSERT INTO clerk_sync.migrations (version, name) "
            f"VALUES ({file.version}, {quote_literal(file.name)}) ON CONFLICT DO NOTHING;\n"
        )
    return "\n".join(parts)


def script(tables: Tables) -> str:
    """Everything ``init-db`` does, as one script for Supabase's SQL editor: safe to paste
    into a project that already has its tables (the app part then does nothing)."""
    app = "\n".join(f"-- ===== app/{f.name} =====\n{f.text.rstrip()}\n" for f in app_files(tables))
    return f"{app}\n{migrations_script()}"


MIGRATIONS_PREAMBLE = """\
-- ===== clerk-sync's bookkeeping (schema clerk_sync) =====
CREATE SCHEMA IF NOT EXISTS clerk_sync;
CREATE TABLE IF NOT EXISTS clerk_sync.migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
COMMENT ON TABLE clerk_sync.migrations IS 'clerk-sync: the bookkeeping migrations applied';
"""

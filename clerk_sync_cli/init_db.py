"""``clerk-sync init-db``: the guide's tables for a project that has none, and clerk-sync's
own bookkeeping; on a project that has its tables, the app's schema is left exactly as it is
and what was found is reported instead (:func:`clerk_sync_cli.doctor.project_checks`)."""

from __future__ import annotations

from dataclasses import dataclass

from clerk_sync_cli import ddl
from clerk_sync_cli.doctor import Check, project_checks
from clerk_sync_cli.project import Project
from clerk_sync_cli.store import Store, bookkeeping, schema


@dataclass(frozen=True)
class InitResult:
    created_app_schema: bool  # the guide's tables were created (there was no users table)
    applied: list[str]  # what ran: app/… and migrations/… files
    project: Project  # the app's schema afterwards
    findings: list[Check]


def init_db(store: Store) -> InitResult:
    applied = []
    created = not store.run(schema.read, store.tables).users_exists
    if created:
        for file in ddl.app_files(store.tables):
            store.apply_sql(file.name, file.text)
            applied.append(f"app/{file.name}")
    applied += [f"migrations/{name}" for name in store.run(bookkeeping.migrate)]
    project = store.run(schema.read, store.tables)
    return InitResult(created, applied, project, project_checks(project))

"""The one path that writes users: every way in (the page walker of ``backfill``, ``diff``
and ``sync``, ``user --apply``) hands mapped users and an open transaction to
:func:`apply_users`, and nothing else writes the ``users`` table.

What a write means, in order, in the caller's transaction: compare the users with their rows
in one statement (recording them as seen by the run, when there is one), pass the ones that
differ through the version gate (:mod:`store.versions`: an older version of a user than one
already applied, or a user Clerk deleted, is skipped), plan each one admitted
(:func:`plan.plan_user`), upsert them in one statement that never rewrites an unchanged row,
create missing settings rows, and count what was applied. A value the database refuses (a
constraint of the app's) is isolated by halving, so it costs one user, never the page.
Deactivation is :func:`deactivate` (and :func:`delete_user` for one user Clerk says is
deleted): ``is_active = false``, never a DELETE, and a tombstone no later version passes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from clerk_sync_cli.errors import BatchDataError
from clerk_sync_cli.mapping import FieldWarning, MappedUser, RejectedUser, UserRow
from clerk_sync_cli.plan import Action, Change, plan_user
from clerk_sync_cli.project import SchemaInfo
from clerk_sync_cli.store import users, versions
from clerk_sync_cli.store.connection import Cursor
from clerk_sync_cli.tables import Tables

#: The actions :func:`apply_users` writes (deactivation is :func:`deactivate`'s).
WRITES = (Action.CREATE, Action.UPDATE, Action.REACTIVATE, Action.SETTINGS_MISSING)


@dataclass(frozen=True)
class Target:
    """Where and how users are written: the app's tables, what the run knows of them, and
    whether it writes at all (``dry_run``: compare and plan only). ``gated``: the version
    gate's table exists (a dry run on a database clerk-sync never wrote to has none: it
    creates nothing, so it has no versions to respect)."""

    tables: Tables
    schema: SchemaInfo
    dry_run: bool = False
    gated: bool = True


@dataclass(frozen=True)
class Failure:
    """A user that could not be synced (None: the run as a whole), and why."""

    clerk_id: str | None
    problem: str


@dataclass
class Outcome:
    """What one call of :func:`apply_users` found and did.

    ``changes``: every planned change, unchanged users excluded (:attr:`unchanged` counts
    them); ``applied``: what was written; ``seen_before``: users an earlier call of the same
    run already had (skipped: counted, warned about and written once a run); ``refused``:
    users the version gate turned away (an older version than one applied, or a deleted
    user), not written and not counted as changes; ``users``: the clerk_ids of the mapped
    users, first occurrence first; ``written``: the clerk_ids of the users a row was
    written for."""

    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    applied: Counter[Action] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    warnings: list[FieldWarning] = field(default_factory=list)
    seen_before: set[str] = field(default_factory=set)
    rejected: int = 0  # users Clerk sent that could not be read (in failures too)
    users: list[str] = field(default_factory=list)
    refused: dict[str, versions.Refusal] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)


def apply_users(
    cur: Cursor,
    target: Target,
    mapped: Sequence[MappedUser | RejectedUser],
    *,
    seen_by: int | None = None,
    known: Collection[str] = (),
) -> Outcome:
    """Compare, plan and write ``mapped`` in the transaction of ``cur``.

    ``seen_by``: the writing run these users are recorded as seen by (what proves, later,
    who Clerk still lists); ``known``: users a read-only run has already seen (it records
    nothing). Users seen before are neither counted nor written again."""
    outcome = Outcome()
    rows: dict[str, UserRow] = {}
    warnings: dict[str, Sequence[FieldWarning]] = {}
    for user in mapped:
        if isinstance(user, RejectedUser):
            outcome.rejected += 1
            outcome.failures.append(Failure(user.clerk_id, user.problem))
        elif user.row.clerk_id not in rows:
            rows[user.row.clerk_id] = user.row
            if user.warnings:
                warnings[user.row.clerk_id] = user.warnings
    outcome.users = list(rows)
    fresh = [row for clerk_id, row in rows.items() if clerk_id not in known]
    seen_before, differing = users.see_and_compare(
        cur,
        target.tables,
        seen_by,
        fresh,
        can_read_settings=target.schema.can_read_settings,
        versions=not target.dry_run,
    )
    seen_before.update(clerk_id for clerk_id in rows if clerk_id in known)
    outcome.seen_before = seen_before
    if target.gated:
        gated = {c: rows[c].version for c in differing if c not in seen_before}
        outcome.refused = (versions.check if target.dry_run else versions.admit)(cur, gated)
    for clerk_id, row in rows.items():
        if clerk_id in seen_before or clerk_id in outcome.refused:
            continue
        if clerk_id in differing:
            outcome.changes += plan_user(row, differing[clerk_id])
        else:
            outcome.unchanged += 1
        outcome.warnings.extend(warnings.get(clerk_id, ()))
    outcome.unchanged += sum(1 for c in outcome.changes if c.action is Action.UNCHANGED)
    outcome.changes = [c for c in outcome.changes if c.action is not Action.UNCHANGED]
    writes = [c for c in outcome.changes if c.action in WRITES]
    if writes and not target.dry_run:
        _write(cur, target, writes, outcome)
    return outcome


def _write(cur: Cursor, target: Target, changes: list[Change], outcome: Outcome) -> None:
    """Write changes inside the caller's transaction. If the database refuses their data (a
    constraint of the app's), split them in halves until the refused users are isolated:
    those are reported and everything else is written."""
    rows = [c.row for c in changes if c.row is not None]
    repair = [c.clerk_id for c in changes if c.action is Action.SETTINGS_MISSING]
    if not target.schema.has_settings_trigger:
        repair += [c.clerk_id for c in changes if c.action is Action.CREATE]
    try:
        inserted, updated, repaired = users.upsert(
            cur, target.tables, rows, repair_settings_for=repair
        )
    except BatchDataError as exc:
        groups: dict[str, list[Change]] = {}
        for change in changes:
            groups.setdefault(change.clerk_id, []).append(change)
        if len(groups) == 1:
            outcome.failures.append(Failure(changes[0].clerk_id, exc.message))
            return
        halves = list(groups.values())
        half = len(halves) // 2
        _write(cur, target, [c for g in halves[:half] for c in g], outcome)
        _write(cur, target, [c for g in halves[half:] for c in g], outcome)
        return
    for change in changes:
        if change.action is Action.CREATE and change.clerk_id in inserted:
            outcome.applied[Action.CREATE] += 1
        elif change.action in (Action.UPDATE, Action.REACTIVATE) and change.clerk_id in updated:
            outcome.applied[change.action] += 1
        elif change.action is Action.SETTINGS_MISSING and change.clerk_id in repaired:
            outcome.applied[Action.SETTINGS_MISSING] += 1
        else:
            continue
        outcome.written.add(change.clerk_id)


def deactivate(cur: Cursor, target: Target, changes: Sequence[Change]) -> int:
    """Apply planned deactivations (:func:`plan.plan_deactivation`, each confirmed by Clerk
    beforehand): ``is_active = false``, never a DELETE; the uuid and settings row stay, and
    each user is tombstoned, so no version read before the deletion can bring it back.
    Returns how many rows changed."""
    ids = [c.clerk_id for c in changes if c.action is Action.DEACTIVATE]
    if not ids or target.dry_run:
        return 0
    versions.tombstone(cur, ids)
    return len(users.deactivate(cur, target.tables, ids))


def delete_user(cur: Cursor, target: Target, clerk_id: str) -> bool:
    """Clerk says this user is deleted (a ``user.deleted`` webhook, a 404 at sign-in):
    tombstone it, whether or not the table has it, and deactivate its row if there is an
    active one. Returns whether a row changed."""
    if target.dry_run:
        return False
    versions.tombstone(cur, [clerk_id])
    return bool(users.deactivate(cur, target.tables, [clerk_id]))

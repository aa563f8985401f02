"""The version gate (``clerk_sync.user_versions``): which version of each Clerk user was last
applied, and which users Clerk has deleted (tombstones).

Users reach the table by several ways at once: a webhook, a walk that read its page seconds
ago, a sign-in. Clerk delivers webhooks in no particular order, and a walk's page can be older
than a webhook that landed meanwhile. Before any of them writes a user, :func:`admit` records
the version it carries (Clerk's ``updated_at``, ms) and refuses it when a newer one was
applied already, or when the user is tombstoned. The gate row is locked until the writer's
transaction ends, so two writers of one user take turns and the newest version wins.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import StrEnum

from clerk_sync_cli.store.connection import Cursor, one


class Refusal(StrEnum):
    """Why the gate refused a version (the words webhooks answer with, too)."""

    STALE = "stale"  # a newer version of the user was applied already
    DELETED = "deleted"  # Clerk deleted the user: it is never written again


def admit(cur: Cursor, versions: Mapping[str, int | None]) -> dict[str, Refusal]:
    """Record ``versions`` (clerk_id → Clerk's ``updated_at`` in ms, None when unknown) as
    applied, each unless a newer one was or the user is tombstoned; returns those refused,
    and why. Locks the users' gate rows until the transaction ends (in clerk_id order, so two
    writers of overlapping sets never deadlock). An unknown version is always admitted and
    never lowers the one recorded."""
    if not versions:
        return {}
    ids = sorted(versions)
    cur.execute(
        "INSERT INTO clerk_sync.user_versions AS uv (clerk_id, clerk_updated_at) "
        "SELECT clerk_id, version FROM unnest(%s::text[], %s::bigint[]) AS i(clerk_id, version) "
        "ORDER BY clerk_id "
        "ON CONFLICT (clerk_id) DO UPDATE "
        "SET clerk_updated_at = GREATEST(uv.clerk_updated_at, EXCLUDED.clerk_updated_at), "
        "applied_at = now() "
        "WHERE uv.deleted_at IS NULL AND (EXCLUDED.clerk_updated_at IS NULL "
        "OR uv.clerk_updated_at IS NULL OR uv.clerk_updated_at <= EXCLUDED.clerk_updated_at) "
        "RETURNING clerk_id",
        (ids, [versions[i] for i in ids]),
    )
    admitted = {row[0] for row in cur.fetchall()}
    refused = [i for i in ids if i not in admitted]
    return refusals(cur, refused) if refused else {}


def refusals(cur: Cursor, clerk_ids: Collection[str]) -> dict[str, Refusal]:
    """Why each of these users' gate refuses writes: tombstoned, else a newer version."""
    cur.execute(
        "SELECT clerk_id, deleted_at IS NOT NULL FROM clerk_sync.user_versions "
        "WHERE clerk_id = ANY(%s)",
        (list(clerk_ids),),
    )
    return {row[0]: Refusal.DELETED if row[1] else Refusal.STALE for row in cur.fetchall()}


def check(cur: Cursor, versions: Mapping[str, int | None]) -> dict[str, Refusal]:
    """What :func:`admit` would refuse, recording nothing (for dry runs)."""
    if not versions:
        return {}
    ids = sorted(versions)
    cur.execute(
        "SELECT v.clerk_id, v.deleted_at IS NOT NULL FROM clerk_sync.user_versions v "
        "JOIN unnest(%s::text[], %s::bigint[]) AS i(clerk_id, version) USING (clerk_id) "
        "WHERE v.deleted_at IS NOT NULL OR v.clerk_updated_at > i.version",
        (ids, [versions[i] for i in ids]),
    )
    return {row[0]: Refusal.DELETED if row[1] else Refusal.STALE for row in cur.fetchall()}


def tombstone(cur: Cursor, clerk_ids: Collection[str]) -> None:
    """Mark these users deleted by Clerk (kept once set): no later version is admitted."""
    if not clerk_ids:
        return
    cur.execute(
        "INSERT INTO clerk_sync.user_versions AS uv (clerk_id, deleted_at) "
        "SELECT clerk_id, now() FROM unnest(%s::text[]) AS i(clerk_id) ORDER BY clerk_id "
        "ON CONFLICT (clerk_id) DO UPDATE SET deleted_at = COALESCE(uv.deleted_at, now()), "
        "applied_at = now()",
        (sorted(clerk_ids),),
    )


def exists(cur: Cursor) -> bool:
    """Whether the gate's table exists (a dry run on a database never written to has none)."""
    cur.execute("SELECT to_regclass('clerk_sync.user_versions') IS NOT NULL")
    return bool(one(cur)[0])


def tombstoned(cur: Cursor, clerk_id: str) -> bool:
    cur.execute(
        "SELECT 1 FROM clerk_sync.user_versions WHERE clerk_id = %s AND deleted_at IS NOT NULL",
        (clerk_id,),
    )
    return cur.fetchone() is not None

"""Deactivation is never a guess: an active row is deactivated only when the listing was
complete, the guard allows the number, and Clerk itself answers 404 ``resource_not_found``
for that user — after a user Clerk does list has shown that the lookup reaches Clerk (the
positive control, :func:`lookup_problem`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from clerk_sync_cli.apply import Failure, deactivate
from clerk_sync_cli.clerk import ClerkClient
from clerk_sync_cli.completeness import WalkMarks, incomplete, recover
from clerk_sync_cli.errors import ClerkSyncError
from clerk_sync_cli.plan import Action, DbUser, plan_deactivation
from clerk_sync_cli.run import RunState
from clerk_sync_cli.store import lock

LOOKUP_HINT = (
    "Check CLERK_API_URL reaches Clerk's Backend API (https://api.clerk.com/v1) directly, "
    "not a proxy or router answering for it."
)


def lookup_problem(client: ClerkClient, known: Callable[[], str | None]) -> str | None:
    """Why no 404 from ``GET /users/{id}`` can be trusted, or None: the positive control.
    ``known()`` names a user Clerk lists; its lookup must answer 200 with that user."""
    try:
        clerk_id = known()
        if clerk_id is None:
            return "Clerk listed no other user to check GET /users/{id} against"
        client.verify_lookup(clerk_id)
    except ClerkSyncError as exc:
        return exc.message.rstrip(".")
    return None


def incomplete_listing(seen: int, rejected: int, before: int, after: int) -> str | None:
    """Why the listing cannot be trusted to infer deletions, or None."""
    if rejected:
        return f"{rejected} listed users could not be read, so the listing is not trustworthy."
    if seen + rejected < min(before, after):
        return (
            f"the walk saw {seen} users but Clerk counts {before} before and {after} after; "
            "the listing looks incomplete. Rerun later."
        )
    return None


def deactivate_missing(run: RunState, marks: WalkMarks) -> None:
    """Deactivate active rows whose users Clerk no longer lists, each confirmed by Clerk's
    own 404. A candidate Clerk still has proves the listing missed it (and that the count
    check was offset, by a deletion during the walk): the recovery read then runs, and
    unless it finds them all, the run is incomplete and deactivates nothing."""
    result, options = run.result, run.options
    count, _ = run.unseen_active(limit=0)
    refusal = options.guard.refusal(count, run.active_rows, result.clerk_users)
    if refusal:
        result.counts[Action.DEACTIVATE] = count
        result.refuse(refusal)
        return
    _, candidates = run.unseen_active(limit=count)
    confirmed, still_there = _confirm_with_clerk(run, candidates)
    if still_there:
        recovered = recover(run, marks)
        if result.completeness is not None:
            result.completeness = replace(
                result.completeness,
                read=result.completeness.read + recovered,
                recovered=result.completeness.recovered + recovered,
                complete=recovered >= still_there,
            )
        if recovered < still_there:
            incomplete(
                run,
                f"{still_there} users missing from the listing are still in Clerk, and a "
                f"re-read with created_at filters found {recovered}",
            )
            return
    changes = [plan_deactivation(row) for row in confirmed]
    result.record(changes)
    if not changes or options.dry_run:
        return
    if run.confirm is not None:
        with lock.heartbeat_in_background(run.store, run.lease, every_s=_beat_every_s(run)):
            agreed = run.confirm(changes)  # a prompt waits; the lease must not go stale
        if not agreed:
            result.refuse("Deactivation declined at the prompt.")
            return
    done = run.store.atomic(lambda cur: deactivate(cur, run.target, changes), locked_by=run.lease)
    result.applied[Action.DEACTIVATE] += done


def _beat_every_s(run: RunState) -> float:
    return run.options.stale_after_s / 4


def _confirm_with_clerk(run: RunState, candidates: list[DbUser]) -> tuple[list[DbUser], int]:
    """Ask Clerk about each candidate: (those it confirms gone, how many it still has).
    Each one it could not confirm is a failure, and stays active."""
    result, client = run.result, run.client
    untrusted = lookup_problem(client, run.one_listed) if candidates else None
    if untrusted:
        run.note(f"No deletion could be confirmed with Clerk: {untrusted}.")
    confirmed: list[DbUser] = []
    still_there = 0
    beaten = time.monotonic()
    for n, row in enumerate(candidates, 1):
        # first thing, so a lookup that fails (after its retries) cannot skip it
        if run.lease is not None and (
            n % 100 == 0 or time.monotonic() - beaten > _beat_every_s(run)
        ):
            lock.touch(run.store, run.lease)
            beaten = time.monotonic()
        if untrusted:
            result.failures.append(
                Failure(
                    row.clerk_id, f"not deactivated: could not confirm with Clerk ({untrusted})"
                )
            )
            continue
        try:
            present = client.get_user(row.clerk_id)
        except ClerkSyncError as exc:
            result.failures.append(
                Failure(
                    row.clerk_id, f"not deactivated: could not confirm with Clerk ({exc.message})"
                )
            )
            continue
        if present is None:
            confirmed.append(row)
        else:
            still_there += 1
            run.note(
                f"{row.clerk_id} was missing from the listing but Clerk still has it; left active."
            )
    return confirmed, still_there

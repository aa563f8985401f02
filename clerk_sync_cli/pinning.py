"""Which Clerk instance a run may use: the one its key belongs to must be the pinned one
(:func:`history.decide_pin` decides); the first writing run pins it."""

from __future__ import annotations

from clerk_sync_cli.errors import InstanceMismatchError
from clerk_sync_cli.history import Instance, Pin, PinDecision, decide_pin
from clerk_sync_cli.store import pin
from clerk_sync_cli.store.connection import Cursor, Store

INSTANCE_HINT = (
    "Nothing was changed. Check CLERK_SECRET_KEY is the key of the instance that filled the "
    "table; if the table really belongs to the new instance now, rerun with "
    "--allow-instance-change (it re-pins)."
)


def decide(
    store: Store, instance: Instance, *, has_history: bool, allow_change: bool, dry_run: bool
) -> PinDecision:
    """May a run use ``instance``? Raises InstanceMismatchError when it may not."""
    pinned = store.run(pin.read) if has_history else None
    decision = decide_pin(
        pinned.instance if pinned else None, instance, allow_change=allow_change, dry_run=dry_run
    )
    if decision.refusal:
        raise InstanceMismatchError(decision.refusal, INSTANCE_HINT)
    return decision


def record(store: Store, instance: Instance, decision: PinDecision, run_id: int | None) -> None:
    """Write the pin the decision asks for (the first writing run's, or an allowed re-pin)."""
    if decision.write:
        store.run(pin.pin, instance, run_id, replace=decision.write == "repin")


def check_instance(
    store: Store,
    instance: Instance,
    run_id: int | None,
    *,
    has_history: bool,
    allow_change: bool,
    dry_run: bool,
) -> str | None:
    """:func:`decide` and :func:`record` at once; returns what is worth telling, if anything."""
    decision = decide(
        store, instance, has_history=has_history, allow_change=allow_change, dry_run=dry_run
    )
    record(store, instance, decision, run_id)
    return decision.note


def pinned_instance(cur: Cursor, first: Instance) -> Pin:
    """For writes outside a run (webhooks, sign-ins), in their transaction: the pin; with no
    pin yet, ``first`` is pinned, as a writing run would."""
    pinned = pin.read(cur)
    if pinned is None:
        pin.pin(cur, first, None, replace=False)
        pinned = pin.read(cur)  # another writer may have pinned first
    assert pinned is not None, "a pin exists once written"
    return pinned


def admit_instance(cur: Cursor, instance: Instance, hint: str) -> None:
    """:func:`pinned_instance`, and ``instance`` must be the pinned one."""
    refusal = mismatch(instance, pinned_instance(cur, instance), hint)
    if refusal is not None:
        raise refusal


def mismatch(instance: Instance, pinned: Pin, hint: str) -> InstanceMismatchError | None:
    """The refusal of a request for ``instance`` when the table is pinned to another."""
    if pinned.instance.id == instance.id:
        return None
    return InstanceMismatchError(
        f"the request is for Clerk instance {instance.id}, but the table is pinned to "
        f"instance {pinned.instance.describe()}",
        hint,
    )

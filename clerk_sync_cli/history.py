"""Run history, instance pinning and the cheap sync's decisions. Pure functions over values the
store reads; nothing here touches the network or the database.

- :func:`decide_pin`: may this run use the Clerk instance its key belongs to?
- :func:`full_reconcile_reason`: does ``sync`` need the full reconcile (the only way to find
  deletions), and why?
- :func:`next_watermark`: where the next ``sync`` may stop reading.
- :func:`run_state` / :func:`lock_state`: what ``status`` says about a run and the lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clerk_sync_cli.states import LockState, RunStatus, SyncMode

#: Commands whose runs are full reconciles (walk everything, then deactivate what is gone).
FULL_COMMANDS = ("diff",)


@dataclass(frozen=True)
class Instance:
    """A Clerk instance, as ``GET /v1/instance`` names it."""

    id: str
    environment_type: str | None = None

    @classmethod
    def from_clerk(cls, body: dict[str, Any]) -> Instance:
        env = body.get("environment_type")
        return cls(str(body["id"]), env if isinstance(env, str) else None)

    def describe(self) -> str:
        return f"{self.id} ({self.environment_type or 'unknown environment'})"


@dataclass(frozen=True)
class Pin:
    """The instance the table belongs to, since when, and which run pinned it."""

    instance: Instance
    pinned_at: datetime
    run_id: int | None = None
    #: what proves a key belongs to the pinned instance, without the key
    #: (:meth:`ClerkClient.key_check <clerk_sync_cli.clerk.client.ClerkClient.key_check>`)
    key_check: str | None = None


@dataclass(frozen=True)
class PinDecision:
    """``write``: "pin" (first writing run), "repin" (allowed change), or None (nothing to
    write). ``refusal``: why the run must not go on, or None. ``note``: worth telling."""

    write: str | None = None
    refusal: str | None = None
    note: str | None = None


def decide_pin(
    pinned: Instance | None, current: Instance, *, allow_change: bool, dry_run: bool
) -> PinDecision:
    """The first writing run pins the instance; later runs must use the same one. A dry run
    checks but never writes the pin."""
    if pinned is None:
        if dry_run:
            return PinDecision(note=f"Clerk instance {current.describe()} is not pinned yet.")
        return PinDecision(write="pin", note=f"Pinned Clerk instance {current.describe()}.")
    if pinned.id == current.id:
        return PinDecision()
    if not allow_change:
        return PinDecision(
            refusal=(
                f"The table was filled from Clerk instance {pinned.describe()}, but the secret "
                f"key belongs to instance {current.describe()}. Refusing to run: syncing another "
                "instance's users would rewrite and deactivate this table's rows."
            )
        )
    if dry_run:
        return PinDecision(
            note=f"Would re-pin from Clerk instance {pinned.describe()} to {current.describe()}."
        )
    return PinDecision(
        write="repin",
        note=f"Re-pinned from Clerk instance {pinned.describe()} to {current.describe()}.",
    )


# -- the cheap sync ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """Right after a full reconcile: how many rows the table had and how many users Clerk
    counted. Their difference is the number of rows whose users are not in Clerk (deleted
    users, kept deactivated). Sign-ups add one to both sides; bans add to neither; only a
    deletion in Clerk (or a row removed from the table) changes the difference."""

    table_rows: int
    clerk_users: int

    @property
    def gap(self) -> int:
        return self.table_rows - self.clerk_users


@dataclass(frozen=True)
class SyncState:
    """What the last runs against the pinned instance left for ``sync``."""

    watermark_ms: int | None = None
    baseline: Baseline | None = None


@dataclass(frozen=True)
class Counts:
    """Clerk's unfiltered user count read before and after the walk, and the table's rows
    read in between (after the walk wrote its creates)."""

    clerk_before: int
    table_rows: int
    clerk_after: int


def full_reconcile_reason(state: SyncState, counts: Counts | None = None) -> str | None:
    """Why ``sync`` must run the full reconcile, or None.

    Without counts (before the walk): when there is nothing to compare with. With them: when
    rows minus Clerk's count moved away from the same difference after the last full
    reconcile (:class:`Baseline`). Sign-ups during the walk can only lower ``rows -
    clerk_after`` and raise ``rows - clerk_before``, so a gap above the baseline against the
    later count means users were deleted in Clerk, and one below it against the earlier count
    means rows went missing from the table. Either way only the full walk finds which.
    (Active rows would not do: banned users count in Clerk but are inactive rows.)
    """
    if state.baseline is None:
        return "no full reconcile has completed yet"
    if state.watermark_ms is None:
        return "no run has recorded a watermark yet"
    if counts is None:
        return None
    expected = state.baseline.gap
    deleted = counts.table_rows - counts.clerk_after - expected
    if deleted > 0:
        return (
            f"users were deleted in Clerk ({counts.table_rows} rows for "
            f"{counts.clerk_after} users: {deleted} more row(s) without a user than after the "
            "last full reconcile)"
        )
    missing = expected - (counts.table_rows - counts.clerk_before)
    if missing > 0:
        return (
            f"rows were removed from the table ({counts.table_rows} rows for "
            f"{counts.clerk_before} users: {missing} fewer than after the last full reconcile)"
        )
    return None


def next_watermark(
    previous: int | None, newest_seen: int | None, run_started_ms: int
) -> int | None:
    """The newest ``updated_at`` the next ``sync`` can trust as written: never later than this
    run's start (a user changed during the walk may have been read before its change), never
    earlier than the previous watermark."""
    if newest_seen is None:
        return previous
    mark = min(newest_seen, run_started_ms)
    return mark if previous is None else max(previous, mark)


# -- status -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a run's process runs. A pid names a process only on its host, in the boot it was
    recorded in (``/proc/sys/kernel/random/boot_id``) and in its PID namespace (containers
    share hostnames and boot ids, not PID namespaces); None where it could not be read."""

    host: str | None
    pid: int | None
    boot_id: str | None = None
    pid_ns: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """One row of ``clerk_sync.runs``."""

    id: int
    command: str
    dry_run: bool
    status: str
    started_at: datetime
    finished_at: datetime | None
    summary: dict[str, Any] = field(default_factory=dict)
    instance_id: str | None = None
    environment_type: str | None = None
    host: str | None = None
    pid: int | None = None
    watermark_ms: int | None = None
    boot_id: str | None = None
    pid_ns: str | None = None

    @property
    def origin(self) -> Origin:
        return Origin(self.host, self.pid, self.boot_id, self.pid_ns)

    @property
    def full_reconcile(self) -> bool:
        return self.command in FULL_COMMANDS or self.summary.get("mode") == SyncMode.FULL

    @property
    def drift(self) -> int:
        """Changes planned (found), whether or not applied."""
        counts = self.summary.get("counts") or {}
        return sum(int(n) for action, n in counts.items() if action != "unchanged")


@dataclass(frozen=True)
class LockInfo:
    """The writer lock as ``status`` reports it."""

    state: LockState
    run_id: int | None = None
    host: str | None = None
    pid: int | None = None
    heartbeat_age_s: float | None = None


def lock_state(
    holder_run: int | None,
    host: str | None,
    pid: int | None,
    heartbeat_age_s: float | None,
    *,
    stale: bool,
) -> LockInfo:
    if holder_run is None:
        return LockInfo(LockState.FREE)
    state = LockState.STALE if stale else LockState.HELD
    return LockInfo(state, holder_run, host, pid, heartbeat_age_s)


def run_state(run: RunRecord, lock: LockInfo, *, process_alive: Callable[[Origin], bool]) -> str:
    """The status to show for a run. A row still marked ``running`` is ``running`` only while
    its process lives: a writing run must hold a fresh lock (``stale`` when its lock is old or
    its process gone: the next run takes it over), otherwise it ``crashed``. A dry run holds
    no lock; it crashed when its process is known to be gone."""
    if run.status != RunStatus.RUNNING:
        return run.status
    if not run.dry_run:
        if lock.run_id == run.id:
            return RunStatus.STALE if lock.state is LockState.STALE else RunStatus.RUNNING
        return RunStatus.CRASHED
    return RunStatus.RUNNING if process_alive(run.origin) else RunStatus.CRASHED

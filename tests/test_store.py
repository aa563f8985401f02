"""The store, called directly (with tests/test_apply.py, the one place tests may): the run
history, the writer lock's lease and the checkpoints, against a real Postgres. Everything
else is tested through the commands."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest

from clerk_sync_cli.clerk import ClerkClient
from clerk_sync_cli.emulator import RunningEmulator
from clerk_sync_cli.errors import LockHeldError
from clerk_sync_cli.plan import Action, Change
from clerk_sync_cli.states import RunStatus
from clerk_sync_cli.store import Store, bookkeeping, checkpoints, connect, lock, runs
from clerk_sync_cli.sync import SyncOptions, reconcile
from clerk_sync_cli.windows import Window

from .support import Cli, heartbeat_age, populate, rows


def open_store(dsn: str) -> Store:
    return Store(lambda: connect(dsn))


@pytest.fixture
def store(db: psycopg.Connection[Any], dsn: str) -> Iterator[Store]:
    with open_store(dsn) as store:
        store.run(bookkeeping.migrate)
        yield store


def statuses(db: psycopg.Connection[Any]) -> list[tuple[int, str]]:
    return [
        (r["id"], r["status"])
        for r in rows(db, "SELECT id, status FROM clerk_sync.runs ORDER BY id")
    ]


def test_a_run_ends_once_and_releases_its_own_lease_only(
    store: Store, db: psycopg.Connection[Any]
) -> None:
    run_id = store.run(runs.start, "diff", dry_run=False)
    lease = lock.acquire(store, run_id, stale_after_s=600)
    db.execute("UPDATE clerk_sync.locks SET token = 'someone-else'")
    with pytest.raises(LockHeldError, match="took over"):
        store.run(runs.finish, run_id, RunStatus.OK, {}, lease=lease)
    assert statuses(db) == [(run_id, "running")]  # nothing recorded: the history is theirs
    db.execute("UPDATE clerk_sync.locks SET token = %s", (lease.token,))
    store.run(runs.finish, run_id, RunStatus.OK, {"clerk_users": 1}, lease=lease)
    assert statuses(db) == [(run_id, "ok")]
    assert rows(db, "SELECT * FROM clerk_sync.locks") == []


def test_a_crashed_run_with_checkpoints_is_resumed_and_one_without_is_not(
    store: Store, db: psycopg.Connection[Any]
) -> None:
    with_windows = store.run(runs.start, "diff", dry_run=False)
    store.run(checkpoints.save_windows, with_windows, [Window(0, None, 10), Window(1, 10, None)])
    store.run(checkpoints.checkpoint, with_windows, 0, "user_cursor", True)
    without = store.run(runs.start, "diff", dry_run=False)
    keeper = store.run(runs.start, "sync", dry_run=False)
    store.run(runs.abandon_others, keeper, "sync")
    assert statuses(db) == [
        (with_windows, "interrupted"),
        (without, "crashed"),
        (keeper, "running"),
    ]
    assert store.run(runs.resumable, "diff") == with_windows
    assert store.run(runs.resumable, "sync") is None
    assert store.run(checkpoints.load_windows, with_windows) == [
        (Window(0, None, 10), "user_cursor", True),
        (Window(1, 10, None), None, False),
    ]


def test_a_unit_under_a_lease_that_was_taken_over_does_not_commit(
    store: Store, db: psycopg.Connection[Any]
) -> None:
    lease = lock.acquire(store, store.run(runs.start, "diff", dry_run=False), stale_after_s=600)
    db.execute("UPDATE clerk_sync.locks SET token = 'someone-else'")
    db.execute("CREATE TABLE marker (n int)")
    with pytest.raises(LockHeldError, match="took over"):
        store.atomic(lambda cur: cur.execute("INSERT INTO marker VALUES (1)"), locked_by=lease)
    assert rows(db, "SELECT * FROM marker") == []


def test_a_takeover_fails_when_the_holder_is_heard_from_between_its_read_and_its_write(
    db: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(dsn) as a, open_store(dsn) as b:
        lease = lock.acquire(a, a.run(runs.start, "sync", dry_run=False), stale_after_s=600)
        db.execute("UPDATE clerk_sync.locks SET heartbeat_at = now() - interval '1 hour'")
        read = lock.holder

        def read_then_the_holder_wakes_up(cur: Any) -> Any:
            seen = read(cur)
            lock.touch(a, lease)
            return seen

        monkeypatch.setattr(lock, "holder", read_then_the_holder_wakes_up)
        with pytest.raises(LockHeldError, match="holds the lock"):
            lock.acquire(b, b.run(runs.start, "sync", dry_run=False), stale_after_s=600)
        lock.touch(a, lease)  # still its own
    assert db.execute("SELECT token FROM clerk_sync.locks").fetchall() == [(lease.token,)]


# -- the lease while a run waits for a human -------------------------------------------------


def test_the_lease_stays_fresh_while_the_deactivation_prompt_waits(
    cli: Cli,
    emulator: RunningEmulator,
    db: psycopg.Connection[Any],
    dsn: str,
    client: ClerkClient,
) -> None:
    users = populate(emulator, 40)
    assert cli("backfill").exit_code == 0
    for user in users[:2]:
        emulator.emulator.delete_user(user["id"])
    ages: list[float] = []
    takeover: list[BaseException] = []

    def slow_human(changes: Sequence[Change]) -> bool:
        waited_until = time.monotonic() + 1.6  # past the stale limit below
        while time.monotonic() < waited_until:
            ages.append(heartbeat_age(db))
            time.sleep(0.05)
        with open_store(dsn) as other:
            try:
                lock.acquire(other, other.run(runs.start, "diff", dry_run=False), stale_after_s=1.0)
            except LockHeldError as exc:
                takeover.append(exc)
        return True

    options = SyncOptions(command="diff", deactivate=True, concurrency=1, stale_after_s=1.0)
    with open_store(dsn) as store:
        result = reconcile(client, store, options, confirm=slow_human)
    assert max(ages) < 1.0, ages
    assert takeover, "another run took the lock over while the prompt waited"
    assert result.status == "ok"
    assert result.applied[Action.DEACTIVATE] == 2

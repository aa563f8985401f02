"""One writer means one writer (issue 11): the lock is a lease with a token of its own, a pid
is trusted only where it names a process, and nothing lets the heartbeat go stale. Real
Postgres, real processes where it matters; each test fails if its protection is removed."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import psycopg
import pytest

from clerk_sync_cli.clerk import ClerkClient
from clerk_sync_cli.emulator import RunningEmulator
from clerk_sync_cli.history import Origin
from clerk_sync_cli.plan import Action
from clerk_sync_cli.store import Store, connect, process_alive, this_process
from clerk_sync_cli.sync import SyncOptions, reconcile

from .support import Cli, count, dead_pid, heartbeat_age, populate, rows, spawn

HERE = this_process()
KNOWN = pytest.mark.skipif(
    HERE.boot_id is None or HERE.pid_ns is None,
    reason="needs /proc/sys/kernel/random/boot_id and /proc/self/ns/pid",
)


def open_store(dsn: str) -> Store:
    return Store(lambda: connect(dsn))


def hold_lock(
    db: psycopg.Connection[Any],
    *,
    command: str = "sync",
    pid: int,
    boot_id: str | None,
    pid_ns: str | None,
    age: str = "0 seconds",
) -> int:
    """A run left ``running`` that holds the lock, as the given process."""
    [(run_id,)] = db.execute(
        "INSERT INTO clerk_sync.runs (command, status, host, pid, boot_id, pid_ns) "
        "VALUES (%s, 'running', %s, %s, %s, %s) RETURNING id",
        (command, HERE.host, pid, boot_id, pid_ns),
    ).fetchall()
    db.execute(
        "INSERT INTO clerk_sync.locks (name, run_id, token, host, pid, boot_id, pid_ns, "
        "heartbeat_at) VALUES ('sync', %s, 'its-lease', %s, %s, %s, %s, now() - %s::interval)",
        (run_id, HERE.host, pid, boot_id, pid_ns, age),
    )
    return int(run_id)


# -- a lease, not a run id ------------------------------------------------------------------------


@KNOWN
def test_two_runs_resuming_the_same_crashed_run_at_once_exactly_one_writes(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], dsn: str
) -> None:
    """Both find the same crashed run to resume and read its stale lock; both try to take it
    over at the same moment (their writes wait on a row lock the test holds, then go one
    after the other). Under the same run id, the second takeover used to match too."""
    populate(emulator, 200)
    crashed = hold_lock(
        db, command="diff", pid=dead_pid(), boot_id=HERE.boot_id, pid_ns=HERE.pid_ns, age="1 hour"
    )
    db.execute("INSERT INTO clerk_sync.run_windows (run_id, window_no) VALUES (%s, 0)", (crashed,))

    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT 1 FROM clerk_sync.locks FOR UPDATE")
        children = [
            spawn(
                cli,
                *("diff", "--yes", "--json", "--batch-size", "20", "--concurrency", "1"),
                CLERK_SYNC_LOCK_TIMEOUT_MS="30000",
            )
            for _ in range(2)
        ]
        deadline, waiting = time.monotonic() + 30, 0
        while time.monotonic() < deadline:
            waiting = count(
                db,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'clerk-sync' AND wait_event_type = 'Lock'",
            )
            if waiting == 2:
                break
            time.sleep(0.02)
        assert waiting == 2, "both runs should be taking the lock over by now"
        blocker.rollback()
    done = []
    for child in children:
        out, err = child.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))

    assert sorted(d.returncode for d in done) == [0, 3], [(d.returncode, d.stderr) for d in done]
    winner = next(d for d in done if d.returncode == 0)
    loser = next(d for d in done if d.returncode == 3)
    assert "holds the lock" in loser.stderr
    doc = json.loads(winner.stdout)
    assert doc["status"] == "ok"
    assert any(f"Resuming run {crashed}" in n for n in doc["notes"]), doc["notes"]
    assert doc["applied"]["create"] == 200
    assert count(db) == 200
    history = rows(db, "SELECT id, status, summary FROM clerk_sync.runs ORDER BY id")
    assert [(r["id"], r["status"]) for r in history] == [(crashed, "ok")]
    assert "error" not in history[0]["summary"]
    assert count(db, "SELECT count(*) FROM clerk_sync.locks") == 0


def test_a_run_whose_lease_was_taken_over_does_not_rewrite_its_history(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], dsn: str
) -> None:
    """A run silent too long is taken over by a run resuming it: same run id, new lease. When
    the old one wakes up it must stop before its next commit, and its end must not overwrite
    the history row (or drop the checkpoints) that are the new run's now."""
    populate(emulator, 100)
    taken: list[int] = []

    def resume_it(request: int) -> None:
        if request == 4:  # a few pages in
            with psycopg.connect(dsn, autocommit=True) as other:
                [(run_id,)] = other.execute("SELECT run_id FROM clerk_sync.locks").fetchall()
                other.execute(
                    "UPDATE clerk_sync.locks SET token = 'the-resuming-run', pid = 1, "
                    "heartbeat_at = now()"
                )
                other.execute(
                    'UPDATE clerk_sync.runs SET summary = \'{"resumed_at": "now"}\' WHERE id = %s',
                    (run_id,),
                )
                taken.append(int(run_id))

    emulator.emulator.before_list = resume_it
    result = cli("backfill", "--json", "--batch-size", "10", "--concurrency", "1")
    emulator.emulator.before_list = None
    assert result.exit_code == 3, result.stderr
    assert "took over the lock" in result.stderr
    [run] = rows(db, "SELECT id, status, summary, finished_at FROM clerk_sync.runs")
    assert (run["id"], run["status"], run["finished_at"]) == (taken[0], "running", None)
    assert run["summary"] == {"resumed_at": "now"}
    assert count(db, "SELECT count(*) FROM clerk_sync.run_windows") > 0
    assert db.execute("SELECT token FROM clerk_sync.locks").fetchall() == [("the-resuming-run",)]


# -- "process gone" only where it can be known ----------------------------------------------------


@KNOWN
def test_a_pid_counts_only_on_this_host_boot_and_pid_namespace(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """A container with our hostname but its own PID namespace (or a machine that rebooted):
    its pid means nothing here, so a 2.5 s old heartbeat is a live run."""
    populate(emulator, 3)
    holder = hold_lock(
        db, pid=dead_pid(), boot_id=HERE.boot_id, pid_ns="pid:[4026530000]", age="2.5 seconds"
    )
    result = cli("sync")
    assert result.exit_code == 3, result.output
    assert f"holds the lock (run {holder}" in result.stderr
    assert cli.json("status")["lock"]["state"] == "held"

    db.execute("UPDATE clerk_sync.locks SET boot_id = 'another-boot', pid_ns = %s", (HERE.pid_ns,))
    assert cli("sync").exit_code == 3
    assert rows(db) == []

    db.execute("UPDATE clerk_sync.locks SET boot_id = %s", (HERE.boot_id,))
    assert cli.json("status")["lock"]["state"] == "stale"
    doc = cli.json("sync")
    assert any(f"Took over the lock from run {holder}" in n for n in doc["notes"])
    assert len(rows(db)) == 3


def test_process_alive_is_false_only_where_the_pid_is_known_to_be_gone() -> None:
    gone = dead_pid()
    if HERE.boot_id is not None and HERE.pid_ns is not None:
        assert not process_alive(Origin(HERE.host, gone, HERE.boot_id, HERE.pid_ns))
    assert process_alive(Origin(HERE.host, gone, HERE.boot_id, "pid:[1]"))
    assert process_alive(Origin(HERE.host, gone, "another-boot", HERE.pid_ns))
    assert process_alive(Origin(HERE.host, gone, None, None))  # recorded before migration 005
    assert process_alive(Origin("another-host", gone, HERE.boot_id, HERE.pid_ns))
    assert process_alive(HERE)


def test_status_and_doctor_read_bookkeeping_older_than_the_lease(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """Read-only commands migrate nothing: they must read a lock table without the new
    columns; the next writing run migrates and takes over the old holder."""
    populate(emulator, 2)
    db.execute("ALTER TABLE clerk_sync.locks DROP COLUMN token, DROP COLUMN boot_id")
    db.execute("ALTER TABLE clerk_sync.locks DROP COLUMN pid_ns")
    db.execute("ALTER TABLE clerk_sync.runs DROP COLUMN boot_id, DROP COLUMN pid_ns")
    db.execute("DELETE FROM clerk_sync.migrations WHERE version >= 5")
    [(old,)] = db.execute(
        "INSERT INTO clerk_sync.runs (command, status, host, pid) "
        "VALUES ('sync', 'running', 'old-host', 1) RETURNING id"
    ).fetchall()
    db.execute(
        "INSERT INTO clerk_sync.locks (name, run_id, host, pid, heartbeat_at) "
        "VALUES ('sync', %s, 'old-host', 1, now() - interval '1 hour')",
        (old,),
    )
    status = cli.json("status")
    assert status["lock"]["state"] == "stale"
    assert status["runs"][0]["status"] == "stale"
    doctor = cli("doctor", "--json")
    assert "Traceback" not in doctor.output + doctor.stderr
    checks = {(c["area"], c["check"]): c for c in json.loads(doctor.stdout)["checks"]}
    assert checks[("bookkeeping", "lock")]["detail"].startswith(f"stale: run {old}")

    doc = cli.json("sync")
    assert any("005_lock_lease.sql" in n for n in doc["notes"]), doc["notes"]
    assert any(f"Took over the lock from run {old}" in n for n in doc["notes"])
    assert len(rows(db)) == 2


# -- user --apply is a writing run ----------------------------------------------------------------


def test_user_apply_takes_the_lock_like_any_writing_run(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    [user] = populate(emulator, 1)
    holder = hold_lock(db, pid=os.getpid(), boot_id=HERE.boot_id, pid_ns=HERE.pid_ns)  # alive
    result = cli("user", user["id"], "--apply")
    assert result.exit_code == 3, result.output
    assert f"holds the lock (run {holder}" in result.stderr
    assert rows(db) == []
    assert count(db, "SELECT count(*) FROM clerk_sync.instance") == 0
    assert rows(db, "SELECT command, status FROM clerk_sync.runs ORDER BY id") == [
        {"command": "sync", "status": "running"},
        {"command": "user", "status": "skipped"},
    ]

    db.execute("DELETE FROM clerk_sync.locks")
    db.execute("UPDATE clerk_sync.runs SET status = 'crashed' WHERE id = %s", (holder,))
    assert cli("user", user["id"], "--apply").exit_code == 0
    assert [r["clerk_id"] for r in rows(db)] == [user["id"]]
    [run] = rows(
        db,
        "SELECT status, summary, instance_id FROM clerk_sync.runs WHERE id > %s "
        "AND status <> 'skipped'",
        holder,
    )
    assert (run["status"], run["instance_id"]) == ("ok", "ins_emulator")
    assert run["summary"]["applied"]["create"] == 1
    assert count(db, "SELECT count(*) FROM clerk_sync.locks") == 0  # released


# -- nothing lets the heartbeat go stale ----------------------------------------------------------


def test_slow_confirmation_lookups_refresh_the_lease_in_time(
    cli: Cli,
    emulator: RunningEmulator,
    db: psycopg.Connection[Any],
    dsn: str,
    client: ClerkClient,
) -> None:
    """Far fewer than 100 lookups, each slow: the refresh must go by time, not only count."""
    users = populate(emulator, 40)
    assert cli("backfill").exit_code == 0
    for user in users[:4]:
        emulator.emulator.delete_user(user["id"])
    clerk = emulator.emulator
    original = clerk.handle
    ages: list[float] = []

    with psycopg.connect(dsn, autocommit=True) as watcher:

        def slow_lookup(method: str, path: str, query: str, headers: Any, body: bytes) -> Any:
            if method == "GET" and path.startswith("/v1/users/user_"):
                time.sleep(0.35)
                ages.append(heartbeat_age(watcher))
            return original(method, path, query, headers, body)

        clerk.handle = slow_lookup  # type: ignore[method-assign]
        options = SyncOptions(command="diff", deactivate=True, concurrency=1, stale_after_s=1.0)
        with open_store(dsn) as store:
            result = reconcile(client, store, options)
        clerk.handle = original  # type: ignore[method-assign]
    assert len(ages) >= 4
    assert max(ages) < 1.0, ages
    assert result.applied[Action.DEACTIVATE] == 4

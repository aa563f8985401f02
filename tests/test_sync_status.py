"""Cron-readiness end to end (issue 6): `sync`, `status`, run history, instance pinning, pings.

The CLI as cron runs it, a real Postgres, the Clerk emulator. Each test fails if the feature it
covers is removed.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from clerk_sync_cli.emulator import EmulatorConfig, RunningEmulator, start_emulator
from clerk_sync_cli.store import this_process

from .support import BOTH_SCHEMAS, SECRET, Cli, dead_pid, populate, rows

ACTIONS = ["create", "update", "deactivate", "reactivate", "unchanged", "settings_missing"]


def names(db: psycopg.Connection[Any]) -> dict[str, str | None]:
    return {r["clerk_id"]: r["first_name"] for r in rows(db)}


def watermark(db: psycopg.Connection[Any]) -> int:
    found = db.execute(
        "SELECT watermark_ms FROM clerk_sync.runs WHERE watermark_ms IS NOT NULL "
        "ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert found is not None
    return int(found[0])


# -- sync: the watermark walk --------------------------------------------------------------------


@BOTH_SCHEMAS
def test_sync_reads_only_what_changed_since_the_last_run(
    cli: Cli, db: psycopg.Connection[Any]
) -> None:
    with start_emulator(EmulatorConfig(users=3000, seed=11)) as big:
        clerk = big.emulator
        first = cli.json("sync", CLERK_API_URL=big.base_url)
        assert first["mode"] == "full"  # nothing to start from yet
        assert first["full_reconcile"]["reason"] == "no full reconcile has completed yet"
        assert first["applied"]["create"] == 3000
        assert first["watermark"]["recorded_ms"] is not None

        ids = clerk.user_ids()
        changed = [ids[7], ids[1500], ids[2998]]  # old, middle and new users
        for n, clerk_id in enumerate(changed):
            clerk.update_user(clerk_id, first_name=f"Changed{n}")
        clerk.reset_stats()
        doc = cli.json("sync", CLERK_API_URL=big.base_url)
        by_endpoint = clerk.stats()["by_endpoint"]

    assert doc["mode"] == "watermark"
    assert doc["status"] == "ok"
    assert doc["counts"]["update"] == 3
    assert doc["applied"] == {a: 3 if a == "update" else 0 for a in ACTIONS}
    assert {c["clerk_id"] for c in doc["changes"]} == set(changed)
    assert doc["full_reconcile"] == {"needed": False, "ran": False, "reason": None}
    # one page of the newest-changed-first list, not a walk of 3000 users (6 pages)
    assert by_endpoint["GET /v1/users"] == 1
    assert doc["watermark"]["pages"] == 1
    assert by_endpoint.get("GET /v1/users/{id}", 0) == 0
    stored = names(db)
    assert [stored[i] for i in changed] == ["Changed0", "Changed1", "Changed2"]


def test_the_overlap_rereads_changes_just_below_the_watermark(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 6)
    clerk = emulator.emulator
    minute = 60_000
    # last changed long ago, so that each change below moves the user's updated_at forward, as
    # Clerk's always does (the version gate refuses a version older than one applied)
    for user in users[:3]:
        clerk.update_user(user["id"], updated_at=user["updated_at"] - 120 * minute)
    assert cli.json("sync")["mode"] == "full"
    mark = watermark(db)
    # changes stamped before the watermark: clock skew, or made while that run was walking
    clerk.update_user(users[0]["id"], first_name="Within", updated_at=mark - 5 * minute)
    clerk.update_user(users[1]["id"], updated_at=mark - 20 * minute)  # where the walk stops
    clerk.update_user(users[2]["id"], first_name="Beyond", updated_at=mark - 30 * minute)

    doc = cli.json("sync", "--batch-size", "1")
    assert doc["mode"] == "watermark"
    assert doc["watermark"]["since_ms"] == mark - 10 * minute
    assert [c["clerk_id"] for c in doc["changes"]] == [users[0]["id"]]
    assert names(db)[users[2]["id"]] == "First2"  # 30 minutes back is beyond a 10-minute overlap

    wider = cli.json("sync", "--batch-size", "1", "--overlap-minutes", "45")
    assert [c["clerk_id"] for c in wider["changes"]] == [users[2]["id"]]
    assert names(db)[users[2]["id"]] == "Beyond"


def test_sign_ups_and_bans_do_not_need_the_full_reconcile(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """Banned users stay in Clerk's count but are inactive rows: comparing Clerk's count with
    active rows would call for a full walk after every ban."""
    users = populate(emulator, 10)
    assert cli.json("sync")["mode"] == "full"
    emulator.emulator.ban_user(users[3]["id"])
    new = emulator.emulator.create_user(first_name="New", email="new@x.test")
    doc = cli.json("sync")
    assert doc["mode"] == "watermark"
    assert doc["counts"]["create"] == 1
    assert doc["counts"]["update"] == 1
    assert doc["full_reconcile"]["needed"] is False
    again = cli.json("sync")
    assert again["mode"] == "watermark"
    assert again["full_reconcile"]["needed"] is False
    stored = {r["clerk_id"]: r["is_active"] for r in rows(db)}
    assert stored[users[3]["id"]] is False
    assert stored[new["id"]] is True


@BOTH_SCHEMAS
def test_a_deletion_triggers_the_full_reconcile(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 20)
    assert cli.json("sync")["mode"] == "full"
    gone = users[4]["id"]
    emulator.emulator.delete_user(gone)

    report_only = cli.json("sync", "--no-full", expect=1)
    assert report_only["mode"] == "watermark"
    assert report_only["full_reconcile"]["needed"] is True
    assert report_only["full_reconcile"]["ran"] is False
    assert "deleted in Clerk" in report_only["full_reconcile"]["reason"]
    assert report_only["applied"]["deactivate"] == 0
    assert db.execute("SELECT count(*) FROM users WHERE is_active").fetchone() == (20,)

    doc = cli.json("sync")
    assert doc["mode"] == "full"
    assert doc["full_reconcile"] == {
        "needed": True,
        "ran": True,
        "reason": report_only["full_reconcile"]["reason"],
    }
    assert doc["applied"]["deactivate"] == 1
    assert doc["counts"]["unchanged"] == 19
    inactive = db.execute("SELECT clerk_id FROM users WHERE NOT is_active").fetchall()
    assert inactive == [(gone,)]
    # the deleted user is now part of the baseline: back to cheap runs
    assert cli.json("sync")["mode"] == "watermark"


def test_a_mass_deletion_seen_by_sync_meets_the_same_guard(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 100)
    assert cli("sync").exit_code == 0
    for user in users[:20]:
        emulator.emulator.delete_user(user["id"])
    doc = cli.json("sync", expect=3)
    assert doc["status"] == "refused"
    assert "20 rows would be deactivated" in doc["refusal"]
    assert db.execute("SELECT count(*) FROM users WHERE NOT is_active").fetchone() == (0,)


@BOTH_SCHEMAS
def test_sync_prints_one_line_for_cron(cli: Cli, emulator: RunningEmulator, db: Any) -> None:
    populate(emulator, 3)
    for args in (["sync"], ["sync", "--quiet"], ["backfill", "--quiet"], ["diff", "--quiet"]):
        result = cli(*args)
        assert result.exit_code == 0, result.stderr
        assert len(result.stdout.splitlines()) == 1, result.stdout
        assert result.stdout.startswith(args[0] + ": ok · ")
        assert "\x1b[" not in result.stdout  # no colour without a terminal
    assert "changed since the last run (1 page(s))" in cli("sync").stdout


# -- run history and status ----------------------------------------------------------------------


def test_every_run_is_recorded_with_its_instance(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 4)
    assert cli("diff", "--dry-run").exit_code == 0
    assert cli("backfill").exit_code == 0
    assert cli("sync").exit_code == 0
    down = cli("backfill", CLERK_API_URL="http://127.0.0.1:9/v1", CLERK_SYNC_MAX_ATTEMPTS="1")
    assert down.exit_code == 5
    history = rows(
        db,
        "SELECT command, dry_run, status, instance_id, environment_type, host, pid, "
        "finished_at IS NOT NULL AS finished, summary FROM clerk_sync.runs ORDER BY id",
    )
    assert [(r["command"], r["dry_run"], r["status"]) for r in history] == [
        ("backfill", False, "ok"),  # the dry run before it wrote nothing, not even history
        ("sync", False, "ok"),
        ("backfill", False, "failed"),
    ]
    assert {(r["instance_id"], r["environment_type"]) for r in history[:2]} == {
        ("ins_emulator", "development")
    }
    assert history[2]["instance_id"] is None  # Clerk never answered
    assert history[2]["summary"]["error"].startswith("Clerk is unavailable")
    assert all(r["finished"] and r["host"] == socket.gethostname() for r in history)
    assert all(r["pid"] == os.getpid() for r in history)
    assert history[0]["summary"]["counts"]["create"] == 4
    assert history[1]["summary"]["mode"] == "full"

    doc = cli.json("status")
    assert doc["command"] == "status"
    assert [r["command"] for r in doc["runs"]] == ["backfill", "sync", "backfill"]
    assert doc["runs"][0]["status"] == "failed"
    assert doc["runs"][0]["error"].startswith("Clerk is unavailable")
    assert doc["last_full_reconcile"]["command"] == "sync"
    assert doc["last_full_reconcile"]["mode"] == "full"
    assert doc["instance"]["id"] == "ins_emulator"
    assert doc["instance"]["environment_type"] == "development"
    assert doc["lock"] == {
        "state": "free",
        "run_id": None,
        "host": None,
        "pid": None,
        "heartbeat_age_s": None,
    }
    assert doc["in_progress"] is False
    assert doc["watermark"]["updated_at_ms"] == watermark(db)
    assert doc["runs"][2]["applied"]["create"] == 4
    assert doc["last_drift"]["run_id"] == doc["runs"][1]["id"]  # the last run that finished
    assert doc["last_drift"]["drift"] == 0

    human = cli("status")
    assert human.exit_code == 0
    assert "Last runs" in human.stdout
    assert "ins_emulator (development)" in human.stdout


def test_status_reports_a_stale_run_and_the_next_run_takes_over(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 5)
    [(stale_run,)] = db.execute(
        "INSERT INTO clerk_sync.runs (command, dry_run, status, host, pid) "
        "VALUES ('diff', false, 'running', %s, %s) RETURNING id",
        (socket.gethostname(), dead_pid()),
    ).fetchall()
    here = this_process()  # the pid is known gone only on this host, boot and PID namespace
    db.execute(
        "INSERT INTO clerk_sync.locks (name, run_id, host, pid, boot_id, pid_ns) "
        "VALUES ('sync', %s, %s, %s, %s, %s)",
        (stale_run, here.host, dead_pid(), here.boot_id, here.pid_ns),
    )
    [(crashed_run,)] = db.execute(  # left running, holding no lock
        "INSERT INTO clerk_sync.runs (command, dry_run, status) "
        "VALUES ('backfill', false, 'running') RETURNING id"
    ).fetchall()

    doc = cli.json("status")
    assert doc["lock"]["state"] == "stale"
    assert doc["lock"]["run_id"] == stale_run
    assert doc["in_progress"] is False
    shown = {r["id"]: r["status"] for r in doc["runs"]}
    assert shown == {stale_run: "stale", crashed_run: "crashed"}
    assert "stale" in cli("status").stdout

    run = cli.json("sync")
    assert run["status"] == "ok"
    assert any(f"Took over the lock from run {stale_run}" in n for n in run["notes"])
    assert len(rows(db)) == 5

    after = cli.json("status")
    assert after["lock"]["state"] == "free"
    shown = {r["id"]: (r["status"], r["recorded_status"]) for r in after["runs"]}
    assert shown[stale_run] == ("crashed", "crashed")
    assert shown[crashed_run] == ("crashed", "crashed")


def test_a_silent_lock_holder_on_another_host_is_stale(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 2)
    [(run_id,)] = db.execute(
        "INSERT INTO clerk_sync.runs (command, status) VALUES ('sync', 'running') RETURNING id"
    ).fetchall()
    db.execute(
        "INSERT INTO clerk_sync.locks (name, run_id, host, pid, heartbeat_at) "
        "VALUES ('sync', %s, 'another-host', 1, now() - interval '1 hour')",
        (run_id,),
    )
    assert cli.json("status")["lock"]["state"] == "stale"
    assert cli.json("sync")["applied"]["create"] == 2


@BOTH_SCHEMAS
def test_overlapping_run_exits_3_and_changes_nothing(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 5)
    assert cli("init-db").exit_code == 0  # the bookkeeping exists (on "existing": only it)
    [(running,)] = db.execute(
        "INSERT INTO clerk_sync.runs (command, status, host, pid) "
        "VALUES ('sync', 'running', %s, %s) RETURNING id",
        (socket.gethostname(), os.getpid()),
    ).fetchall()
    db.execute(  # a live run: this very process, heard from just now
        "INSERT INTO clerk_sync.locks (name, run_id, host, pid) VALUES ('sync', %s, %s, %s)",
        (running, socket.gethostname(), os.getpid()),
    )
    for command in ("sync", "backfill", "diff"):
        result = cli(command, "--quiet")
        assert result.exit_code == 3, result.output
        assert f"Another clerk-sync run holds the lock (run {running}" in result.stderr
    assert rows(db) == []
    assert db.execute("SELECT count(*) FROM clerk_sync.instance").fetchone() == (0,)

    doc = cli.json("status")
    assert doc["in_progress"] is True
    assert doc["lock"]["state"] == "held"
    statuses = [(r["command"], r["status"]) for r in doc["runs"]]
    assert statuses == [
        ("diff", "skipped"),
        ("backfill", "skipped"),
        ("sync", "skipped"),
        ("sync", "running"),  # the live run itself
    ]


def test_status_needs_only_the_database(cli: Cli, dsn: str) -> None:
    untouched = cli.json("status", CLERK_SECRET_KEY="", CLERK_API_URL="")
    assert untouched["bookkeeping"] is False  # said, not failed; and nothing created
    assert "No clerk-sync bookkeeping" in cli("status").stdout
    assert cli("init-db").exit_code == 0
    doc = cli.json("status", CLERK_SECRET_KEY="", CLERK_API_URL="")
    assert doc["runs"] == []
    assert doc["instance"] is None
    assert doc["last_full_reconcile"] is None
    assert doc["watermark"] is None
    assert "No runs yet." in cli("status").stdout


# -- instance pinning ----------------------------------------------------------------------------


@pytest.fixture
def production() -> Iterator[RunningEmulator]:
    """Another Clerk instance, with its own key."""
    config = EmulatorConfig(
        users=3, seed=5, secret_key="sk_live_production", instance_id="ins_prod"
    )
    with start_emulator(config) as running:
        yield running


def test_first_writing_run_pins_the_instance_and_dry_runs_do_not(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 2)
    assert cli("diff", "--dry-run").exit_code == 0
    assert db.execute("SELECT count(*) FROM clerk_sync.instance").fetchone() == (0,)
    doc = cli.json("backfill")
    assert "Pinned Clerk instance ins_emulator (development)." in doc["notes"]
    assert db.execute(
        "SELECT instance_id, environment_type FROM clerk_sync.instance"
    ).fetchall() == [("ins_emulator", "development")]


def test_a_key_of_another_instance_is_refused_with_exit_3(
    cli: Cli, emulator: RunningEmulator, production: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 4)
    assert cli("backfill").exit_code == 0
    before = rows(db)
    other = {"CLERK_API_URL": production.base_url, "CLERK_SECRET_KEY": "sk_live_production"}

    for args in (["diff", "--yes"], ["sync"], ["backfill", "--dry-run"]):
        result = cli(*args, **other)
        assert result.exit_code == 3, result.output
        assert "ins_emulator (development)" in result.stderr
        assert "ins_prod (production)" in result.stderr
        assert "--allow-instance-change" in result.stderr
        assert "sk_live_production" not in result.output + result.stderr
    doc = cli.json("sync", expect=3, **other)
    assert doc["error"]["message"].startswith("The table was filled from Clerk instance")
    user = cli("user", production.emulator.user_ids()[0], "--apply", **other)
    assert user.exit_code == 3
    assert rows(db) == before
    recorded = db.execute(
        "SELECT status, instance_id FROM clerk_sync.runs WHERE command = 'diff'"
    ).fetchall()
    assert recorded == [("refused", "ins_prod")]

    moved = cli.json("backfill", "--allow-instance-change", **other)
    assert moved["applied"]["create"] == 3
    assert any("Re-pinned from Clerk instance ins_emulator" in n for n in moved["notes"])
    assert cli.json("status")["instance"]["id"] == "ins_prod"
    assert cli("backfill").exit_code == 3  # the old key is now the foreign one


def test_a_key_confirmed_once_is_not_asked_about_again(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 3)
    assert cli("backfill").exit_code == 0  # pins, and confirms this key belongs to the pin
    [(check,)] = db.execute("SELECT key_check FROM clerk_sync.instance").fetchall()
    salt, _, digest = check.partition(":")
    assert len(salt) == 32 and len(digest) == 64 and SECRET not in check  # never the key
    for command in ("sync", "diff", "backfill", "sync"):
        emulator.emulator.reset_stats()
        assert cli(command).exit_code == 0
        assert "GET /v1/instance" not in emulator.emulator.stats()["by_endpoint"], command
    assert db.execute("SELECT key_check FROM clerk_sync.instance").fetchone() == (check,)


def test_the_same_key_against_another_api_is_checked_and_refused(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """An emulator answering for another instance with the very same key string: what the
    remembered key proves is the key *and* the API it was confirmed against."""
    populate(emulator, 2)
    assert cli("backfill").exit_code == 0
    before = rows(db)
    config = EmulatorConfig(users=2, seed=8, secret_key=SECRET, instance_id="ins_elsewhere")
    with start_emulator(config) as elsewhere:
        for args in (["sync"], ["diff", "--dry-run"], ["backfill"]):
            result = cli(*args, CLERK_API_URL=elsewhere.base_url)
            assert result.exit_code == 3, result.output
            assert "ins_elsewhere" in result.stderr
    assert rows(db) == before


def test_a_read_only_run_reads_a_pin_from_before_the_key_check(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 2)
    assert cli("backfill").exit_code == 0
    db.execute("ALTER TABLE clerk_sync.instance DROP COLUMN key_check")
    db.execute("DELETE FROM clerk_sync.migrations WHERE version >= 7")
    emulator.emulator.reset_stats()
    assert cli.json("diff", "--dry-run")["status"] == "ok"
    assert emulator.emulator.stats()["by_endpoint"]["GET /v1/instance"] == 1
    assert cli("sync").exit_code == 0  # migrates, checks the key once, and remembers it
    assert db.execute("SELECT key_check IS NOT NULL FROM clerk_sync.instance").fetchone() == (True,)


# -- pings ---------------------------------------------------------------------------------------


class _Pings:
    def __init__(self, status: int = 200) -> None:
        self.paths: list[str] = []
        self.status = status
        pings = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pings.paths.append(self.path)
                self.send_response(pings.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping/s3cret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pings() -> Iterator[_Pings]:
    server = _Pings()
    yield server
    server.close()


def test_ping_url_is_hit_on_success_and_fail_on_failure(
    cli: Cli, emulator: RunningEmulator, db: Any, pings: _Pings
) -> None:
    populate(emulator, 2)
    ok = cli("backfill", "--quiet", "--ping-url", pings.url)
    assert ok.exit_code == 0
    failed = cli("diff", "--ping-url", pings.url, CLERK_SECRET_KEY="")
    assert failed.exit_code == 2
    from_env = cli("sync", "--quiet", CLERK_SYNC_PING_URL=pings.url)
    assert from_env.exit_code == 0
    drift = cli("diff", "--dry-run", "--exit-code", "--ping-url", pings.url)
    assert drift.exit_code == 0  # no drift: exit 0
    assert pings.paths == [
        "/ping/s3cret-token",
        "/ping/s3cret-token/fail",
        "/ping/s3cret-token",
        "/ping/s3cret-token",
    ]
    for result in (ok, failed, from_env, drift):
        assert "s3cret-token" not in result.output + result.stderr


def test_ping_url_in_dot_env(
    cli: Cli, emulator: RunningEmulator, db: Any, pings: _Pings, tmp_path: Any
) -> None:
    (tmp_path / ".env").write_text(f"CLERK_SYNC_PING_URL={pings.url}\n")
    (tmp_path / ".env").chmod(0o600)
    assert cli("sync", "--quiet").exit_code == 0
    assert pings.paths == ["/ping/s3cret-token"]


def test_a_failing_ping_warns_with_the_host_only_and_keeps_the_exit_code(
    cli: Cli, emulator: RunningEmulator, db: Any
) -> None:
    populate(emulator, 1)
    unreachable = "http://127.0.0.1:9/ping/s3cret-token"
    result = cli("backfill", "--quiet", "--ping-url", unreachable)
    assert result.exit_code == 0
    assert "could not ping 127.0.0.1" in result.stderr
    assert "s3cret-token" not in result.output + result.stderr

    refusing = _Pings(status=500)
    try:
        doc = cli.json("sync", "--ping-url", refusing.url)
        assert doc["status"] == "ok"
        assert refusing.paths == ["/ping/s3cret-token"]
        result = cli("sync", "--quiet", "--ping-url", refusing.url)
        assert result.exit_code == 0
        assert "ping to 127.0.0.1 answered HTTP 500" in result.stderr
        assert "s3cret-token" not in result.output + result.stderr
    finally:
        refusing.close()
    json.loads(cli("sync", "--json", "--ping-url", unreachable).stdout)  # stdout stays one doc


def test_old_history_is_pruned_but_not_what_sync_and_status_read(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """A 5-minute cron makes ~105k runs a year: writing runs delete finished runs older than
    90 days, but never the newest watermark or baseline of an instance, the newest full
    reconcile, a run with checkpoints to resume, or anything recent."""
    populate(emulator, 3)
    old = "now() - interval '100 days'"

    def add(command: str, status: str, extra: str = "", values: str = "") -> int:
        [(run_id,)] = db.execute(
            f"INSERT INTO clerk_sync.runs (command, status, started_at, finished_at{extra}) "
            f"VALUES ('{command}', '{status}', {old}, {old}{values}) RETURNING id"
        ).fetchall()
        db.execute(
            "INSERT INTO clerk_sync.run_seen (run_id, clerk_id) VALUES (%s, 'user_x')", (run_id,)
        )
        return int(run_id)

    plain = [add("sync", "ok", ", instance_id", ", 'ins_other'") for _ in range(3)]
    dry = add("diff", "ok", ", dry_run", ", true")
    mark = add("sync", "ok", ", instance_id, watermark_ms", ", 'ins_other', 1700000000000")
    baseline = add(
        "sync",
        "ok",
        ", instance_id, summary",
        """, 'ins_other', '{"baseline": {"table_rows": 3, "clerk_users": 3}}'""",
    )
    resumable = add("diff", "interrupted")
    db.execute(
        "INSERT INTO clerk_sync.run_windows (run_id, window_no) VALUES (%s, 0)", (resumable,)
    )
    full = add("diff", "ok")
    recent = int(
        db.execute(
            "INSERT INTO clerk_sync.runs (command, status, finished_at) "
            "VALUES ('sync', 'ok', now() - interval '10 days') RETURNING id"
        ).fetchall()[0][0]
    )

    assert cli.json("diff", "--dry-run")["status"] == "ok"  # a dry run prunes nothing
    assert len(db.execute("SELECT id FROM clerk_sync.runs").fetchall()) == 9  # nor records
    assert cli.json("backfill")["status"] == "ok"

    left = {r[0] for r in db.execute("SELECT id FROM clerk_sync.runs").fetchall()}
    assert left.isdisjoint(plain)
    assert dry not in left
    assert {mark, baseline, resumable, full, recent} <= left
    assert not db.execute(
        "SELECT 1 FROM clerk_sync.run_seen WHERE run_id = ANY(%s)", ([*plain, dry],)
    ).fetchall(), "the scratch rows of deleted runs stay behind"
    assert cli.json("status")["last_full_reconcile"]["id"] == full

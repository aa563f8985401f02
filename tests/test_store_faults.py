"""Faults from the database and from other writers (issue: trust). Real processes, real
Postgres; each test fails if its protection is removed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from clerk_sync_cli.emulator import RunningEmulator

from .serving import free_port
from .support import BOTH_SCHEMAS, Cli, count, populate, rows, spawn

# -- crashes and dropped connections ----------------------------------------------------------------


def test_kill_9_mid_backfill_leaves_whole_pages_and_the_rerun_resumes(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 1500)
    emulator.emulator.configure(latency_ms=60)
    child = spawn(cli, "backfill", "--batch-size", "100", "--concurrency", "1")
    deadline = time.monotonic() + 30
    while count(db) < 300 and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    written = count(db)
    assert 300 <= written < 1500
    assert written % 100 == 0, "a page was half applied"
    assert count(db, "SELECT count(*) FROM user_monitoring_settings") == written

    emulator.emulator.configure(latency_ms=0)
    emulator.emulator.reset_stats()
    doc = cli.json("backfill", "--batch-size", "100", "--concurrency", "1")
    assert any("Resuming run" in n for n in doc["notes"]), doc["notes"]
    assert doc["applied"]["create"] == 1500 - written
    pages = emulator.emulator.stats()["by_endpoint"]["GET /v1/users"]
    assert pages <= (1500 - written) // 100 + 2, "the rerun started over instead of resuming"
    assert count(db) == 1500
    assert cli.json("diff")["counts"]["unchanged"] == 1500


def test_dropped_connection_is_reopened_and_the_run_converges(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], pg_admin_dsn: str
) -> None:
    populate(emulator, 50)

    def drop_connections(request: int) -> None:
        if request == 3:
            with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'clerk-sync'"
                )

    emulator.emulator.before_list = drop_connections
    child = spawn(cli, "backfill", "--json", "--batch-size", "10", "--concurrency", "1")
    stdout, stderr = child.communicate(timeout=60)
    emulator.emulator.before_list = None
    assert child.returncode == 0, stderr
    assert stderr == "", "the driver's own complaint about the lost connection leaked"
    doc = json.loads(stdout)
    assert doc["status"] == "ok"
    assert any("re-opened" in n for n in doc["notes"]), doc["notes"]
    assert count(db) == 50


def test_a_locked_row_times_out_instead_of_hanging_and_a_rerun_converges(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], dsn: str
) -> None:
    users = populate(emulator, 5)
    assert cli("backfill").exit_code == 0
    emulator.emulator.update_user(users[2]["id"], first_name="Changed")
    with psycopg.connect(dsn) as blocker:  # the web app, stuck mid-transaction on that row
        blocker.execute(
            "UPDATE users SET last_name = 'busy' WHERE clerk_id = %s", (users[2]["id"],)
        )
        started = time.monotonic()
        result = cli("backfill", CLERK_SYNC_LOCK_TIMEOUT_MS="200")
        assert time.monotonic() - started < 30
        assert result.exit_code == 5, result.stderr
        assert "lock timeout" in result.stderr
        blocker.rollback()
    doc = cli.json("backfill")
    assert doc["applied"]["update"] == 1
    assert rows(db, "SELECT first_name FROM users WHERE clerk_id = %s", users[2]["id"]) == [
        {"first_name": "Changed"}
    ]


# -- other writers ----------------------------------------------------------------------------------


def run_two_at_once(cli: Cli, env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    children = [
        spawn(cli, "diff", "--yes", "--json", "--batch-size", "20", "--concurrency", "1", **env)
        for _ in range(2)
    ]
    done = []
    for child in children:
        out, err = child.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    return done


def assert_exactly_one_applied(done: list[subprocess.CompletedProcess[str]], total: int) -> None:
    codes = sorted(d.returncode for d in done)
    assert codes == [0, 3], [(d.returncode, d.stderr) for d in done]
    winner = next(d for d in done if d.returncode == 0)
    loser = next(d for d in done if d.returncode == 3)
    assert json.loads(winner.stdout)["applied"]["create"] == total
    assert "holds the lock" in loser.stderr
    assert json.loads(loser.stdout)["status"] == "failed"


@BOTH_SCHEMAS
def test_overlapping_runs_exactly_one_applies(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 200)
    emulator.emulator.configure(latency_ms=40)
    assert_exactly_one_applied(run_two_at_once(cli, {}), 200)
    assert count(db) == 200


def test_a_run_whose_lock_was_taken_over_stops_before_its_next_commit(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], dsn: str
) -> None:
    """A run silent past the stale limit (a suspended laptop) may be taken over; when it wakes
    up, its next page must not commit: each page refreshes the lock and checks it is still
    its own inside the page's transaction."""
    populate(emulator, 100)
    written_at_takeover: list[int] = []

    def take_over(request: int) -> None:
        if request == 4:  # a few pages in
            with psycopg.connect(dsn, autocommit=True) as other:
                [(run_id,)] = other.execute(
                    "INSERT INTO clerk_sync.runs (command, status) "
                    "VALUES ('backfill', 'running') RETURNING id"
                ).fetchall()
                other.execute(
                    "UPDATE clerk_sync.locks SET run_id = %s, token = 'another-lease', pid = 1, "
                    "heartbeat_at = now()",
                    (run_id,),
                )
                written_at_takeover.append(count(other))

    emulator.emulator.before_list = take_over
    result = cli("backfill", "--json", "--batch-size", "10", "--concurrency", "1")
    emulator.emulator.before_list = None
    assert result.exit_code == 3, result.stderr
    assert "took over the lock" in result.stderr
    assert 0 < written_at_takeover[0] < 100
    assert count(db) == written_at_takeover[0], "a page committed after the lock was lost"


@pytest.fixture
def pgbouncer(dsn: str) -> Iterator[str]:
    """PgBouncer in transaction pooling mode (like Supabase's pooler on 6543) in front of the
    test database. Skipped where the pgbouncer binary is missing (.ci/run installs it)."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if binary is None:
        if os.environ.get("CLERK_SYNC_REQUIRE_PGBOUNCER"):
            pytest.fail(
                "pgbouncer is required here (CLERK_SYNC_REQUIRE_PGBOUNCER) but not installed"
            )
        pytest.skip("pgbouncer is not installed")
    params = conninfo_to_dict(dsn)
    port = free_port()
    base = Path(tempfile.mkdtemp(prefix="clerk-sync-bouncer-"))
    base.chmod(0o777)
    target = " ".join(
        f"{k}={v}" for k, v in params.items() if k in ("host", "port", "dbname", "user")
    )
    (base / "pgbouncer.ini").write_text(
        f"[databases]\n{params['dbname']} = {target}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = any\n"
        f"pool_mode = transaction\nmax_client_conn = 50\ndefault_pool_size = 2\n"
        f"unix_socket_dir =\nlogfile = {base}/log\npidfile = {base}/pid\n"
    )
    as_user = ["runuser", "-u", "pgserver", "--"] if os.geteuid() == 0 else []
    child = subprocess.Popen(
        [*as_user, binary, str(base / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = make_conninfo(
        "",
        host="127.0.0.1",
        port=port,
        dbname=params["dbname"],
        user=params.get("user", "postgres"),
    )
    try:
        for _ in range(100):
            try:
                psycopg.connect(url, prepare_threshold=None).close()
                break
            except psycopg.OperationalError:
                time.sleep(0.05)
        else:
            pytest.fail(
                f"pgbouncer did not start: {(base / 'log').read_text() if (base / 'log').exists() else ''}"
            )
        yield url
    finally:
        child.terminate()
        child.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def test_through_pgbouncer_transaction_pooling_sync_works_and_one_run_applies(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], pgbouncer: str
) -> None:
    users = populate(emulator, 120)
    doc = cli.json("backfill", DATABASE_URL=pgbouncer)
    assert doc["applied"]["create"] == 120
    emulator.emulator.delete_user(users[0]["id"])
    doc = cli.json("diff", "--yes", DATABASE_URL=pgbouncer)
    assert doc["applied"]["deactivate"] == 1
    for user in users[1:60]:
        emulator.emulator.update_user(user["id"], last_name="Again")
    emulator.emulator.configure(latency_ms=40)
    done = run_two_at_once(cli, {"DATABASE_URL": pgbouncer})
    codes = sorted(d.returncode for d in done)
    assert codes == [0, 3], [(d.returncode, d.stderr) for d in done]
    assert count(db, "SELECT count(*) FROM users WHERE last_name = 'Again'") == 59


@BOTH_SCHEMAS
def test_the_web_app_writing_the_same_users_at_the_same_moment(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], dsn: str
) -> None:
    """The app's sign-in upsert (the guide's POST /users/sync) racing the backfill: no unique
    violation, no error, and the table ends matching Clerk."""
    users = populate(emulator, 200)
    emulator.emulator.configure(latency_ms=20)
    stop = threading.Event()
    errors: list[BaseException] = []

    def web_app() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while not stop.is_set():
                    for user in users[::7]:
                        conn.execute(
                            "INSERT INTO users (clerk_id, email, first_name, last_name) VALUES (%s, %s, %s, 'Stale') "
                            "ON CONFLICT (clerk_id) DO UPDATE SET email = EXCLUDED.email",
                            (
                                user["id"],
                                user["email_addresses"][0]["email_address"],
                                user["first_name"],
                            ),
                        )
        except BaseException as exc:
            errors.append(exc)

    app = threading.Thread(target=web_app)
    app.start()
    try:
        doc = cli.json("backfill", "--batch-size", "25", "--concurrency", "1")
    finally:
        stop.set()
        app.join()
    assert not errors
    assert doc["status"] == "ok"
    assert count(db) == 200
    final = cli.json("backfill")  # the app's stale last names are Clerk's again
    assert count(db, "SELECT count(*) FROM users WHERE last_name = 'Stale'") == 0
    assert final["status"] == "ok"


# -- roles, row-level security, identifiers -----------------------------------------------------------

GRANTS = """
    DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clerk_syncer') THEN
        CREATE ROLE clerk_syncer LOGIN;
      END IF;
    END $$;
    GRANT USAGE ON SCHEMA public TO clerk_syncer;
    GRANT SELECT, INSERT, UPDATE ON public.users TO clerk_syncer;
    GRANT INSERT ON public.user_monitoring_settings TO clerk_syncer;
    GRANT USAGE ON SCHEMA clerk_sync TO clerk_syncer;
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA clerk_sync TO clerk_syncer;
"""


#: init-db turns row-level security on for the tables it creates: such a role needs a policy
#: that lets it see every row (the README's least-privilege recipe).
POLICIES = """
    CREATE POLICY clerk_sync_all ON public.users FOR ALL TO clerk_syncer
        USING (true) WITH CHECK (true);
    CREATE POLICY clerk_sync_all ON public.user_monitoring_settings FOR ALL TO clerk_syncer
        USING (true) WITH CHECK (true);
"""


def test_least_privilege_role_syncs_and_deactivates(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], dsn: str
) -> None:
    db.execute(GRANTS)
    as_role = make_conninfo(dsn, user="clerk_syncer")
    assert cli("diff", "--dry-run", DATABASE_URL=as_role).exit_code == 3  # RLS, no policy yet
    db.execute(POLICIES)
    users = populate(emulator, 12)
    doc = cli.json("backfill", DATABASE_URL=as_role)
    assert doc["applied"]["create"] == 12
    assert (
        count(db, "SELECT count(*) FROM user_monitoring_settings") == 12
    )  # the trigger, as this role
    emulator.emulator.delete_user(users[0]["id"])
    doc = cli.json("diff", "--yes", DATABASE_URL=as_role)
    assert doc["applied"]["deactivate"] == 1
    assert any("cannot read the settings table" in n for n in doc["notes"])
    with psycopg.connect(as_role) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM users")


def test_row_level_security_that_hides_rows_is_refused(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], dsn: str
) -> None:
    db.execute(GRANTS)
    populate(emulator, 4)
    assert cli("backfill").exit_code == 0
    db.execute("ALTER TABLE users ENABLE ROW LEVEL SECURITY")
    db.execute("CREATE POLICY only_some ON users USING (email <> 'user0@example.com')")
    result = cli("diff", "--yes", DATABASE_URL=make_conninfo(dsn, user="clerk_syncer"))
    assert result.exit_code == 3
    assert "Row-level security" in result.stderr
    assert count(db) == 4
    assert count(db, "SELECT count(*) FROM users WHERE NOT is_active") == 0


def test_hostile_table_names_are_quoted_and_checked(cli: Cli, db: psycopg.Connection[Any]) -> None:
    hostile = 'users"; DROP TABLE users; --'
    result = cli("diff", CLERK_SYNC_USERS_TABLE=hostile)
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    assert count(db) == 0  # the table is still there
    result = cli("diff", CLERK_SYNC_SCHEMA="public'; SELECT pg_sleep(5); --")
    assert result.exit_code == 2


def test_table_in_another_schema(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    db.execute('CREATE SCHEMA "App Data"')
    db.execute('CREATE TABLE "App Data"."Members" (LIKE public.users INCLUDING ALL)')
    db.execute('CREATE TABLE "App Data".settings (user_id uuid UNIQUE)')
    populate(emulator, 3)
    doc = cli.json(
        "backfill",
        CLERK_SYNC_SCHEMA="App Data",
        CLERK_SYNC_USERS_TABLE="Members",
        CLERK_SYNC_SETTINGS_TABLE="settings",
    )
    assert doc["applied"]["create"] == 3
    assert count(db, 'SELECT count(*) FROM "App Data"."Members"') == 3
    assert count(db, 'SELECT count(*) FROM "App Data".settings') == 3  # no trigger: repaired
    assert count(db) == 0


def test_a_crashed_diff_keeps_its_checkpoint_across_another_command(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """A frequent `sync`/`backfill` between a killed nightly `diff` and its rerun must not
    throw the diff's progress away."""
    populate(emulator, 1000)
    emulator.emulator.configure(latency_ms=60)
    child = spawn(cli, "diff", "--yes", "--batch-size", "100", "--concurrency", "1")
    deadline = time.monotonic() + 30
    while count(db) < 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    emulator.emulator.configure(latency_ms=0)
    assert cli("backfill").exit_code == 0  # another command in between
    doc = cli.json("diff", "--yes", "--batch-size", "100", "--concurrency", "1")
    assert any("Resuming run" in n for n in doc["notes"]), doc["notes"]
    assert doc["status"] == "ok"
    assert count(db) == 1000

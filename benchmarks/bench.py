#!/usr/bin/env python
"""Measure clerk-sync side by side with the floor (download + parse only) and the naive pattern.

One command, from the repository root::

    .venv/bin/python benchmarks/bench.py                       # N = 10k and 100k, table on stdout
    .venv/bin/python benchmarks/bench.py --sizes 10000,100000,1000000 --out benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench.py --latency-ms 300      # latency mode

For each N it starts the Clerk emulator (a child process, so its CPU does not share a GIL with
what is measured) and a fresh embedded Postgres, then runs every scenario as its own child
process and reaps it with ``os.wait4`` so that peak RSS and CPU time are per scenario:

* ``floor``     walk ``GET /v1/users`` with the cursor and ``json.loads`` every page; no database
* ``naive``     the original ``POST /users/sync`` pattern: one upsert + commit per user
* ``backfill``  ``clerk-sync backfill --json`` into an empty table
* ``diff (nothing changed)``  ``clerk-sync diff --json`` right after
* ``diff (1% changed)``       rename 1% of the users in the emulator, then ``clerk-sync diff``

Latency mode (``--latency-ms``) runs only the floor (a sequential cursor walk) and ``diff``
(nothing changed), since there the API's latency, not CPU, is the limit.

Everything started here binds 127.0.0.1 (Postgres: a Unix socket) and is stopped on exit,
including on Ctrl-C, SIGTERM and errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx
    import psycopg

SECRET_KEY = "sk_test_emulator"  # noqa: S105 - the emulator's public test key
PAGE = 500
#: A production key's Backend API limit: 1,000 requests per 10 s.
PRODUCTION_RPS = 100.0
MAX_RPS = "100000"  # lift clerk-sync's sk_test_ pace (9 req/s): we measure CPU and DB cost
BENCH_APP = "clerk-sync-bench"
REPO = Path(__file__).resolve().parent.parent
MARK = "<!-- bench:{mode}:{edge} -->"

# ---------------------------------------------------------------------------------------------
# Child processes: `bench.py --child floor|naive`. Only stdlib at module level, so that the floor
# child loads nothing but httpx and json.
# ---------------------------------------------------------------------------------------------


def _walk(http: httpx.Client, url: str, max_users: int | None = None) -> Iterator[list[Any]]:
    """Every page of ``GET /users`` in ``+created_at`` order with the ``starting_after`` cursor."""
    headers = {"Authorization": f"Bearer {SECRET_KEY}", "Accept": "application/json"}
    params: dict[str, Any] = {"limit": PAGE, "order_by": "+created_at"}
    seen = 0
    while True:
        response = http.get(f"{url}/users", params=params, headers=headers)
        response.raise_for_status()
        page = json.loads(response.content)
        yield page
        seen += len(page)
        if len(page) < PAGE or (max_users is not None and seen >= max_users):
            return
        params["starting_after"] = page[-1]["id"]


def child_floor(url: str) -> dict[str, Any]:
    import httpx

    started = time.perf_counter()
    users = 0
    with httpx.Client(timeout=60.0) as http:
        for page in _walk(http, url):
            users += len(page)
    return {"users": users, "work_s": time.perf_counter() - started}


#: What both the naive handler and the database floor do on a conflict: overwrite.
ON_CONFLICT_OVERWRITE = (
    "ON CONFLICT (clerk_id) DO UPDATE SET email = EXCLUDED.email, "
    "first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, "
    "profile_image_url = EXCLUDED.profile_image_url, is_active = EXCLUDED.is_active"
)
NAIVE_SQL = (
    "INSERT INTO public.users (clerk_id, email, first_name, last_name, profile_image_url, "
    "is_active, created_at) VALUES (%s, %s, %s, %s, %s, %s, to_timestamp(%s / 1000.0)) "
    + ON_CONFLICT_OVERWRITE
)


def _naive_params(user: dict[str, Any]) -> tuple[Any, ...]:
    """What a typical webhook/sign-in handler extracts from a Clerk user."""
    primary = user.get("primary_email_address_id")
    email = next(
        (e["email_address"] for e in user.get("email_addresses") or [] if e["id"] == primary),
        None,
    )
    return (
        user["id"],
        email,
        user.get("first_name") or None,
        user.get("last_name") or None,
        user.get("image_url") or user.get("profile_image_url"),
        not user.get("banned", False),
        user.get("created_at"),
    )


def child_naive(url: str, dsn: str, max_users: int | None) -> dict[str, Any]:
    import httpx
    import psycopg

    started = time.perf_counter()
    users = 0
    with (
        httpx.Client(timeout=60.0) as http,
        psycopg.connect(dsn, autocommit=True, application_name="bench-naive") as conn,
    ):
        for page in _walk(http, url, max_users):
            for user in page:
                if max_users is not None and users >= max_users:
                    break
                conn.execute(NAIVE_SQL, _naive_params(user))  # autocommit: one commit each
                users += 1
    return {"users": users, "work_s": time.perf_counter() - started}


#: The database floor's statement: a page of the same rows upserted in one statement, as
#: clerk-sync's own upsert does, with the app's settings trigger firing; no Clerk, no mapping.
DB_FLOOR_SQL = (
    "INSERT INTO public.users (clerk_id, email, first_name, last_name, profile_image_url, "
    "is_active, created_at) SELECT clerk_id, email, first_name, last_name, profile_image_url, "
    "is_active, to_timestamp(created_at / 1000.0) FROM json_to_recordset(%s::json) AS "
    "x(clerk_id text, email text, first_name text, last_name text, profile_image_url text, "
    "is_active boolean, created_at bigint) " + ON_CONFLICT_OVERWRITE
)
#: The names of :func:`_naive_params`' values, in order: the database floor's JSON rows.
ROW_KEYS = (
    "clerk_id",
    "email",
    "first_name",
    "last_name",
    "profile_image_url",
    "is_active",
    "created_at",
)


def child_db_floor(dsn: str, pages_path: str) -> dict[str, Any]:
    """Upsert the pages the warm-up saved (one ``count<TAB>json`` line each), one statement
    and one commit a page: what Postgres alone needs for a backfill."""
    import psycopg

    started = time.perf_counter()
    users = 0
    with (
        psycopg.connect(dsn, application_name="bench-db-floor") as conn,
        open(pages_path, encoding="utf-8") as pages,
    ):
        for line in pages:
            count, page = line.split("\t", 1)
            conn.execute(DB_FLOOR_SQL, (page,))
            conn.commit()
            users += int(count)
    return {"users": users, "work_s": time.perf_counter() - started}


def child_spawner() -> None:
    """Run the commands it is sent (one JSON line each) and answer with their measurements.

    Linux starts a process's ``ru_maxrss`` at the RSS of the process that spawned it (the
    high-water mark survives ``exec``), so the scenarios are spawned from this small process,
    started before the orchestrator imports anything big, not from the orchestrator itself."""
    signal.signal(signal.SIGTERM, _sigterm)
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):  # its child is killed first
        for line in sys.stdin:
            request = json.loads(line)
            measured = run_measured(request["cmd"], request["env"], request["cwd"])
            sys.stdout.write(json.dumps(measured.__dict__) + "\n")
            sys.stdout.flush()


def run_child_mode(args: argparse.Namespace) -> None:
    if args.child == "spawner":
        child_spawner()
        return
    if args.child == "floor":
        result = child_floor(args.url)
    elif args.child == "db-floor":
        result = child_db_floor(args.dsn, args.pages)
    else:
        result = child_naive(args.url, args.dsn, args.max_users)
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Measuring one child process
# ---------------------------------------------------------------------------------------------


@dataclass
class Measured:
    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    exit_code: int
    stdout: str
    stderr: str

    def document(self) -> dict[str, Any]:
        """The child's JSON document: the last stdout line that parses."""
        for line in reversed(self.stdout.strip().splitlines()):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    return doc
        with contextlib.suppress(ValueError):
            doc = json.loads(self.stdout)
            if isinstance(doc, dict):
                return doc
        return {}


def run_measured(cmd: Sequence[str], env: dict[str, str], cwd: str) -> Measured:
    """Run ``cmd``; reap it with wait4 for its own peak RSS and CPU time."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            wall_s=wall,
            peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
            cpu_s=usage.ru_utime + usage.ru_stime,
            exit_code=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


class Spawner:
    """The orchestrator's side of :func:`child_spawner`."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", "spawner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, cmd: Sequence[str], env: dict[str, str], cwd: str) -> Measured:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": list(cmd), "env": env, "cwd": cwd}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the spawner process died")
        return Measured(**json.loads(line))

    def close(self, *, now: bool = False) -> None:
        """Stop the helper; ``now`` (interrupted): stop the scenario it is running too."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(0.1 if now else 5)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


def _proc_cpu(pid: int, children_too: bool = False) -> float:
    """CPU seconds of a process (all threads); with ``children_too``, plus reaped children."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])
    if children_too:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _busy_cpu() -> float:
    """CPU seconds the whole machine has spent in user and system mode (all cores), from
    /proc/stat (interrupts and a hypervisor's steal time left out)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]]
    except (OSError, ValueError):
        return math.nan
    return sum(values) / os.sysconf("SC_CLK_TCK")  # user + nice + system


def _tree_cpu(root_pid: int) -> float:
    """CPU seconds of a server and everything it forked (live children and reaped ones)."""
    total = _proc_cpu(root_pid, children_too=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == root_pid:
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == root_pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# ---------------------------------------------------------------------------------------------
# The emulator and Postgres
# ---------------------------------------------------------------------------------------------


@dataclass
class Emulator:
    url: str  # http://127.0.0.1:<port>/v1
    pid: int
    http: httpx.Client

    @property
    def control(self) -> str:
        return self.url.rsplit("/v1", 1)[0] + "/_emulator"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {SECRET_KEY}"}

    def reset_stats(self) -> None:
        self.http.post(f"{self.control}/reset-stats", headers=self._headers()).raise_for_status()

    def api_requests(self) -> int:
        response = self.http.get(f"{self.control}/stats", headers=self._headers())
        return int(response.raise_for_status().json()["api_requests"])

    def configure(self, **knobs: float) -> None:
        self.http.patch(
            f"{self.control}/config", json=knobs, headers=self._headers()
        ).raise_for_status()

    def rename(self, user_id: str, first_name: str) -> None:
        self.http.patch(
            f"{self.control}/users/{user_id}",
            json={"first_name": first_name},
            headers=self._headers(),
        ).raise_for_status()

    def cpu_s(self) -> float:
        return _proc_cpu(self.pid)

    def list_problem(self) -> str | None:
        """Why a plain list request (no offset) fails, or None when it succeeds."""
        response = self.http.get(f"{self.url}/users", params={"limit": 1}, headers=self._headers())
        if response.status_code == 200:
            return None
        try:
            said = response.json()["errors"][0]["long_message"]
        except (ValueError, KeyError, IndexError, TypeError):
            said = response.text[:200]
        return f"HTTP {response.status_code}: {said}"


@contextlib.contextmanager
def emulator_process(
    users: int, latency_ms: float, deep_offset_ms: float, *, extra: Sequence[str] = ()
) -> Iterator[Emulator]:
    """``clerk-sync emulator`` as a child process (its own GIL), with ``extra`` options (the
    last ``--rate-limit`` given wins); stopped on exit."""
    import httpx

    cmd = [sys.executable, "-m", "clerk_sync_cli", "emulator", "--port", "0"]
    cmd += ["--users", str(users), "--seed", "1", "--rate-limit", "off"]
    # every user kept rendered (~2.2 KB each, +20%), so the emulator is not what is measured
    cmd += ["--cache-mb", str(max(256, users * 2600 // (1024 * 1024) + 1))]
    cmd += ["--latency-ms", str(latency_ms), "--deep-offset-ms", str(deep_offset_ms), *extra]
    env = {**os.environ, "CLERK_SECRET_KEY": SECRET_KEY}
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=errors, env=env, cwd=tempfile.gettempdir()
        )
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 60)
            line = child.stdout.readline().decode().strip() if ready else ""
            if not line.startswith("CLERK_API_URL="):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(5)
                errors.seek(0)
                said = errors.read().decode(errors="replace").strip()[-800:]
                raise RuntimeError(f"the emulator did not start: {said or repr(line)}")
            with httpx.Client(timeout=60.0) as http:
                yield Emulator(line.split("=", 1)[1], child.pid, http)
        finally:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@dataclass
class Postgres:
    admin_dsn: str
    admin: psycopg.Connection[Any]
    postmaster_pid: int

    def version(self) -> str:
        row = self.admin.execute("SELECT version()").fetchone()
        return str(row[0]) if row else "?"

    def create_database(self, name: str) -> str:
        from psycopg import sql
        from psycopg.conninfo import make_conninfo

        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return make_conninfo(self.admin_dsn, dbname=name)

    def cpu_s(self) -> float:
        return _tree_cpu(self.postmaster_pid)

    def settle(self, dsn: str) -> None:
        """What a scheduled diff finds hours after a backfill: the table vacuumed and
        analyzed (hint bits set, visibility map current) and no checkpoint pending. Unmeasured;
        the row "diff right after the backfill" shows what skipping this costs."""
        import psycopg

        with psycopg.connect(dsn, autocommit=True, application_name=BENCH_APP) as conn:
            conn.execute("VACUUM (ANALYZE)")
        self.admin.execute("CHECKPOINT")


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    import psycopg

    from clerk_sync_cli.embedded_postgres import embedded_postgres

    with (
        embedded_postgres() as dsn,
        psycopg.connect(dsn, autocommit=True, application_name=BENCH_APP) as admin,
    ):
        row = admin.execute("SHOW data_directory").fetchone()
        assert row is not None
        pid = int((Path(str(row[0])) / "postmaster.pid").read_text().split()[0])
        yield Postgres(dsn, admin, pid)


class TableWrites:
    """Rows written to a database between two points: ``pg_stat_user_tables`` deltas, and the
    ``users`` rows whose ``xmin`` is a transaction started after the first point."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True, application_name=BENCH_APP)
        self._xid = 0
        self._stat: dict[str, tuple[int, int, int]] = {}

    def close(self) -> None:
        self.conn.close()

    def _stats(self) -> dict[str, tuple[int, int, int]]:
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = self.conn.execute(
            "SELECT schemaname || '.' || relname, n_tup_ins, n_tup_upd, n_tup_del "
            "FROM pg_stat_user_tables"
        ).fetchall()
        return {name: (int(i), int(u), int(d)) for name, i, u, d in rows}

    def _settle(self) -> None:
        """Wait until every other client backend has exited: each flushes its table
        statistics before it leaves pg_stat_activity."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            row = self.conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid() AND application_name <> %s",
                (BENCH_APP,),
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.02)

    def mark(self) -> None:
        self._settle()
        row = self.conn.execute(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        ).fetchone()
        assert row is not None
        self._xid = int(row[0])
        self._stat = self._stats()

    def since_mark(self) -> dict[str, int]:
        self._settle()
        time.sleep(0.1)
        after = self._stats()

        def delta(name: str, cols: Sequence[int]) -> int:
            now, then = after.get(name, (0, 0, 0)), self._stat.get(name, (0, 0, 0))
            return sum(now[c] - then[c] for c in cols)

        row = self.conn.execute(
            "SELECT count(*) FROM public.users WHERE xmin::text::bigint >= %s", (self._xid,)
        ).fetchone()
        return {
            "users_xmin": int(row[0]) if row else -1,
            "users_stat": delta("public.users", (0, 1)),
            "settings_stat": delta("public.user_monitoring_settings", (0, 1)),
            "bookkeeping_stat": sum(
                delta(name, (0, 1, 2)) for name in after if name.startswith("clerk_sync.")
            ),
        }


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    n: int
    scenario: str
    users: int  # users this scenario handled (naive may be capped)
    wall_s: float = math.nan
    work_s: float = math.nan  # the child's own clock (clerk-sync: duration_s)
    peak_rss_mb: float = math.nan
    cpu_s: float = math.nan
    emulator_cpu_s: float = math.nan
    postgres_cpu_s: float = math.nan
    other_cpu_s: float = math.nan  # everything else the machine ran meanwhile (other users!)
    requests: int = -1
    rows_written: int | None = None  # users rows, as the tool reports them (JSON `applied`)
    verified: dict[str, int] = field(default_factory=dict)
    expected_rows: int | None = None
    note: str = ""
    ok: bool = True
    ratio: float = math.nan  # wall per user / floor wall per user

    @property
    def cpu_us_per_user(self) -> float:
        """The child's CPU (start-up included) per user it handled, in µs."""
        return self.cpu_s / self.users * 1e6 if self.users else math.nan


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: str
    clerk_sync: list[str]
    spawner: Spawner
    concurrency_supported: bool = False
    concurrency_default: str = "?"
    load: str = "?"
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    pg_version: str = ""

    def env(self, emulator: Emulator, dsn: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLERK_SYNC_")}
        env.update(CLERK_SECRET_KEY=SECRET_KEY, CLERK_API_URL=emulator.url)
        env.pop("DATABASE_URL", None)
        if dsn:
            env["DATABASE_URL"] = dsn
        return env

    def init_db(self, emulator: Emulator, dsn: str) -> None:
        done = subprocess.run(
            [*self.clerk_sync, "init-db", "--json"],
            env=self.env(emulator, dsn),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"clerk-sync init-db failed: {done.stdout} {done.stderr}")

    def measure(
        self,
        row: Row,
        cmd: Sequence[str],
        emulator: Emulator,
        pg: Postgres | None,
        dsn: str | None,
    ) -> dict[str, Any]:
        writes = TableWrites(dsn) if dsn else None
        try:
            if writes:
                writes.mark()
            emulator.reset_stats()
            emu_cpu, pg_cpu = emulator.cpu_s(), pg.cpu_s() if pg else 0.0
            busy = _busy_cpu()
            try:
                m = self.spawner.run(cmd, self.env(emulator, dsn), self.workdir)
            except BaseException:
                self.spawner.close(now=True)  # the scenario first, then emulator and Postgres
                raise
            if writes:
                row.verified = writes.since_mark()
            row.emulator_cpu_s = emulator.cpu_s() - emu_cpu
            row.postgres_cpu_s = (pg.cpu_s() - pg_cpu) if pg else math.nan
            ours = m.cpu_s + row.emulator_cpu_s + (row.postgres_cpu_s if pg else 0.0)
            row.other_cpu_s = max(0.0, _busy_cpu() - busy - ours)
            row.requests = emulator.api_requests()
        finally:
            if writes:
                writes.close()
        row.wall_s, row.peak_rss_mb, row.cpu_s = m.wall_s, m.peak_rss_mb, m.cpu_s
        doc = m.document()
        row.work_s = float(doc.get("work_s", doc.get("duration_s", math.nan)))
        if m.exit_code != 0:
            row.ok = False
            tail = (doc.get("error") or {}).get("message") or m.stderr.strip()[-300:]
            row.note = f"exit {m.exit_code}: {tail}"
        self.rows.append(row)
        self.progress(row)
        return doc

    def progress(self, row: Row) -> None:
        print(
            f"  N={row.n:>8,} {row.scenario:<26} {row.wall_s:8.2f} s  "
            f"rss {row.peak_rss_mb:6.1f} MB  req {row.requests:>5}  {row.note}",
            file=sys.stderr,
            flush=True,
        )

    # -- the scenarios -------------------------------------------------------------------------

    def floor(self, n: int, emulator: Emulator, runs: int, label: str = "floor") -> Row:
        best: Row | None = None
        for _ in range(max(1, runs)):
            row = Row(n, label, n)
            doc = self.measure(row, self._child("floor", emulator.url), emulator, None, None)
            row.rows_written = 0
            if doc.get("users") != n:
                row.ok, row.note = False, f"walked {doc.get('users')} users, expected {n}"
            self.rows.remove(row)
            if best is None or row.wall_s < best.wall_s:
                best = row
        assert best is not None
        if runs > 1:
            best.note = (best.note + f" best of {runs}").strip()
        self.rows.append(best)
        return best

    def naive(self, n: int, emulator: Emulator, pg: Postgres) -> Row:
        cap = min(n, self.args.naive_max)
        dsn = pg.create_database("bench_naive")
        self.init_db(emulator, dsn)
        row = Row(n, "naive (upsert+commit/user)", cap)
        cmd = [*self._child("naive", emulator.url), "--dsn", dsn, "--max-users", str(cap)]
        doc = self.measure(row, cmd, emulator, pg, dsn)
        row.rows_written = row.verified.get("users_stat")
        row.expected_rows = cap
        if cap < n:
            row.note = f"capped at the first {cap:,} users (--naive-max)"
        if doc.get("users") != cap:
            row.ok = False
        return row

    def db_floor(self, n: int, emulator: Emulator, pg: Postgres, pages: Path) -> Row:
        """The database floor: the same users upserted in 500-row pages into a fresh database
        with the app's schema (its settings trigger firing), no Clerk at all."""
        dsn = pg.create_database("bench_db_floor")
        self.init_db(emulator, dsn)
        row = Row(n, "database floor (500-row upserts, no Clerk)", n, expected_rows=n)
        cmd = [*self._child("db-floor", emulator.url), "--dsn", dsn, "--pages", str(pages)]
        doc = self.measure(row, cmd, emulator, pg, dsn)
        row.rows_written = row.verified.get("users_stat")
        if doc.get("users") != n or row.rows_written != n:
            row.ok = False
        return row

    def clerk_sync_run(
        self,
        n: int,
        label: str,
        command: str,
        emulator: Emulator,
        pg: Postgres,
        dsn: str,
        expected: int | None,
        extra: Sequence[str] = (),
    ) -> Row:
        row = Row(n, label, n, expected_rows=expected)
        cmd = [*self.clerk_sync, command, "--json", "--max-rps", MAX_RPS, *extra]
        doc = self.measure(row, cmd, emulator, pg, dsn)
        applied = doc.get("applied") or {}
        row.rows_written = sum(
            int(applied.get(k, 0)) for k in ("create", "update", "reactivate", "deactivate")
        )
        if doc.get("clerk_users") not in (None, n):
            row.ok = False
            row.note = (row.note + f" Clerk users {doc.get('clerk_users')} != {n}").strip()
        if expected is not None and not (
            row.rows_written == expected == row.verified.get("users_xmin")
        ):
            row.ok = False
        return row

    def _child(self, mode: str, url: str) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--url", url]

    # -- one N ---------------------------------------------------------------------------------

    def run_size(self, n: int) -> None:
        latency = self.args.latency_ms > 0
        print(f"N = {n:,}: starting the emulator and a fresh Postgres", file=sys.stderr)
        with (
            postgres_server() as pg,
            emulator_process(
                n, self.args.latency_ms, self.args.deep_offset_ms if latency else 0
            ) as emulator,
        ):
            self.pg_version = pg.version()
            if latency:
                emulator.configure(latency_ms=0, deep_offset_ms_per_1000=0)
            picks = self.warm_up(n, emulator)
            if latency:
                self.latency_size(n, emulator, pg)
                return
            floor = self.floor(n, emulator, self.args.floor_runs)
            if not self.args.skip_naive:
                self.naive(n, emulator, pg)
            self.db_floor(n, emulator, pg, self.pages_path(n))
            dsn = pg.create_database("bench_sync")
            self.init_db(emulator, dsn)
            self.clerk_sync_run(n, "clerk-sync backfill", "backfill", emulator, pg, dsn, n)
            self.clerk_sync_run(
                n, "diff right after the backfill (nothing changed)", "diff", emulator, pg, dsn, 0
            )
            pg.settle(dsn)
            self.clerk_sync_run(n, "diff (nothing changed)", "diff", emulator, pg, dsn, 0)
            for k, user_id in enumerate(picks):
                emulator.rename(user_id, f"Bench{k}")
            self.clerk_sync_run(
                n, f"diff ({len(picks):,} = 1% changed)", "diff", emulator, pg, dsn, len(picks)
            )
            self.ratios(n, floor)

    def latency_size(self, n: int, emulator: Emulator, pg: Postgres) -> None:
        dsn = pg.create_database("bench_sync")
        self.init_db(emulator, dsn)
        setup = Row(n, "(setup) backfill, no latency", n)
        self.measure(
            setup, [*self.clerk_sync, "backfill", "--json", "--max-rps", MAX_RPS], emulator, pg, dsn
        )
        self.rows.remove(setup)
        if not setup.ok:
            raise RuntimeError(f"the setup backfill failed: {setup.note}")
        pg.settle(dsn)
        emulator.configure(
            latency_ms=self.args.latency_ms, deep_offset_ms_per_1000=self.args.deep_offset_ms
        )
        problem = emulator.list_problem() if self.args.deep_offset_ms else None
        if problem:
            emulator.configure(deep_offset_ms_per_1000=0)
            note = (
                "With `deep_offset_ms_per_1000` set, the emulator answered list requests "
                f"without `offset` with {problem}; so this run has no offset penalty."
            )
            if note not in self.notes:
                self.notes.append(note)
        floor = self.floor(n, emulator, 1, label="floor = sequential walk")
        levels = self.args.concurrency_list if self.concurrency_supported else [None]
        for level in levels:
            extra = [] if level is None else ["--concurrency", str(level)]
            label = "diff (nothing changed)" + (f" --concurrency {level}" if extra else "")
            self.clerk_sync_run(n, label, "diff", emulator, pg, dsn, 0, extra)
        self.ratios(n, floor)

    def pages_path(self, n: int) -> Path:
        return Path(self.workdir) / f"pages-{n}.tsv"

    def warm_up(self, n: int, emulator: Emulator) -> list[str]:
        """One unmeasured walk: fills the emulator's serialized-user cache (so no scenario
        pays the first touch), picks 1% of the users, evenly spread, to rename later, and
        saves every page as the rows the database floor upserts."""
        step = 100
        picks: list[str] = []
        index = 0
        with self.pages_path(n).open("w", encoding="utf-8") as saved:
            for page in _walk(emulator.http, emulator.url):
                for user in page:
                    if index % step == step // 2:
                        picks.append(user["id"])
                    index += 1
                rows = [dict(zip(ROW_KEYS, _naive_params(u), strict=True)) for u in page]
                saved.write(f"{len(rows)}\t{json.dumps(rows)}\n")
        if index != n:
            raise RuntimeError(f"the emulator listed {index} users, expected {n}")
        return picks

    def ratios(self, n: int, floor: Row) -> None:
        per_user = floor.wall_s / max(floor.users, 1)
        for row in self.rows:
            if row.n == n and row.users:
                row.ratio = (row.wall_s / row.users) / per_user


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def machine(pg_version: str, load: str) -> list[tuple[str, str]]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    commit = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    from clerk_sync_cli import __version__

    return [
        ("CPU", cpu),
        ("cores", str(os.cpu_count())),
        ("RAM", ram),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("Postgres", pg_version or "?"),
        ("clerk-sync", f"{__version__} (git {commit}, working tree as it was)"),
        ("load average (1 min) at start / end", load),
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]


def _f(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def table(rows: Sequence[Row]) -> list[str]:
    out = [
        "| N | scenario | wall s | users/s | x floor | peak RSS MB | CPU s: client / emulator / "
        "Postgres / other processes | client CPU µs/user | API requests | rows written | check |",
        "|---:|---|---:|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        users_s = r.users / r.wall_s if r.wall_s and not math.isnan(r.wall_s) else math.nan
        written = "-" if r.rows_written is None else f"{r.rows_written:,}"
        if r.verified:
            v = r.verified
            written += (
                f" (xmin {v['users_xmin']:,}; pg_stat users {v['users_stat']:,}, "
                f"settings {v['settings_stat']:,}, clerk_sync.* {v['bookkeeping_stat']:,})"
            )
        check = "ok" if r.ok else "**FAILED**"
        if r.expected_rows is not None:
            check += f", expected {r.expected_rows:,}"
        if r.note:
            check += f"; {r.note}"
        cpu = (
            f"{_f(r.cpu_s)} / {_f(r.emulator_cpu_s)} / {_f(r.postgres_cpu_s)} / {_f(r.other_cpu_s)}"
        )
        out.append(
            f"| {r.n:,} | {r.scenario} | {_f(r.wall_s)} | {_f(users_s, 0)} | {_f(r.ratio)} | "
            f"{_f(r.peak_rss_mb, 1)} | {cpu} | {_f(r.cpu_us_per_user, 1)} | {r.requests:,} | {written} "
            f"| {check} |"
        )
    return out


def _find(rows: Sequence[Row], n: int, prefix: str) -> Row | None:
    return next((r for r in rows if r.n == n and r.scenario.startswith(prefix)), None)


def targets(bench: Bench) -> list[str]:
    rows, sizes = bench.rows, sorted({r.n for r in bench.rows})
    lines: list[str] = []

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    if bench.args.latency_ms > 0:
        for n in sizes:
            floor = _find(rows, n, "floor")
            for diff in (r for r in rows if r.n == n and r.scenario.startswith("diff")):
                if floor is None:
                    break
                speedup = floor.wall_s / diff.wall_s
                model = floor.requests * bench.args.latency_ms / 1000
                lines.append(
                    f"- N={n:,}: {diff.scenario} is {speedup:.2f}x faster than the sequential walk "
                    f"({diff.wall_s:.1f} s vs {floor.wall_s:.1f} s measured; latency alone: "
                    f"{floor.requests} requests x {bench.args.latency_ms:g} ms = {model:.1f} s); "
                    f"target ≥ 6x: {verdict(speedup >= 6)}"
                    + ("" if bench.concurrency_supported else " (clerk-sync has no --concurrency)")
                )
        return lines
    for n in sizes:
        floor = _find(rows, n, "floor")
        back, same = _find(rows, n, "clerk-sync backfill"), _find(rows, n, "diff (nothing")
        changed = next((r for r in rows if r.n == n and "% changed" in r.scenario), None)
        if not floor:
            continue
        tag = "" if n == 100_000 else " (the target is set for N=100k)"
        if back:
            work = back.work_s / floor.work_s
            lines.append(
                f"- N={n:,} backfill ≤ 1.5x floor{tag}: {back.ratio:.2f}x "
                f"({back.wall_s:.2f} s vs {floor.wall_s:.2f} s; in-process {work:.2f}x): "
                f"{verdict(back.ratio <= 1.5 and back.ok)}"
            )
        db_floor = _find(rows, n, "database floor")
        if back and db_floor:
            over = back.wall_s / db_floor.wall_s
            lines.append(
                f"- N={n:,} backfill ≤ 1.3x the database floor: {over:.2f}x "
                f"({back.wall_s:.2f} s vs {db_floor.wall_s:.2f} s; Postgres CPU "
                f"{back.postgres_cpu_s:.2f} vs {db_floor.postgres_cpu_s:.2f} s): "
                f"{verdict(over <= 1.3 and back.ok and db_floor.ok)}"
            )
        if same:
            per_user = same.cpu_us_per_user
            lines.append(
                f"- N={n:,} diff, nothing changed, client CPU ≤ 12 µs per user: "
                f"{per_user:.1f} µs (start-up included): {verdict(per_user <= 12)}"
            )
            paced = same.requests / PRODUCTION_RPS
            lines.append(
                f"- N={n:,} diff, nothing changed, rate-limit floor with a production key: "
                f"{same.requests} requests ÷ {PRODUCTION_RPS:g}/s = {paced:.2f} s; this run, "
                f"unpaced: {same.wall_s:.2f} s (the paced run is not measured here)"
            )
            zero = same.rows_written == 0 and same.verified.get("users_xmin") == 0
            lines.append(
                f"- N={n:,} diff, nothing changed ≤ 1.3x floor and 0 rows written: "
                f"{same.ratio:.2f}x ({same.wall_s:.2f} s), {same.rows_written} rows "
                f"(xmin {same.verified.get('users_xmin')}): "
                f"{verdict(same.ratio <= 1.3 and zero and same.ok)}"
            )
        if changed:
            lines.append(
                f"- N={n:,} diff, 1% changed writes exactly those rows: "
                f"{changed.rows_written} written, xmin {changed.verified.get('users_xmin')}, "
                f"expected {changed.expected_rows}: {verdict(changed.ok)} "
                f"({changed.ratio:.2f}x floor)"
            )
    big = [r for r in rows if r.n >= 1_000_000 and r.scenario.startswith(("clerk-sync", "diff"))]
    if big:
        peak = max(r.peak_rss_mb for r in big)
        lines.append(f"- 1M peak RSS ≤ 250 MB: {peak:.0f} MB: {verdict(peak <= 250)}")
    else:
        mine = [r for r in rows if r.scenario.startswith(("clerk-sync", "diff"))]
        peak = max((r.peak_rss_mb for r in mine), default=math.nan)
        lines.append(
            f"- 1M peak RSS ≤ 250 MB: not measured (no N=1M in this run); largest clerk-sync "
            f"peak here {peak:.0f} MB"
        )
    return lines


def report(bench: Bench, argv: Sequence[str]) -> str:
    a = bench.args
    mode = "latency" if a.latency_ms > 0 else "throughput"
    sizes = ", ".join(f"{n:,}" for n in a.size_list)
    title = (
        f"Latency mode (N = {sizes}): {a.latency_ms:g} ms per API request, "
        f"+{a.deep_offset_ms:g} ms per 1000 of offset"
        if mode == "latency"
        else f"Throughput mode (N = {sizes}): no latency, no rate limit"
    )
    lines = [f"## {title}", ""]
    lines.append("Command: `.venv/bin/python benchmarks/bench.py " + " ".join(argv) + "`")
    lines.append("")
    lines += [f"- **{k}**: {v}" for k, v in machine(bench.pg_version, bench.load)]
    lines.append("")
    lines += table(bench.rows)
    other = sum(r.other_cpu_s for r in bench.rows if not math.isnan(r.other_cpu_s))
    walls = sum(r.wall_s for r in bench.rows if not math.isnan(r.wall_s))
    share = other / max(walls * (os.cpu_count() or 1), 1e-9)
    if share > 0.05:
        lines += [
            "",
            f"**Warning**: other processes (or kernel I/O threads) used {other:.1f} CPU-s while the "
            f"scenarios ran ({share:.0%} of all cores): the timings above are pessimistic. "
            "See the last CPU figure of each row.",
        ]
    for floor in (r for r in bench.rows if r.scenario.startswith("floor")):
        if mode == "throughput" and floor.emulator_cpu_s > 0.3 * floor.wall_s:
            lines.append(
                f"\n**Note**: at N={floor.n:,} the floor is bound by the emulator "
                f"({floor.emulator_cpu_s:.1f} CPU-s of {floor.wall_s:.1f} s: its serialized-user "
                "cache no longer holds every user), so every scenario pays that too and the "
                "x floor ratios understate clerk-sync's own cost."
            )
    lines += [f"\n**Note**: {note}" for note in bench.notes]
    lines += ["", "Targets:", ""]
    lines += targets(bench)
    lines += [
        "",
        f"clerk-sync runs with `--max-rps {MAX_RPS}` (its sk_test_ default of 9 requests/s "
        "would dominate; this measures CPU and database cost). Wall time is the whole child "
        "process, interpreter start-up included; x floor compares wall time per user. "
        + (
            f"The floor is the best of {a.floor_runs} runs. "
            if mode == "throughput" and a.floor_runs > 1
            else ""
        )
        + "An unmeasured warm-up walk fills the emulator's cache first. "
        + (
            "The diff rows after the first start from a settled table (an unmeasured VACUUM "
            "(ANALYZE) and CHECKPOINT after the backfill), as a scheduled diff finds it. "
            if mode == "throughput"
            else "The diffs start from a settled table (an unmeasured VACUUM (ANALYZE) and "
            "CHECKPOINT after the setup backfill). "
        )
        + (
            f"clerk-sync has `--concurrency` (default {bench.concurrency_default}); "
            + (
                "the throughput runs use its default."
                if mode == "throughput"
                else "the latency runs pass each value shown."
            )
            if bench.concurrency_supported
            else "clerk-sync has no `--concurrency` option."
        ),
    ]
    return "\n".join(lines) + "\n"


def write_results(path: Path, mode: str, section: str) -> None:
    """Replace this mode's section of ``path`` (same mode and sizes); keep the other sections
    and anything written by hand outside the markers."""
    start, end = MARK.format(mode=mode, edge="start"), MARK.format(mode=mode, edge="end")
    block = f"{start}\n{section}{end}\n"
    text = path.read_text() if path.exists() else "# clerk-sync benchmark results\n\n"
    if start in text and end in text:
        before, _, rest = text.partition(start)
        _, _, after = rest.partition(end)
        after = after.lstrip("\n")
        text = before + block + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/bench.py",
        description="Measure clerk-sync against the floor (download + parse) and the naive "
        "per-user upsert, each scenario in its own process.",
    )
    parser.add_argument(
        "--sizes",
        default="10000,100000",
        help="comma-separated user counts (default: 10000,100000; 1000000 is optional)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0,
        help="latency mode: delay per API request; runs floor and diff (nothing changed) only",
    )
    parser.add_argument(
        "--deep-offset-ms",
        type=float,
        default=None,
        help="latency mode: extra delay per 1000 of offset, which only offset paging pays "
        "(default: 10 in latency mode)",
    )
    parser.add_argument(
        "--concurrency",
        default="8,16",
        help="latency mode: run clerk-sync diff once per value with --concurrency VALUE, if "
        "clerk-sync has that option (default: 8,16)",
    )
    parser.add_argument(
        "--floor-runs", type=int, default=3, help="throughput mode: floor runs, best kept"
    )
    parser.add_argument(
        "--naive-max",
        type=int,
        default=100_000,
        help="cap the naive scenario at this many users (it commits once per user)",
    )
    parser.add_argument("--skip-naive", action="store_true", help="do not run the naive scenario")
    parser.add_argument(
        "--out",
        type=Path,
        help="write/update this markdown file, e.g. "
        "benchmarks/RESULTS.md (default: print the table)",
    )
    parser.add_argument(
        "--child", choices=("floor", "naive", "db-floor", "spawner"), help=argparse.SUPPRESS
    )
    parser.add_argument("--pages", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--max-users", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child:
        try:
            args.size_list = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
        except ValueError:
            parser.error("--sizes takes comma-separated integers, e.g. 10000,100000")
        if not args.size_list or min(args.size_list) < 100:
            parser.error("every size must be at least 100")
        if args.deep_offset_ms is None:
            args.deep_offset_ms = 10.0 if args.latency_ms > 0 else 0.0
        try:
            args.concurrency_list = [int(c) for c in args.concurrency.split(",") if c.strip()]
        except ValueError:
            parser.error("--concurrency takes comma-separated integers, e.g. 8,16")
    return args


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def clerk_sync_command() -> list[str]:
    script = Path(sys.executable).parent / "clerk-sync"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clerk_sync_cli"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        run_child_mode(args)
        return 0
    signal.signal(signal.SIGTERM, _sigterm)
    spawner = Spawner()  # first, while this process is still small: see child_spawner
    load_start = os.getloadavg()[0]
    interrupted = False
    try:
        sys.path.insert(0, str(REPO))  # clerk_sync_cli, when run without an install
        command = clerk_sync_command()
        help_text = subprocess.run(
            [*command, "diff", "--help"], capture_output=True, text=True, check=False
        ).stdout
        with tempfile.TemporaryDirectory(prefix="clerk-sync-bench-") as workdir:
            bench = Bench(
                args,
                workdir,
                command,
                spawner,
                concurrency_supported="--concurrency" in help_text,
            )
            found = re.search(r"--concurrency\b.*?\[default: (\d+)", help_text, re.DOTALL)
            bench.concurrency_default = found.group(1) if found else "?"
            for n in args.size_list:
                bench.run_size(n)
            bench.load = f"{load_start:.2f} / {os.getloadavg()[0]:.2f}"
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopped the emulator and Postgres", file=sys.stderr)
        return 130
    finally:
        spawner.close(now=interrupted)
    section = report(bench, argv)
    if args.out:
        sizes = "-".join(str(n) for n in args.size_list)
        mode = ("latency" if args.latency_ms > 0 else "throughput") + f":{sizes}"
        write_results(args.out, mode, section)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(section)
    return 0 if all(r.ok for r in bench.rows) else 1


if __name__ == "__main__":
    sys.exit(main())

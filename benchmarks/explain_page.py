#!/usr/bin/env python
"""Where a page's Postgres time goes, statement by statement: a backfill page beside the
database floor's one statement for the same users, and a no-op diff page.

    .venv/bin/python benchmarks/explain_page.py [--users 100000] [--pages 10]

Fills an embedded Postgres from the emulator with ``clerk-sync backfill`` (the app's schema,
its settings trigger), takes the newest ``--pages`` x 500 users out of the tables again, and
writes each of those pages back through the real apply unit (``apply.apply_users``, then the
window's checkpoint) on a cursor that runs every statement first under ``EXPLAIN (ANALYZE,
BUFFERS, TIMING OFF)`` in a savepoint it rolls back. So each statement's planning and
execution time, its triggers included, is read off the server for exactly what clerk-sync
sends; nothing of the client counts. Then the database floor's upsert (``bench.DB_FLOOR_SQL``)
of the same page. The next ``--pages`` pages stay in the tables, unchanged, and are compared
as a no-op diff compares them, by a run that has seen every other user. Each page is rolled
back after it is measured. COMMIT (one a page either way) is not counted."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from typing import Any

import httpx
import psycopg
from bench import DB_FLOOR_SQL, ROW_KEYS, emulator_process  # this directory
from psycopg import sql

from clerk_sync_cli.apply import Target, apply_users
from clerk_sync_cli.decoding import decode_page
from clerk_sync_cli.embedded_postgres import embedded_postgres
from clerk_sync_cli.mapping import MappedUser, map_user
from clerk_sync_cli.project import schema_info
from clerk_sync_cli.store import checkpoints, schema
from clerk_sync_cli.store.connection import Cursor
from clerk_sync_cli.tables import Tables
from clerk_sync_cli.windows import Window

CLI = [sys.executable, "-m", "clerk_sync_cli"]
KEY = "sk_test_emulator"


def kind(query: str) -> str:
    """Which of the page's statements this is, by what it touches."""
    if "run_seen" in query:
        return "compare + record seen (run_seen)"
    if "user_versions" in query:
        return "version gate (user_versions)"
    if "run_windows" in query:
        return "checkpoint (run_windows)"
    if query.startswith("INSERT INTO") and "users" in query:
        return "upsert users (settings trigger firing)"
    return query[:40]


class Explaining(Cursor):
    """Runs each statement under EXPLAIN ANALYZE in a rolled-back savepoint, then for real."""

    timings: dict[str, list[float]]
    reads: dict[str, list[int]]  # blocks read from outside shared_buffers
    label: str

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        if isinstance(query, bytes):
            text = query.decode()
        elif isinstance(query, sql.Composable):
            text = query.as_string(self)
        else:
            text = str(query)
        if not text.upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
            super().execute("SAVEPOINT explain_page")
            super().execute(f"EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) {text}", params)
            row = self.fetchone()
            assert row is not None
            [plan] = row[0] if isinstance(row[0], list) else json.loads(row[0])
            name = f"{self.label}: {kind(text)}"
            self.timings[name].append(plan["Planning Time"] + plan["Execution Time"])
            self.reads[name].append(plan["Plan"].get("Shared Read Blocks", 0))
            super().execute("ROLLBACK TO SAVEPOINT explain_page")
        return super().execute(query, params, **kwargs)


def newest_pages(url: str, pages: int) -> list[list[Any]]:
    """The newest ``pages`` pages of users, as the walk decodes them."""
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
        return [
            decode_page(
                http.get(
                    f"{url}/users",
                    params={"limit": 500, "order_by": "-created_at", "offset": n * 500},
                ).content
            )
            for n in range(pages)
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=10)
    opts = parser.parse_args()
    with emulator_process(opts.users, 0, 0) as clerk, embedded_postgres() as dsn:
        env = {**os.environ, "CLERK_API_URL": clerk.url, "DATABASE_URL": dsn}
        env["CLERK_SECRET_KEY"] = KEY
        env.pop("CLERK_SYNC_PING_URL", None)
        subprocess.run([*CLI, "init-db"], env=env, check=True, capture_output=True)
        subprocess.run(
            [*CLI, "backfill", "--json", "--max-rps", "100000"],
            env=env,
            check=True,
            capture_output=True,
        )
        fetched = newest_pages(clerk.url, 2 * opts.pages)
        # the newest pages are taken out of the tables (a backfill writes them); the next ones
        # stay, unchanged, and are compared as a no-op diff compares them
        pages, unchanged = fetched[: opts.pages], fetched[opts.pages :]
        ids = [u.id for page in pages for u in page]
        kept = [u.id for page in unchanged for u in page]
        tables = Tables()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "DELETE FROM public.user_monitoring_settings s USING public.users u "
                "WHERE s.user_id = u.id AND u.clerk_id = ANY(%s)",
                (ids,),
            )
            conn.execute("DELETE FROM public.users WHERE clerk_id = ANY(%s)", (ids,))
            conn.execute("DELETE FROM clerk_sync.user_versions WHERE clerk_id = ANY(%s)", (ids,))
            conn.execute("DELETE FROM clerk_sync.run_seen WHERE clerk_id = ANY(%s)", (ids,))
            # as mid-walk: the run has seen everyone else, and has a window a page moves
            [run_id] = conn.execute("SELECT max(id) FROM clerk_sync.runs").fetchone() or [None]
            conn.execute(
                "INSERT INTO clerk_sync.run_seen (run_id, clerk_id) "
                "SELECT %s, clerk_id FROM public.users WHERE clerk_id <> ALL(%s)",
                (run_id, kept),
            )
            with Cursor(conn) as cur:
                checkpoints.save_windows(cur, run_id, [Window(0)])
                project = schema.read(cur, tables)
            conn.execute("VACUUM (ANALYZE)")
        target = Target(tables, schema_info(project, writing=True))
        timings: dict[str, list[float]] = defaultdict(list)
        reads: dict[str, list[int]] = defaultdict(list)
        floor: list[float] = []
        with psycopg.connect(dsn) as conn:

            def explained(page: list[Any], label: str, cursor: str) -> tuple[list[Any], Any]:
                """``page`` through the apply unit and the checkpoint, explained, rolled back."""
                mapped = [map_user(u, target.schema.limits) for u in page]
                with Explaining(conn) as cur:
                    cur.timings, cur.reads, cur.label = timings, reads, label
                    outcome = apply_users(cur, target, mapped, seen_by=run_id)
                    checkpoints.checkpoint(cur, run_id, 0, cursor, False)
                conn.rollback()
                return mapped, outcome

            for page in unchanged:
                _, outcome = explained(page, "no-op diff page", kept[-1])
                assert outcome.unchanged == len(page), outcome
            for page in pages:
                mapped, outcome = explained(page, "backfill page", ids[-1])
                assert sum(outcome.applied.values()) == len(page), outcome.applied
                rows = [
                    dict(zip(ROW_KEYS, _floor_values(m), strict=True))
                    for m in mapped
                    if isinstance(m, MappedUser)
                ]
                plan = conn.execute(
                    "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + DB_FLOOR_SQL,
                    (json.dumps(rows),),
                ).fetchone()[0][0]
                floor.append(plan["Planning Time"] + plan["Execution Time"])
                conn.rollback()
    report(opts, timings, reads, floor)


def _floor_values(m: MappedUser) -> tuple[Any, ...]:
    r = m.row
    created = int(r.created_at.timestamp() * 1000) if r.created_at else None
    return (
        r.clerk_id,
        r.email,
        r.first_name,
        r.last_name,
        r.profile_image_url,
        r.is_active,
        created,
    )


def report(
    opts: argparse.Namespace,
    timings: dict[str, list[float]],
    reads: dict[str, list[int]],
    floor: list[float],
) -> None:
    per_user = 1000 / 500  # ms a page → µs a user
    print(
        f"{opts.pages} pages of 500 new users into a table of {opts.users - opts.pages * 500:,}\n"
    )
    print("| statement (a page of 500) | ms, mean | µs a user | blocks read past shared_buffers |")
    print("|---|--:|--:|--:|")
    totals: dict[str, float] = defaultdict(float)
    for name, times in timings.items():
        per_page = sum(times) / opts.pages
        totals[name.split(":")[0]] += per_page
        read = sum(reads[name]) / opts.pages
        print(f"| {name} | {per_page:.2f} | {per_page * per_user:.1f} | {read:.0f} |")
    for label, total in totals.items():
        print(f"| **{label}, all statements** | **{total:.2f}** | **{total * per_user:.1f}** | |")
    f_mean = statistics.mean(floor)
    print(f"| database floor: the one upsert | {f_mean:.2f} | {f_mean * per_user:.1f} | |")
    backfill = totals.get("backfill page", 0.0)
    print(f"\nA backfill page's statements take {backfill / f_mean:.2f}x the floor's in Postgres.")


if __name__ == "__main__":
    main()

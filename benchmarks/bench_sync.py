#!/usr/bin/env python
"""What `clerk-sync sync` costs next to the full reconcile (`diff`), when little changed.

One command, from the repository root::

    .venv/bin/python benchmarks/bench_sync.py                        # N = 100k, 0 / 10 / 1000 changed
    .venv/bin/python benchmarks/bench_sync.py --users 10000 --latency-ms 100

It starts the Clerk emulator (in this process) and a throwaway embedded Postgres, fills the
table with `clerk-sync diff`, then for each number of changed users renames that many users
in the emulator and runs `clerk-sync sync --json` as a child process, counting the requests the
emulator served by endpoint. For comparison it runs `clerk-sync diff` (nothing changed) last.
`--latency-ms` adds that delay to every API request, which is where the request count shows in
wall time. Everything started here binds 127.0.0.1 and is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clerk_sync_cli.embedded_postgres import embedded_postgres  # noqa: E402
from clerk_sync_cli.emulator import EmulatorConfig, start_emulator  # noqa: E402

SECRET_KEY = "sk_test_emulator"  # noqa: S105 - the emulator's public test key
CLI = [sys.executable, "-m", "clerk_sync_cli"]


def run(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    done = subprocess.run([*CLI, *args, "--json"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"clerk-sync {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return json.loads(done.stdout), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--changed", default="0,10,1000", help="comma-separated counts")
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args()
    changed = [int(n) for n in opts.changed.split(",")]

    rows: list[tuple[str, str, int, int, int, float]] = []
    with start_emulator(EmulatorConfig(users=opts.users, seed=opts.seed)) as clerk:
        emulator = clerk.emulator
        emulator.warm()
        with embedded_postgres() as dsn:
            env = {
                **os.environ,
                "CLERK_SECRET_KEY": SECRET_KEY,
                "CLERK_API_URL": clerk.base_url,
                "DATABASE_URL": dsn,
            }
            env.pop("CLERK_SYNC_PING_URL", None)
            subprocess.run([*CLI, "init-db"], env=env, check=True, capture_output=True)
            run(["diff", "--yes", "--max-rps", "100000"], env)  # fill the table, set the baseline
            emulator.configure(latency_ms=opts.latency_ms)
            ids = emulator.user_ids()
            pick = random.Random(opts.seed)
            for n in changed:
                for clerk_id in pick.sample(ids, n):
                    emulator.update_user(clerk_id, first_name=f"Renamed{pick.randrange(10**6)}")
                emulator.reset_stats()
                doc, wall = run(["sync", "--max-rps", "100000"], env)
                stats = emulator.stats()["by_endpoint"]
                assert doc["counts"]["update"] >= n, doc["counts"]
                rows.append(
                    (
                        f"sync ({n} changed)",
                        doc["mode"],
                        stats.get("GET /v1/users", 0),
                        sum(v for k, v in stats.items() if k.startswith("GET /v1/")),
                        doc["counts"]["update"],
                        wall,
                    )
                )
            emulator.reset_stats()
            doc, wall = run(["diff", "--max-rps", "100000"], env)
            stats = emulator.stats()["by_endpoint"]
            rows.append(
                (
                    "diff (nothing changed)",
                    "full",
                    stats.get("GET /v1/users", 0),
                    sum(v for k, v in stats.items() if k.startswith("GET /v1/")),
                    doc["counts"]["update"],
                    wall,
                )
            )

    print(f"N = {opts.users:,} users, API latency {opts.latency_ms:g} ms\n")
    print("| run | mode | list requests | API requests | updates | wall s |")
    print("|---|---|--:|--:|--:|--:|")
    for name, mode, lists, total, updates, wall in rows:
        print(f"| {name} | {mode} | {lists} | {total} | {updates} | {wall:.2f} |")


if __name__ == "__main__":
    main()

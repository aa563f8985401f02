#!/usr/bin/env python
"""A no-op ``diff`` at the default pace with a production key, against the rate-limit floor.

    .venv/bin/python benchmarks/bench_paced.py [--users 100000]

Issue 16's paced target: with an ``sk_live_`` key Clerk allows 1,000 requests per 10 s, so a
walk of R requests cannot take less than R / 100 s (the rate-limit floor). This starts the
emulator as a child process with a production key and Clerk's production limit (it answers
429 past it), fills an embedded Postgres with ``backfill`` (at the default pace too), then
times ``clerk-sync diff --json`` with nothing changed and no ``--max-rps``: its wall time, the
requests it made, how many were answered 429, and its wall time over the floor. Everything
binds 127.0.0.1 and is stopped on exit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

import httpx
from bench import (  # this directory: run as benchmarks/bench_paced.py
    Emulator,
    emulator_process,
    run_measured,
)

from clerk_sync_cli.embedded_postgres import embedded_postgres

LIVE_KEY = "sk_live_clerk_sync_benchmark_key"
LIMIT_RPS = 100  # Clerk's production limit: 1,000 requests per 10 s
CLI = [sys.executable, "-m", "clerk_sync_cli"]


def run(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float, float]:
    """``clerk-sync *args --json``: its document, wall s and CPU s (user + system)."""
    done = run_measured([*CLI, *args, "--json"], env, os.getcwd())
    if done.exit_code != 0:
        raise SystemExit(f"clerk-sync {' '.join(args)} exited {done.exit_code}: {done.stderr}")
    return done.document(), done.wall_s, done.cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    opts = parser.parse_args()
    os.environ["CLERK_SECRET_KEY"] = LIVE_KEY  # the emulator's one accepted key
    extra = ["--secret-key", LIVE_KEY, "--rate-limit", "production"]
    with emulator_process(opts.users, 0, 0, extra=extra) as clerk, embedded_postgres() as dsn:
        env = {**os.environ, "CLERK_API_URL": clerk.url, "DATABASE_URL": dsn}
        env.pop("CLERK_SYNC_PING_URL", None)
        subprocess.run([*CLI, "init-db"], env=env, check=True, capture_output=True)
        _, fill_wall, _ = run(["backfill"], env)
        run(["diff", "--max-rps", "100000"], env)  # unmeasured: the table settles, caches warm
        rows = [measure(clerk, env, "diff, nothing changed, default pace", [])]
        # the same walk unpaced stays under the limit at this size (it is CPU-bound): what the
        # pace adds
        rows.append(measure(clerk, env, "the same, --max-rps 100000", ["--max-rps", "100000"]))
    print(f"N = {opts.users:,} users, production key (backfill took {fill_wall:.1f} s)\n")
    print("| run | wall s | API requests | 429s | rate-limit floor s | x floor | client CPU s |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name, wall, requests, throttled, cpu in rows:
        floor = requests / LIMIT_RPS
        print(
            f"| {name} | {wall:.2f} | {requests} | {throttled} | {floor:.2f} | "
            f"{wall / floor:.2f} | {cpu:.2f} |"
        )


def measure(
    clerk: Emulator, env: dict[str, str], name: str, args: list[str]
) -> tuple[str, float, int, int, float]:
    """One no-op ``diff``: (name, wall s, API requests, 429s, client CPU s)."""
    control = {"Authorization": f"Bearer {LIVE_KEY}"}
    httpx.post(clerk.url.replace("/v1", "/_emulator/reset-stats"), headers=control)
    doc, wall, cpu = run(["diff", *args], env)
    stats = httpx.get(clerk.url.replace("/v1", "/_emulator/stats"), headers=control).json()
    changed = sum(v for k, v in doc["counts"].items() if k != "unchanged")
    if changed or doc["status"] != "ok":
        raise SystemExit(f"{name}: {changed} changes, status {doc['status']}: not a no-op run")
    requests = sum(v for k, v in stats["by_endpoint"].items() if k.startswith("GET /v1/"))
    return name, wall, requests, int(stats["by_status"].get("429", 0)), cpu


if __name__ == "__main__":
    main()

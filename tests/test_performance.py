"""Regression guards for the paths that must stay cheap. Timings live in benchmarks/, not here:
these assert what cannot drift silently — a no-op run writes nothing, memory does not grow
with the number of users."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psycopg

from clerk_sync_cli.emulator import EmulatorConfig, start_emulator

from .support import SPAWN, Cli


def peak_rss_mb(cli: Cli, url: str, *args: str) -> tuple[float, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-c", SPAWN, sys.executable, "-m", "clerk_sync_cli", *args, "--json"],
        env={**os.environ, **cli.env, "CLERK_API_URL": url},
        capture_output=True,
        text=True,
        check=True,
    )
    first, _, rest = out.stdout.partition("\n")
    code, rss_kb = first.split()
    assert code == "0", out.stderr
    return int(rss_kb) / 1024, json.loads(rest)


def test_memory_stays_flat_as_the_user_count_grows(cli: Cli, db: psycopg.Connection[Any]) -> None:
    peaks = {}
    for users in (16_000, 64_000):  # both big enough to keep every fetch worker busy
        with start_emulator(EmulatorConfig(users=users, seed=4)) as clerk:
            peak, doc = peak_rss_mb(cli, clerk.base_url, "diff", "--dry-run", "--max-rps", "100000")
        assert doc["counts"]["create"] == users
        peaks[users] = peak
    # 4x the users, one page at a time: the peak may not grow with the list
    assert peaks[64_000] - peaks[16_000] < 20, peaks


def test_more_walkers_hold_only_their_mapped_pages(cli: Cli, db: psycopg.Connection[Any]) -> None:
    """A walker waiting to queue its page must not keep the parsed JSON (~2 MB a page, against
    ~0.4 MB mapped) nor parse while others do: 14 more walkers cost ~39 MB here, ~63 MB when
    each kept its parsed page."""
    args = ("diff", "--dry-run", "--max-rps", "100000", "--concurrency")
    with start_emulator(EmulatorConfig(users=32_000, seed=4)) as clerk:
        few, _ = peak_rss_mb(cli, clerk.base_url, *args, "2")
        many, doc = peak_rss_mb(cli, clerk.base_url, *args, "16")
    assert doc["counts"]["create"] == 32_000
    assert many - few < 50, (few, many)


def test_a_no_op_run_writes_no_row_at_all(cli: Cli, db: psycopg.Connection[Any]) -> None:
    with start_emulator(EmulatorConfig(users=1_500, seed=5, edge_cases=True)) as clerk:
        assert cli("backfill", CLERK_API_URL=clerk.base_url).exit_code == 0
        before = db.execute("SELECT sum(xmin::text::bigint), count(*) FROM users").fetchone()
        settings = db.execute(
            "SELECT sum(xmin::text::bigint) FROM user_monitoring_settings"
        ).fetchone()
        doc = cli.json("diff", CLERK_API_URL=clerk.base_url)
    assert doc["applied"] == {k: 0 for k in doc["applied"]}
    assert db.execute("SELECT sum(xmin::text::bigint), count(*) FROM users").fetchone() == before
    assert (
        db.execute("SELECT sum(xmin::text::bigint) FROM user_monitoring_settings").fetchone()
        == settings
    )

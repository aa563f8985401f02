"""Clerk misbehaving: rate limits, server errors, truncated bodies. The run recovers by retry,
loses nobody, and when Clerk stays down it ends with exit 5 having deactivated nothing."""

from __future__ import annotations

from typing import Any

import psycopg

from clerk_sync_cli.emulator import EmulatorConfig, RunningEmulator, start_emulator

from .support import Cli


def test_429_and_5xx_are_retried_and_nobody_is_lost(cli: Cli, db: psycopg.Connection[Any]) -> None:
    config = EmulatorConfig(users=1500, seed=11, throttle_every=3, fail_every=4, retry_after=1)
    with start_emulator(config) as flaky:
        doc = cli.json("diff", CLERK_API_URL=flaky.base_url)
        stats = flaky.emulator.stats()
    assert doc["status"] == "ok"
    assert doc["applied"]["create"] == 1500
    assert db.execute("SELECT count(DISTINCT clerk_id) FROM users").fetchone() == (1500,)
    assert stats["responses_429"] >= 1, stats
    assert stats["responses_5xx"] >= 1, stats


def test_truncated_bodies_are_retried(cli: Cli, db: psycopg.Connection[Any]) -> None:
    with start_emulator(EmulatorConfig(users=1200, seed=5, truncate_every=2)) as flaky:
        doc = cli.json("backfill", CLERK_API_URL=flaky.base_url)
        assert flaky.emulator.stats()["truncated"] >= 1
    assert doc["applied"]["create"] == 1200


def test_rate_limit_window_is_honoured(cli: Cli, db: psycopg.Connection[Any]) -> None:
    """The emulator allows 3 requests per 10 s; Retry-After tells us when the window frees."""
    with start_emulator(EmulatorConfig(users=10, seed=2, rate_limit=3)) as limited:
        doc = cli.json("backfill", "--max-rps", "100", CLERK_API_URL=limited.base_url)
        assert doc["applied"]["create"] == 10
        doc = cli.json("diff", "--max-rps", "100", CLERK_API_URL=limited.base_url)
        assert doc["counts"]["unchanged"] == 10
        assert limited.emulator.stats()["responses_429"] >= 1


def test_clerk_that_stays_down_ends_with_exit_5_and_no_deactivation(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = [emulator.emulator.create_user(first_name=f"U{i}") for i in range(3)]
    assert cli("backfill").exit_code == 0
    emulator.emulator.delete_user(users[0]["id"])
    emulator.emulator.config.fail_every = 1  # every request is a 500 from now on
    result = cli("diff", "--yes", CLERK_SYNC_MAX_ATTEMPTS="3")
    assert result.exit_code == 5
    assert "Clerk is unavailable" in result.stderr
    assert "HTTP 500" in result.stderr
    assert db.execute("SELECT count(*) FROM users WHERE is_active").fetchone() == (3,)

"""Faults from Clerk (issue: trust). Each test fails if its protection is removed."""

from __future__ import annotations

import json
import threading
from email.utils import formatdate
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from clerk_sync_cli.clerk import (
    ClerkClient,
    Page,
    RateLimiter,
    RetryPolicy,
    Window,
    default_max_rps,
    retry_after_seconds,
    walk_concurrently,
)
from clerk_sync_cli.emulator import RunningEmulator
from clerk_sync_cli.errors import ClerkUnavailableError

from .support import SECRET, Cli, populate, rows


class FakeTime:
    """A clock that moves only when slept on: waits are recorded, not spent."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()  # threads sleeping at once each move the clock

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(round(seconds, 3))
            self.now += seconds


def client_for(emulator: RunningEmulator, time: FakeTime, **policy: Any) -> ClerkClient:
    limiter = RateLimiter(1000, clock=lambda: time.now, sleep=time.sleep)
    return ClerkClient(
        httpx.Client(timeout=10),
        emulator.base_url,
        SecretStr(SECRET),
        retry=RetryPolicy(**policy),
        sleep=time.sleep,
        limiter=limiter,
    )


# -- rate limits and retries -------------------------------------------------------------------


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(formatdate(1_000_030, usegmt=True), now=1_000_000) == pytest.approx(
        30, abs=1
    )
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_429_waits_what_retry_after_says_capped(emulator: RunningEmulator) -> None:
    populate(emulator, 3)
    emulator.emulator.configure(throttle_every=2, retry_after=7)
    time = FakeTime()
    client = client_for(emulator, time)
    assert client.count_users() == 3  # request 1
    assert client.count_users() == 3  # request 2 is throttled, then retried
    assert [s for s in time.sleeps if s] == [7.0]
    emulator.emulator.reset_stats()
    emulator.emulator.configure(retry_after=500)
    capped = FakeTime()
    client = client_for(emulator, capped, retry_after_cap=60)
    client.count_users()
    client.count_users()
    assert [s for s in capped.sleeps if s] == [60.0]


def test_5xx_without_retry_after_backs_off_with_jitter(emulator: RunningEmulator) -> None:
    emulator.emulator.configure(fail_every=1)
    time = FakeTime()
    client = client_for(emulator, time, attempts=5, backoff_base=1.0)
    with pytest.raises(ClerkUnavailableError, match="Clerk is unavailable"):
        client.count_users()
    sleeps = time.sleeps
    assert len(sleeps) == 4
    for n, wait in enumerate(sleeps):
        assert 0 <= wait <= 2**n  # full jitter under an exponential ceiling
    assert len(set(sleeps)) > 1


def test_pace_is_inferred_from_the_key_and_stays_under_the_limit() -> None:
    assert default_max_rps(SecretStr("sk_live_x")) == pytest.approx(90)
    assert default_max_rps(SecretStr("sk_test_x")) == pytest.approx(9)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(10, clock=lambda: now[0], sleep=sleep)
    for _ in range(101):
        limiter.acquire()
    assert now[0] == pytest.approx(9.1, abs=0.01)  # 10 in the first burst, then 10 per second
    limiter.cool_down(5)
    before = now[0]
    limiter.acquire()
    assert now[0] - before >= 5  # after a 429, everyone waits


def test_endless_429_ends_with_exit_5_and_nothing_deactivated(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 3)
    assert cli("backfill").exit_code == 0
    emulator.emulator.delete_user(users[0]["id"])
    emulator.emulator.configure(throttle_every=1, retry_after=0)
    result = cli("diff", "--yes", CLERK_SYNC_MAX_ATTEMPTS="3")
    assert result.exit_code == 5, result.stderr
    assert "rate limited" in result.stderr
    assert db.execute("SELECT count(*) FROM users WHERE is_active").fetchone() == (3,)


# -- wrong answers -------------------------------------------------------------------------------


def test_a_200_of_the_wrong_shape_fails_closed(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 3)
    assert cli("backfill").exit_code == 0
    emulator.emulator.delete_user(users[0]["id"])
    emulator.emulator.list_body = b'{"data": [], "total_count": 0}'
    result = cli("diff", "--yes", "--max-deactivations", "100")
    assert result.exit_code == 5
    assert "not a JSON array" in result.stderr
    assert db.execute("SELECT count(*) FROM users WHERE is_active").fetchone() == (3,)


def test_duplicate_and_malformed_users_in_a_listing(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 3)
    assert cli("backfill").exit_code == 0
    alive = [emulator.emulator.get_user(u["id"]) for u in users[:2]]
    page = [alive[0], alive[1], alive[0], {"id": "not a clerk id", "first_name": "X"}]
    emulator.emulator.list_body = json.dumps(page).encode()
    emulator.emulator.delete_user(users[2]["id"])  # would be deactivated by a trusting sync
    doc = cli.json("diff", "--yes", expect=4)
    assert doc["status"] == "partial"
    assert doc["counts"]["unchanged"] == 2  # the duplicate counted once
    assert any("malformed id" in f["problem"] for f in doc["failures"])
    assert any("Deactivation skipped" in n for n in doc["notes"])
    assert db.execute("SELECT count(*) FROM users WHERE is_active").fetchone() == (3,)


def test_a_lone_surrogate_in_a_listing_costs_one_field_not_the_run(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 2)
    assert cli("backfill").exit_code == 0
    page = json.dumps([emulator.emulator.get_user(u["id"]) for u in users])
    # JSON may escape half a surrogate pair; Python holds it, Postgres text cannot
    emulator.emulator.list_body = page.replace('"Last1"', '"Last\\ud800"').encode()
    doc = cli.json("diff", "--yes")
    assert doc["status"] == "ok"
    assert [(w["clerk_id"], w["field"]) for w in doc["warnings"]] == [(users[1]["id"], "last_name")]
    assert rows(db, "SELECT last_name FROM users ORDER BY last_name") == [
        {"last_name": "Last0"},
        {"last_name": None},
    ]


# -- the listing changing under the walk --------------------------------------------------------


def test_sign_ups_and_deletions_mid_walk_lose_nobody(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 50)
    clerk = emulator.emulator
    late: list[dict[str, Any]] = []

    def meanwhile(request: int) -> None:
        if request == 2:  # after page 1 (users 0-9) was served
            clerk.delete_user(users[9]["id"])  # the cursor user itself
            clerk.delete_user(users[30]["id"])  # one not reached yet
            late.append(clerk.create_user(first_name="Late", email="late@example.com"))

    clerk.before_list = meanwhile
    doc = cli.json("backfill", "--batch-size", "10", "--concurrency", "1")
    clerk.before_list = None
    stored = {r["clerk_id"] for r in rows(db)}
    expected = {u["id"] for u in users} - {users[30]["id"]} | {late[0]["id"]}
    assert stored == expected  # users[9] was read before it went; users[30] never existed for us
    assert doc["clerk_users"] == len(expected)
    # the next full reconcile deactivates exactly the deleted ones, each confirmed by a 404
    after = cli.json("diff", "--yes")
    assert after["applied"]["deactivate"] == 1
    inactive = db.execute("SELECT clerk_id FROM users WHERE NOT is_active").fetchall()
    assert inactive == [(users[9]["id"],)]


def test_ties_in_created_at_across_a_page_boundary_lose_nobody(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    same_ms = 1_700_000_000_000
    users = populate(emulator, 25, created_at=same_ms)
    doc = cli.json("backfill", "--batch-size", "10", "--concurrency", "1")
    assert doc["applied"]["create"] == 25
    assert {r["clerk_id"] for r in rows(db)} == {u["id"] for u in users}


def test_windows_walked_concurrently_cover_the_whole_list(
    cli: Cli, db: psycopg.Connection[Any]
) -> None:
    from clerk_sync_cli.emulator import EmulatorConfig, start_emulator

    with start_emulator(EmulatorConfig(users=2400, seed=9)) as big:
        doc = cli.json(
            "backfill", "--batch-size", "100", "--concurrency", "4", CLERK_API_URL=big.base_url
        )
        ids = set(big.emulator.user_ids())
        by_endpoint = big.emulator.stats()["by_endpoint"]
    assert doc["applied"]["create"] == 2400
    assert {r["clerk_id"] for r in rows(db)} == ids
    assert by_endpoint["GET /v1/users"] > 24  # several windows, each ending on a short page


def test_incomplete_listing_disables_deactivation(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """Clerk counts users its listing left out: deletions cannot be inferred, so none are."""
    users = populate(emulator, 30)
    assert cli("backfill").exit_code == 0
    emulator.emulator.hidden_from_list = {u["id"] for u in users[:5]}
    doc = cli.json("diff", "--yes", expect=4)
    assert any("Clerk has 30 users but only 25 could be read" in n for n in doc["notes"])
    assert doc["completeness"] == {
        "clerk_before": 30,
        "clerk_after": 30,
        "read": 25,
        "recovered": 0,  # the recovery re-read, and found nothing more
        "complete": False,
    }
    assert doc["applied"]["deactivate"] == 0
    assert "GET /v1/users/{id}" not in emulator.emulator.stats()["by_endpoint"]


def test_user_missing_from_listing_but_present_in_clerk_stays_active(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 30)
    assert cli("backfill").exit_code == 0
    hidden = users[3]["id"]
    emulator.emulator.hidden_from_list = {hidden}
    emulator.emulator.count_offset = -1  # the count agrees with the short listing
    doc = cli.json("diff", "--yes", expect=4)  # the lookup proves the listing incomplete
    assert doc["applied"]["deactivate"] == 0
    assert any(hidden in n and "still has it" in n for n in doc["notes"])
    assert doc["completeness"]["complete"] is False
    assert any("1 users missing from the listing are still in Clerk" in n for n in doc["notes"])
    assert db.execute("SELECT is_active FROM users WHERE clerk_id = %s", (hidden,)).fetchone() == (
        True,
    )


def test_failed_verification_leaves_the_user_active_and_is_reported(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    users = populate(emulator, 5)
    assert cli("backfill").exit_code == 0
    emulator.emulator.delete_user(users[0]["id"])
    emulator.emulator.failing_endpoints = {"GET /v1/users/{id}"}
    doc = cli.json("diff", "--yes", expect=4, CLERK_SYNC_MAX_ATTEMPTS="2")
    assert doc["applied"]["deactivate"] == 0
    assert [f["clerk_id"] for f in doc["failures"]] == [users[0]["id"]]
    assert "could not confirm" in doc["failures"][0]["problem"]
    assert db.execute("SELECT count(*) FROM users WHERE is_active").fetchone() == (5,)


def test_offset_fallback_when_the_cursor_is_refused(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """An API without cursor support answers 422 to starting_after: the walk goes on by offset."""
    users = populate(emulator, 25)
    clerk = emulator.emulator
    original = clerk.handle

    def no_cursor(method: str, path: str, query: str, headers: Any, body: bytes) -> Any:
        if "starting_after" in query:
            query = query.replace("starting_after=", "starting_after=user_gone")
        return original(method, path, query, headers, body)

    clerk.handle = no_cursor  # type: ignore[method-assign]
    doc = cli.json("backfill", "--batch-size", "10", "--concurrency", "1")
    assert doc["applied"]["create"] == 25
    assert any("offset paging" in n for n in doc["notes"])
    assert {r["clerk_id"] for r in rows(db)} == {u["id"] for u in users}


def test_concurrent_workers_share_one_limiter(emulator: RunningEmulator) -> None:
    """The walkers of a concurrent walk draw on the client's one bucket: 4 walkers at 2
    requests/s make 2 a second between them, not 2 each. The clock moves only when the
    limiter sleeps, so the pace is counted, not timed."""
    populate(emulator, 12)
    time = FakeTime()
    rate, walkers = 2.0, 4
    limiter = RateLimiter(rate, clock=lambda: time.now, sleep=time.sleep)
    client = ClerkClient(
        httpx.Client(timeout=10),
        emulator.base_url,
        SecretStr(SECRET),
        sleep=time.sleep,
        limiter=limiter,
    )
    together = threading.Barrier(walkers, timeout=10)
    seen: set[str] = set()
    seen_lock = threading.Lock()

    def prepare(page: Page) -> int:  # runs in the walker that read the page
        with seen_lock:
            first = threading.current_thread().name not in seen
            seen.add(threading.current_thread().name)
        if first:  # no walker goes on before all are under way: each walks its own window
            together.wait()
        return 1

    windows: list[tuple[Window, str | None]] = [(Window(n), None) for n in range(walkers)]
    pages = sum(walk_concurrently(client, windows, concurrency=walkers, prepare=prepare, limit=2))
    assert len(seen) == walkers
    assert pages == walkers * 7 == client.requests  # each: 6 pages of 2 users, 1 short one
    # One bucket lets `capacity` through at once, then `rate` a second, whoever asks: 13 s
    # for 28 requests. A bucket per walker would let each walker's burst through, 4 times
    # the pace: at most (28 - 4 * 2) / 2 = 10 s.
    assert time.now >= (pages - limiter.capacity) / rate

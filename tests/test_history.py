"""The pure decisions behind run history, instance pinning, the cheap sync and pings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from clerk_sync_cli.history import (
    Baseline,
    Counts,
    Instance,
    LockInfo,
    Origin,
    RunRecord,
    SyncState,
    decide_pin,
    full_reconcile_reason,
    lock_state,
    next_watermark,
    run_state,
)
from clerk_sync_cli.ping import check_ping_url, ping_target, url_host

PROD = Instance("ins_prod", "production")
DEV = Instance("ins_dev", "development")

# -- pinning -------------------------------------------------------------------------------------


def test_first_writing_run_pins_and_a_dry_run_does_not() -> None:
    assert decide_pin(None, PROD, allow_change=False, dry_run=False).write == "pin"
    dry = decide_pin(None, PROD, allow_change=False, dry_run=True)
    assert dry.write is None
    assert dry.refusal is None


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_pinned_instance_passes_quietly(dry_run: bool) -> None:
    same = decide_pin(PROD, Instance("ins_prod", "production"), allow_change=False, dry_run=dry_run)
    assert (same.write, same.refusal, same.note) == (None, None, None)


@pytest.mark.parametrize("dry_run", [False, True])
def test_another_instance_is_refused_naming_both(dry_run: bool) -> None:
    decision = decide_pin(PROD, DEV, allow_change=False, dry_run=dry_run)
    assert decision.write is None
    assert decision.refusal is not None
    assert "ins_prod (production)" in decision.refusal
    assert "ins_dev (development)" in decision.refusal


def test_an_allowed_change_repins_except_on_a_dry_run() -> None:
    moved = decide_pin(PROD, DEV, allow_change=True, dry_run=False)
    assert (moved.write, moved.refusal) == ("repin", None)
    dry = decide_pin(PROD, DEV, allow_change=True, dry_run=True)
    assert (dry.write, dry.refusal) == (None, None)
    assert dry.note is not None
    assert dry.note.startswith("Would re-pin")


def test_instance_from_clerk_tolerates_a_missing_environment() -> None:
    assert Instance.from_clerk({"id": "ins_1", "environment_type": None}).describe() == (
        "ins_1 (unknown environment)"
    )


# -- when sync needs the full reconcile ----------------------------------------------------------

READY = SyncState(watermark_ms=1_000, baseline=Baseline(table_rows=105, clerk_users=100))


def test_nothing_to_compare_with_means_full() -> None:
    assert full_reconcile_reason(SyncState()) == "no full reconcile has completed yet"
    no_mark = SyncState(baseline=Baseline(1, 1))
    assert full_reconcile_reason(no_mark) == "no run has recorded a watermark yet"
    assert full_reconcile_reason(READY) is None


def test_counts_that_keep_the_baseline_gap_need_nothing() -> None:
    # 5 rows of deleted users since the last full reconcile; 10 sign-ups since, all written
    assert full_reconcile_reason(READY, Counts(110, 115, 110)) is None


def test_a_deletion_widens_the_gap() -> None:
    reason = full_reconcile_reason(READY, Counts(clerk_before=99, table_rows=105, clerk_after=99))
    assert reason is not None
    assert reason.startswith("users were deleted in Clerk")
    assert "1 more row(s)" in reason


def test_sign_ups_during_the_walk_are_not_a_deletion() -> None:
    # 2 users signed up after the walk read the newest page: Clerk counts them, no row yet
    assert full_reconcile_reason(READY, Counts(100, 105, 102)) is None
    # 2 signed up between the first count and the walk: rows for users not yet counted
    assert full_reconcile_reason(READY, Counts(100, 107, 102)) is None


def test_rows_removed_from_the_table_narrow_the_gap() -> None:
    reason = full_reconcile_reason(READY, Counts(100, 103, 100))
    assert reason is not None
    assert reason.startswith("rows were removed from the table")


def test_a_ban_changes_neither_count() -> None:
    """A banned user stays a row (inactive) and stays in Clerk's count."""
    assert full_reconcile_reason(READY, Counts(100, 105, 100)) is None


# -- the watermark -------------------------------------------------------------------------------


def test_watermark_is_never_later_than_the_run_start() -> None:
    assert next_watermark(None, newest_seen=5_000, run_started_ms=4_000) == 4_000
    assert next_watermark(None, newest_seen=3_000, run_started_ms=4_000) == 3_000


def test_watermark_never_goes_back_and_survives_an_empty_read() -> None:
    assert next_watermark(3_500, newest_seen=3_000, run_started_ms=4_000) == 3_500
    assert next_watermark(3_500, newest_seen=None, run_started_ms=4_000) == 3_500
    assert next_watermark(None, newest_seen=None, run_started_ms=4_000) is None


# -- status --------------------------------------------------------------------------------------

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def record(run_id: int, status: str = "running", *, dry_run: bool = False) -> RunRecord:
    return RunRecord(
        run_id, "sync", dry_run, status, NOW - timedelta(minutes=1), None, {}, host="h", pid=7
    )


def alive(origin: Origin) -> bool:
    return True


def dead(origin: Origin) -> bool:
    return False


def test_a_finished_run_shows_its_recorded_status() -> None:
    free = lock_state(None, None, None, None, stale=False)
    for status in ("ok", "partial", "refused", "failed", "skipped", "crashed"):
        assert run_state(record(1, status), free, process_alive=dead) == status


def test_a_running_writer_is_running_stale_or_crashed_by_its_lock() -> None:
    held = lock_state(1, "h", 7, 3.0, stale=False)
    stale = lock_state(1, "h", 7, 900.0, stale=True)
    free = lock_state(None, None, None, None, stale=False)
    assert held == LockInfo("held", 1, "h", 7, 3.0)
    assert run_state(record(1), held, process_alive=alive) == "running"
    assert run_state(record(1), stale, process_alive=alive) == "stale"
    assert run_state(record(1), free, process_alive=alive) == "crashed"
    assert run_state(record(2), held, process_alive=alive) == "crashed"  # not the holder


def test_a_running_dry_run_is_crashed_only_when_its_process_is_gone() -> None:
    free = lock_state(None, None, None, None, stale=False)
    assert run_state(record(1, dry_run=True), free, process_alive=alive) == "running"
    assert run_state(record(1, dry_run=True), free, process_alive=dead) == "crashed"


def test_run_record_knows_full_reconciles_and_drift() -> None:
    diff = RunRecord(1, "diff", False, "ok", NOW, NOW, {"counts": {"create": 2, "unchanged": 9}})
    assert diff.full_reconcile
    assert diff.drift == 2
    assert RunRecord(2, "sync", False, "ok", NOW, NOW, {"mode": "full"}).full_reconcile
    assert not RunRecord(3, "sync", False, "ok", NOW, NOW, {"mode": "watermark"}).full_reconcile
    assert not RunRecord(4, "backfill", False, "ok", NOW, NOW).full_reconcile


# -- pings ---------------------------------------------------------------------------------------


def test_ping_targets_follow_healthchecks() -> None:
    url = "https://hc-ping.com/0b0f4e4c-token"
    assert ping_target(url, ok=True) == url
    assert ping_target(url, ok=False) == url + "/fail"
    assert ping_target(url + "/", ok=False) == url + "/fail"
    assert ping_target("https://x.test/p?rid=1", ok=False) == "https://x.test/p/fail?rid=1"


def test_only_the_host_of_a_ping_url_is_ever_shown() -> None:
    assert url_host("https://user:pw@hc-ping.com/secret-uuid?k=v") == "hc-ping.com"
    assert url_host("not a url") == "the ping URL"
    assert check_ping_url("ftp://x.test/a") is not None
    assert check_ping_url("https://hc-ping.com/abc") is None

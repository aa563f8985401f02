"""Only Clerk can say "deleted" (issue 11). A 404 confirms a deletion only when it is Clerk's
own (``resource_not_found``), and only once a user Clerk listed has shown, through the same
path, that the lookup reaches Clerk. Each test fails if its protection is removed."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from clerk_sync_cli.emulator import RunningEmulator

from .front import NOT_FOUND_HTML, Route, front, user_lookup
from .support import Cli, populate


def html_404(target: str) -> Route:
    """A proxy that answers every user lookup itself, with its own HTML page."""
    return lambda path: NOT_FOUND_HTML if user_lookup(path) else None


def html_404_for_target(target: str) -> Route:
    """A gateway rule that blocks one user's lookup with an HTML 404 and lets the rest through
    (so the positive control passes): only the body tells it from Clerk's."""
    return lambda path: NOT_FOUND_HTML if user_lookup(path) and target in path else None


def misrouted(target: str) -> Route:
    """A router that sends the user lookup to a path Clerk has no route for: Clerk's own JSON
    404 (resource_not_found) comes back, for users it has. Only the positive control tells."""
    return lambda path: path + "/profile" if user_lookup(path) else None


PROXIES = pytest.mark.parametrize(
    "proxy_for",
    [html_404, html_404_for_target, misrouted],
    ids=["html-404", "html-404-one-user", "misrouted"],
)


def active(db: psycopg.Connection[Any], clerk_id: str) -> Any:
    found = db.execute("SELECT is_active FROM users WHERE clerk_id = %s", (clerk_id,)).fetchone()
    return found[0] if found else None


@PROXIES
def test_user_apply_does_not_deactivate_on_a_404_that_is_not_clerks(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], proxy_for: Any
) -> None:
    users = populate(emulator, 3)
    assert cli("backfill").exit_code == 0
    with front(emulator, proxy_for(users[0]["id"])) as proxy:
        doc = cli.json("user", users[0]["id"], "--apply", expect=4, CLERK_API_URL=proxy.base_url)
        human = cli("user", users[0]["id"], "--apply", CLERK_API_URL=proxy.base_url)
    assert doc["changes"] == []
    assert doc["applied"] is False
    assert doc["problem"].startswith("not deactivated: could not confirm with Clerk (")
    assert human.exit_code == 4
    assert "could not confirm with Clerk" in human.stderr
    assert active(db, users[0]["id"]) is True  # Clerk still has the user


@PROXIES
def test_user_without_a_row_is_not_reported_gone_on_a_404_that_is_not_clerks(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], proxy_for: Any
) -> None:
    users = populate(emulator, 2)
    with front(emulator, proxy_for(users[0]["id"])) as proxy:
        result = cli("user", users[0]["id"], CLERK_API_URL=proxy.base_url)
    if proxy_for is not misrouted:  # no row, so nothing to deactivate: only the body tells
        assert result.exit_code == 4, result.stdout + result.stderr
        assert "could not confirm with Clerk whether it has this user" in result.stderr
    else:  # Clerk's own 404 with nothing at stake: reported as before
        assert result.exit_code == 1


@pytest.mark.parametrize("dry_run", [False, True], ids=["apply", "dry-run"])
@PROXIES
def test_diff_does_not_deactivate_a_user_the_listing_missed_on_a_404_that_is_not_clerks(
    cli: Cli,
    emulator: RunningEmulator,
    db: psycopg.Connection[Any],
    proxy_for: Any,
    dry_run: bool,
) -> None:
    """The listing misses a user Clerk has, and its count agrees with the listing (a count
    one short; a sign-up during the walk no longer fools the completeness check, see
    test_completeness.py): only the lookup stands between that user and deactivation."""
    users = populate(emulator, 30)
    assert cli("backfill").exit_code == 0
    clerk = emulator.emulator
    missed = users[3]["id"]
    clerk.hidden_from_list = {missed}
    clerk.count_offset = -1
    signed_up: list[dict[str, Any]] = []

    def sign_up(request: int) -> None:
        if request == 1:
            signed_up.append(clerk.create_user(first_name="New", email="new@example.com"))

    clerk.before_list = sign_up
    mode = "--dry-run" if dry_run else "--yes"
    with front(emulator, proxy_for(missed)) as proxy:
        doc = cli.json("diff", mode, expect=4, CLERK_API_URL=proxy.base_url)
    assert signed_up
    assert doc["counts"]["create"] == 1  # the listing was trusted...
    assert doc["counts"]["deactivate"] == 0  # ... but no 404 was
    assert doc["applied"]["deactivate"] == 0
    assert doc["status"] == "partial"
    assert [f["clerk_id"] for f in doc["failures"]] == [missed]
    assert doc["failures"][0]["problem"].startswith("not deactivated: could not confirm with Clerk")
    assert active(db, missed) is True


@pytest.mark.parametrize("dry_run", [False, True], ids=["apply", "dry-run"])
def test_diff_deactivates_what_clerk_confirms_after_the_control(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any], dry_run: bool
) -> None:
    """The other side: through a proxy that forwards faithfully, Clerk's 404 is trusted once
    one listed user answered 200, and the deleted user is deactivated (or planned)."""
    users = populate(emulator, 5)
    assert cli("backfill").exit_code == 0
    emulator.emulator.delete_user(users[2]["id"])
    emulator.emulator.reset_stats()
    with front(emulator, lambda path: None) as proxy:
        doc = cli.json("diff", "--dry-run" if dry_run else "--yes", CLERK_API_URL=proxy.base_url)
    assert doc["counts"]["deactivate"] == 1
    assert doc["applied"]["deactivate"] == (0 if dry_run else 1)
    assert emulator.emulator.stats()["by_endpoint"]["GET /v1/users/{id}"] == 2  # control + one
    assert active(db, users[2]["id"]) is dry_run


def test_user_apply_has_nothing_to_check_against_when_clerk_has_no_other_user(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    [ada] = populate(emulator, 1)
    assert cli("backfill").exit_code == 0
    emulator.emulator.delete_user(ada["id"])
    doc = cli.json("user", ada["id"], "--apply", expect=4)
    assert "no other user" in doc["problem"]
    assert active(db, ada["id"]) is True


# -- ids in the path ---------------------------------------------------------------------------


def test_an_id_with_slashes_and_dots_stays_one_path_segment(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 2)
    clerk = emulator.emulator
    clerk.reset_stats()
    result = cli("user", "user_x/../../instance")
    assert result.exit_code == 1, result.stdout + result.stderr  # Clerk has no such user
    by_endpoint = clerk.stats()["by_endpoint"]
    assert by_endpoint["GET /v1/users/{id}"] == 1  # not /v1/instance, nor a route Clerk lacks
    assert by_endpoint["GET /v1/instance"] == 1  # the instance check only
    assert "unmatched" not in by_endpoint
    for dots in ("..", "."):
        refused = cli("user", dots)
        assert refused.exit_code == 2
        assert "is not a Clerk user id" in refused.stderr

"""Awkward real-world users, end to end: each lands with the right values or a reported NULL."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from clerk_sync_cli.emulator import RunningEmulator

from .support import BOTH_SCHEMAS, Cli, rows


def stored(conn: psycopg.Connection[Any], clerk_id: str) -> dict[str, Any]:
    [row] = rows(conn, "SELECT * FROM users WHERE clerk_id = %s", clerk_id)
    return row


@BOTH_SCHEMAS
def test_edge_case_users(cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]) -> None:
    clerk = emulator.emulator
    no_email = clerk.create_user(first_name="Phone", email=None)
    clerk.update_user(no_email["id"], email_addresses=[], primary_email_address_id=None)
    primary_second = clerk.create_user(first_name="Two", email="primary@example.com")
    addresses = [
        {"id": "idn_other", "object": "email_address", "email_address": "other@example.com"},
        *primary_second["email_addresses"],
    ]
    clerk.update_user(primary_second["id"], email_addresses=addresses)
    banned = clerk.create_user(first_name="Banned", email="banned@example.com", banned=True)
    locked = clerk.create_user(first_name="Locked", email="locked@example.com")
    clerk.update_user(locked["id"], locked=True)
    uni = clerk.create_user(
        first_name="Zoë", last_name="\u05e9\u05dc\u05d5\u05dd\u200f", email="z@example.com"
    )
    long_name = clerk.create_user(first_name="x" * 140, last_name="Long", email="long@example.com")
    long_url = clerk.create_user(first_name="Url", email="url@example.com")
    clerk.update_user(long_url["id"], image_url="https://img.example/" + "a" * 600)
    old_image = clerk.create_user(first_name="Old", email="old@example.com")
    clerk.update_user(
        old_image["id"], image_url=None, profile_image_url="https://old.example/p.png"
    )
    nul = clerk.create_user(first_name="Nul", last_name="a\x00b", email="nul@example.com")

    doc = cli.json("backfill")
    assert doc["status"] == "ok"
    assert doc["applied"]["create"] == 9

    assert stored(db, no_email["id"])["email"] is None
    assert stored(db, primary_second["id"])["email"] == "primary@example.com"
    assert stored(db, banned["id"])["is_active"] is False
    assert stored(db, locked["id"])["is_active"] is True
    assert stored(db, uni["id"])["last_name"] == "\u05e9\u05dc\u05d5\u05dd\u200f"
    assert stored(db, long_name["id"])["first_name"] is None
    assert stored(db, long_name["id"])["last_name"] == "Long"
    assert stored(db, long_url["id"])["profile_image_url"] is None
    assert stored(db, old_image["id"])["profile_image_url"] == "https://old.example/p.png"
    assert stored(db, nul["id"])["last_name"] is None

    warned = {(w["clerk_id"], w["field"]) for w in doc["warnings"]}
    assert warned == {
        (long_name["id"], "first_name"),
        (long_url["id"], "profile_image_url"),
        (nul["id"], "last_name"),
    }
    # and the rerun is a no-op: NULLed fields are not "drift" forever
    again = cli.json("diff")
    assert again["counts"]["unchanged"] == 9
    assert again["applied"]["update"] == 0


def test_generated_edge_case_population_round_trips(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    from clerk_sync_cli.emulator import EmulatorConfig, start_emulator

    with start_emulator(EmulatorConfig(users=600, seed=3, edge_cases=True)) as edgy:
        doc = cli.json("backfill", CLERK_API_URL=edgy.base_url)
        assert doc["status"] == "ok"
        assert doc["applied"]["create"] == 600
        kinds = edgy.emulator.edge_case_ids()
        for banned_id in kinds.get("banned", []):
            assert stored(db, banned_id)["is_active"] is False
        for no_email_id in kinds.get("no_email", []):
            assert stored(db, no_email_id)["email"] is None
        again = cli.json("diff", CLERK_API_URL=edgy.base_url)
        assert again["counts"]["unchanged"] == 600


def test_near_miss_values_written_by_the_app_are_drift(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """Rows the web app wrote with values that are almost Clerk's: the comparison in SQL must
    call each one different, as the plan does (an empty string is not NULL, NULL is not
    true, case, trailing space and Unicode normalization all count), and one that is equal,
    equal."""
    clerk = emulator.emulator
    no_name = clerk.create_user(first_name=None, last_name="Empty", email="empty@example.com")
    active = clerk.create_user(first_name="Null", last_name="Active", email="null@example.com")
    cased = clerk.create_user(first_name="Case", last_name="Mail", email="case@example.com")
    spaced = clerk.create_user(first_name="Ann", last_name="Space", email="ann@example.com")
    composed = clerk.create_user(first_name="Zo\u00eb", last_name="Nfc", email="zoe@example.com")
    same = clerk.create_user(first_name="Same", last_name="Same", email="same@example.com")
    for user, first, email, is_active in [
        (no_name, "", "empty@example.com", True),
        (active, "Null", "null@example.com", None),
        (cased, "Case", "Case@Example.com", True),
        (spaced, "Ann ", "ann@example.com", True),
        (composed, "Zoe\u0308", "zoe@example.com", True),
        (same, "Same", "same@example.com", True),
    ]:
        db.execute(
            "INSERT INTO users (clerk_id, email, first_name, last_name, profile_image_url, "
            "is_active) VALUES (%s, %s, %s, %s, %s, %s)",
            (user["id"], email, first, user["last_name"], user["image_url"], is_active),
        )

    planned = cli.json("diff", "--dry-run")
    assert planned["counts"]["update"] == 5, planned["changes"]
    assert planned["counts"]["unchanged"] == 1
    assert {c["clerk_id"] for c in planned["changes"]} == {
        u["id"] for u in (no_name, active, cased, spaced, composed)
    }
    applied = cli.json("diff")
    assert applied["applied"]["update"] == 5
    assert stored(db, no_name["id"])["first_name"] is None
    assert stored(db, active["id"])["is_active"] is True
    assert stored(db, composed["id"])["first_name"] == "Zo\u00eb"
    assert cli.json("diff")["counts"]["unchanged"] == 6


ESCAPES = "\x1b[2J\x1b]0;pwned\x07Evil\x1b[31m\u202e"


@BOTH_SCHEMAS
def test_terminal_escapes_in_clerk_data_never_reach_the_terminal(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """A name that would clear the screen, retitle the terminal and recolour what follows:
    shown as escapes by backfill, diff --dry-run and user, stored as Clerk has it."""
    clerk = emulator.emulator
    evil = clerk.create_user(first_name=ESCAPES, last_name="x" * 140, email="evil@example.com")
    result = cli("backfill")
    assert result.exit_code == 0, result.stderr
    assert stored(db, evil["id"])["first_name"] == ESCAPES
    clerk.update_user(evil["id"], first_name="Calm")
    outputs = [result, cli("diff", "--dry-run"), cli("user", evil["id"])]
    for shown in outputs:
        text = shown.stdout + shown.stderr
        assert "\x1b" not in text
        assert "\x07" not in text
        assert "\u202e" not in text
    assert "\\u001b[2J" in outputs[1].stdout + outputs[2].stdout  # visible, not obeyed
    # --json is data, not a terminal: it keeps the value exactly (JSON escapes it)
    assert cli.json("user", evil["id"])["row"]["first_name"] == ESCAPES


@pytest.mark.slow
def test_warnings_and_failures_are_capped_with_their_totals(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    """A bad day upstream: 34,000 users with three values each that do not fit (102,000
    warnings). The report keeps the first 1,000 of each list and says how many there were."""
    clerk = emulator.emulator
    for n in range(34_000):
        clerk.create_user(
            first_name="f" * 101, last_name="l" * 101, email=f"{'e' * 250}{n}@example.com"
        )
    result = cli("backfill", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["applied"]["create"] == 34_000
    assert doc["totals"]["warnings"] == 102_000
    assert len(doc["warnings"]) == 1000
    assert len(result.stdout) < 1_000_000
    human = cli("diff", "--dry-run")
    assert "Warnings (stored as NULL) (102000)" in human.stdout

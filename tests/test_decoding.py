"""Decoding list pages only as far as the sync reads them (clerk_sync_cli/decoding.py): the
fast decoder and the plain-JSON way agree on every user, and no shape the old dict path read
is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from clerk_sync_cli.decoding import ClerkUser, EmailAddress, decode_page, from_object
from clerk_sync_cli.emulator import EmulatorConfig, start_emulator
from clerk_sync_cli.mapping import MappedUser, map_user

from .support import SECRET

EXAMPLE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "clerk_user_example.json").read_text()
)


def both_ways(body: bytes) -> tuple[Any, Any]:
    return decode_page(body), [from_object(u) for u in json.loads(body)]


def test_every_kind_of_emulated_user_decodes_and_maps_the_same_both_ways() -> None:
    with start_emulator(EmulatorConfig(users=600, seed=3, edge_cases=True)) as edgy:
        pages = [
            httpx.get(
                f"{edgy.base_url}/users",
                params={"limit": 500, "offset": offset, "order_by": "+created_at"},
                headers={"Authorization": f"Bearer {SECRET}"},
            ).content
            for offset in (0, 500)
        ]
        kinds = edgy.emulator.edge_case_ids()
    assert len(kinds) > 5
    decoded = []
    for body in pages:
        fast, plain = both_ways(body)
        assert fast == plain
        assert all(type(u) is ClerkUser for u in fast)
        decoded += fast
    assert len(decoded) == 600
    as_dicts = [u for body in pages for u in json.loads(body)]
    assert [map_user(u) for u in decoded] == [map_user(u) for u in as_dicts]


def test_the_realistic_user_keeps_exactly_the_fields_the_sync_reads() -> None:
    [user] = decode_page(json.dumps([EXAMPLE]).encode())
    assert user == from_object(EXAMPLE)
    assert user.id == EXAMPLE["id"]
    assert user.email_addresses == [
        EmailAddress(a["id"], a["email_address"]) for a in EXAMPLE["email_addresses"]
    ]
    assert not hasattr(user, "public_metadata")


def test_a_page_of_another_shape_is_read_whole_and_judged_per_user() -> None:
    odd = {**EXAMPLE, "id": "user_odd", "email_addresses": ["not an object", 7]}
    page = [EXAMPLE, odd, 42, None, {**EXAMPLE, "id": "user_unlisted", "email_addresses": "x"}]
    fast, plain = both_ways(json.dumps(page).encode())
    assert fast == plain
    assert [type(u).__name__ for u in fast] == [
        "ClerkUser",
        "ClerkUser",
        "int",
        "NoneType",
        "ClerkUser",
    ]
    mapped = [map_user(u) for u in fast]
    assert isinstance(mapped[0], MappedUser) and mapped[0].row.email == "ada@example.com"
    assert isinstance(mapped[1], MappedUser) and mapped[1].row.email is None
    assert [type(m).__name__ for m in mapped[2:4]] == ["RejectedUser", "RejectedUser"]


def test_a_lone_surrogate_is_a_warning_not_an_unreadable_page() -> None:
    body = b'[{"id": "user_a", "first_name": "ok", "last_name": "x\\ud800y"}]'
    [user] = decode_page(body)
    mapped = map_user(user)
    assert isinstance(mapped, MappedUser)
    assert (mapped.row.first_name, mapped.row.last_name) == ("ok", None)
    assert [(w.field, "lone surrogate" in w.problem) for w in mapped.warnings] == [
        ("last_name", True)
    ]


@pytest.mark.parametrize("body", [b'[{"id": "user_a"', b"<html>404</html>", b"", b"[" * 100_000])
def test_what_is_not_json_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is the type; messages vary
        decode_page(body)


def test_json_that_is_not_a_list_comes_back_as_it_is() -> None:
    assert decode_page(b'{"data": [], "total_count": 0}') == {"data": [], "total_count": 0}

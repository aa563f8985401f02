"""The Clerk emulator, exercised over real HTTP (httpx against start_emulator on port 0)."""

from __future__ import annotations

import functools
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clerk_sync_cli.emulator import (
    DEFAULT_PORT,
    DEFAULT_SECRET_KEY,
    EDGE_CASE_KINDS,
    Emulator,
    EmulatorConfig,
    RunningEmulator,
    start_emulator,
)

KEY = DEFAULT_SECRET_KEY
EXAMPLE_PATH = Path(__file__).parent / "data" / "clerk_user_example.json"
USER_ID = re.compile(r"^user_[0-9A-Za-z]{27}$")
IDN_ID = re.compile(r"^idn_[0-9A-Za-z]{27}$")


class Api:
    """One running emulator plus an httpx client holding its key."""

    def __init__(self, server: RunningEmulator, key: str) -> None:
        self.server = server
        self.emulator = server.emulator
        self.client = httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        self.control = httpx.Client(
            base_url=server.control_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        )

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params)

    def users(self, **params: Any) -> list[dict[str, Any]]:
        response = self.get("/users", **params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert isinstance(page, list)
        return page

    def ids(self, **params: Any) -> list[str]:
        return [u["id"] for u in self.users(**params)]

    def count(self, **params: Any) -> int:
        response = self.get("/users/count", **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "total_count"
        return int(body["total_count"])

    def walk_cursor(self, order_by: str, limit: int) -> list[str]:
        out: list[str] = []
        cursor: str | None = None
        for _ in range(10_000):
            params: dict[str, Any] = {"order_by": order_by, "limit": limit}
            if cursor:
                params["starting_after"] = cursor
            page = self.ids(**params)
            out += page
            if len(page) < limit:
                return out
            cursor = page[-1]
        raise AssertionError("cursor walk did not end")

    def everyone(self, order_by: str = "+created_at") -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.users(order_by=order_by, limit=500, offset=len(out))
            out += page
            if len(page) < 500:
                return out

    def walk_offset(self, order_by: str, limit: int) -> list[str]:
        out: list[str] = []
        while True:
            page = self.ids(order_by=order_by, limit=limit, offset=len(out))
            out += page
            if len(page) < limit:
                return out

    def close(self) -> None:
        self.client.close()
        self.control.close()


@pytest.fixture
def make_api() -> Iterator[Callable[..., Api]]:
    made: list[Api] = []

    def make(**config: Any) -> Api:
        key = config.get("secret_key", KEY)
        api = Api(start_emulator(EmulatorConfig(**config)), key)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()
        api.server.stop()


@pytest.fixture(scope="module")
def shared() -> Iterator[Api]:
    """A read-only population (tests using it must not mutate it)."""
    api = Api(start_emulator(EmulatorConfig(users=1500, seed=42, edge_cases=True)), KEY)
    yield api
    api.close()
    api.server.stop()


def assert_clerk_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"errors", "clerk_trace_id"}
    (error,) = body["errors"]
    assert set(error) == {"message", "long_message", "code", "meta"}
    assert error["code"] == code
    assert re.fullmatch(r"[0-9a-f]{32}", body["clerk_trace_id"])
    assert response.headers["Clerk-Trace-Id"] == body["clerk_trace_id"]
    return dict(error)


def sort_key(user: dict[str, Any], field: str = "created_at") -> tuple[int, str]:
    return int(user[field]), str(user["id"])


def awkward_char(c: str) -> bool:
    """Right-to-left, invisible formatting, combining, or outside the BMP (emoji)."""
    return (
        unicodedata.bidirectional(c) in ("R", "AL")
        or unicodedata.category(c) in ("Cf", "Mn")
        or ord(c) > 0xFFFF
    )


def live(emulator: Emulator, user_id: str) -> dict[str, Any]:
    user = emulator.get_user(user_id)
    assert user is not None, user_id
    return user


# ---------------------------------------------------------------------------------------------
# Auth
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk_test_wrong"}, {"Authorization": f"Basic {KEY}"}],
    ids=["missing", "wrong-key", "wrong-scheme"],
)
@pytest.mark.parametrize(
    "path", ["/v1/users", "/v1/users/count", "/v1/instance", "/_emulator/stats"]
)
def test_bad_or_missing_key_is_401_with_clerk_body(
    shared: Api, headers: dict[str, str], path: str
) -> None:
    root = shared.server.base_url.removesuffix("/v1")
    response = httpx.get(root + path, headers=headers)
    error = assert_clerk_error(response, 401, "authentication_invalid")
    assert error["message"] == "Invalid authentication"
    assert error["long_message"].startswith("The provided secret key is invalid.")
    assert error["meta"] == {}


def test_secret_key_never_appears_in_any_response(make_api: Callable[..., Api]) -> None:
    key = "sk_test_Sup3rSecretKeyValue"
    api = make_api(users=30, secret_key=key, rate_limit=1000)
    some_id = api.ids()[0]
    responses = [
        api.get("/users", limit=500),
        api.get("/users/count"),
        api.get(f"/users/{some_id}"),
        api.get(f"/users/{key}"),  # 404 echoes the id
        api.get("/users", starting_after=key, order_by="+created_at"),  # 422 echoes the id
        api.get("/users", limit=key),
        api.get("/instance"),
        api.get("/nope"),
        api.control.get("/stats"),
        api.control.get("/config"),
        api.control.patch("/config", json={"bogus": key}),
        httpx.get(api.server.base_url + "/users", headers={"Authorization": f"Bearer {key}x"}),
    ]
    statuses = {r.status_code for r in responses}
    assert {200, 401, 404, 422} <= statuses
    for response in responses:
        assert key not in response.text
        assert all(key not in f"{k}: {v}" for k, v in response.headers.items())


# ---------------------------------------------------------------------------------------------
# GET /v1/users: parameters and ordering
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["0", "501", "-1", "ten"])
def test_limit_out_of_range_is_422(shared: Api, limit: str) -> None:
    error = assert_clerk_error(shared.get("/users", limit=limit), 422, "form_param_value_invalid")
    assert error["meta"] == {"param_name": "limit"}


def test_limit_default_and_bounds(shared: Api) -> None:
    assert len(shared.users()) == 10
    assert len(shared.users(limit=1)) == 1
    assert len(shared.users(limit=500)) == 500
    assert len(shared.users(limit=500, offset=1400)) == 100


def test_negative_offset_is_422(shared: Api) -> None:
    error = assert_clerk_error(shared.get("/users", offset=-1), 422, "form_param_value_invalid")
    assert error["meta"] == {"param_name": "offset"}


def test_default_order_is_newest_first(shared: Api) -> None:
    default = shared.users(limit=200)
    assert [u["id"] for u in default] == shared.ids(limit=200, order_by="-created_at")
    assert default == sorted(default, key=sort_key, reverse=True)
    oldest_first = shared.ids(limit=500, order_by="+created_at", offset=1000)
    assert default[0]["id"] == oldest_first[-1]  # the newest user of all


def test_plus_sign_must_be_url_encoded(shared: Api) -> None:
    ascending = shared.users(order_by="+created_at", limit=100)  # httpx sends %2B
    assert ascending == sorted(ascending, key=sort_key)
    assert [u["id"] for u in ascending] == shared.ids(order_by="created_at", limit=100)
    raw = shared.client.get(shared.server.base_url + "/users?order_by=+created_at")
    assert "%2B" not in str(raw.request.url)
    assert_clerk_error(raw, 422, "form_param_value_invalid")


@pytest.mark.parametrize("order_by", ["--created_at", "+", "id", "-email", "created_at,id"])
def test_unsupported_order_by_is_422(shared: Api, order_by: str) -> None:
    error = assert_clerk_error(
        shared.get("/users", order_by=order_by), 422, "form_param_value_invalid"
    )
    assert error["meta"] == {"param_name": "order_by"}


def test_updated_at_orders_sorted(shared: Api) -> None:
    newest = shared.users(order_by="-updated_at", limit=300)
    assert newest == sorted(newest, key=lambda u: sort_key(u, "updated_at"), reverse=True)
    oldest = shared.users(order_by="+updated_at", limit=300)
    assert oldest == sorted(oldest, key=lambda u: sort_key(u, "updated_at"))


def test_cursor_walk_with_created_at_ties_returns_everyone_once(shared: Api) -> None:
    ascending = shared.walk_cursor("+created_at", 97)
    by_offset = shared.walk_offset("+created_at", 97)
    assert ascending == by_offset
    assert len(ascending) == len(set(ascending)) == 1500
    everyone = shared.everyone()
    assert [u["id"] for u in everyone] == ascending
    assert everyone == sorted(everyone, key=sort_key)
    created = [u["created_at"] for u in everyone]
    tied = len(created) - len(set(created))
    assert tied >= 20, "the population must contain created_at ties for this test to mean much"
    # ties are ordered by id, not by generation order
    assert ascending != sorted(ascending, key=lambda uid: shared.emulator._decode(uid) or 0)
    descending = shared.walk_cursor("-created_at", 113)
    assert descending == ascending[::-1] == shared.walk_offset("-created_at", 113)


@pytest.mark.parametrize(
    "params",
    [
        {"order_by": "-updated_at"},
        {"order_by": "+updated_at"},
        {"offset": 5},
    ],
)
def test_starting_after_rejects_non_created_order_and_offsets(
    shared: Api, params: dict[str, Any]
) -> None:
    cursor = shared.ids()[0]
    error = assert_clerk_error(
        shared.get("/users", starting_after=cursor, **params), 422, "form_param_value_invalid"
    )
    assert error["meta"] == {"param_name": "starting_after"}
    assert shared.get("/users", starting_after=cursor, offset=0).status_code == 200


def test_starting_after_unknown_id_is_422(shared: Api) -> None:
    response = shared.get("/users", starting_after="user_2NeverExistedNeverExisted00")
    assert_clerk_error(response, 422, "form_param_value_invalid")


@pytest.mark.parametrize("order_by", ["+created_at", "-created_at"])
def test_cursor_continues_after_its_user_is_deleted(
    make_api: Callable[..., Api], order_by: str
) -> None:
    api = make_api(users=120, seed=5)
    full = api.walk_offset(order_by, 500)
    first = api.ids(order_by=order_by, limit=25)
    assert api.control.delete(f"/users/{first[-1]}").status_code == 200
    assert api.get(f"/users/{first[-1]}").status_code == 404
    also_gone = full[30]
    api.emulator.delete_user(also_gone)
    second = api.ids(order_by=order_by, limit=25, starting_after=first[-1])
    assert second == [uid for uid in full[25:51] if uid != also_gone]
    # a deleted *added* user works as a cursor too
    added = api.emulator.create_user(first_name="Tmp", email="tmp@example.com")
    api.emulator.delete_user(added["id"])
    after_added = api.ids(order_by=order_by, limit=5, starting_after=added["id"])
    if order_by == "+created_at":
        assert after_added == []  # it was the newest user: nobody comes after it
    else:
        assert after_added == [uid for uid in full if uid not in (first[-1], also_gone)][:5]


def test_created_at_filters_are_strict(shared: Api) -> None:
    everyone = shared.everyone()
    low, high = everyone[200]["created_at"], everyone[260]["created_at"]
    expected = [u["id"] for u in everyone if low < u["created_at"] < high]
    got = shared.ids(
        order_by="+created_at", limit=500, created_at_after=low, created_at_before=high
    )
    assert got == expected
    assert everyone[200]["id"] not in got
    assert everyone[260]["id"] not in got
    assert len(expected) >= 55
    assert shared.ids(limit=500, created_at_after=low, created_at_before=high) == expected[::-1]
    assert shared.count(created_at_after=low, created_at_before=high) == len(expected)
    assert shared.count(created_at_after=low) == sum(u["created_at"] > low for u in everyone)
    assert shared.count(created_at_before=high) == sum(u["created_at"] < high for u in everyone)
    # updated_at order combined with a created_at filter
    by_update = shared.users(
        order_by="-updated_at", limit=500, created_at_after=low, created_at_before=high
    )
    assert sorted(u["id"] for u in by_update) == sorted(expected)
    assert by_update == sorted(by_update, key=lambda u: sort_key(u, "updated_at"), reverse=True)
    bad = shared.get("/users", created_at_after="yesterday")
    assert_clerk_error(bad, 422, "form_param_value_invalid")


def test_repeated_user_id_filter(shared: Api) -> None:
    pool = shared.users(limit=50, offset=300)
    wanted = [pool[3]["id"], pool[40]["id"], pool[17]["id"]]
    got = shared.client.get(
        "/users", params=[("user_id", uid) for uid in [*wanted, "user_2DoesNotExistDoesNotExist0"]]
    )
    assert got.status_code == 200
    assert [u["id"] for u in got.json()] == [pool[3]["id"], pool[17]["id"], pool[40]["id"]]
    ascending = shared.client.get(
        "/users", params=[("user_id", uid) for uid in wanted] + [("order_by", "+created_at")]
    )
    assert [u["id"] for u in ascending.json()] == [pool[40]["id"], pool[17]["id"], pool[3]["id"]]
    counted = shared.client.get("/users/count", params=[("user_id", uid) for uid in wanted])
    assert counted.json() == {"object": "total_count", "total_count": 3}
    too_many = shared.client.get("/users", params=[("user_id", f"user_{n}") for n in range(101)])
    assert_clerk_error(too_many, 422, "form_param_value_invalid")


def test_count_follows_mutations(make_api: Callable[..., Api]) -> None:
    api = make_api(users=40)
    assert api.count() == 40
    api.emulator.delete_user(api.ids()[0])
    api.emulator.create_user(first_name="A", email="a@example.com")
    api.emulator.create_user(first_name="B", email="b@example.com")
    assert api.count() == 41 == api.emulator.count() == len(api.walk_offset("+created_at", 500))
    assert make_api(users=0).count() == 0


# ---------------------------------------------------------------------------------------------
# GET /v1/users and /users/count: every filter and order of Clerk's spec, honoured or a 422
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def population(shared: Api) -> list[dict[str, Any]]:
    """Every user of ``shared`` in +created_at order (read once per module)."""
    return shared.everyone()


def primary(user: dict[str, Any], items: str, id_key: str, value_key: str) -> Any:
    for item in user[items]:
        if item["id"] == user[id_key]:
            return item[value_key]
    return None


def texts(user: dict[str, Any], items: str, value_key: str) -> list[str]:
    return [item[value_key] for item in user[items]]


def lowered(values: list[Any]) -> list[str]:
    return [v.lower() for v in values if isinstance(v, str)]


def picks(population: list[dict[str, Any]]) -> dict[str, Any]:
    """Values of real users to filter by, drawn from the population."""
    with_username = [u for u in population if u["username"]]
    with_phone = [u for u in population if u["phone_numbers"]]
    with_external = [u for u in population if u["external_id"]]
    google = [u for u in population if u["external_accounts"]]
    signed_in = sorted(u["last_sign_in_at"] for u in population if u["last_sign_in_at"])
    active = sorted(u["last_active_at"] for u in population if u["last_active_at"])
    return {
        "emails": [population[10]["email_addresses"][0]["email_address"].upper(),
                   population[900]["email_addresses"][0]["email_address"]],
        "phone": with_phone[0]["phone_numbers"][0]["phone_number"],
        "external": [with_external[0]["external_id"], with_external[5]["external_id"]],
        "username": with_username[3]["username"].upper(),
        "username_part": with_username[7]["username"][2:7].upper(),
        "account": google[4]["external_accounts"][0],
        "ids": [population[3]["id"], population[700]["id"]],
        "signed_in": signed_in[len(signed_in) // 2],
        "active": active[len(active) // 3],
        "name": f"{population[42]['first_name']} {population[42]['last_name'][:3]}".upper(),
    }  # fmt: skip


#: (query params, what the emulator must return) for each honoured filter; ``p`` = picks().
FILTER_CASES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], Callable[..., bool]]] = {
    "email_address": (
        lambda p: {"email_address": [*p["emails"], "nobody@example.com"]},
        lambda u, p: bool(set(lowered(texts(u, "email_addresses", "email_address")))
                          & set(lowered(p["emails"]))),
    ),
    "phone_number": (
        lambda p: {"phone_number": p["phone"]},
        lambda u, p: p["phone"] in texts(u, "phone_numbers", "phone_number"),
    ),
    "external_id": (
        lambda p: {"external_id": p["external"]},
        lambda u, p: u["external_id"] in p["external"],
    ),
    "external_id_excluded": (
        lambda p: {"external_id": [f"-{p['external'][0]}"]},
        lambda u, p: u["external_id"] != p["external"][0],
    ),
    "username": (
        lambda p: {"username": [p["username"]]},
        lambda u, p: (u["username"] or "").lower() == p["username"].lower(),
    ),
    "user_id_excluded": (
        lambda p: {"user_id": [f"-{uid}" for uid in p["ids"]]},
        lambda u, p: u["id"] not in p["ids"],
    ),
    "user_id_mixed": (
        lambda p: {"user_id": [f"+{p['ids'][0]}", p["ids"][1], f"-{p['ids'][1]}"]},
        lambda u, p: u["id"] == p["ids"][0],
    ),
    "query_name": (
        lambda p: {"query": "LOVELACE"},
        lambda u, p: any("lovelace" in t for t in lowered(
            [u["first_name"], u["last_name"], *texts(u, "email_addresses", "email_address")])),
    ),
    "query_email_and_id": (
        lambda p: {"query": p["ids"][0][5:16]},
        lambda u, p: u["id"] == p["ids"][0],
    ),
    "query_username": (
        lambda p: {"query": p["username_part"]},
        lambda u, p: any(p["username_part"].lower() in t for t in lowered(
            [u["id"], u["username"], u["first_name"], u["last_name"],
             *texts(u, "email_addresses", "email_address"),
             *texts(u, "phone_numbers", "phone_number")])),
    ),
    "email_address_query": (
        lambda p: {"email_address_query": "@INITECH.example"},
        lambda u, p: any("@initech.example" in e
                         for e in lowered(texts(u, "email_addresses", "email_address"))),
    ),
    "phone_number_query": (
        lambda p: {"phone_number_query": "555"},
        lambda u, p: any("555" in n for n in texts(u, "phone_numbers", "phone_number")),
    ),
    "username_query": (
        lambda p: {"username_query": p["username_part"]},
        lambda u, p: p["username_part"].lower() in (u["username"] or "").lower(),
    ),
    "name_query": (
        lambda p: {"name_query": p["name"]},
        lambda u, p: p["name"].lower() in f"{u['first_name'] or ''} {u['last_name'] or ''}".lower(),
    ),
    "banned_true": (lambda p: {"banned": "true"}, lambda u, p: u["banned"]),
    "banned_false": (lambda p: {"banned": "false"}, lambda u, p: not u["banned"]),
    "last_active_at_before": (
        lambda p: {"last_active_at_before": p["active"]},
        lambda u, p: u["last_active_at"] is not None and u["last_active_at"] < p["active"],
    ),
    "last_active_at_after": (
        lambda p: {"last_active_at_after": p["active"]},
        lambda u, p: u["last_active_at"] is not None and u["last_active_at"] > p["active"],
    ),
    "last_active_at_since": (
        lambda p: {"last_active_at_since": p["active"]},
        lambda u, p: u["last_active_at"] is not None and u["last_active_at"] >= p["active"],
    ),
    "last_sign_in_at_before": (
        lambda p: {"last_sign_in_at_before": p["signed_in"]},
        lambda u, p: u["last_sign_in_at"] is not None and u["last_sign_in_at"] < p["signed_in"],
    ),
    "last_sign_in_at_after": (
        lambda p: {"last_sign_in_at_after": p["signed_in"]},
        lambda u, p: u["last_sign_in_at"] is not None and u["last_sign_in_at"] > p["signed_in"],
    ),
    "provider": (
        lambda p: {"provider": p["account"]["provider"],
                   "provider_user_id": [p["account"]["provider_user_id"], "0"]},
        lambda u, p: any(a["provider_user_id"] == p["account"]["provider_user_id"]
                         for a in u["external_accounts"]),
    ),
    "combined": (
        lambda p: {"banned": "false", "name_query": "ada", "last_sign_in_at_after": p["signed_in"]},
        lambda u, p: not u["banned"] and "ada" in f"{u['first_name']} {u['last_name']}".lower()
        and u["last_sign_in_at"] is not None and u["last_sign_in_at"] > p["signed_in"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", FILTER_CASES)
def test_each_filter_is_honoured_by_list_and_count(
    shared: Api, population: list[dict[str, Any]], case: str
) -> None:
    params_of, keep = FILTER_CASES[case]
    p = picks(population)
    params = params_of(p)
    expected = [u["id"] for u in population if keep(u, p)]
    assert 0 < len(expected) < len(population), "a filter test must keep some and drop some"
    got = shared.ids(order_by="+created_at", limit=500, **params)
    assert got == expected[:500]
    assert shared.count(**params) == len(expected)
    newest_first = shared.ids(limit=500, **params)  # the default -created_at
    assert newest_first == expected[::-1][:500]


def test_filters_combine_with_orders_offsets_and_the_cursor(
    shared: Api, population: list[dict[str, Any]]
) -> None:
    expected = [u for u in population if "a" in f"{u['first_name']}{u['last_name']}".lower()]
    ids = [u["id"] for u in expected]
    assert 100 < len(ids) < len(population)
    params = {"name_query": "A", "limit": 37}

    def walk(order_by: str, cursor: bool) -> list[str]:
        out: list[str] = []
        while True:
            extra = {"starting_after": out[-1]} if cursor and out else {"offset": len(out)}
            page = shared.ids(order_by=order_by, **params, **extra)
            out += page
            if len(page) < 37:
                return out

    assert walk("+created_at", cursor=True) == ids == walk("+created_at", cursor=False)
    assert walk("-created_at", cursor=True) == ids[::-1]
    by_update = sorted(expected, key=lambda u: sort_key(u, "updated_at"), reverse=True)
    assert walk("-updated_at", cursor=False) == [u["id"] for u in by_update]
    assert shared.ids(order_by="-updated_at", limit=5, offset=2, **{"name_query": "A"}) == [
        u["id"] for u in by_update[2:7]
    ]
    low, high = population[300]["created_at"], population[900]["created_at"]
    windowed = [u["id"] for u in expected if low < u["created_at"] < high]
    assert shared.count(name_query="A", created_at_after=low, created_at_before=high) == len(
        windowed
    )
    got = shared.ids(
        order_by="+created_at", limit=500, name_query="A", created_at_after=low,
        created_at_before=high,
    )  # fmt: skip
    assert got == windowed


def test_web3_wallet_filter_and_primary_identifier_orders(make_api: Callable[..., Api]) -> None:
    """The generated population has no web3 wallets: added users carry them."""
    api = make_api(users=30, seed=3)

    def wallet(address: str) -> dict[str, Any]:
        return {"id": f"idn_w{address}", "object": "web3_wallet", "web3_wallet": address}

    a = api.emulator.create_user(
        first_name="W", web3_wallets=[wallet("0xBEEF")], primary_web3_wallet_id="idn_w0xBEEF"
    )
    b = api.emulator.create_user(
        first_name="V", web3_wallets=[wallet("0xaaaa")], primary_web3_wallet_id="idn_w0xaaaa"
    )
    assert api.ids(web3_wallet="0xbeef") == [a["id"]]
    assert api.count(web3_wallet=["0xAAAA", "0xbeef"]) == 2
    assert api.ids(query="0xAA") == [b["id"]]
    ordered = api.ids(order_by="web3wallet", limit=500)
    assert ordered[:2] == [a["id"], b["id"]]  # by code point: "0xBEEF" < "0xaaaa"; nulls last
    assert api.ids(order_by="-web3wallet", limit=500)[-2:] == [b["id"], a["id"]]


ORDER_FIELDS = [
    "email_address", "web3wallet", "first_name", "last_name", "phone_number", "username",
    "last_active_at", "last_sign_in_at", "created_at", "updated_at",
]  # fmt: skip


def order_value(user: dict[str, Any], field: str) -> Any:
    if field == "email_address":
        return primary(user, "email_addresses", "primary_email_address_id", "email_address")
    if field == "phone_number":
        return primary(user, "phone_numbers", "primary_phone_number_id", "phone_number")
    if field == "web3wallet":
        return primary(user, "web3_wallets", "primary_web3_wallet_id", "web3_wallet")
    return user[field]


@pytest.mark.parametrize("field", ORDER_FIELDS)
def test_each_order_by_field_is_honoured(
    shared: Api, population: list[dict[str, Any]], field: str
) -> None:
    """Ascending by value then id, nulls last; descending is exactly the reverse."""
    present = [u for u in population if order_value(u, field) is not None]
    absent = [u for u in population if order_value(u, field) is None]
    present.sort(key=lambda u: (order_value(u, field), u["id"]))
    expected = [u["id"] for u in present] + sorted(u["id"] for u in absent)
    assert shared.walk_offset(f"+{field}", 500) == expected
    assert shared.walk_offset(field, 500) == expected  # no sign: ascending
    assert shared.ids(order_by=f"-{field}", limit=500, offset=200) == expected[::-1][200:700]
    if field != "created_at":
        response = shared.get("/users", order_by=f"-{field}", starting_after=expected[0])
        assert_clerk_error(response, 422, "form_param_value_invalid")


def test_order_by_fields_have_ties_and_nulls_to_mean_something(
    population: list[dict[str, Any]],
) -> None:
    for field in ("first_name", "last_name", "last_active_at"):
        values = [order_value(u, field) for u in population]
        assert None in values, field
        present = [v for v in values if v is not None]
        assert len(set(present)) < len(present), field


@pytest.mark.parametrize(
    ("params", "param_name"),
    [
        ({"organization_id": "org_2abc"}, "organization_id"),
        ({"organization_id": "-org_2abc"}, "organization_id"),
        ({"provider": "oauth_google"}, "provider_user_id"),
        ({"provider_user_id": "1234"}, "provider"),
        ({"banned": "maybe"}, "banned"),
        ({"last_active_at_after": "yesterday"}, "last_active_at_after"),
        ({"last_sign_in_at_before": "1.5"}, "last_sign_in_at_before"),
        ({"email_address": [f"u{n}@example.com" for n in range(101)]}, "email_address"),
        ({"external_id": [str(n) for n in range(101)]}, "external_id"),
    ],
)
def test_unsupported_or_invalid_filters_are_422(
    shared: Api, params: dict[str, Any], param_name: str
) -> None:
    for path in ("/users", "/users/count"):
        error = assert_clerk_error(shared.get(path, **params), 422, "form_param_value_invalid")
        assert error["meta"] == {"param_name": param_name}
    if param_name == "organization_id":
        assert "not supported by the emulator" in error["long_message"]


def test_unknown_parameters_are_still_ignored(shared: Api) -> None:
    assert shared.ids(limit=20, colour="blue") == shared.ids(limit=20)
    assert shared.count(colour="blue") == 1500


# ---------------------------------------------------------------------------------------------
# Switches for what Clerk leaves open: cursor ties, deleted cursors, unstable ties
# ---------------------------------------------------------------------------------------------

T0 = 1_700_000_000_000


def triples(api: Api, groups: int) -> list[str]:
    """Users three to a millisecond, in +created_at order (ties by id)."""
    for g in range(groups):
        for k in range(3):
            api.emulator.create_user(first_name=f"T{g}-{k}", created_at=T0 + g * 1000)
    return api.ids(order_by="+created_at", limit=500)


def test_switches_default_to_todays_behaviour_and_are_validated() -> None:
    config = EmulatorConfig()
    assert (config.cursor_ties, config.deleted_cursor, config.unstable_ties) == (
        "id",
        "continue",
        False,
    )
    assert EmulatorConfig(deleted_cursor=404).deleted_cursor == "404"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cursor_ties"):
        EmulatorConfig(cursor_ties="random")
    with pytest.raises(ValueError, match="deleted_cursor"):
        EmulatorConfig(deleted_cursor="410")
    with pytest.raises(ValueError, match="unstable_ties"):
        EmulatorConfig(unstable_ties="yes")  # type: ignore[arg-type]


def test_switches_change_at_runtime_through_the_control_api(make_api: Callable[..., Api]) -> None:
    api = make_api()
    knobs = api.control.get("/config").json()
    assert (knobs["cursor_ties"], knobs["deleted_cursor"], knobs["unstable_ties"]) == (
        "id",
        "continue",
        False,
    )
    changed = api.control.patch(
        "/config", json={"cursor_ties": "skip", "deleted_cursor": 422, "unstable_ties": True}
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["cursor_ties"], changed.json()["deleted_cursor"]) == ("skip", "422")
    assert api.emulator.config.unstable_ties is True
    for bad in ({"cursor_ties": "id2"}, {"deleted_cursor": "gone"}, {"unstable_ties": 1}):
        assert_clerk_error(api.control.patch("/config", json=bad), 422, "form_param_value_invalid")
    assert api.control.get("/config").json()["cursor_ties"] == "skip"


@pytest.mark.parametrize("order_by", ["+created_at", "-created_at"])
def test_cursor_ties_skip_passes_over_the_cursors_millisecond(
    make_api: Callable[..., Api], order_by: str
) -> None:
    api = make_api()
    ordered = triples(api, 4)
    if order_by == "-created_at":
        ordered = ordered[::-1]
    cursor = ordered[3]  # the first user of the second millisecond: two users share its ms
    assert api.ids(order_by=order_by, starting_after=cursor) == ordered[4:]
    api.control.patch("/config", json={"cursor_ties": "skip"})
    assert api.ids(order_by=order_by, starting_after=cursor) == ordered[6:]
    # and on the paths that sort a small set: a user_id list, a filter
    listed = api.client.get(
        "/users",
        params=[("user_id", uid) for uid in ordered] + [("order_by", order_by),
                                                         ("starting_after", cursor)],
    )  # fmt: skip
    assert [u["id"] for u in listed.json()] == ordered[6:]
    assert api.ids(order_by=order_by, starting_after=cursor, name_query="T") == ordered[6:]


@pytest.mark.parametrize("mode", ["continue", "422", "404", "400", "empty"])
def test_deleted_cursor_answers(make_api: Callable[..., Api], mode: str) -> None:
    api = make_api(users=40, seed=8, deleted_cursor=mode)
    ordered = api.ids(order_by="+created_at", limit=500)
    gone = ordered[9]
    api.emulator.delete_user(gone)
    response = api.get("/users", order_by="+created_at", limit=10, starting_after=gone)
    if mode == "continue":
        assert response.status_code == 200
        assert [u["id"] for u in response.json()] == ordered[10:20]
    elif mode == "empty":
        assert response.status_code == 200
        assert response.json() == []
    elif mode == "404":
        error = assert_clerk_error(response, 404, "resource_not_found")
        assert error["long_message"] == f"No user was found with id {gone}"
    else:
        status, code = (422, "form_param_value_invalid") if mode == "422" else (400, "bad_request")
        error = assert_clerk_error(response, status, code)
        assert error["meta"] == {"param_name": "starting_after"}
    # a live cursor, and an id that never existed, are answered as before
    assert api.ids(order_by="+created_at", limit=5, starting_after=ordered[3]) == ordered[4:9]
    never = api.get("/users", starting_after="user_2NeverExistedNeverExisted00")
    assert_clerk_error(never, 422, "form_param_value_invalid")


@pytest.mark.parametrize("order_by", ["-updated_at", "+created_at", "-first_name"])
def test_unstable_ties_reorder_ties_between_identical_requests(
    make_api: Callable[..., Api], order_by: str
) -> None:
    api = make_api(users=1500, seed=42, unstable_ties=True)
    field = order_by.lstrip("+-")
    first = api.users(order_by=order_by, limit=500, offset=200)
    second = api.users(order_by=order_by, limit=500, offset=200)
    values = [u[field] for u in first]
    assert values == [u[field] for u in second], "only ties may move"
    assert [u["id"] for u in first] != [u["id"] for u in second], "ties must move"
    counts = {v: values.count(v) for v in values}
    lone = [n for n, v in enumerate(values) if counts[v] == 1]
    if field != "first_name":  # 40 first names: everyone is tied
        assert len(lone) > 20
    assert [first[n]["id"] for n in lone] == [second[n]["id"] for n in lone]
    # a cursor page is not offset paging: its ties stay in id order
    cursor = api.ids(order_by="+created_at", limit=1, offset=100)[0]
    after = api.users(order_by="+created_at", limit=500, starting_after=cursor)
    assert after == sorted(after, key=sort_key)
    assert after == api.users(order_by="+created_at", limit=500, starting_after=cursor)
    api.control.patch("/config", json={"unstable_ties": False})
    assert api.ids(order_by=order_by, limit=500, offset=200) == api.ids(
        order_by=order_by, limit=500, offset=200
    )


def test_unstable_ties_pages_are_slices_of_one_order_per_request(
    make_api: Callable[..., Api],
) -> None:
    """A tie group cut by a page's edge is shuffled whole: a page holds the right values."""
    api = make_api(users=0, unstable_ties=True)
    ordered = triples(api, 10)  # 30 users, three to a millisecond
    for offset in range(0, 30, 4):
        page = api.users(order_by="+created_at", limit=4, offset=offset)
        assert [u["created_at"] for u in page] == [
            T0 + (n // 3) * 1000 for n in range(offset, min(30, offset + 4))
        ]
        assert {u["id"] for u in page} <= set(ordered)
    assert api.count() == 30


# ---------------------------------------------------------------------------------------------
# Other endpoints
# ---------------------------------------------------------------------------------------------


def test_get_user_by_id_and_clerk_404(shared: Api) -> None:
    listed = shared.users(limit=5, offset=77)
    for user in listed:
        response = shared.get(f"/users/{user['id']}")
        assert response.status_code == 200
        assert response.json() == user
    missing = "user_2xxxxxxxxxxxxxxxxxxxxxxxxxx"
    error = assert_clerk_error(shared.get(f"/users/{missing}"), 404, "resource_not_found")
    assert error == {
        "message": "not found",
        "long_message": f"No user was found with id {missing}",
        "code": "resource_not_found",
        "meta": {},
    }


def test_unknown_path_is_clerk_404(shared: Api) -> None:
    assert_clerk_error(shared.get("/organizations"), 404, "resource_not_found")
    assert_clerk_error(shared.client.post("/users", json={}), 404, "resource_not_found")


@pytest.mark.parametrize(
    ("config", "environment"),
    [
        ({"secret_key": "sk_test_abc"}, "development"),
        ({"secret_key": "sk_live_abc"}, "production"),
        ({"secret_key": "sk_test_abc", "environment_type": "production"}, "production"),
    ],
)
def test_instance_environment(
    make_api: Callable[..., Api], config: dict[str, Any], environment: str
) -> None:
    api = make_api(instance_id="ins_2TestInstance", **config)
    response = api.get("/instance")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "instance"
    assert body["id"] == "ins_2TestInstance"
    assert body["environment_type"] == environment
    assert body["allowed_origins"] is None
    assert isinstance(body["workspace_id"], str)
    assert body["workspace_id"]


def test_updated_at_order_reflects_updates(make_api: Callable[..., Api]) -> None:
    api = make_api(users=300, seed=9)
    oldest = api.ids(order_by="+created_at", limit=3)
    before = api.users(order_by="-updated_at", limit=1)[0]
    assert before["id"] not in oldest
    api.emulator.update_user(oldest[0], first_name="Changed")
    top = api.users(order_by="-updated_at", limit=2)
    assert top[0]["id"] == oldest[0]
    assert top[0]["first_name"] == "Changed"
    assert top[0]["updated_at"] > before["updated_at"]
    assert top[1]["id"] == before["id"]
    api.control.patch(f"/users/{oldest[1]}", json={"last_name": "Also"})
    assert api.ids(order_by="-updated_at", limit=2) == [oldest[1], oldest[0]]
    assert api.ids(order_by="+updated_at", limit=500)[-2:] == [oldest[0], oldest[1]]
    # created_at order is unaffected by updates
    assert api.ids(order_by="+created_at", limit=3) == oldest


# ---------------------------------------------------------------------------------------------
# Population
# ---------------------------------------------------------------------------------------------


def test_users_have_every_field_of_the_clerk_example(shared: Api) -> None:
    example = json.loads(EXAMPLE_PATH.read_text())
    email_keys = set(example["email_addresses"][0])
    verification_keys = set(example["email_addresses"][0]["verification"])
    account_keys = set(example["external_accounts"][0])
    users = [u for off in (0, 500, 1000) for u in shared.users(limit=500, offset=off)]
    seen_emails = seen_accounts = 0
    for user in users:
        assert set(user) == set(example), set(user) ^ set(example)
        assert USER_ID.match(user["id"])
        assert user["object"] == "user"
        assert user["updated_at"] >= user["created_at"]
        # where the spec is stricter than the example: never null, one of three, day precision
        assert isinstance(user["image_url"], str)
        assert isinstance(user["profile_image_url"], str)
        assert (user["last_active_at"] or 0) % (24 * 3600 * 1000) == 0
        for account in user["external_accounts"]:
            assert account["object"] in ("external_account", "facebook_account", "google_account")
        for item in user["email_addresses"]:
            seen_emails += 1
            assert set(item) == email_keys
            assert set(item["verification"]) == verification_keys
            assert IDN_ID.match(item["id"])
        for account in user["external_accounts"]:
            seen_accounts += 1
            assert set(account) == account_keys
            assert set(account["verification"]) == set(
                example["external_accounts"][0]["verification"]
            )
    assert seen_emails >= 1400
    assert seen_accounts >= 400
    addresses = [e["email_address"] for u in users for e in u["email_addresses"]]
    assert len(addresses) == len(set(addresses)), "email addresses are unique"


def test_edge_cases_population_contains_each_kind(shared: Api) -> None:
    kinds = shared.emulator.edge_case_ids()
    assert set(kinds) == set(EDGE_CASE_KINDS)
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}
    total = sum(len(v) for v in kinds.values())
    assert 0.04 * 1500 <= total <= 0.12 * 1500
    assert shared.control.get("/edge-cases").json() == kinds

    def user(kind: str) -> dict[str, Any]:
        response = shared.get(f"/users/{kinds[kind][0]}")
        assert response.status_code == 200
        return dict(response.json())

    def email_ids(u: dict[str, Any]) -> list[str]:
        return [e["id"] for e in u["email_addresses"]]

    u = user("no_email")
    assert u["primary_email_address_id"] is None
    assert u["email_addresses"] == []
    u = user("primary_not_first")
    assert len(u["email_addresses"]) > 1
    assert u["primary_email_address_id"] in email_ids(u)[1:]
    u = user("multiple_emails")
    assert len(u["email_addresses"]) >= 3
    assert u["primary_email_address_id"] == email_ids(u)[0]
    u = user("dangling_primary")
    assert u["primary_email_address_id"]
    assert u["primary_email_address_id"] not in email_ids(u)
    assert user("banned")["banned"] is True
    assert user("locked")["locked"] is True
    for uid in kinds["unicode_names"]:
        u = live(shared.emulator, uid)
        assert any(awkward_char(c) for c in u["first_name"] + u["last_name"]), u
    u = user("empty_names")
    assert (u["first_name"], u["last_name"]) == ("", "")
    u = user("null_names")
    assert (u["first_name"], u["last_name"]) == (None, None)
    assert len(user("long_first_name")["first_name"]) == 140
    assert len(user("long_image_url")["image_url"]) == 600
    u = user("empty_image_url")
    assert u["image_url"] == ""
    assert u["profile_image_url"]
    assert "\x00" in user("nul_in_last_name")["last_name"]
    assert "\\u0000" in shared.get(f"/users/{kinds['nul_in_last_name'][0]}").text


def test_without_edge_cases_every_user_is_plain(make_api: Callable[..., Api]) -> None:
    api = make_api(users=500, seed=42)
    assert all(not ids for ids in api.emulator.edge_case_ids().values())
    for u in api.users(limit=500):
        assert not u["banned"]
        assert not u["locked"]
        assert u["primary_email_address_id"] == u["email_addresses"][0]["id"]
        assert u["image_url"]
        for name in (u["first_name"] or "", u["last_name"] or ""):
            assert "\x00" not in name
            assert len(name) < 50
            assert not any(awkward_char(c) for c in name)


def test_same_seed_same_users_other_seed_other_users(make_api: Callable[..., Api]) -> None:
    a, b, c = make_api(users=200, seed=1), make_api(users=200, seed=1), make_api(users=200, seed=2)
    page_a = a.client.get("/users", params={"limit": 200}).content
    assert page_a == b.client.get("/users", params={"limit": 200}).content
    ids_a, ids_c = set(a.ids(limit=200)), set(c.ids(limit=200))
    assert not ids_a & ids_c
    assert a.emulator.user_ids() == b.emulator.user_ids()


def test_ids_decode_and_do_not_look_sequential() -> None:
    emulator = Emulator(EmulatorConfig(users=5000, seed=3))
    ids = emulator.user_ids()
    assert len(set(ids)) == 5000
    assert all(USER_ID.match(uid) for uid in ids)
    assert sorted(ids) != ids
    assert all(emulator.get_user(uid) is not None for uid in ids[::250])
    forged = ids[0][:-1] + ("A" if ids[0][-1] != "A" else "B")  # right index, wrong check suffix
    assert emulator.get_user(forged) is None


def test_million_users_start_fast() -> None:
    started = time.perf_counter()
    with start_emulator(EmulatorConfig(users=1_000_000, seed=11)) as server:
        elapsed = time.perf_counter() - started
        assert elapsed < 10, f"start took {elapsed:.1f}s"
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}
        ) as client:
            assert client.get("/users/count").json()["total_count"] == 1_000_000
            page = client.get("/users", params={"limit": 500, "offset": 999_000}).json()
            assert len(page) == 500
            newest = client.get("/users", params={"limit": 1}).json()[0]
            assert client.get(f"/users/{newest['id']}").json() == newest
            oldest = client.get("/users", params={"limit": 1, "offset": 999_999}).json()[0]
            after = client.get(
                "/users", params={"order_by": "+created_at", "starting_after": oldest["id"]}
            ).json()
            assert len(after) == 10
            assert after[0]["created_at"] >= oldest["created_at"]


# ---------------------------------------------------------------------------------------------
# Faults and realism knobs
# ---------------------------------------------------------------------------------------------


def test_rate_limit_429_with_retry_after(make_api: Callable[..., Api]) -> None:
    api = make_api(users=5, rate_limit=5)
    assert [api.get("/users").status_code for _ in range(5)] == [200] * 5
    limited = api.get("/users/count")
    error = assert_clerk_error(limited, 429, "too_many_requests")
    assert error["meta"] == {}
    assert 1 <= int(limited.headers["Retry-After"]) <= 10
    assert api.control.get("/stats").status_code == 200  # the control API is never limited
    assert api.emulator.stats()["responses_429"] == 1
    assert api.control.patch("/config", json={"rate_limit": None}).json()["rate_limit"] is None
    assert api.get("/users").status_code == 200


def test_rate_limit_presets() -> None:
    assert EmulatorConfig(rate_limit="development").rate_limit == 100  # type: ignore[arg-type]
    emulator = Emulator(EmulatorConfig())
    assert emulator.configure(rate_limit="production")["rate_limit"] == 1000
    with pytest.raises(ValueError, match="rate_limit"):
        emulator.configure(rate_limit="staging")


def test_throttle_every_and_fail_every(make_api: Callable[..., Api]) -> None:
    api = make_api(users=5, throttle_every=3, fail_every=5, retry_after=2)
    statuses = []
    for _ in range(10):
        response = api.get("/users")
        api.control.get("/stats")  # control requests do not advance the cadence
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "2"
            assert_clerk_error(response, 429, "too_many_requests")
        if response.status_code == 500:
            assert_clerk_error(response, 500, "internal_clerk_error")
    assert statuses == [200, 200, 429, 200, 500, 429, 200, 200, 429, 500]
    stats = api.control.get("/stats").json()
    assert stats["responses_429"] == 3
    assert stats["responses_5xx"] == 2


def test_truncate_every_cuts_list_bodies(make_api: Callable[..., Api]) -> None:
    api = make_api(users=50, truncate_every=2)
    assert len(api.users(limit=50)) == 50
    with pytest.raises(httpx.RemoteProtocolError):
        api.get("/users", limit=50)
    assert len(api.users(limit=50)) == 50  # a fresh connection, a whole body
    assert api.emulator.stats()["truncated"] == 1


def test_latency_and_deep_offset_latency(make_api: Callable[..., Api]) -> None:
    api = make_api(users=20)
    fast = time.perf_counter()
    api.get("/users")
    fast_elapsed = time.perf_counter() - fast
    api.control.patch("/config", json={"latency_ms": 150})
    started = time.perf_counter()
    api.get("/users/count")
    assert time.perf_counter() - started >= 0.15 > fast_elapsed
    api.emulator.configure(latency_ms=0, deep_offset_ms_per_1000=100)
    started = time.perf_counter()
    api.get("/users", offset=3000)
    assert time.perf_counter() - started >= 0.3
    # a request without an offset (a cursor walk) is not slowed, and does not fail
    started = time.perf_counter()
    assert api.get("/users", limit=5).status_code == 200
    assert time.perf_counter() - started < 0.3


def test_config_patch_validates(make_api: Callable[..., Api]) -> None:
    api = make_api()
    changed = api.control.patch("/config", json={"fail_every": 7, "rate_limit": "development"})
    assert changed.status_code == 200
    assert changed.json()["fail_every"] == 7
    assert changed.json()["rate_limit"] == 100
    assert api.emulator.config.fail_every == 7
    for bad in ({"latency_ms": -1}, {"users": 5}, {"fail_every": "often"}, {"retry_after": 1.5}):
        assert_clerk_error(api.control.patch("/config", json=bad), 422, "form_param_value_invalid")
    assert_clerk_error(
        api.control.patch("/config", content=b"[1]"), 422, "form_param_value_invalid"
    )
    assert api.control.get("/config").json()["fail_every"] == 7


def test_stats_and_reset(make_api: Callable[..., Api]) -> None:
    api = make_api(users=30)
    api.users(limit=7)
    api.get("/users/count")
    api.get("/users/nope")
    httpx.get(api.server.base_url + "/users")
    stats = api.control.get("/stats").json()
    assert stats["api_requests"] == 4
    assert stats["by_endpoint"]["GET /v1/users"] == 2
    assert stats["by_endpoint"]["GET /v1/users/{id}"] == 1
    assert stats["by_status"] == {"200": 2, "404": 1, "401": 1}
    assert stats["responses_401"] == 1
    assert stats["users_served"] == 7
    assert stats["requests_total"] == 5
    assert stats["control_requests"] == 1
    reset = api.control.post("/reset-stats").json()
    assert reset["api_requests"] == 0
    assert reset["by_endpoint"] == {}


def test_keep_alive_and_http11(make_api: Callable[..., Api]) -> None:
    api = make_api(users=50)
    for _ in range(20):
        response = api.get("/users", limit=50)
        assert response.http_version == "HTTP/1.1"
        assert int(response.headers["Content-Length"]) == len(response.content)
    assert api.emulator.stats()["connections"] == 1


# ---------------------------------------------------------------------------------------------
# Mutations: control API and Python API
# ---------------------------------------------------------------------------------------------


def test_control_api_create_update_ban_delete(make_api: Callable[..., Api]) -> None:
    api = make_api(users=20)
    created = api.control.post(
        "/users",
        json={
            "first_name": "Nia",
            "last_name": "Okafor",
            "email": "nia@example.com",
            "external_id": "ext-1",
        },
    )
    assert created.status_code == 200
    user = created.json()
    uid = user["id"]
    assert USER_ID.match(uid)
    assert (user["first_name"], user["external_id"]) == ("Nia", "ext-1")
    assert user["email_addresses"][0]["email_address"] == "nia@example.com"
    assert user["primary_email_address_id"] == user["email_addresses"][0]["id"]
    assert set(user) == set(json.loads(EXAMPLE_PATH.read_text()))
    assert api.ids(limit=1) == [uid]  # newest
    assert api.count() == 21

    patched = api.control.patch(f"/users/{uid}", json={"first_name": "Nya", "email": "n@x.org"})
    assert patched.json()["first_name"] == "Nya"
    assert patched.json()["updated_at"] > user["updated_at"]
    fetched = api.get(f"/users/{uid}").json()
    assert fetched == patched.json()
    assert fetched["email_addresses"][0]["email_address"] == "n@x.org"

    assert api.control.post(f"/users/{uid}/ban").json()["banned"] is True
    assert api.get(f"/users/{uid}").json()["banned"] is True
    assert api.control.post(f"/users/{uid}/unban").json()["banned"] is False

    base_id = api.ids(order_by="+created_at", limit=1)[0]
    assert api.control.post(f"/users/{base_id}/ban").json()["banned"] is True
    assert api.get(f"/users/{base_id}").json()["banned"] is True

    deleted = api.control.delete(f"/users/{uid}")
    assert deleted.json() == {"object": "user", "id": uid, "deleted": True}
    assert api.get(f"/users/{uid}").status_code == 404
    assert api.count() == 20
    assert_clerk_error(api.control.delete(f"/users/{uid}"), 404, "resource_not_found")
    assert_clerk_error(api.control.patch(f"/users/{uid}", json={}), 404, "resource_not_found")
    assert_clerk_error(api.control.post("/users", content=b"nope"), 422, "form_param_value_invalid")
    assert_clerk_error(
        api.control.patch(f"/users/{base_id}", json={"created_at": "soon"}),
        422,
        "form_param_value_invalid",
    )
    unauthorized = httpx.post(api.server.control_url + "/users", json={})
    assert_clerk_error(unauthorized, 401, "authentication_invalid")


def test_python_api_mutations() -> None:
    emulator = Emulator(EmulatorConfig(users=10, seed=4))
    ids = emulator.user_ids()
    oldest = emulator.get_user(ids[0])
    assert oldest is not None
    early = emulator.create_user(
        first_name="Early", created_at=oldest["created_at"] - 1, user_id="user_imported_1"
    )
    assert early["email_addresses"] == []
    assert early["primary_email_address_id"] is None
    assert emulator.user_ids()[0] == "user_imported_1"
    with pytest.raises(ValueError, match="taken"):
        emulator.create_user(user_id="user_imported_1")
    with pytest.raises(ValueError, match="taken"):
        emulator.create_user(user_id=ids[3])
    with pytest.raises(KeyError):
        emulator.update_user("user_missing", first_name="x")
    with pytest.raises(ValueError, match="id"):
        emulator.update_user(ids[1], id="user_other")
    emulator.delete_user(ids[2])
    with pytest.raises(KeyError):
        emulator.delete_user(ids[2])
    assert emulator.get_user(ids[2]) is None
    emulator.ban_user(ids[1])
    banned = emulator.get_user(ids[1])
    assert banned is not None
    assert banned["banned"] is True
    emulator.unban_user(ids[1])
    assert live(emulator, ids[1])["banned"] is False
    # a copy is returned: mutating it changes nothing
    copy = emulator.get_user(ids[1])
    assert copy is not None
    copy["first_name"] = "Mallory"
    assert live(emulator, ids[1])["first_name"] != "Mallory"
    moved = emulator.update_user(ids[5], created_at=oldest["created_at"] - 10)
    assert emulator.user_ids()[:2] == [ids[5], "user_imported_1"]
    assert moved["created_at"] == oldest["created_at"] - 10
    assert emulator.count() == 10


def test_random_mutations_keep_every_order_consistent(make_api: Callable[..., Api]) -> None:
    """Model check: after each mutation every order/offset/cursor matches a brute-force sort."""
    api = make_api(users=90, seed=13)
    emulator = api.emulator
    rng = random.Random(7)
    for step in range(10):
        ids = emulator.user_ids()
        action = step % 4
        if action == 0:
            emulator.delete_user(rng.choice(ids))
        elif action == 1:
            tie_with = live(emulator, rng.choice(ids))["created_at"]
            emulator.update_user(rng.choice(ids), created_at=tie_with)
        elif action == 2:
            tie_with = live(emulator, rng.choice(ids))["created_at"]
            emulator.create_user(first_name="N", created_at=tie_with)
        else:
            emulator.update_user(rng.choice(ids), last_name="U")
        users = [live(emulator, uid) for uid in emulator.user_ids()]
        for field in ("created_at", "updated_at"):
            ordered = sorted(users, key=functools.partial(sort_key, field=field))
            expected = [u["id"] for u in ordered]
            assert api.walk_offset(f"+{field}", 17) == expected
            assert api.ids(order_by=f"-{field}", limit=500, offset=3) == expected[::-1][3:]
            if field == "created_at":
                assert api.walk_cursor("+created_at", 11) == expected
                assert api.walk_cursor("-created_at", 11) == expected[::-1]
        assert api.count() == len(users)


def test_concurrent_requests_during_mutations(make_api: Callable[..., Api]) -> None:
    api = make_api(users=400, seed=21)
    failures: list[str] = []

    def reader() -> None:
        with httpx.Client(
            base_url=api.server.base_url, headers={"Authorization": f"Bearer {KEY}"}
        ) as client:
            for n in range(15):
                response = client.get("/users", params={"limit": 100, "offset": n * 10})
                if response.status_code != 200 or len(response.json()) != 100:
                    failures.append(f"{response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for n in range(30):
        api.emulator.create_user(first_name=f"C{n}")
        api.emulator.update_user(api.emulator.user_ids()[n], first_name="Z")
    for thread in threads:
        thread.join()
    assert failures == []
    assert api.count() == 430


# ---------------------------------------------------------------------------------------------
# The foreground server
# ---------------------------------------------------------------------------------------------


def test_cli_command_serves_until_sigterm() -> None:
    assert DEFAULT_PORT == 8765
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = "emulator --port 0 --users 25 --cursor-ties skip --deleted-cursor 404 --unstable-ties"
    process = subprocess.Popen(
        [sys.executable, "-m", "clerk_sync_cli", *args.split()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line
        response = httpx.get(
            match.group(1) + "/users/count", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert response.json()["total_count"] == 25
        config = httpx.get(
            match.group(1).removesuffix("/v1") + "/_emulator/config",
            headers={"Authorization": f"Bearer {KEY}"},
        ).json()
        assert (config["cursor_ties"], config["deleted_cursor"], config["unstable_ties"]) == (
            "skip",
            "404",
            True,
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert process.stderr is not None
        errors = process.stderr.read()
        assert "Traceback" not in errors
        assert "GET /v1" not in errors  # no per-request logging
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_documents_the_switches_and_refuses_bad_values() -> None:
    from typer.testing import CliRunner

    from clerk_sync_cli.cli import app

    runner = CliRunner()
    text = runner.invoke(app, ["emulator", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--cursor-ties", "--deleted-cursor", "--unstable-ties"):
        assert option in text
    assert "id|skip" in text
    assert "continue|422|404|400|empty" in text
    bad = runner.invoke(app, ["emulator", "--deleted-cursor", "410", "--port", "0"])
    assert bad.exit_code == 2

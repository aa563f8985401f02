"""Clerk's official Python SDK (``clerk-backend-api``) judges the emulator's wire shape.

The SDK is generated from Clerk's OpenAPI spec and parses every answer into strict pydantic
models (enums, required and non-nullable fields), so each kind of user ``edge_cases=True``
generates is walked through it, and Clerk's error bodies through its typed errors. Its
``server_url`` includes ``/v1``, as the SDK's own default ``https://api.clerk.com/v1`` does.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from clerk_backend_api import Clerk, models

from clerk_sync_cli.emulator import (
    DEFAULT_SECRET_KEY,
    EmulatorConfig,
    RunningEmulator,
    start_emulator,
)

# The SDK reads its own deprecated last_active_at_since field while building every query.
pytestmark = pytest.mark.filterwarnings("ignore:.*DEPRECATED.*:DeprecationWarning")

USERS = 3000


@pytest.fixture(scope="module")
def running() -> Iterator[RunningEmulator]:
    with start_emulator(EmulatorConfig(users=USERS, seed=7, edge_cases=True)) as server:
        yield server


@pytest.fixture(scope="module")
def sdk(running: RunningEmulator) -> Iterator[Clerk]:
    with Clerk(bearer_auth=DEFAULT_SECRET_KEY, server_url=running.base_url) as clerk:
        yield clerk


def raw_ids(running: RunningEmulator, **params: object) -> list[str]:
    """The same page read without the SDK, to check what it sent and parsed."""
    response = httpx.get(
        running.base_url + "/users",
        params=params,  # type: ignore[arg-type]
        headers={"Authorization": f"Bearer {DEFAULT_SECRET_KEY}"},
    )
    assert response.status_code == 200, response.text
    return [user["id"] for user in response.json()]


def test_every_generated_user_parses_into_the_sdks_models(
    running: RunningEmulator, sdk: Clerk
) -> None:
    users: list[models.User] = []
    while True:
        page = sdk.users.list(request={"limit": 500, "offset": len(users)})
        assert all(isinstance(user, models.User) for user in page)
        users += page
        if len(page) < 500:
            break
    ids = [user.id for user in users]
    assert len(ids) == len(set(ids)) == USERS
    assert set(ids) == set(running.emulator.user_ids())
    kinds = running.emulator.edge_case_ids()
    assert all(kinds.values()), "every kind of awkward user is in the population"
    assert {uid for kind in kinds.values() for uid in kind} <= set(ids)
    accounts = {account.object for user in users for account in user.external_accounts}
    assert accounts == {
        models.ExternalAccountWithVerificationObject.GOOGLE_ACCOUNT,
        models.ExternalAccountWithVerificationObject.EXTERNAL_ACCOUNT,  # GitHub sign-ups
    }
    day = 24 * 3600 * 1000
    assert all(u.last_active_at % day == 0 for u in users if u.last_active_at is not None)


@pytest.mark.parametrize(
    ("order_by", "limit"),
    [("-updated_at", 250), ("+created_at", 333), ("first_name", 400), ("-last_sign_in_at", 500)],
)
def test_list_pages_with_order_by_limit_and_offset(
    running: RunningEmulator, sdk: Clerk, order_by: str, limit: int
) -> None:
    for offset in (0, limit, 2 * limit, USERS - limit // 2):
        page = sdk.users.list(request={"order_by": order_by, "limit": limit, "offset": offset})
        expected = raw_ids(running, order_by=order_by, limit=limit, offset=offset)
        assert [user.id for user in page] == expected
        assert len(page) == min(limit, USERS - offset)


def test_count_and_filters(running: RunningEmulator, sdk: Clerk) -> None:
    total = sdk.users.count()
    assert isinstance(total, models.TotalCount)
    assert total.total_count == USERS
    banned = running.emulator.edge_case_ids()["banned"]
    assert sdk.users.count(request={"banned": True}).total_count == len(banned)
    listed = sdk.users.list(request={"banned": True, "order_by": "+created_at", "limit": 500})
    assert sorted(user.id for user in listed) == sorted(banned)
    one = sdk.users.list(request={"user_id": [banned[0]]})
    assert [user.id for user in one] == [banned[0]]


def test_get_each_kind_of_user(running: RunningEmulator, sdk: Clerk) -> None:
    for kind, ids in running.emulator.edge_case_ids().items():
        user = sdk.users.get(user_id=ids[0])
        assert isinstance(user, models.User), kind
        assert user.id == ids[0]
    no_email = sdk.users.get(user_id=running.emulator.edge_case_ids()["no_email"][0])
    assert no_email.primary_email_address_id is None
    assert no_email.email_addresses == []


def test_instance_parses(sdk: Clerk) -> None:
    instance = sdk.instance_settings.get()
    assert isinstance(instance, models.Instance)
    assert instance.environment_type == "development"


def test_404_raises_the_sdks_typed_error(sdk: Clerk) -> None:
    with pytest.raises(models.ClerkErrors) as caught:
        sdk.users.get(user_id="user_2xxxxxxxxxxxxxxxxxxxxxxxxxx")
    assert caught.value.raw_response.status_code == 404
    (error,) = caught.value.data.errors
    assert error.code == "resource_not_found"
    assert error.long_message == "No user was found with id user_2xxxxxxxxxxxxxxxxxxxxxxxxxx"


def test_401_raises_the_sdks_typed_error(running: RunningEmulator) -> None:
    with Clerk(bearer_auth="sk_test_wrong", server_url=running.base_url) as wrong:
        for call in (lambda: wrong.users.list(), lambda: wrong.users.get(user_id="user_x")):
            with pytest.raises(models.ClerkErrors) as caught:
                call()
            assert caught.value.raw_response.status_code == 401
            assert caught.value.data.errors[0].code == "authentication_invalid"


def test_422_raises_the_sdks_typed_error(sdk: Clerk) -> None:
    with pytest.raises(models.ClerkErrors) as caught:
        sdk.users.list(request={"organization_id": ["org_2abc"]})
    assert caught.value.raw_response.status_code == 422
    (error,) = caught.value.data.errors
    assert error.code == "form_param_value_invalid"
    assert error.meta == {"param_name": "organization_id"}

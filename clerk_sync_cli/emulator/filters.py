"""Query parameters of ``GET /v1/users`` and ``/users/count``: typed readers and the 22 filters.

Filters combine with AND. Repeated ones take at most 100 values; a present one whose values are
all blank matches nobody. Bad values, and filters the emulator cannot answer truthfully, are a
422 ``form_param_value_invalid``, never silently ignored.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clerk_sync_cli.emulator.config import MAX_USER_ID_FILTER
from clerk_sync_cli.emulator.errors import invalid

Params = Mapping[str, list[str]]

# -- typed readers -----------------------------------------------------------------------------


def str_param(params: Params, name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def int_param(params: Params, name: str, default: int) -> int:
    raw = str_param(params, name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid(name, f"{name} must be an integer") from None


def _opt_int(params: Params, name: str) -> int | None:
    return int_param(params, name, 0) if str_param(params, name) else None


#: Go's strconv.ParseBool spellings (Clerk's API is written in Go).
_BOOLS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}


def _bool_param(params: Params, name: str) -> bool | None:
    raw = str_param(params, name)
    if not raw:
        return None
    value = _BOOLS.get(raw.lower())
    if value is None:
        raise invalid(name, f"{name} must be true or false")
    return value


def _list_param(params: Params, name: str) -> list[str] | None:
    """A repeated filter's non-blank values; None when absent ([] matches nobody)."""
    if name not in params:
        return None
    values = [v for v in params[name] if v]
    if len(values) > MAX_USER_ID_FILTER:
        raise invalid(name, f"at most {MAX_USER_ID_FILTER} {name} values are allowed")
    return values


def _signed(values: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``+a``/``a`` (include) from ``-a`` (exclude), as user_id and external_id take."""
    include: list[str] = []
    exclude: list[str] = []
    for value in values:
        if value[0] == "-":
            exclude.append(value[1:])
        else:
            include.append(value[1:] if value[0] == "+" else value)
    return include, exclude


# -- filters -----------------------------------------------------------------------------------

_UserTest = Callable[[dict[str, Any]], bool]
_Texts = Callable[[dict[str, Any]], list[Any]]


@dataclass(slots=True)
class Filters:
    """The filters of one list or count request: each of the spec's 22 is here or was a 422."""

    after: int | None = None  # created_at_after (strict)
    before: int | None = None  # created_at_before (strict)
    include: list[str] | None = None  # user_id values to include; None: every user
    exclude: frozenset[str] = frozenset()  # user_id values given with a '-' prefix
    tests: list[_UserTest] = field(default_factory=list)  # the rest, over the parsed user

    def matches(self, user: dict[str, Any]) -> bool:
        return all(test(user) for test in self.tests)


def _values(user: dict[str, Any], list_key: str, value_key: str) -> list[Any]:
    items = user.get(list_key)
    if not isinstance(items, list):
        return []
    return [item.get(value_key) for item in items if isinstance(item, dict)]


def _emails(user: dict[str, Any]) -> list[Any]:
    return _values(user, "email_addresses", "email_address")


def _phones(user: dict[str, Any]) -> list[Any]:
    return _values(user, "phone_numbers", "phone_number")


def _wallets(user: dict[str, Any]) -> list[Any]:
    return _values(user, "web3_wallets", "web3_wallet")


def _usernames(user: dict[str, Any]) -> list[Any]:
    return [user.get("username")]


def _names(user: dict[str, Any]) -> list[Any]:
    first, last = user.get("first_name"), user.get("last_name")
    both = f"{first if isinstance(first, str) else ''} {last if isinstance(last, str) else ''}"
    return [first, last, both.strip()]


def _query_texts(user: dict[str, Any]) -> list[Any]:
    """What ``query`` searches: ids, emails, phones, username, web3 wallets, first, last name."""
    return [
        user.get("id"),
        *_emails(user),
        *_phones(user),
        user.get("username"),
        *_wallets(user),
        user.get("first_name"),
        user.get("last_name"),
    ]


#: Repeated filters answered by a case-insensitive exact match on any of the user's values.
_EXACT_FILTERS: dict[str, _Texts] = {
    "email_address": _emails,
    "phone_number": _phones,
    "username": _usernames,
    "web3_wallet": _wallets,
}
#: Text filters answered by a case-insensitive substring match on any of the user's values.
_TEXT_FILTERS: dict[str, _Texts] = {
    "query": _query_texts,
    "email_address_query": _emails,
    "phone_number_query": _phones,
    "username_query": _usernames,
    "name_query": _names,
}
#: ms filters on nullable timestamps (a null never matches): field and comparison.
_TIME_FILTERS: dict[str, tuple[str, Callable[[int, int], bool]]] = {
    "last_active_at_before": ("last_active_at", operator.lt),
    "last_active_at_after": ("last_active_at", operator.gt),
    "last_active_at_since": ("last_active_at", operator.ge),
    "last_sign_in_at_before": ("last_sign_in_at", operator.lt),
    "last_sign_in_at_after": ("last_sign_in_at", operator.gt),
}
#: Filters of the spec the emulator cannot answer truthfully: a 422, never silently ignored.
_UNSUPPORTED_FILTERS: dict[str, str] = {"organization_id": "it has no organizations"}


def _any_equal(texts: _Texts, wanted: frozenset[str], user: dict[str, Any]) -> bool:
    return any(isinstance(v, str) and v.lower() in wanted for v in texts(user))


def _any_contains(texts: _Texts, needle: str, user: dict[str, Any]) -> bool:
    return any(isinstance(v, str) and needle in v.lower() for v in texts(user))


def _time_ok(key: str, op: Callable[[int, int], bool], bound: int, user: dict[str, Any]) -> bool:
    value = user.get(key)
    return isinstance(value, int) and not isinstance(value, bool) and op(value, bound)


def _banned_is(wanted: bool, user: dict[str, Any]) -> bool:
    return user.get("banned") is wanted


def _external_id_ok(
    include: frozenset[str] | None, exclude: frozenset[str], user: dict[str, Any]
) -> bool:
    value = user.get("external_id")
    return (include is None or value in include) and value not in exclude


def _provider_ok(provider: str, ids: frozenset[str], user: dict[str, Any]) -> bool:
    return any(
        account.get("provider") == provider and account.get("provider_user_id") in ids
        for account in user.get("external_accounts") or ()
        if isinstance(account, dict)
    )


def parse_filters(params: Params) -> Filters:
    """Every filter of ``GET /v1/users`` and ``/users/count``; 422 for bad or unsupported ones."""
    for name, why in _UNSUPPORTED_FILTERS.items():
        if any(params.get(name, ())):
            raise invalid(name, f"{name} is not supported by the emulator ({why})")
    filters = Filters(
        after=_opt_int(params, "created_at_after"), before=_opt_int(params, "created_at_before")
    )
    ids = _list_param(params, "user_id")
    if ids is not None:
        include, exclude = _signed(ids)
        filters.exclude = frozenset(exclude)
        filters.include = include if include or not exclude else None
    tests = filters.tests
    for name, texts in _EXACT_FILTERS.items():
        values = _list_param(params, name)
        if values is not None:
            wanted = frozenset(v.lower() for v in values)
            tests.append(functools.partial(_any_equal, texts, wanted))
    external = _list_param(params, "external_id")
    if external is not None:
        include, exclude = _signed(external)
        wanted_ids = frozenset(include) if include or not exclude else None
        tests.append(functools.partial(_external_id_ok, wanted_ids, frozenset(exclude)))
    for name, texts in _TEXT_FILTERS.items():
        needle = str_param(params, name)
        if needle:
            tests.append(functools.partial(_any_contains, texts, needle.lower()))
    banned = _bool_param(params, "banned")
    if banned is not None:
        tests.append(functools.partial(_banned_is, banned))
    for name, (key, op) in _TIME_FILTERS.items():
        bound = _opt_int(params, name)
        if bound is not None:
            tests.append(functools.partial(_time_ok, key, op, bound))
    provider = str_param(params, "provider") or None
    provider_ids = _list_param(params, "provider_user_id")
    if provider is not None and provider_ids is not None:
        tests.append(functools.partial(_provider_ok, provider, frozenset(provider_ids)))
    elif provider is not None or provider_ids is not None:
        missing = "provider" if provider is None else "provider_user_id"
        raise invalid(missing, "provider and provider_user_id must be used together")
    return filters

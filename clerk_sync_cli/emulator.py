"""A local, deterministic emulator of the part of Clerk's Backend API that clerk-sync uses.

It is the backbone of the test suite, the demo and the benchmarks: a stdlib-only HTTP server
(``http.server.ThreadingHTTPServer``, HTTP/1.1 keep-alive, ``Content-Length`` on every response)
that speaks Clerk's wire format, plus a Python API to script it.

Quick start::

    from clerk_sync_cli.emulator import EmulatorConfig, start_emulator

    with start_emulator(EmulatorConfig(users=10_000, seed=1, edge_cases=True)) as server:
        os.environ["CLERK_API_URL"] = server.base_url        # http://127.0.0.1:<port>/v1
        os.environ["CLERK_SECRET_KEY"] = "sk_test_emulator"
        server.emulator.update_user(server.emulator.user_ids()[0], first_name="Grace")

or from a shell: ``clerk-sync emulator --users 100000 --port 8765``.

Clerk API (``/v1``; every request needs ``Authorization: Bearer <secret_key>``)
-----------------------------------------------------------------------------
Answers validate against the schemas of Clerk's OpenAPI spec (``bapi/2026-05-12.yml``: User,
TotalCount, Instance, ClerkErrors), which ``tests/test_emulator_sdk.py`` checks through Clerk's
own Python SDK (users given other fields through the mutators are served as given).

``GET /v1/users``
    A bare JSON array of User objects. ``limit`` (1..500, default 10), ``offset`` (>= 0),
    ``order_by`` (default ``-created_at``): ``[+-]`` and one of ``created_at``, ``updated_at``,
    ``email_address``, ``web3wallet``, ``phone_number`` (the primary identifier's value),
    ``first_name``, ``last_name``, ``username``, ``last_active_at``, ``last_sign_in_at``; no sign
    means ``+``, which must arrive url-encoded as ``%2B`` (a raw ``+`` decodes to a space and is
    rejected with 422, as an unknown field is). ``starting_after=<user id>`` (cursor: only with
    created_at ordering and offset 0, else 422). Invalid values answer 422
    ``form_param_value_invalid``; unknown parameters are ignored.

    Order is total: ties in the sort field are broken by user id (ascending), nulls sort last,
    and a descending order is exactly the reverse of the ascending one. Strings compare by code
    point. (``unstable_ties`` changes the tie-break, below.)

    Filters (the spec's 22, also on ``/users/count``; all combine with AND). Repeated ones take
    at most 100 values; a present one whose values are all blank matches nobody:
    ``email_address``, ``phone_number``, ``username``, ``web3_wallet`` (case-insensitive exact
    match on any of the user's values); ``user_id`` and ``external_id`` (exact; a ``-`` prefix
    excludes, ``+`` or none includes); ``query`` (case-insensitive substring of the id, email
    addresses, phone numbers, username, web3 wallets, first or last name);
    ``email_address_query``, ``phone_number_query``, ``username_query``, ``name_query`` (the
    same over one field; names also as "first last"); ``banned`` (true/false, Go's spellings);
    ``created_at_after`` / ``created_at_before``, ``last_sign_in_at_after`` / ``_before``,
    ``last_active_at_after`` / ``_before`` (ms, strict ``>`` / ``<``; inclusivity is unverified)
    and ``last_active_at_since`` (``>=``), a null never matching; ``provider`` with
    ``provider_user_id`` (repeated; an external account with both; one without the other is a
    422). ``organization_id`` answers 422: the emulator has no organizations.

    Cost: unfiltered pages in created_at / updated_at order, and created_at windows, are found
    by position in O(log n + page) at any depth. Other filters walk that order testing each
    user (parsing it) until the page is full; other orders, and ``user_id`` lists, collect and
    sort every match (O(users)): fine for tests, slow over a million users.

    Cursor semantics: ``starting_after`` selects the users strictly after the cursor user's
    position ``(created_at, id)`` in the requested direction. The position of a *deleted* user
    stays known (base users' positions are computable, deleted overlay users keep a tombstone),
    so a cursor still continues correctly after its user is deleted mid-walk. An id that never
    existed answers 422 ``form_param_value_invalid`` (Clerk's answer is unverified).
    ``cursor_ties`` and ``deleted_cursor`` change both answers, below.
``GET /v1/users/count``
    ``{"object":"total_count","total_count":N}`` with the same filters as the list.
``GET /v1/users/{id}``
    The user, or 404 ``resource_not_found`` (deleted users too).
``GET /v1/instance``
    ``{"object":"instance","id":...,"environment_type":...,"allowed_origins":null,
    "workspace_id":...}``; development for ``sk_test_`` keys, production for ``sk_live_``.

Errors use Clerk's body ``{"errors":[{"message","long_message","code","meta"}],
"clerk_trace_id"}`` and a ``Clerk-Trace-Id`` header. The secret key is never echoed.

Control API (``/_emulator``; same Bearer key; not rate limited, not delayed, never faulted)
-----------------------------------------------------------------------------------------
``POST /_emulator/users``             JSON body = :meth:`Emulator.create_user` kwargs -> user
``PATCH /_emulator/users/{id}``       JSON body = :meth:`Emulator.update_user` fields -> user
``POST /_emulator/users/{id}/ban``    -> user; ``POST /_emulator/users/{id}/unban`` -> user
``DELETE /_emulator/users/{id}``      -> ``{"object":"user","id":...,"deleted":true}``
``GET|PATCH /_emulator/config``       read / change the knobs at runtime: latency_ms,
                                      deep_offset_ms_per_1000, rate_limit (int, null,
                                      "production" or "development"), fail_every,
                                      throttle_every, retry_after, truncate_every,
                                      cursor_ties, deleted_cursor, unstable_ties
``GET /_emulator/stats``              counters (see :meth:`Emulator.stats`)
``POST /_emulator/reset-stats``       zero the counters and the fault cadence counters
``GET /_emulator/edge-cases``         :meth:`Emulator.edge_case_ids`
Unknown ids answer 404, invalid bodies 422, both in Clerk's error format.

Faults (``EmulatorConfig`` fields, also settable via :meth:`Emulator.configure`)
--------------------------------------------------------------------------------
Applied to authenticated ``/v1`` requests, in this order: ``latency_ms`` (+
``deep_offset_ms_per_1000`` x offset / 1000, applied to every /v1 request before auth),
``rate_limit`` (requests accepted per sliding 10 s window; 429 ``too_many_requests`` with
``Retry-After`` = whole seconds until a slot frees), ``throttle_every`` (every Nth request answers
429 with ``Retry-After: <retry_after>``), ``fail_every`` (every Nth answers 500),
``truncate_every`` (every Nth successful list response announces its full ``Content-Length``
but is cut off mid-body and the connection closed).

Undocumented behaviours (``EmulatorConfig`` fields, runtime-changeable like the faults)
--------------------------------------------------------------------------------------
Clerk's docs leave these open; the defaults are one plausible reading, the switches the others,
so a client can be tested against each (``clerk-sync emulator --cursor-ties`` etc.):

``cursor_ties`` ("id" | "skip", default "id")
    Which users ``starting_after`` returns among those sharing the cursor user's created_at
    millisecond. "id": those after it by id (the position above). "skip": none of them, only
    users whose created_at is strictly later (earlier for ``-created_at``): a cursor on
    ``created_at`` alone, which skips the rest of a tie group cut by a page's end.
``deleted_cursor`` ("continue" | "422" | "404" | "400" | "empty", default "continue")
    What ``starting_after=<id of a deleted user>`` answers. "continue": the page after its old
    position. "422": ``form_param_value_invalid`` (meta ``param_name: starting_after``). "404":
    ``resource_not_found``. "400": ``bad_request``. "empty": ``200 []``, as if the walk ended.
``unstable_ties`` (bool, default False)
    Requests without ``starting_after`` (offset paging, in any order, the first page of a
    cursor walk included) break ties in the sort field by a hash of the id salted per request,
    not by id: tied users come back in a different order on each request and may move across
    a page boundary, as from a database without a unique tie-breaker. Each page is still one
    slice of a total order sorted by the field. Cursor pages keep id order.

Python API
----------
:class:`EmulatorConfig`, :class:`Emulator` (state + ``handle()``, no sockets; thread-safe),
:func:`start_emulator` -> :class:`RunningEmulator` (``base_url``, ``control_url``, ``stop()``),
:func:`serve` (foreground, stops on Ctrl-C / SIGTERM). ``Emulator`` mutators: ``create_user``,
``update_user``, ``ban_user``, ``unban_user``, ``delete_user``; readers: ``get_user``,
``user_ids``, ``count``, ``edge_case_ids``, ``stats``; knobs: ``configure``, ``reset_stats``;
``warm()`` pre-renders base users so a benchmark measures the client, not first-touch rendering.

Population
----------
Base users are *virtual*: user ``i`` (``0 <= i < users``) is generated on demand from
``(seed, i)``; its id encodes ``i`` (a seed-keyed Feistel permutation, so ids look random but
decode back, plus a keyed check suffix). ``created_at`` and ``updated_at`` are non-decreasing in
``i`` (about 5% of users share a millisecond with their predecessor), so both orders over base
users are computable without sorting. Mutations are an overlay (modified and added users, deleted
ids) merged in at O(log n) per page. Start-up is O(1) even for millions of users; serialized
users are cached (bounded) and pages are assembled by joining bytes.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import functools
import hashlib
import hmac
import itertools
import json
import math
import operator
import os
import signal
import sys
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, unquote

__all__ = [
    "CURSOR_TIES",
    "DEFAULT_PORT",
    "DEFAULT_SECRET_KEY",
    "DELETED_CURSOR",
    "EDGE_CASE_KINDS",
    "RATE_LIMIT_PRESETS",
    "Emulator",
    "EmulatorConfig",
    "RunningEmulator",
    "resolve_rate_limit",
    "serve",
    "start_emulator",
]

DEFAULT_PORT = 8765
DEFAULT_SECRET_KEY = "sk_test_emulator"  # noqa: S105 - the emulator's public test key
RATE_LIMIT_PRESETS: dict[str, int] = {"production": 1000, "development": 100}
RATE_LIMIT_WINDOW_S = 10.0
MAX_LIMIT = 500
MAX_USER_ID_FILTER = 100  # the most values Clerk accepts for any one list filter
#: ``cursor_ties``: which users ``starting_after`` returns among those sharing the cursor's ms.
CURSOR_TIES: tuple[str, ...] = ("id", "skip")
#: ``deleted_cursor``: what ``starting_after=<id of a deleted user>`` answers.
DELETED_CURSOR: tuple[str, ...] = ("continue", "422", "404", "400", "empty")

#: The awkward users ``edge_cases=True`` mixes in (about 7% of the population).
EDGE_CASE_KINDS: tuple[str, ...] = (
    "no_email",  # primary_email_address_id null, email_addresses [] (a phone number instead)
    "primary_not_first",  # several addresses, the primary is not the first one
    "multiple_emails",  # several addresses, primary first
    "dangling_primary",  # primary_email_address_id points to no address of the user
    "banned",
    "locked",
    "unicode_names",  # RTL, zero-width, combining characters, emoji
    "empty_names",  # first_name == last_name == ""
    "null_names",  # first_name and last_name null
    "long_first_name",  # 140 characters
    "long_image_url",  # image_url of 600 characters
    "empty_image_url",  # image_url "" (the spec allows no null), only profile_image_url set
    "nul_in_last_name",  # a NUL byte inside last_name (Postgres text rejects it)
)

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

_KNOBS: tuple[str, ...] = (
    "latency_ms",
    "deep_offset_ms_per_1000",
    "rate_limit",
    "fail_every",
    "throttle_every",
    "retry_after",
    "truncate_every",
    "cursor_ties",
    "deleted_cursor",
    "unstable_ties",
)


def resolve_rate_limit(value: object) -> int | None:
    """Turn ``None``, a positive int or a preset name ("production", "development") into a limit."""
    if value is None:
        return None
    if isinstance(value, str):
        if value in RATE_LIMIT_PRESETS:
            return RATE_LIMIT_PRESETS[value]
        if value.isdigit():
            value = int(value)
        else:
            names = ", ".join(sorted(RATE_LIMIT_PRESETS))
            raise ValueError(f"rate_limit must be a positive integer, null or one of: {names}")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("rate_limit must be a positive integer, null or a preset name")
    return value


def _check_knob(name: str, value: object) -> Any:
    if name == "rate_limit":
        return resolve_rate_limit(value)
    if name == "cursor_ties":
        if value not in CURSOR_TIES:
            raise ValueError(f"cursor_ties must be one of: {', '.join(CURSOR_TIES)}")
        return value
    if name == "deleted_cursor":
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # a JSON body may well say 404 rather than "404"
        if value not in DELETED_CURSOR:
            raise ValueError(f"deleted_cursor must be one of: {', '.join(DELETED_CURSOR)}")
        return value
    if name == "unstable_ties":
        if not isinstance(value, bool):
            raise ValueError("unstable_ties must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0")
    if name in ("latency_ms", "deep_offset_ms_per_1000"):
        return float(value)
    if value != int(value):
        raise ValueError(f"{name} must be an integer")
    return int(value)


@dataclass
class EmulatorConfig:
    """Everything that defines an emulated Clerk instance. Fault knobs may change at runtime."""

    secret_key: str = DEFAULT_SECRET_KEY
    users: int = 0
    seed: int = 0
    edge_cases: bool = False
    latency_ms: float = 0
    deep_offset_ms_per_1000: float = 0
    rate_limit: int | None = None
    fail_every: int = 0
    throttle_every: int = 0
    retry_after: int = 1
    truncate_every: int = 0
    #: Clerk leaves these open; see "Undocumented behaviours" in the module docstring.
    cursor_ties: str = "id"
    deleted_cursor: str = "continue"
    unstable_ties: bool = False
    environment_type: str | None = None  # None: from the key prefix (sk_live_ -> production)
    instance_id: str = "ins_emulator"
    #: Upper bound of the serialized-user cache (base users), in bytes.
    cache_bytes: int = field(default=256 * 1024 * 1024, repr=False)

    def __post_init__(self) -> None:
        self.rate_limit = resolve_rate_limit(self.rate_limit)
        self.cursor_ties = _check_knob("cursor_ties", self.cursor_ties)
        self.deleted_cursor = _check_knob("deleted_cursor", self.deleted_cursor)
        self.unstable_ties = _check_knob("unstable_ties", self.unstable_ties)
        if not self.secret_key:
            raise ValueError("secret_key must not be empty")
        if self.users < 0:
            raise ValueError("users must be >= 0")
        if self.environment_type not in (None, "development", "production"):
            raise ValueError("environment_type must be 'development', 'production' or None")


# ---------------------------------------------------------------------------------------------
# Deterministic pseudo-randomness and id encoding
# ---------------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # ASCII order
_B62_INDEX = {c: n for n, c in enumerate(_B62)}
_B62_TABLE = bytes(ord(_B62[b % 62]) for b in range(256))
_ID_DIGITS = 11  # 62**11 > 2**64
_USER_PREFIX = "user_2"
_USER_ID_LEN = len("user_") + 27


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a fast, well-distributed 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _b62(data: bytes) -> str:
    """Bytes to base62 characters, one per byte (slightly biased, irrelevant here)."""
    return data.translate(_B62_TABLE).decode("ascii")


def _blake(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=64).digest()


_B62_PAIRS = tuple(a + b for a in _B62 for b in _B62)


def _enc62_11(value: int) -> str:
    """``value`` (< 62**11) as exactly 11 base62 digits, most significant first."""
    value, d0 = divmod(value, 3844)
    value, d1 = divmod(value, 3844)
    value, d2 = divmod(value, 3844)
    value, d3 = divmod(value, 3844)
    value, d4 = divmod(value, 3844)
    pairs = _B62_PAIRS
    return _B62[value] + pairs[d4] + pairs[d3] + pairs[d2] + pairs[d1] + pairs[d0]


def _ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "".join(c for c in folded.lower() if c.isalnum())


#: A JSON string literal (quotes included) for a str; the C accelerator, UTF-8 kept.
_ENC: Callable[[str], str] = json.encoder.encode_basestring


def _js(value: str | None) -> str:
    return "null" if value is None else _ENC(value)


def _jn(value: int | None) -> str:
    return "null" if value is None else str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _day(ms: int) -> int:
    """The UTC midnight starting the day of ``ms``: Clerk's ``last_active_at`` has day precision."""
    return ms - ms % _DAY_MS


# ---------------------------------------------------------------------------------------------
# User data
# ---------------------------------------------------------------------------------------------

_FIRST_NAMES: tuple[str, ...] = (
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Dennis", "Frances",
    "Ken", "Radia", "Linus", "Hedy", "Tim", "Katherine", "John", "Sophie", "Guido", "Anita",
    "Niklaus", "Karen", "Leslie", "Shafi", "Yukihiro", "Mary", "Brian", "Joan", "Bjarne",
    "José", "Zoë", "Søren", "Łukasz", "Chloé", "François", "Ngọc", "美咲", "Ayşe", "Björn",
    "Ólafur", "Siobhán",
)  # fmt: skip
_LAST_NAMES: tuple[str, ...] = (
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Ritchie",
    "Allen", "Thompson", "Perlman", "Torvalds", "Lamarr", "Berners-Lee", "Johnson", "McCarthy",
    "Wilson", "van Rossum", "Borg", "Wirth", "Spärck Jones", "Lamport", "Goldwasser",
    "Matsumoto", "Shaw", "Kernighan", "Clarke", "Stroustrup", "García", "Müller", "Ødegaard",
    "Nguyễn", "O'Brien", "Kowalski", "田中", "Öztürk", "Żółć", "Fernández", "Dubois", "Ní Bhriain",
)  # fmt: skip
_FIRST_SLUGS = tuple(_ascii_slug(n) or "user" for n in _FIRST_NAMES)
_LAST_SLUGS = tuple(_ascii_slug(n) or "user" for n in _LAST_NAMES)
_DOMAINS: tuple[str, ...] = (
    "example.com", "example.org", "example.net", "mail.example.com", "acme.example",
    "initech.example", "globex.example", "users.example.org",
)  # fmt: skip
_UNICODE_NAMES: tuple[tuple[str, str], ...] = (
    ("مريم", "الحسيني"),  # Arabic, right-to-left
    ("נועה", "כהן"),  # Hebrew, right-to-left
    ("Zo\u200be", "Zero\u200dWidth"),  # zero-width space / joiner
    ("\u202eAnna", "Override\u202c"),  # RTL override + pop directional formatting
    ("🦄", "Ünïcödé 🚀"),  # emoji, astral plane
    ("E\u0301lise", "Nguye\u0302\u0303n"),  # combining accents (not NFC)
)
_LONG_FIRST_NAME = ("Wolfeschlegelsteinhausenbergerdorff" * 4)[:140]
_PLANS = ("free", "pro", "team", "enterprise")
_LOCALES = ("en-US", "en-GB", "fr-FR", "de-DE", "es-ES", "ja-JP", "pt-BR")
_GOOGLE_SCOPES = (
    "email https://www.googleapis.com/auth/userinfo.email "
    "https://www.googleapis.com/auth/userinfo.profile openid profile"
)
_OAUTH_EMAIL_VERIFICATION = {
    provider: '{"object":"verification_from_oauth","status":"verified",'
    f'"strategy":"from_{provider}","attempts":null,"expire_at":null}}'
    for provider in ("oauth_google", "oauth_github")
}
_END_MS = 1_780_272_000_000  # 2026-06-01T00:00:00Z: the base population ends here
_SPAN_MS = 3 * 365 * 24 * 3600 * 1000  # ... and spans about three years
_DAY_MS = 24 * 3600 * 1000


def _verification(
    obj: str, status: str, strategy: str, attempts: int | None, expire: int | None
) -> str:
    return (
        f'{{"object":"{obj}","status":"{status}","strategy":"{strategy}",'
        f'"attempts":{_jn(attempts)},"expire_at":{_jn(expire)}}}'
    )


def _email_json(
    ident: str, address: str, verification: str, linked_to: str, created: int, updated: int
) -> str:
    return (
        f'{{"id":"{ident}","object":"email_address","email_address":{_js(address)},'
        f'"reserved":false,"verification":{verification},"linked_to":{linked_to},'
        f'"matches_sso_connection":false,"created_at":{created},"updated_at":{updated}}}'
    )


def _phone_json(ident: str, number: str, created: int) -> str:
    verification = _verification("verification_otp", "verified", "phone_code", 1, created + 600_000)
    return (
        f'{{"id":"{ident}","object":"phone_number","phone_number":"{number}",'
        f'"reserved_for_second_factor":false,"default_second_factor":false,"reserved":false,'
        f'"verification":{verification},"linked_to":[],"backup_codes":null,'
        f'"created_at":{created},"updated_at":{created}}}'
    )


def _clerk_image(kind: str, key: str, value: str) -> str:
    """Clerk's image proxy URL: base64url of a small JSON document (inputs are URL-safe ASCII)."""
    raw = f'{{"type":"{kind}","{key}":"{value}"}}'.encode("ascii")
    return "https://img.clerk.com/" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


@dataclass(slots=True)
class _Spec:
    """The variable parts of one user, rendered to JSON by :func:`_render_user`."""

    id: str
    first_name: str | None
    last_name: str | None
    created_at: int
    updated_at: int
    emails: list[str] = field(default_factory=list)  # rendered JSON objects
    primary_email_id: str | None = None
    phones: list[str] = field(default_factory=list)
    primary_phone_id: str | None = None
    external_accounts: list[str] = field(default_factory=list)
    image_url: str | None = None
    profile_image_url: str = "https://www.gravatar.com/avatar?d=mp"
    has_image: bool = False
    username: str | None = None
    external_id: str | None = None
    locale: str | None = None
    public_metadata: str = "{}"
    private_metadata: str = "{}"
    password_enabled: bool = False
    two_factor_enabled: bool = False
    mfa_enabled_at: int | None = None
    password_last_updated_at: int | None = None
    last_sign_in_at: int | None = None
    last_active_at: int | None = None
    legal_accepted_at: int | None = None
    banned: bool = False
    locked: bool = False


def _render_user(s: _Spec) -> str:
    """One user as compact JSON with exactly the fields (and field order) of Clerk's User.

    Hot path (every uncached base user): no helper calls beyond the C string encoder.
    """
    enc, null = _ENC, "null"
    t, f = "true", "false"
    ext_id = null if s.external_id is None else enc(s.external_id)
    email_id = null if s.primary_email_id is None else enc(s.primary_email_id)
    phone_id = null if s.primary_phone_id is None else enc(s.primary_phone_id)
    username = null if s.username is None else enc(s.username)
    first = null if s.first_name is None else enc(s.first_name)
    last = null if s.last_name is None else enc(s.last_name)
    locale = null if s.locale is None else enc(s.locale)
    image = null if s.image_url is None else enc(s.image_url)
    mfa = t if s.two_factor_enabled else f
    locked = s.locked
    return (
        f'{{"id":"{s.id}","object":"user","external_id":{ext_id},'
        f'"primary_email_address_id":{email_id},'
        f'"primary_phone_number_id":{phone_id},"primary_web3_wallet_id":null,'
        f'"username":{username},"first_name":{first},"last_name":{last},"locale":{locale},'
        f'"profile_image_url":{enc(s.profile_image_url)},"image_url":{image},'
        f'"has_image":{t if s.has_image else f},"public_metadata":{s.public_metadata},'
        f'"private_metadata":{s.private_metadata},"unsafe_metadata":{{}},'
        f'"email_addresses":[{",".join(s.emails)}],"phone_numbers":[{",".join(s.phones)}],'
        f'"web3_wallets":[],"passkeys":[],"password_enabled":{t if s.password_enabled else f},'
        f'"two_factor_enabled":{mfa},"totp_enabled":{mfa},"backup_code_enabled":{mfa},'
        f'"mfa_enabled_at":{null if s.mfa_enabled_at is None else s.mfa_enabled_at},'
        f'"mfa_disabled_at":null,"password_last_updated_at":'
        f"{null if s.password_last_updated_at is None else s.password_last_updated_at},"
        f'"external_accounts":[{",".join(s.external_accounts)}],"saml_accounts":[],'
        f'"enterprise_accounts":[],'
        f'"last_sign_in_at":{null if s.last_sign_in_at is None else s.last_sign_in_at},'
        f'"banned":{t if s.banned else f},"locked":{t if locked else f},"deprovisioned":false,'
        f'"lockout_expires_in_seconds":{"1800" if locked else null},'
        f'"verification_attempts_remaining":{"0" if locked else "100"},'
        f'"created_at":{s.created_at},"updated_at":{s.updated_at},'
        f'"delete_self_enabled":true,"create_organization_enabled":true,'
        f'"create_organizations_limit":null,'
        f'"last_active_at":{null if s.last_active_at is None else s.last_active_at},'
        f'"legal_accepted_at":{null if s.legal_accepted_at is None else s.legal_accepted_at},'
        f'"bypass_client_trust":false}}'
    )


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        long_message: str,
        meta: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(long_message)
        self.status = status
        self.code = code
        self.message = message
        self.long_message = long_message
        self.meta = meta or {}
        self.headers = headers or {}


def _invalid(param: str, long_message: str) -> _ApiError:
    return _ApiError(
        422, "form_param_value_invalid", "is invalid", long_message, {"param_name": param}
    )


def _not_found(long_message: str) -> _ApiError:
    return _ApiError(404, "resource_not_found", "not found", long_message)


_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_Ref = int | str  # a base position (int) or an overlay user id (str)
_Key = tuple[int, str]


class _View:
    """One sort order: live base positions (all minus ``excl``) merged with overlay keys ``y``."""

    __slots__ = ("excl", "field", "y", "ykey")

    def __init__(self, field_name: str) -> None:
        self.field = field_name
        self.excl: list[int] = []  # sorted base positions that are not served from the base
        self.y: list[_Key] = []  # sorted (field value, id) of overlay users in this view
        self.ykey: dict[str, _Key] = {}

    def exclude(self, pos: int) -> None:
        j = bisect.bisect_left(self.excl, pos)
        if j == len(self.excl) or self.excl[j] != pos:
            self.excl.insert(j, pos)

    def include(self, pos: int) -> None:
        j = bisect.bisect_left(self.excl, pos)
        if j < len(self.excl) and self.excl[j] == pos:
            del self.excl[j]

    def put(self, uid: str, value: int) -> None:
        self.drop(uid)
        key = (value, uid)
        bisect.insort(self.y, key)
        self.ykey[uid] = key

    def drop(self, uid: str) -> None:
        key = self.ykey.pop(uid, None)
        if key is not None:
            del self.y[bisect.bisect_left(self.y, key)]


# ---------------------------------------------------------------------------------------------
# The emulator: state + HTTP logic, no sockets
# ---------------------------------------------------------------------------------------------


class Emulator:
    """An emulated Clerk instance. Thread-safe: every public method takes one lock."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._n = config.users
        root = hashlib.blake2b(f"clerk-sync-emulator:{config.seed}".encode(), digest_size=64)
        rd = root.digest()
        self._hkey = rd[:32]
        words = [int.from_bytes(rd[k : k + 8], "little") for k in range(0, 64, 8)]
        self._k_jitter, self._k_tie, self._k_upd, self._k_edge = words[0:4]
        self._feistel_keys = tuple(words[4:8])
        self._tag_mask = (1 << max(24, self._n.bit_length())) - 1
        self._tag_mul = words[0] | 1
        self._tag_add = words[1]
        self._step = max(1000, min(3_600_000, _SPAN_MS // max(self._n, 1)))
        self._half = self._step // 2
        self._t0 = _END_MS - self._n * self._step
        self._edge = config.edge_cases
        self._forced_edges: dict[int, str] = {}
        if self._edge and self._n >= len(EDGE_CASE_KINDS):
            kinds = len(EDGE_CASE_KINDS)
            for k, kind in enumerate(EDGE_CASE_KINDS):
                self._forced_edges[(2 * k + 1) * self._n // (2 * kinds)] = kind
        self._edge_cache: dict[str, list[int]] | None = None
        self._group_cache: dict[tuple[int, int], list[int]] = {}
        self._bytes_cache: dict[int, bytes] = {}
        self._bytes_cached = 0
        # overlay
        self._overlay: dict[str, dict[str, Any]] = {}  # modified base users + added users
        self._overlay_bytes: dict[str, bytes] = {}
        self._mod_by_idx: dict[int, str] = {}  # base index -> id, for modified base users
        self._deleted_idx: set[int] = set()
        self._tombs: dict[str, _Key] = {}  # deleted id -> last (created_at, id)
        self._cview = _View("created_at")
        self._uview = _View("updated_at")
        self._clock = self._updated(self._n - 1) if self._n else 0
        self._added_seq = 0
        # runtime counters
        self._window: deque[float] = deque()
        self._fault_seq = 0
        self._list_seq = 0
        self._salt_seq = 0
        self._stats = self._empty_stats()
        # Scenario hooks for tests (Python API only, not part of Clerk's API):
        #: ids left out of every list page, yet counted and fetchable (an incomplete listing)
        self.hidden_from_list: set[str] = set()
        #: route labels that always answer 500, e.g. "GET /v1/users/{id}"
        self.failing_endpoints: set[str] = set()
        #: called before each list request with its 1-based number (to change users mid-walk)
        self.before_list: Callable[[int], None] | None = None
        #: added to every /users/count answer (a count that lags the list, or runs ahead of it)
        self.count_offset = 0
        #: when set, every list request answers 200 with exactly this body (a malformed answer)
        self.list_body: bytes | None = None
        #: list pages hold up to this many times the ``limit`` asked for (a server ignoring it)
        self.limit_factor = 1
        self._hook_seq = 0

    # -- base population: order and timestamps ------------------------------------------------

    def _tie(self, i: int) -> bool:
        """Whether base user ``i`` shares its created_at/updated_at with user ``i - 1``."""
        return i % 4 != 0 and (_mix64(self._k_tie ^ i) & 15) == 0

    def _leader(self, i: int) -> int:
        while self._tie(i):
            i -= 1
        return i

    def _group(self, i: int) -> tuple[int, int]:
        start = self._leader(i)
        end = i + 1
        while end < self._n and self._tie(end):
            end += 1
        return start, end

    def _created(self, i: int) -> int:
        g = self._leader(i)
        return self._t0 + g * self._step + _mix64(self._k_jitter ^ g) % self._half

    def _times(self, i: int) -> tuple[int, int]:
        """(created_at, updated_at) of base user ``i``; both strictly increase between groups."""
        g = self._leader(i)
        created = self._t0 + g * self._step + _mix64(self._k_jitter ^ g) % self._half
        e = _mix64(self._k_upd ^ g)
        return created, created + (0 if e & 3 == 0 else (e >> 2) % self._half)

    def _updated(self, i: int) -> int:
        return self._times(i)[1]

    def _group_order(self, start: int, end: int) -> list[int]:
        """Indices of a tie group sorted by id: position ``start + k`` holds ``order[k]``."""
        key = (start, end)
        order = self._group_cache.get(key)
        if order is None:
            order = sorted(range(start, end), key=self._base_id)
            if len(self._group_cache) > 100_000:
                self._group_cache.clear()
            self._group_cache[key] = order
        return order

    def _pos_to_index(self, p: int) -> int:
        if not self._tie(p) and (p + 1 >= self._n or not self._tie(p + 1)):
            return p
        start, end = self._group(p)
        return self._group_order(start, end)[p - start]

    def _index_to_pos(self, i: int) -> int:
        if not self._tie(i) and (i + 1 >= self._n or not self._tie(i + 1)):
            return i
        start, end = self._group(i)
        return start + self._group_order(start, end).index(i)

    def _base_value(self, name: str, i: int) -> int:
        return self._created(i) if name == "created_at" else self._updated(i)

    def _base_key(self, name: str, p: int) -> _Key:
        i = self._pos_to_index(p)
        return self._base_value(name, i), self._base_id(i)

    def _base_rank_lt(self, name: str, key: _Key) -> int:
        """Number of base positions whose (value, id) sorts before ``key``."""
        value, uid = key
        lo, hi = 0, self._n
        while lo < hi:
            mid = (lo + hi) // 2
            if self._base_value(name, mid) < value:
                lo = mid + 1
            else:
                hi = mid
        if lo < self._n and self._base_value(name, lo) == value:
            start, end = self._group(lo)
            ids = [self._base_id(i) for i in self._group_order(start, end)]
            return lo + bisect.bisect_left(ids, uid)
        return lo

    # -- base population: ids and content ---------------------------------------------------

    # A 4-round Feistel network over 64 bits keyed by the seed: a bijection, so ids decode.
    def _feistel(self, v: int) -> int:
        left, right = v >> 32, v & _M32
        for k in self._feistel_keys:
            left, right = right, left ^ ((((right ^ k) * _GOLDEN) & _M64) >> 29) & _M32
        return (left << 32) | right

    def _unfeistel(self, v: int) -> int:
        left, right = v >> 32, v & _M32
        for k in reversed(self._feistel_keys):
            left, right = right ^ ((((left ^ k) * _GOLDEN) & _M64) >> 29) & _M32, left
        return (left << 32) | right

    def _digest(self, i: int) -> bytes:
        data = i.to_bytes(8, "little")
        return hashlib.blake2b(data, digest_size=64, key=self._hkey, person=b"user").digest()

    def _compose_id(self, i: int, digest: bytes) -> str:
        return _USER_PREFIX + _enc62_11(self._feistel(i)) + _b62(digest[:15])

    def _base_id(self, i: int) -> str:
        return self._compose_id(i, self._digest(i))

    def _decode(self, uid: str) -> int | None:
        """The base index an id encodes, or None (not a base id of this population)."""
        if len(uid) != _USER_ID_LEN or not uid.startswith(_USER_PREFIX):
            return None
        v = 0
        for c in uid[6 : 6 + _ID_DIGITS]:
            d = _B62_INDEX.get(c)
            if d is None:
                return None
            v = v * 62 + d
        if v > _M64:
            return None
        i = self._unfeistel(v)
        if i >= self._n or _b62(self._digest(i)[:15]) != uid[6 + _ID_DIGITS :]:
            return None
        return i

    def _edge_kind(self, i: int) -> str | None:
        if not self._edge:
            return None
        forced = self._forced_edges.get(i)
        if forced is not None:
            return forced
        h = _mix64(self._k_edge ^ i)
        if h % 1000 < 70:
            return EDGE_CASE_KINDS[(h >> 12) % len(EDGE_CASE_KINDS)]
        return None

    def _email_tag(self, i: int) -> str:
        return format((i * self._tag_mul + self._tag_add) & self._tag_mask, "x")

    def _base_spec(self, i: int) -> _Spec:
        """Base user ``i``: every value drawn from keyed hashes of (seed, i)."""
        da = self._digest(i)  # [0:15] id check suffix, [15:48] draws
        uid = self._compose_id(i, da)
        db = _blake(da)
        dc = _blake(db)
        created, updated = self._times(i)
        fi = da[15] % len(_FIRST_NAMES)
        li = da[16] % len(_LAST_NAMES)
        method = da[17] % 20  # 0..8 google, 9..10 github, 11..19 email code
        pct = da[18] % 100
        pct2 = da[19] % 100
        e_created = created - da[20] * 8
        active = int.from_bytes(da[21:25], "little") % (3 * _DAY_MS)
        sign_in = int.from_bytes(da[25:31], "little") % max(1, _END_MS - created)
        ext_num = int.from_bytes(da[31:41], "little") % 10**21
        style = da[41] & 3

        first: str | None = _FIRST_NAMES[fi]
        last: str | None = _LAST_NAMES[li]
        fs, ls = _FIRST_SLUGS[fi], _LAST_SLUGS[li]
        tag = self._email_tag(i)
        if style == 0:
            local = f"{fs}.{ls}.{tag}"
        elif style == 1:
            local = f"{fs}{tag}"
        elif style == 2:
            local = f"{fs[:1]}{ls}.{tag}"
        else:
            local = f"{ls}.{fs}+{tag}"
        address = f"{local}@{_DOMAINS[da[42] % len(_DOMAINS)]}"
        address_js = _ENC(address)

        s = _Spec(id=uid, first_name=first, last_name=last, created_at=created, updated_at=updated)
        email_id = "idn_2" + _b62(db[:26])
        if method < 11:
            provider = "oauth_google" if method < 9 else "oauth_github"
            ext_idn = "idn_2" + _b62(db[26:52])
            verification = _OAUTH_EMAIL_VERIFICATION[provider]
            linked = f'[{{"type":"{provider}","id":"{ext_idn}"}}]'
            profile = f"https://images.clerk.dev/{provider}/img_2{_b62(dc[:26])}"
            s.profile_image_url = profile
            s.image_url = image = _clerk_image("proxy", "src", profile)
            s.has_image = True
            username = "null"
            if provider == "oauth_google":
                obj, scopes = "google_account", _GOOGLE_SCOPES
                avatar = f"https://lh3.googleusercontent.com/a/{dc[26:40].hex()}"
                provider_uid = str(10**20 + ext_num)
            else:
                gh = ext_num % 99_999_999 + 1
                obj, scopes = "external_account", "read:user user:email"
                avatar = f"https://avatars.githubusercontent.com/u/{gh}?v=4"
                provider_uid = str(gh)
                handle = f"{fs}{ls}{gh % 1000}"[:39]
                username = f'"{handle}"'
                if pct < 40:
                    s.username = handle
            first_js = "null" if first is None else _ENC(first)
            last_js = "null" if last is None else _ENC(last)
            s.external_accounts = [
                f'{{"object":"{obj}","id":"{ext_idn}","provider":"{provider}",'
                f'"identification_id":"{ext_idn}","provider_user_id":"{provider_uid}",'
                f'"approved_scopes":"{scopes}","email_address":{address_js},'
                f'"email_address_verified":true,"first_name":{first_js},'
                f'"last_name":{last_js},"avatar_url":"{avatar}",'
                f'"image_url":"{image}","username":{username},'
                f'"phone_number":null,"public_metadata":{{}},"label":null,'
                f'"created_at":{e_created},"updated_at":{e_created},'
                f'"verification":{{"object":"verification_oauth","status":"verified",'
                f'"strategy":"{provider}","attempts":null,"expire_at":{e_created + 600_000}}}}}'
            ]
        else:
            linked = "[]"
            verification = (
                '{"object":"verification_otp","status":"verified","strategy":"email_code",'
                f'"attempts":1,"expire_at":{e_created + 600_000}}}'
            )
            s.image_url = _clerk_image("default", "rid", uid)
            if pct < 55:
                s.password_enabled = True
                s.password_last_updated_at = created
            if pct2 < 6:
                s.first_name = s.last_name = None  # email-code sign-ups without a name
        s.emails = [
            f'{{"id":"{email_id}","object":"email_address","email_address":{address_js},'
            f'"reserved":false,"verification":{verification},"linked_to":{linked},'
            f'"matches_sso_connection":false,"created_at":{e_created},"updated_at":{created}}}'
        ]
        s.primary_email_id = email_id

        if pct < 12:
            s.external_id = f"legacy-{tag}"
        if pct2 >= 60:
            s.public_metadata = f'{{"plan":"{_PLANS[pct2 % len(_PLANS)]}"}}'
            if pct2 >= 85:
                s.private_metadata = f'{{"stripe_customer_id":"cus_{_b62(dc[40:54])}"}}'
        if pct % 10 == 3:
            s.two_factor_enabled = True
            s.mfa_enabled_at = created + active
        if pct % 7 == 1:
            s.locale = _LOCALES[pct2 % len(_LOCALES)]
        if pct2 % 9 != 0:  # some users (e.g. imports) never signed in
            s.last_sign_in_at = created + sign_in
            s.last_active_at = _day(min(_END_MS, created + sign_in + active))
        if pct % 3 == 0:
            s.legal_accepted_at = created

        if self._edge:
            kind = self._edge_kind(i)
            if kind is not None:
                self._apply_edge(s, kind, i, dc, tag, e_created, verification)
        return s

    def _apply_edge(
        self,
        s: _Spec,
        kind: str,
        i: int,
        dc: bytes,
        tag: str,
        e_created: int,
        verification: str,
    ) -> None:
        if kind == "no_email":
            # a phone-number sign-up: no email address, no OAuth account
            phone_id = "idn_2" + _b62(dc[:26])
            s.emails, s.primary_email_id, s.external_accounts = [], None, []
            s.phones = [_phone_json(phone_id, f"+1555{i % 10**7:07d}", e_created)]
            s.primary_phone_id = phone_id
        elif kind in ("primary_not_first", "multiple_emails"):
            unverified = _verification(
                "verification_otp", "unverified", "email_code", 0, e_created + 600_000
            )
            work = verification if kind == "multiple_emails" else unverified
            t1, t2 = e_created + 1000, e_created + 2000
            extra = [
                _email_json(
                    "idn_2" + _b62(dc[26:52]), f"work.{tag}@work.example.org", work, "[]", t1, t1
                ),
                _email_json(
                    "idn_2" + _b62(dc[38:64]), f"alt.{tag}@example.net", unverified, "[]", t2, t2
                ),
            ]
            s.emails = [*extra, *s.emails] if kind == "primary_not_first" else [*s.emails, *extra]
        elif kind == "dangling_primary":
            s.primary_email_id = "idn_2" + _b62(dc[10:36])
        elif kind == "banned":
            s.banned = True
        elif kind == "locked":
            s.locked = True
        elif kind == "unicode_names":
            s.first_name, s.last_name = _UNICODE_NAMES[i % len(_UNICODE_NAMES)]
        elif kind == "empty_names":
            s.first_name, s.last_name = "", ""
        elif kind == "null_names":
            s.first_name, s.last_name = None, None
        elif kind == "long_first_name":
            s.first_name = _LONG_FIRST_NAME
        elif kind == "long_image_url":
            base = "https://img.clerk.com/"
            s.image_url = base + (_b62(dc) * 10)[: 600 - len(base)]
        elif kind == "empty_image_url":
            s.image_url = ""
            s.has_image = True
            if s.profile_image_url.startswith("https://www.gravatar.com"):
                s.profile_image_url = "https://images.clerk.dev/uploaded/img_2" + _b62(dc[:26])
        elif kind == "nul_in_last_name":
            last = s.last_name or "Null"
            s.last_name = last[:2] + "\x00" + last[2:]

    def _base_bytes(self, i: int) -> bytes:
        data = self._bytes_cache.get(i)
        if data is None:
            data = _render_user(self._base_spec(i)).encode("utf-8")
            budget = self.config.cache_bytes
            if self._bytes_cached + len(data) > budget:
                # evict the oldest ~1/8 of the cache (dicts keep insertion order)
                drop = max(1, len(self._bytes_cache) // 8)
                for key in list(itertools.islice(self._bytes_cache, drop)):
                    self._bytes_cached -= len(self._bytes_cache.pop(key))
            if len(data) <= budget:
                self._bytes_cache[i] = data
                self._bytes_cached += len(data)
        return data

    # -- views: merged, ordered sequences of live users ----------------------------------------

    def _x_len(self, view: _View) -> int:
        return self._n - len(view.excl)

    def _x_select(self, view: _View, a: int) -> int:
        """Base position of the a-th (0-based) base position not excluded from ``view``."""
        excl = view.excl
        if not excl or excl[0] > a:
            return a
        lo, hi = a, a + len(excl)
        while lo < hi:
            mid = (lo + hi) // 2
            if mid + 1 - bisect.bisect_right(excl, mid) >= a + 1:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _rank_lt(self, view: _View, key: _Key) -> int:
        """Number of live users in ``view`` sorting strictly before ``key``."""
        r = self._base_rank_lt(view.field, key)
        return r - bisect.bisect_left(view.excl, r) + bisect.bisect_left(view.y, key)

    def _split(self, view: _View, k: int) -> tuple[int, int]:
        """How many of the first ``k`` users of ``view`` come from the base and the overlay."""
        y = view.y
        if not y:
            return k, 0
        lo, hi = max(0, k - self._x_len(view)), min(k, len(y))
        while lo < hi:
            b = (lo + hi) // 2
            if y[b] < self._base_key(view.field, self._x_select(view, k - b - 1)):
                lo = b + 1
            else:
                hi = b
        return k - lo, lo

    def _x_up(self, view: _View, a: int) -> Iterator[int]:
        if a >= self._x_len(view):
            return
        excl, n = view.excl, self._n
        p = self._x_select(view, a)
        j = bisect.bisect_right(excl, p)
        while p < n:
            yield p
            p += 1
            while j < len(excl) and excl[j] == p:
                p += 1
                j += 1

    def _x_down(self, view: _View, a: int) -> Iterator[int]:
        """Live base positions from the a-th downwards."""
        if a < 0:
            return
        excl = view.excl
        p = self._x_select(view, a)
        j = bisect.bisect_left(excl, p) - 1
        while p >= 0:
            yield p
            p -= 1
            while j >= 0 and excl[j] == p:
                p -= 1
                j -= 1

    def _iter_up(self, view: _View, k: int) -> Iterator[_Ref]:
        """Users of ``view`` in ascending order from merged index ``k``."""
        a, b = self._split(view, k)
        y, name = view.y, view.field
        xs = self._x_up(view, a)
        xp = next(xs, None)
        xkey: _Key | None = None
        while True:
            if b < len(y):
                if xp is not None:
                    if xkey is None:
                        xkey = self._base_key(name, xp)
                    if xkey < y[b]:
                        yield xp
                        xp, xkey = next(xs, None), None
                        continue
                yield y[b][1]
                b += 1
            elif xp is None:
                return
            else:
                yield xp
                yield from xs
                return

    def _iter_down(self, view: _View, k: int) -> Iterator[_Ref]:
        """Users of ``view`` in descending order, starting just below merged index ``k``."""
        a, b = self._split(view, k)
        b -= 1
        y, name = view.y, view.field
        xs = self._x_down(view, a - 1)
        xp = next(xs, None)
        xkey: _Key | None = None
        while True:
            if b >= 0:
                if xp is not None:
                    if xkey is None:
                        xkey = self._base_key(name, xp)
                    if xkey > y[b]:
                        yield xp
                        xp, xkey = next(xs, None), None
                        continue
                yield y[b][1]
                b -= 1
            elif xp is None:
                return
            else:
                yield xp
                yield from xs
                return

    def _ref_bytes(self, ref: _Ref) -> bytes:
        if isinstance(ref, str):
            return self._overlay_bytes[ref]
        i = self._pos_to_index(ref)
        mid = self._mod_by_idx.get(i)
        return self._overlay_bytes[mid] if mid is not None else self._base_bytes(i)

    def _ref_id(self, ref: _Ref) -> str:
        return ref if isinstance(ref, str) else self._base_id(self._pos_to_index(ref))

    def _ref_time(self, ref: _Ref, name: str) -> int:
        """``created_at`` or ``updated_at`` of a view reference."""
        if isinstance(ref, str):
            return int(self._overlay[ref][name])
        i = self._pos_to_index(ref)
        mid = self._mod_by_idx.get(i)
        return int(self._overlay[mid][name]) if mid is not None else self._base_value(name, i)

    def _lookup(self, uid: str) -> _Ref | None:
        """The live user ``uid`` as a view reference, or None."""
        if uid in self._overlay:
            return uid
        i = self._decode(uid)
        if i is None or i in self._deleted_idx:
            return None
        return self._index_to_pos(i)

    def _key_of(self, name: str, uid: str) -> _Key | None:
        """(value, id) of a live user in order ``name``; None if not live."""
        user = self._overlay.get(uid)
        if user is not None:
            return int(user[name]), uid
        i = self._decode(uid)
        if i is None or i in self._deleted_idx:
            return None
        return self._base_value(name, i), uid

    # -- mutations -----------------------------------------------------------------------------

    def _tick(self) -> int:
        """A strictly increasing 'now' in ms for updated_at (and default created_at)."""
        self._clock = max(_now_ms(), self._clock + 1)
        return self._clock

    def _store(self, uid: str, user: dict[str, Any], base_index: int | None) -> None:
        """(Re)place an overlay user in both views."""
        self._overlay[uid] = user
        self._overlay_bytes[uid] = _DUMPS(user).encode("utf-8")
        self._uview.put(uid, int(user["updated_at"]))
        if base_index is None:
            self._cview.put(uid, int(user["created_at"]))
            return
        self._mod_by_idx[base_index] = uid
        pos = self._index_to_pos(base_index)
        self._uview.exclude(pos)
        if int(user["created_at"]) == self._created(base_index):
            self._cview.drop(uid)
            self._cview.include(pos)
        else:
            self._cview.exclude(pos)
            self._cview.put(uid, int(user["created_at"]))

    def _live_user(self, uid: str) -> tuple[dict[str, Any], int | None]:
        """A mutable copy of a live user and its base index; KeyError if there is none."""
        user = self._overlay.get(uid)
        i = self._decode(uid)
        if user is not None:
            return json.loads(self._overlay_bytes[uid]), i
        if i is None or i in self._deleted_idx:
            raise KeyError(uid)
        return json.loads(self._base_bytes(i)), i

    def _new_id(self) -> str:
        while True:
            self._added_seq += 1
            seed = self._hkey + b"added" + self._added_seq.to_bytes(8, "little")
            uid = "user_2" + _b62(_blake(seed)[:26])
            if self._decode(uid) is None and uid not in self._overlay and uid not in self._tombs:
                return uid

    def create_user(
        self,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        email: str | None = None,
        banned: bool = False,
        created_at: int | None = None,
        user_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a user (signed up with an email code; no email address if ``email`` is None).

        ``created_at`` defaults to now (later than every base user); ``extra`` fields are
        shallow-merged into the result (e.g. ``external_id=``, ``locked=True``,
        ``public_metadata={...}``, ``updated_at=``).
        """
        if "id" in extra or "object" in extra:
            raise ValueError("use user_id= to choose the id; 'object' is always 'user'")
        _check_timestamps(extra if created_at is None else {**extra, "created_at": created_at})
        with self._lock:
            if user_id is None:
                uid = self._new_id()
            else:
                if not isinstance(user_id, str) or not user_id:
                    raise ValueError("user_id must be a non-empty string")
                if (
                    user_id in self._overlay
                    or user_id in self._tombs
                    or self._decode(user_id) is not None
                ):
                    raise ValueError(f"user id {user_id} is already taken")
                uid = user_id
            now = self._tick()
            created = now if created_at is None else int(created_at)
            d = _blake(self._hkey + uid.encode())
            s = _Spec(
                id=uid,
                first_name=first_name,
                last_name=last_name,
                created_at=created,
                updated_at=now,
                banned=banned,
            )
            s.image_url = _clerk_image("default", "rid", uid)
            s.last_sign_in_at, s.last_active_at = created, _day(created)
            if email is not None:
                email_id = "idn_2" + _b62(d[:26])
                verification = _verification(
                    "verification_otp", "verified", "email_code", 1, created + 600_000
                )
                s.emails = [_email_json(email_id, email, verification, "[]", created, created)]
                s.primary_email_id = email_id
            user: dict[str, Any] = json.loads(_render_user(s))
            user.update(extra)
            self._store(uid, user, None)
            return json.loads(self._overlay_bytes[uid])  # type: ignore[no-any-return]

    def update_user(self, user_id: str, **fields: Any) -> dict[str, Any]:
        """Shallow-merge ``fields`` into a user and bump ``updated_at`` (unless given).

        ``email=`` replaces the primary address (adding one if the user has none).
        Raises KeyError for an unknown or deleted user.
        """
        if "id" in fields or "object" in fields:
            raise ValueError("'id' and 'object' cannot be changed")
        _check_timestamps(fields)
        with self._lock:
            user, base_index = self._live_user(user_id)
            now = self._tick()
            if "email" in fields:
                self._set_primary_email(user, fields.pop("email"), now)
            user.update(fields)
            if "updated_at" not in fields:
                user["updated_at"] = now
            self._store(user_id, user, base_index)
            return json.loads(self._overlay_bytes[user_id])  # type: ignore[no-any-return]

    def _set_primary_email(self, user: dict[str, Any], email: Any, now: int) -> None:
        if not isinstance(email, str):
            raise ValueError("email must be a string")
        addresses: list[dict[str, Any]] = list(user.get("email_addresses") or [])
        primary_id = user.get("primary_email_address_id")
        for n, item in enumerate(addresses):
            if item.get("id") == primary_id:
                addresses[n] = {**item, "email_address": email, "updated_at": now}
                break
        else:
            new_id = "idn_2" + _b62(_blake(self._hkey + f"{user['id']}:{now}".encode())[:26])
            verification = _verification("verification_otp", "verified", "email_code", 1, now)
            addresses.append(json.loads(_email_json(new_id, email, verification, "[]", now, now)))
            user["primary_email_address_id"] = new_id
        user["email_addresses"] = addresses

    def ban_user(self, user_id: str) -> None:
        self.update_user(user_id, banned=True)

    def unban_user(self, user_id: str) -> None:
        self.update_user(user_id, banned=False)

    def delete_user(self, user_id: str) -> None:
        """Delete a user; KeyError if there is no such live user."""
        with self._lock:
            user = self._overlay.get(user_id)
            i = self._decode(user_id)
            if user is None and (i is None or i in self._deleted_idx):
                raise KeyError(user_id)
            if user is not None:
                self._tombs[user_id] = (int(user["created_at"]), user_id)
                del self._overlay[user_id]
                del self._overlay_bytes[user_id]
            self._cview.drop(user_id)
            self._uview.drop(user_id)
            if i is not None:
                self._mod_by_idx.pop(i, None)
                self._deleted_idx.add(i)
                pos = self._index_to_pos(i)
                self._cview.exclude(pos)
                self._uview.exclude(pos)
                self._tombs.setdefault(user_id, (self._created(i), user_id))

    # -- reading -------------------------------------------------------------------------------

    def warm(self, count: int | None = None) -> int:
        """Pre-render the first ``count`` base users (default: all that fit the cache budget).

        For benchmarks that want to measure the client, not the emulator's first-touch cost.
        Returns how many users were rendered.
        """
        with self._lock:
            n = self._n if count is None else min(count, self._n)
            budget = self.config.cache_bytes
            done = 0
            for i in range(n):
                if self._bytes_cached + 4096 > budget:
                    break
                self._base_bytes(i)
                done += 1
            return done

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        with self._lock:
            try:
                return self._live_user(user_id)[0]
            except KeyError:
                return None

    def user_ids(self) -> list[str]:
        """All live ids in ``+created_at`` order (O(n))."""
        with self._lock:
            return [self._ref_id(ref) for ref in self._iter_up(self._cview, 0)]

    def count(self) -> int:
        with self._lock:
            return self._n - len(self._deleted_idx) + len(self._overlay) - len(self._mod_by_idx)

    def edge_case_ids(self) -> dict[str, list[str]]:
        """Live base users per edge-case kind (as generated; later updates are not tracked).

        Every kind is present when ``edge_cases`` is on and ``users >= len(EDGE_CASE_KINDS)``.
        O(users) the first time, cached after.
        """
        with self._lock:
            if self._edge_cache is None:
                found: dict[str, list[int]] = {k: [] for k in EDGE_CASE_KINDS}
                if self._edge:
                    for i in range(self._n):
                        kind = self._edge_kind(i)
                        if kind is not None:
                            found[kind].append(i)
                self._edge_cache = found
            return {
                kind: [self._base_id(i) for i in idxs if i not in self._deleted_idx]
                for kind, idxs in self._edge_cache.items()
            }

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change knobs (faults, undocumented behaviours) at runtime, validated; returns all."""
        with self._lock:
            unknown = sorted(set(changes) - set(_KNOBS))
            if unknown:
                raise ValueError(f"unknown or read-only setting(s): {', '.join(unknown)}")
            checked = {name: _check_knob(name, value) for name, value in changes.items()}
            for name, value in checked.items():
                setattr(self.config, name, value)
            return self._knobs()

    def _knobs(self) -> dict[str, Any]:
        return {name: getattr(self.config, name) for name in _KNOBS}

    @staticmethod
    def _empty_stats() -> dict[str, Any]:
        return {
            "requests_total": 0,
            "api_requests": 0,
            "control_requests": 0,
            "by_endpoint": {},
            "by_status": {},
            "responses_401": 0,
            "responses_429": 0,
            "responses_5xx": 0,
            "truncated": 0,
            "users_served": 0,
            "connections": 0,
        }

    def stats(self) -> dict[str, Any]:
        """Counters since start (or the last reset).

        ``requests_total``, ``api_requests`` (/v1), ``control_requests`` (/_emulator),
        ``by_endpoint`` ({"GET /v1/users": n, ...}), ``by_status`` ({"200": n, ...}),
        ``responses_401``, ``responses_429``, ``responses_5xx``, ``truncated``, ``users_served``
        (users in list responses) and ``connections`` (TCP connections accepted).
        """
        with self._lock:
            out = dict(self._stats)
            out["by_endpoint"] = dict(self._stats["by_endpoint"])
            out["by_status"] = dict(self._stats["by_status"])
            return out

    def reset_stats(self) -> None:
        """Zero the counters and the fail/throttle/truncate cadence (not the rate-limit window)."""
        with self._lock:
            self._stats = self._empty_stats()
            self._fault_seq = 0
            self._list_seq = 0

    def note_connection(self) -> None:
        """Called by the HTTP server for every accepted connection."""
        with self._lock:
            self._stats["connections"] += 1

    # -- HTTP ----------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Answer one HTTP request: (status, headers, body).

        If the returned headers carry ``Content-Length`` it differs from ``len(body)``: the
        response is deliberately truncated and the connection must be closed after it.
        """
        method = method.upper()
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        label, arg = _route(method, path)
        is_api = path == "/v1" or path.startswith("/v1/")
        with self._lock:
            st = self._stats
            st["requests_total"] += 1
            st["api_requests" if is_api else "control_requests"] += 1
            st["by_endpoint"][label] = st["by_endpoint"].get(label, 0) + 1
        try:
            params = parse_qs(query, keep_blank_values=True)
            if is_api:
                self._delay(params)
            self._authenticate(headers)
            if is_api:
                self._admit()
            if label in self.failing_endpoints:
                raise _ApiError(500, "internal_clerk_error", "Oops", "Injected failure.")
            status, out_headers, payload = self._dispatch(method, path, label, arg, params, body)
        except _ApiError as exc:
            status, out_headers, payload = self._error(exc)
        except Exception as exc:  # a bug: answer like Clerk would, don't kill the connection
            status, out_headers, payload = self._error(
                _ApiError(500, "internal_clerk_error", "Internal error", f"emulator bug: {exc!r}")
            )
        with self._lock:
            st = self._stats
            key = str(status)
            st["by_status"][key] = st["by_status"].get(key, 0) + 1
            if status == 401:
                st["responses_401"] += 1
            elif status == 429:
                st["responses_429"] += 1
            elif status >= 500:
                st["responses_5xx"] += 1
            if status == 200 and label == "GET /v1/users":
                every = self.config.truncate_every
                self._list_seq += 1
                if every and self._list_seq % every == 0:
                    st["truncated"] += 1
                    out_headers = {
                        **out_headers,
                        "Content-Length": str(len(payload)),
                        "Connection": "close",
                    }
                    payload = payload[: len(payload) // 2]
        return status, out_headers, payload

    def _delay(self, params: Mapping[str, list[str]]) -> None:
        delay_ms = self.config.latency_ms
        per_1000 = self.config.deep_offset_ms_per_1000
        if per_1000:
            with contextlib.suppress(KeyError, ValueError, IndexError):  # no or bad offset
                delay_ms += per_1000 * max(0, int(params["offset"][0])) / 1000
        if delay_ms > 0:
            time.sleep(delay_ms / 1000)

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        value = headers.get("Authorization")
        if value is None:
            value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scheme, _, token = value.strip().partition(" ")
        expected = self.config.secret_key.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise _ApiError(
                401,
                "authentication_invalid",
                "Invalid authentication",
                "The provided secret key is invalid. Make sure that your secret key is correct.",
            )

    def _admit(self) -> None:
        """Rate limit, then the every-Nth faults."""
        with self._lock:
            limit = self.config.rate_limit
            if limit is not None:
                now = time.monotonic()
                window = self._window
                while window and window[0] <= now - RATE_LIMIT_WINDOW_S:
                    window.popleft()
                if len(window) >= limit:
                    wait = max(1, math.ceil(window[0] + RATE_LIMIT_WINDOW_S - now))
                    raise _too_many(wait)
                window.append(now)
            self._fault_seq += 1
            n = self._fault_seq
            every = self.config.throttle_every
            if every and n % every == 0:
                raise _too_many(self.config.retry_after)
            every = self.config.fail_every
            if every and n % every == 0:
                raise _ApiError(
                    500,
                    "internal_clerk_error",
                    "Oops, an unexpected error occurred",
                    "There was an internal error on our servers. We've been notified and are "
                    "working on fixing it.",
                )

    def _error(self, exc: _ApiError) -> tuple[int, dict[str, str], bytes]:
        trace = os.urandom(16).hex()
        long_message = exc.long_message
        key = self.config.secret_key
        if key and key in long_message:  # error messages echo input; never the key
            long_message = long_message.replace(key, "[redacted]")
        body = {
            "errors": [
                {
                    "message": exc.message,
                    "long_message": long_message,
                    "code": exc.code,
                    "meta": exc.meta,
                }
            ],
            "clerk_trace_id": trace,
        }
        headers = {**_JSON_HEADERS, **exc.headers, "Clerk-Trace-Id": trace}
        return exc.status, headers, _DUMPS(body).encode("utf-8")

    def _dispatch(
        self,
        method: str,
        path: str,
        label: str,
        arg: str | None,
        params: Mapping[str, list[str]],
        body: bytes,
    ) -> tuple[int, dict[str, str], bytes]:
        if label == "GET /v1/users":
            return 200, dict(_JSON_HEADERS), self._list(params)
        if label == "GET /v1/users/count":
            total = max(0, self._count(params) + self.count_offset)
            return self._ok({"object": "total_count", "total_count": total})
        if label == "GET /v1/users/{id}":
            assert arg is not None
            user = self.get_user(arg)
            if user is None:
                raise _not_found(f"No user was found with id {arg}")
            return self._ok(user)
        if label == "GET /v1/instance":
            return self._ok(self._instance())
        if " /_emulator/" in label:
            return self._control(label, arg, body)
        raise _not_found(f"No route matches {method} {path}")

    @staticmethod
    def _ok(payload: Any) -> tuple[int, dict[str, str], bytes]:
        return 200, dict(_JSON_HEADERS), _DUMPS(payload).encode("utf-8")

    def _instance(self) -> dict[str, Any]:
        cfg = self.config
        env = cfg.environment_type or (
            "production" if cfg.secret_key.startswith("sk_live_") else "development"
        )
        workspace = "ws_2" + _b62(_blake(f"workspace:{cfg.instance_id}".encode())[:26])
        return {
            "object": "instance",
            "id": cfg.instance_id,
            "environment_type": env,
            "allowed_origins": None,
            "workspace_id": workspace,
        }

    # -- list / count --------------------------------------------------------------------------

    def _list(self, params: Mapping[str, list[str]]) -> bytes:
        hook = self.before_list
        if hook is not None:
            with self._lock:
                self._hook_seq += 1
                seq = self._hook_seq
            hook(seq)
        if self.list_body is not None:
            return self.list_body
        limit = _int_param(params, "limit", 10)
        if not 1 <= limit <= MAX_LIMIT:
            raise _invalid("limit", f"limit must be between 1 and {MAX_LIMIT}")
        limit *= self.limit_factor
        offset = _int_param(params, "offset", 0)
        if offset < 0:
            raise _invalid("offset", "offset must be greater than or equal to 0")
        raw_order = _str_param(params, "order_by") or "-created_at"
        desc = raw_order.startswith("-")
        name = raw_order[1:] if raw_order[:1] in "+-" else raw_order
        if name not in _ORDER_FIELDS:
            raise _invalid(
                "order_by",
                f"order_by {raw_order!r} is not supported: use [+-] and one of "
                f"{', '.join(_ORDER_FIELDS)} (send '+' url-encoded as %2B)",
            )
        filters = _parse_filters(params)
        cursor = _str_param(params, "starting_after")
        if cursor:
            if name != "created_at":
                raise _invalid("starting_after", "starting_after requires order_by ±created_at")
            if offset:
                raise _invalid("starting_after", "starting_after cannot be used with an offset")
        with self._lock:
            if cursor and cursor in self._tombs and self.config.deleted_cursor != "continue":
                self._refuse_deleted_cursor(cursor)
                return b"[]"
            salt = self._next_salt() if self.config.unstable_ties and not cursor else None
            refs = self._select(filters, name, desc, cursor, offset, limit, salt)
            if self.hidden_from_list:
                refs = [r for r in refs if self._ref_id(r) not in self.hidden_from_list]
            parts = [self._ref_bytes(ref) for ref in refs]
            self._stats["users_served"] += len(parts)
        return b"[" + b",".join(parts) + b"]"

    def _refuse_deleted_cursor(self, cursor: str) -> None:
        """The ``deleted_cursor`` answer to a cursor whose user is gone; returns for "empty"."""
        mode = self.config.deleted_cursor
        long_message = f"No user was found with id {cursor}"
        if mode == "422":
            raise _invalid("starting_after", long_message)
        if mode == "404":
            raise _not_found(long_message)
        if mode == "400":
            raise _ApiError(
                400, "bad_request", "bad request", long_message, {"param_name": "starting_after"}
            )

    def _next_salt(self) -> int:
        """A fresh tie-break salt for one request (``unstable_ties``), reproducible per seed."""
        self._salt_seq += 1
        return _mix64(self._k_tie ^ _mix64(self._salt_seq))

    def _cursor_key(self, cursor: str) -> _Key:
        key = self._key_of("created_at", cursor) or self._tombs.get(cursor)
        if key is None:
            i = self._decode(cursor)
            if i is None:
                raise _invalid("starting_after", f"No user was found with id {cursor}")
            key = (self._created(i), cursor)
        return key

    def _bounds(self, after: int | None, before: int | None) -> tuple[int, int]:
        view = self._cview
        lo = 0 if after is None else self._rank_lt(view, (after + 1, ""))
        hi = self.count() if before is None else self._rank_lt(view, (before, ""))
        return lo, max(lo, hi)

    def _select(
        self,
        filters: _Filters,
        name: str,
        desc: bool,
        cursor: str | None,
        offset: int,
        limit: int,
        salt: int | None,
    ) -> list[_Ref]:
        """One list page, by the cheapest path that answers the request exactly.

        Unfiltered created_at / updated_at pages (and created_at windows) are found by position;
        other filters walk a view testing each user; other orders, a user_id list and ties
        shuffled under filters collect every match and sort it.
        """
        if filters.include is None and name in _VIEW_ORDERS:
            keep = self._keeper(filters, name)
            if keep is None:
                return self._range(name, desc, filters, cursor, offset, limit, salt=salt)
            if salt is None:
                return self._range(name, desc, filters, cursor, offset, limit, keep=keep)
        return self._collect(filters, name, desc, cursor, salt)[offset:][:limit]

    def _keeper(self, filters: _Filters, name: str) -> Callable[[_Ref], bool] | None:
        """A test for what a walk of view ``name`` does not answer by position, or None."""
        bounded = name != "created_at" and (filters.after, filters.before) != (None, None)
        if not (filters.exclude or filters.tests or bounded):
            return None
        after = -math.inf if filters.after is None else filters.after
        before = math.inf if filters.before is None else filters.before

        def keep(ref: _Ref) -> bool:
            if filters.exclude and self._ref_id(ref) in filters.exclude:
                return False
            if bounded and not after < self._ref_time(ref, "created_at") < before:
                return False
            return not filters.tests or filters.matches(json.loads(self._ref_bytes(ref)))

        return keep

    def _cursor_bound(self, cursor: str, desc: bool) -> _Key:
        """Ascending: the least (created_at, id) after the cursor; descending: the key that
        every user after the cursor sorts below. ``cursor_ties="skip"``: its whole millisecond
        is passed over."""
        t, uid = self._cursor_key(cursor)
        if self.config.cursor_ties == "skip":
            return (t, "") if desc else (t + 1, "")
        return (t, uid) if desc else (t, uid + "\x00")

    def _range(
        self,
        name: str,
        desc: bool,
        filters: _Filters,
        cursor: str | None,
        offset: int,
        limit: int,
        *,
        keep: Callable[[_Ref], bool] | None = None,
        salt: int | None = None,
    ) -> list[_Ref]:
        """A page of one view: O(log n + page) by position; with ``keep``, a walk from the
        start of the range testing each user (only for filters a position cannot answer)."""
        view = self._cview if name == "created_at" else self._uview
        if view is self._cview:
            lo, hi = self._bounds(filters.after, filters.before)
        else:
            lo, hi = 0, self.count()
        if desc:
            top = hi
            if cursor:
                top = min(hi, self._rank_lt(view, self._cursor_bound(cursor, True)))
            if keep is not None:
                walk = itertools.islice(self._iter_down(view, top), max(0, top - lo))
                return list(itertools.islice(filter(keep, walk), offset, offset + limit))
            top -= offset
            n = min(limit, top - lo)
            if n <= 0:
                return []
            if salt is not None:
                return self._shuffled(view, top - n, top, True, salt)
            return list(itertools.islice(self._iter_down(view, top), n))
        start = lo
        if cursor:
            start = max(lo, self._rank_lt(view, self._cursor_bound(cursor, False)))
        if keep is not None:
            walk = itertools.islice(self._iter_up(view, start), max(0, hi - start))
            return list(itertools.islice(filter(keep, walk), offset, offset + limit))
        start += offset
        n = min(limit, hi - start)
        if n <= 0:
            return []
        if salt is not None:
            return self._shuffled(view, start, start + n, False, salt)
        return list(itertools.islice(self._iter_up(view, start), n))

    def _view_value(self, view: _View, ref: _Ref) -> int:
        return view.ykey[ref][0] if isinstance(ref, str) else self._base_value(view.field, ref)

    def _shuffled(self, view: _View, a: int, b: int, desc: bool, salt: int) -> list[_Ref]:
        """Merged indices ``[a, b)`` of ``view`` with ties ordered by a salted hash of the id.

        The tie groups cut by the page's edges are read whole, so the page is one slice of a
        total order (a different one per salt), as one database query without a tie-breaker is.
        """
        first = self._view_value(view, next(self._iter_up(view, a)))
        last = self._view_value(view, next(self._iter_up(view, b - 1)))
        g0 = self._rank_lt(view, (first, ""))
        g1 = self._rank_lt(view, (last + 1, ""))
        window = list(itertools.islice(self._iter_up(view, g0), g1 - g0))
        window.sort(key=lambda ref: (self._view_value(view, ref), _salted(salt, self._ref_id(ref))))
        if desc:
            window.reverse()
            return window[g1 - b : g1 - a]
        return window[a - g0 : b - g0]

    def _collect(
        self, filters: _Filters, name: str, desc: bool, cursor: str | None, salt: int | None
    ) -> list[_Ref]:
        """Every live user matching ``filters``, sorted by ``name`` (nulls last ascending, first
        descending), ties by id or, with ``salt``, by a salted hash of it. O(users) or
        O(user_id list): each candidate is parsed when a filter or the order needs its fields."""
        candidates: Iterable[_Ref]
        if filters.include is not None:
            found = (self._lookup(uid) for uid in dict.fromkeys(filters.include))
            candidates = [ref for ref in found if ref is not None]
        else:
            lo, hi = self._bounds(filters.after, filters.before)
            candidates = itertools.islice(self._iter_up(self._cview, lo), hi - lo)
        after = -math.inf if filters.after is None else filters.after
        before = math.inf if filters.before is None else filters.before
        parse = bool(filters.tests) or name not in _VIEW_ORDERS
        keyed: list[tuple[tuple[int, int | str, int | str], _Ref]] = []
        for ref in candidates:
            uid = self._ref_id(ref)
            if uid in filters.exclude or not after < self._ref_time(ref, "created_at") < before:
                continue
            value: int | str | None
            if parse:
                user = json.loads(self._ref_bytes(ref))
                if not filters.matches(user):
                    continue
                value = _order_value(user, name)
            else:
                value = self._ref_time(ref, name)
            tie = uid if salt is None else _salted(salt, uid)
            keyed.append(((0, value, tie) if value is not None else (1, 0, tie), ref))
        keyed.sort(key=lambda kr: kr[0], reverse=desc)
        if cursor:  # created_at order only (checked by the caller): values are never null
            bound = (0, *self._cursor_bound(cursor, desc))
            keyed = [kr for kr in keyed if (kr[0] < bound if desc else kr[0] >= bound)]
        return [ref for _, ref in keyed]

    def _count(self, params: Mapping[str, list[str]]) -> int:
        filters = _parse_filters(params)
        with self._lock:
            if filters.include is None and self._keeper(filters, "created_at") is None:
                lo, hi = self._bounds(filters.after, filters.before)
                return hi - lo
            return len(self._collect(filters, "created_at", False, None, None))

    # -- control API ---------------------------------------------------------------------------

    def _control(
        self, label: str, arg: str | None, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if label == "GET /_emulator/stats":
            return self._ok(self.stats())
        if label == "POST /_emulator/reset-stats":
            self.reset_stats()
            return self._ok(self.stats())
        if label == "GET /_emulator/config":
            return self._ok(self._knobs())
        if label == "GET /_emulator/edge-cases":
            return self._ok(self.edge_case_ids())
        if label == "PATCH /_emulator/config":
            try:
                return self._ok(self.configure(**_json_object(body)))
            except ValueError as exc:
                raise _invalid("config", str(exc)) from None
        if label == "POST /_emulator/users":
            fields_ = _json_object(body)
            try:
                return self._ok(self.create_user(**fields_))
            except (TypeError, ValueError) as exc:
                raise _invalid("user", str(exc)) from None
        assert arg is not None
        try:
            if label == "PATCH /_emulator/users/{id}":
                return self._ok(self.update_user(arg, **_json_object(body)))
            if label == "POST /_emulator/users/{id}/ban":
                return self._ok(self.update_user(arg, banned=True))
            if label == "POST /_emulator/users/{id}/unban":
                return self._ok(self.update_user(arg, banned=False))
            if label == "DELETE /_emulator/users/{id}":
                self.delete_user(arg)
                return self._ok({"object": "user", "id": arg, "deleted": True})
        except KeyError:
            raise _not_found(f"No user was found with id {arg}") from None
        except (TypeError, ValueError) as exc:
            raise _invalid("user", str(exc)) from None
        raise _not_found("The requested resource was not found")


def _check_timestamps(fields: Mapping[str, Any]) -> None:
    """created_at / updated_at drive the sort orders: they must stay integers."""
    for name in ("created_at", "updated_at"):
        if name in fields:
            value = fields[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer (ms since epoch)")


def _too_many(retry_after: int) -> _ApiError:
    return _ApiError(
        429,
        "too_many_requests",
        "Too many requests",
        "Too many requests, retry later",
        headers={"Retry-After": str(retry_after)},
    )


_ROUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GET", ("v1", "users")),
    ("GET", ("v1", "users", "count")),
    ("GET", ("v1", "users", "{id}")),
    ("GET", ("v1", "instance")),
    ("POST", ("_emulator", "users")),
    ("PATCH", ("_emulator", "users", "{id}")),
    ("DELETE", ("_emulator", "users", "{id}")),
    ("POST", ("_emulator", "users", "{id}", "ban")),
    ("POST", ("_emulator", "users", "{id}", "unban")),
    ("GET", ("_emulator", "config")),
    ("PATCH", ("_emulator", "config")),
    ("GET", ("_emulator", "stats")),
    ("POST", ("_emulator", "reset-stats")),
    ("GET", ("_emulator", "edge-cases")),
)


def _route(method: str, path: str) -> tuple[str, str | None]:
    """(endpoint label, path argument) for a request; label "unmatched" if no route fits."""
    parts = path.strip("/").split("/")
    for route_method, pattern in _ROUTES:
        if route_method != method or len(pattern) != len(parts):
            continue
        arg: str | None = None
        for want, got in zip(pattern, parts, strict=True):
            if want == "{id}":
                arg = unquote(got)
                if not arg:
                    break
            elif want != got:
                break
        else:
            return f"{method} /{'/'.join(pattern)}", arg
    return "unmatched", None


def _str_param(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _int_param(params: Mapping[str, list[str]], name: str, default: int) -> int:
    raw = _str_param(params, name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _invalid(name, f"{name} must be an integer") from None


def _opt_int(params: Mapping[str, list[str]], name: str) -> int | None:
    return _int_param(params, name, 0) if _str_param(params, name) else None


#: Go's strconv.ParseBool spellings (Clerk's API is written in Go).
_BOOLS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}


def _bool_param(params: Mapping[str, list[str]], name: str) -> bool | None:
    raw = _str_param(params, name)
    if not raw:
        return None
    value = _BOOLS.get(raw.lower())
    if value is None:
        raise _invalid(name, f"{name} must be true or false")
    return value


def _list_param(params: Mapping[str, list[str]], name: str) -> list[str] | None:
    """A repeated filter's non-blank values; None when absent ([] matches nobody)."""
    if name not in params:
        return None
    values = [v for v in params[name] if v]
    if len(values) > MAX_USER_ID_FILTER:
        raise _invalid(name, f"at most {MAX_USER_ID_FILTER} {name} values are allowed")
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


_UserTest = Callable[[dict[str, Any]], bool]
_Texts = Callable[[dict[str, Any]], list[Any]]


@dataclass(slots=True)
class _Filters:
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


def _parse_filters(params: Mapping[str, list[str]]) -> _Filters:
    """Every filter of ``GET /v1/users`` and ``/users/count``; 422 for bad or unsupported ones."""
    for name, why in _UNSUPPORTED_FILTERS.items():
        if any(params.get(name, ())):
            raise _invalid(name, f"{name} is not supported by the emulator ({why})")
    filters = _Filters(
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
        needle = _str_param(params, name)
        if needle:
            tests.append(functools.partial(_any_contains, texts, needle.lower()))
    banned = _bool_param(params, "banned")
    if banned is not None:
        tests.append(functools.partial(_banned_is, banned))
    for name, (key, op) in _TIME_FILTERS.items():
        bound = _opt_int(params, name)
        if bound is not None:
            tests.append(functools.partial(_time_ok, key, op, bound))
    provider = _str_param(params, "provider") or None
    provider_ids = _list_param(params, "provider_user_id")
    if provider is not None and provider_ids is not None:
        tests.append(functools.partial(_provider_ok, provider, frozenset(provider_ids)))
    elif provider is not None or provider_ids is not None:
        missing = "provider" if provider is None else "provider_user_id"
        raise _invalid(missing, "provider and provider_user_id must be used together")
    return filters


_VIEW_ORDERS = ("created_at", "updated_at")  # served from the two sorted views
_ORDER_FIELDS: tuple[str, ...] = (
    *_VIEW_ORDERS,
    "email_address",
    "web3wallet",
    "first_name",
    "last_name",
    "phone_number",
    "username",
    "last_active_at",
    "last_sign_in_at",
)
_INT_ORDERS = frozenset({"created_at", "updated_at", "last_active_at", "last_sign_in_at"})
#: order_by fields that sort by the user's primary identifier: (list, primary id, value) keys.
_PRIMARY_ORDERS: dict[str, tuple[str, str, str]] = {
    "email_address": ("email_addresses", "primary_email_address_id", "email_address"),
    "phone_number": ("phone_numbers", "primary_phone_number_id", "phone_number"),
    "web3wallet": ("web3_wallets", "primary_web3_wallet_id", "web3_wallet"),
}


def _order_value(user: dict[str, Any], name: str) -> int | str | None:
    """The value ``order_by=name`` sorts ``user`` by (None: null, which sorts last)."""
    value: Any
    if name in _PRIMARY_ORDERS:
        list_key, id_key, value_key = _PRIMARY_ORDERS[name]
        primary = user.get(id_key)
        value = None
        for item in user.get(list_key) or ():
            if primary is not None and isinstance(item, dict) and item.get("id") == primary:
                value = item.get(value_key)
                break
    else:
        value = user.get(name)
    if name in _INT_ORDERS:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    return value if value is None or isinstance(value, str) else str(value)


def _salted(salt: int, uid: str) -> int:
    """A tie-break that orders the same ids differently for each salt."""
    digest = hashlib.blake2b(uid.encode(), digest_size=8, key=salt.to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise _invalid("body", "the request body must be a JSON object") from None
    if not isinstance(value, dict):
        raise _invalid("body", "the request body must be a JSON object")
    return value


# ---------------------------------------------------------------------------------------------
# The HTTP server
# ---------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-response are normal (truncation, timeouts): stay quiet."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "clerk-emulator"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        cast(_Server, self.server).emulator.note_connection()

    def _dispatch(self) -> None:
        emulator = cast(_Server, self.server).emulator
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path, _, query = self.path.partition("?")
        headers = {k: v for k, v in self.headers.items()}
        status, out_headers, payload = emulator.handle(self.command, path, query, headers, body)
        self.send_response(status)
        declared = out_headers.pop("Content-Length", None)
        if out_headers.pop("Connection", "") == "close":
            self.close_connection = True
            self.send_header("Connection", "close")
        for name, value in out_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", declared or str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log."""


def _url(server: _Server) -> str:
    host, port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else str(host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


class RunningEmulator:
    """An emulator serving on a background daemon thread; stop() (or ``with``) shuts it down."""

    def __init__(self, emulator: Emulator, server: _Server, thread: threading.Thread) -> None:
        self.emulator = emulator
        self.base_url = _url(server)  # what CLERK_API_URL is set to
        self.control_url = self.base_url[: -len("/v1")] + "/_emulator"
        self.port: int = server.server_address[1]
        self._server = server
        self._thread = thread
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_emulator(
    config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Start an emulator on ``host:port`` (0: a free port) in a daemon thread."""
    emulator = Emulator(config)
    server = _Server((host, port), emulator)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"clerk-emulator:{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return RunningEmulator(emulator, server, thread)


def serve(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until KeyboardInterrupt or SIGTERM; ``on_ready(base_url)`` once."""
    server = _Server((host, port), Emulator(config))

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous: Any = None
    installed = False
    with contextlib.suppress(ValueError):  # signals can only be set from the main thread
        previous = signal.signal(signal.SIGTERM, _stop)
        installed = True
    try:
        if on_ready is not None:
            on_ready(_url(server))
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if installed:
            signal.signal(signal.SIGTERM, previous)

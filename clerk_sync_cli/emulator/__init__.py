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

With ``webhook_url`` set it also delivers signed webhooks for its own changes, as Clerk does
through Svix (see "Webhooks" below).

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
                                      cursor_ties, deleted_cursor, unstable_ties and the
                                      webhook_* knobs (webhook_secret included: the
                                      control API is where a generated one is read)
``GET /_emulator/stats``              counters (see :meth:`Emulator.stats`), webhooks' too
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

Webhooks (``EmulatorConfig`` fields, runtime-changeable like the faults)
---------------------------------------------------------------------
Every change through the mutators (and so the control API) becomes an event, POSTed to
``webhook_url`` (None: off; any http(s) URL, any host) by one background sender thread, signed
as Svix signs Clerk's (``svix-id``, ``svix-timestamp``, ``svix-signature``; see
:mod:`clerk_sync_cli.signatures`) with ``webhook_secret`` (``whsec_…``; a random one is
generated when a URL is set without one, readable at ``GET /_emulator/config``). The envelope
is Clerk's: ``{"data", "object": "event", "type", "timestamp" (ms), "instance_id" (as
/v1/instance), "event_attributes": {"http_request": {"client_ip": "", "user_agent": ""}}}``
with ``type`` ``user.created``, ``user.updated`` (updates, bans, unbans) or ``user.deleted``;
``data`` is the user as ``GET /v1/users/{id}`` renders it just after the change, for a deletion
``{"object": "user", "id", "deleted": true}``. Each event has its own ``msg_`` id, kept by its
retries and its duplicate. The URL and secret are those set when the event is emitted.

``webhook_drop`` / ``webhook_duplicate`` (probabilities, 0..1)
    An event is never delivered / is delivered twice (two independent deliveries).
``webhook_reorder`` (bool)
    An event may be held back (for up to 0.5 s) until the next one has been queued ahead of it.
``webhook_delay_ms``
    Before each event's first attempt.
``webhook_retry`` (bool, default True) and ``webhook_retry_scale`` (default 1/1000)
    A non-2xx answer, a connection error or no answer within 15 s is retried on Svix's
    schedule (immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after each failure),
    times the scale: about 100 s for the whole schedule by default.

The drop / duplicate / hold decisions come from a generator seeded by ``seed``: the same
changes misbehave the same way on every run. ``webhooks.wait_idle(timeout)`` waits until the
queue is drained; stopping the emulator stops the sender and abandons what is pending.

Python API
----------
:class:`EmulatorConfig`, :class:`Emulator` (state + ``handle()``, no sockets; thread-safe),
:func:`start_emulator` -> :class:`RunningEmulator` (``base_url``, ``control_url``, ``stop()``),
:func:`serve` (foreground, stops on Ctrl-C / SIGTERM). ``Emulator`` mutators: ``create_user``,
``update_user``, ``ban_user``, ``unban_user``, ``delete_user``; readers: ``get_user``,
``user_ids``, ``count``, ``edge_case_ids``, ``stats``; knobs: ``configure``, ``reset_stats``;
``warm()`` pre-renders base users so a benchmark measures the client, not first-touch rendering.
``Emulator.webhooks`` (also ``RunningEmulator.webhooks``): :class:`Webhooks` (``wait_idle``,
``stats``, ``secret``); ``Emulator.close()`` stops its sender (``stop()`` does it too).

Population
----------
Base users are *virtual*: user ``i`` (``0 <= i < users``) is generated on demand from
``(seed, i)``; its id encodes ``i`` (a seed-keyed Feistel permutation, so ids look random but
decode back, plus a keyed check suffix). ``created_at`` and ``updated_at`` are non-decreasing in
``i`` (about 5% of users share a millisecond with their predecessor), so both orders over base
users are computable without sorting. Mutations are an overlay (modified and added users, deleted
ids) merged in at O(log n) per page. Start-up is O(1) even for millions of users; serialized
users are cached (bounded) and pages are assembled by joining bytes.

Modules
-------
This package imports only ``config``; the other public names load on first use (PEP 562).

- ``config``: :class:`EmulatorConfig`, its runtime knobs and their validation (light)
- ``ids``: keyed hashing and the ids of base users, which decode back to their index
- ``render``: a user's JSON in Clerk's wire format
- ``population``: the virtual base users, generated from ``(seed, i)``
- ``edge_cases``: the awkward users ``edge_cases=True`` mixes in, a table kind -> change
- ``views``: the ``created_at`` / ``updated_at`` orders over base users merged with the overlay
- ``users``: the user store: overlay, tombstones, mutations
- ``filters``: query parameters and the 22 filters
- ``query``: list pages (ordering, cursors, paging) and counts
- ``faults``: injected faults and the request counters
- ``errors``: Clerk's error answers
- ``control``: the control API, a table route -> function
- ``webhooks``: the signed webhooks of the emulator's changes, their queue and sender thread
- ``api``: :class:`Emulator`, the Python API and ``handle()``
- ``server``: the HTTP server, :class:`RunningEmulator`, :func:`start_emulator`, :func:`serve`
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from clerk_sync_cli.emulator.config import (
    CURSOR_TIES,
    DEFAULT_PORT,
    DEFAULT_SECRET_KEY,
    DELETED_CURSOR,
    RATE_LIMIT_PRESETS,
    EmulatorConfig,
    resolve_rate_limit,
)

if TYPE_CHECKING:
    from clerk_sync_cli.emulator.api import Emulator
    from clerk_sync_cli.emulator.edge_cases import EDGE_CASE_KINDS
    from clerk_sync_cli.emulator.server import RunningEmulator, serve, start_emulator
    from clerk_sync_cli.emulator.webhooks import Webhooks

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
    "Webhooks",
    "resolve_rate_limit",
    "serve",
    "start_emulator",
]

#: The heavy public names and the module each lives in, imported on first access (PEP 562).
_LAZY: dict[str, str] = {
    "EDGE_CASE_KINDS": "edge_cases",
    "Emulator": "api",
    "RunningEmulator": "server",
    "serve": "server",
    "start_emulator": "server",
    "Webhooks": "webhooks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

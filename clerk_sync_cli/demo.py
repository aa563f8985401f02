"""``clerk-sync demo``: the whole job on a throwaway Postgres and a local Clerk emulator.

Starts both, applies ``sql/``, backfills, makes Clerk drift (renames, bans, deletions, new
sign-ups) through the emulator's control API, then runs ``diff --dry-run`` and ``diff``.
Then real time: ``serve`` receives the emulator's signed webhooks, a change made in Clerk
appears in the table within a second, and a webhook the emulator drops is healed by the next
``sync``. Everything it started is stopped and removed at the end, unless ``keep``.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from psycopg import sql
from pydantic import SecretStr

from clerk_sync_cli.clerk import ClerkClient
from clerk_sync_cli.embedded_postgres import embedded_postgres, stop_command
from clerk_sync_cli.embedded_postgres import require as require_embedded_postgres
from clerk_sync_cli.emulator import DEFAULT_SECRET_KEY
from clerk_sync_cli.errors import ClerkSyncError
from clerk_sync_cli.init_db import init_db
from clerk_sync_cli.run import Progress, SyncOptions, SyncResult
from clerk_sync_cli.store import Cursor, Store, connect
from clerk_sync_cli.sync import reconcile

#: The demo app's origin: its only authorized party.
APP_ORIGIN = "http://localhost:3000"


@dataclass(frozen=True)
class Drift:
    renamed: int = 20
    banned: int = 5
    deleted: int = 8  # under the default guard (10), so diff applies them
    signed_up: int = 12


@dataclass
class LiveDemo:
    """What the real-time part showed: how soon a change reached the table through ``serve``,
    and whether ``sync`` healed the change whose webhook was dropped."""

    seen_after_s: float | None = None
    healed: bool = False
    sync: SyncResult | None = None
    signed_in: dict[str, Any] | None = None  # the row POST /api/v1/users/sync answered


@dataclass
class DemoOutcome:
    runs: list[SyncResult] = field(default_factory=list)
    live: LiveDemo = field(default_factory=LiveDemo)
    drift: Drift = field(default_factory=Drift)
    database_url: str = ""
    clerk_api_url: str = ""
    emulator_pid: int | None = None
    kept: bool = False


class DemoSteps(Protocol):
    """What the demo tells its viewer; the reporter implements it."""

    def step(self, text: str) -> None: ...
    def run_result(self, title: str, result: SyncResult) -> None: ...
    def progress(self, label: str) -> Progress | None: ...


@contextmanager
def emulator_process(users: int, seed: int, keep: bool) -> Iterator[tuple[str, int]]:
    """``clerk-sync emulator`` in a child process; yields (base URL, pid)."""
    command = [
        sys.executable,
        "-m",
        "clerk_sync_cli",
        "emulator",
        "--port",
        "0",
        "--users",
        str(users),
        "--seed",
        str(seed),
        "--edge-cases",
    ]
    env = {**os.environ, "CLERK_SECRET_KEY": DEFAULT_SECRET_KEY}
    child = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=keep,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if not line.startswith("CLERK_API_URL="):
            raise ClerkSyncError("The Clerk emulator did not start.")
        yield line.split("=", 1)[1], child.pid
    finally:
        if not keep:
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def make_drift(http: httpx.Client, base_url: str, drift: Drift) -> None:
    """Change Clerk the way real life does, through the emulator's control API."""
    root = base_url.rsplit("/v1", 1)[0] + "/_emulator"
    headers = {"Authorization": f"Bearer {DEFAULT_SECRET_KEY}"}
    listed = (
        http.get(
            f"{base_url}/users", params={"limit": 100, "order_by": "+created_at"}, headers=headers
        )
        .raise_for_status()
        .json()
    )
    ids = [u["id"] for u in listed if not u.get("banned")]
    picks = iter(ids)
    for n, user_id in zip(range(drift.renamed), picks, strict=False):
        http.patch(
            f"{root}/users/{user_id}", json={"first_name": f"Renamed{n}"}, headers=headers
        ).raise_for_status()
    for _, user_id in zip(range(drift.banned), picks, strict=False):
        http.post(f"{root}/users/{user_id}/ban", headers=headers).raise_for_status()
    for _, user_id in zip(range(drift.deleted), picks, strict=False):
        http.delete(f"{root}/users/{user_id}", headers=headers).raise_for_status()
    for n in range(drift.signed_up):
        http.post(
            f"{root}/users",
            json={"first_name": f"New{n}", "last_name": "Signup", "email": f"new{n}@example.com"},
            headers=headers,
        ).raise_for_status()


def run_demo(
    steps: DemoSteps, *, users: int = 3000, seed: int = 42, keep: bool = False
) -> DemoOutcome:
    outcome = DemoOutcome(kept=keep)
    started = time.monotonic()
    require_embedded_postgres()  # without the demo extra: one line, before any step
    with ExitStack() as stack:
        steps.step("Starting a throwaway Postgres (embedded, no install needed)")
        dsn = stack.enter_context(embedded_postgres(keep=keep))
        outcome.database_url = dsn
        store = stack.enter_context(Store(lambda: connect(dsn)))
        steps.step("Creating the guide's tables (what `clerk-sync init-db` does on a new project)")
        init_db(store)
        steps.step(f"Starting the Clerk emulator with {users} users (some awkward on purpose)")
        base_url, pid = stack.enter_context(emulator_process(users, seed, keep))
        outcome.clerk_api_url, outcome.emulator_pid = base_url, pid
        http = stack.enter_context(httpx.Client(timeout=30.0))
        client = ClerkClient(http, base_url, SecretStr(DEFAULT_SECRET_KEY), max_rps=200)

        def run(title: str, options: SyncOptions) -> None:
            steps.step(title)
            result = reconcile(client, store, options, progress=steps.progress("Reading Clerk"))
            outcome.runs.append(result)
            steps.run_result(title, result)

        run("$ clerk-sync backfill", SyncOptions("backfill"))
        d = outcome.drift
        steps.step(
            f"Clerk drifts: {d.renamed} renamed, {d.banned} banned, {d.deleted} deleted, "
            f"{d.signed_up} new sign-ups"
        )
        make_drift(http, base_url, d)
        run("$ clerk-sync diff --dry-run", SyncOptions("diff", dry_run=True, deactivate=True))
        run("$ clerk-sync diff --yes", SyncOptions("diff", deactivate=True))
        run(
            "$ clerk-sync diff --exit-code   (again: nothing left to do)",
            SyncOptions("diff", deactivate=True),
        )
        outcome.live = live_demo(steps, stack, http, base_url, client, store, dsn)
    steps.step(
        f"Done in {time.monotonic() - started:.1f}s"
        + ("." if keep else "; stopped the emulator and Postgres, removed their files.")
    )
    return outcome


def live_demo(
    steps: DemoSteps,
    stack: ExitStack,
    http: httpx.Client,
    base_url: str,
    client: ClerkClient,
    store: Store,
    dsn: str,
) -> LiveDemo:
    """``serve`` on the demo's database, fed by the emulator's webhooks: a rename arrives
    within a second; a rename whose webhook is dropped is healed by ``sync``; then a sign-in
    through ``POST /api/v1/users/sync`` with a session token the emulator mints."""
    from clerk_sync_cli import serve  # uvicorn and starlette: loaded only here
    from clerk_sync_cli.settings import Settings
    from clerk_sync_cli.web import SYNC_PATH, WEBHOOK_PATH, create_app

    live = LiveDemo()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    settings = Settings(
        database_url=SecretStr(dsn),
        clerk_webhook_signing_secret=SecretStr(secret),
        clerk_secret_key=SecretStr(DEFAULT_SECRET_KEY),
        clerk_api_url=base_url,
        clerk_authorized_parties=APP_ORIGIN,
    )
    served = stack.enter_context(serve.in_background(create_app(settings)))
    url = served + WEBHOOK_PATH
    steps.step(f"$ clerk-sync serve   (the emulator now sends its webhooks to {url})")
    root = base_url.rsplit("/v1", 1)[0] + "/_emulator"
    headers = {"Authorization": f"Bearer {DEFAULT_SECRET_KEY}"}
    http.patch(
        f"{root}/config", json={"webhook_url": url, "webhook_secret": secret}, headers=headers
    ).raise_for_status()
    first, second = _two_active_users(store)

    started = time.monotonic()
    http.patch(f"{root}/users/{first}", json={"first_name": "Live"}, headers=headers)
    live.seen_after_s = _wait_for_name(store, first, "Live", started, timeout=5.0)
    shown = "not within 5 s" if live.seen_after_s is None else f"{live.seen_after_s:.2f}s later"
    steps.step(f"Renamed {first} in Clerk: the table had it {shown}, by webhook")

    http.patch(f"{root}/config", json={"webhook_drop": 1.0}, headers=headers).raise_for_status()
    http.patch(f"{root}/users/{second}", json={"first_name": "Dropped"}, headers=headers)
    time.sleep(0.5)
    steps.step(f"Renamed {second}, and the emulator dropped its webhook (as Svix may)")
    title = "$ clerk-sync sync   (cron's safety net)"
    steps.step(title)
    live.sync = reconcile(client, store, SyncOptions("sync", deactivate=True))
    steps.run_result(title, live.sync)
    live.healed = _wait_for_name(store, second, "Dropped", time.monotonic(), timeout=0) is not None
    http.patch(f"{root}/config", json={"webhook_url": None}, headers=headers).raise_for_status()

    token = (
        http.post(f"{root}/users/{first}/session-token", json={"azp": APP_ORIGIN}, headers=headers)
        .raise_for_status()
        .json()["jwt"]
    )
    steps.step(
        f"A sign-in: the app posts {first}'s Clerk session token to POST {SYNC_PATH} "
        "(body ignored; the user is fetched from Clerk)"
    )
    answer = http.post(
        served + SYNC_PATH,
        json={"email": "forged@example.com"},  # what the guide's browser would send: ignored
        headers={"Authorization": f"Bearer {token}", "Origin": APP_ORIGIN},
    )
    if answer.status_code == 200:
        live.signed_in = answer.json()
        row = live.signed_in
        steps.step(
            f"  200: {row['clerk_id']} {row['first_name']} <{row['email']}>, "
            f"active={row['is_active']}, id {row['id']}"
        )
    else:
        steps.step(f"  {answer.status_code}: {answer.text[:200]}")
    return live


def _two_active_users(store: Store) -> tuple[str, str]:
    def pick(cur: Cursor) -> list[str]:
        cur.execute(
            sql.SQL("SELECT clerk_id FROM {} WHERE is_active ORDER BY clerk_id LIMIT 2").format(
                store.tables.users_ident()
            )
        )
        return [row[0] for row in cur.fetchall()]

    first, second = store.atomic(pick)
    return first, second


def _wait_for_name(
    store: Store, clerk_id: str, name: str, started: float, *, timeout: float
) -> float | None:
    """Seconds from ``started`` until the row has ``name`` (None: not within ``timeout``)."""

    def current(cur: Cursor) -> str | None:
        cur.execute(
            sql.SQL("SELECT first_name FROM {} WHERE clerk_id = %s").format(
                store.tables.users_ident()
            ),
            (clerk_id,),
        )
        row = cur.fetchone()
        return None if row is None else row[0]

    while True:
        if store.atomic(current) == name:
            return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            return None
        time.sleep(0.02)


def demo_summary(outcome: DemoOutcome) -> dict[str, Any]:
    return {
        "database_url": outcome.database_url if outcome.kept else None,
        "clerk_api_url": outcome.clerk_api_url if outcome.kept else None,
        "emulator_pid": outcome.emulator_pid if outcome.kept else None,
        "stop_postgres": stop_command(outcome.database_url) if outcome.kept else None,
        "webhooks": {
            "seen_after_s": None
            if outcome.live.seen_after_s is None
            else round(outcome.live.seen_after_s, 3),
            "healed_by_sync": outcome.live.healed,
        },
        "signin": outcome.live.signed_in,
    }

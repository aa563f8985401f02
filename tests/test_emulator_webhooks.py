"""The emulator's webhooks, over real HTTP, judged by Svix's own library.

A small receiver (``ThreadingHTTPServer`` on a free port) records every delivery; each one is
verified with ``svix.webhooks.Webhook``, the library Clerk's docs tell receivers to use, so
our signing is checked by an implementation we did not write. Envelopes are compared with what
the emulator's own API answers (``GET /v1/users/{id}``, ``GET /v1/instance``) over httpx.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import httpx
import pytest
from svix.webhooks import Webhook

from clerk_sync_cli.emulator import (
    DEFAULT_SECRET_KEY,
    EmulatorConfig,
    RunningEmulator,
    start_emulator,
)
from clerk_sync_cli.emulator.webhooks import RETRY_SCHEDULE_S

KEY = DEFAULT_SECRET_KEY
MSG_ID = re.compile(r"^msg_[0-9A-Za-z]{27}$")
AUTH = {"Authorization": f"Bearer {KEY}"}
SENDER = "clerk-emulator-webhooks"


@dataclass
class Delivery:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def msg_id(self) -> str:
        return self.headers["svix-id"]

    def event(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc


class Receiver:
    """A webhook endpoint on 127.0.0.1: records deliveries, answers ``status(n)`` for the
    n-th (0-based) request, or hangs until :meth:`close` when ``hang`` is set."""

    def __init__(self, status: Callable[[int], int] = lambda n: 200) -> None:
        self.status = status
        self.hang = False
        self.deliveries: list[Delivery] = []
        self._arrived = threading.Condition()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._arrived:
                    n = len(receiver.deliveries)
                    receiver.deliveries.append(Delivery("POST", self.path, headers, body))
                    receiver._arrived.notify_all()
                if receiver.hang:
                    receiver._release.wait(10)
                try:
                    self.send_response(receiver.status(n))
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the sender cut the connection off (it was stopped)
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhooks/clerk"

    def wait_for(self, count: int, timeout: float = 5) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.deliveries) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{len(self.deliveries)} of {count} deliveries arrived"
                self._arrived.wait(remaining)
            return list(self.deliveries)

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    endpoint = Receiver()
    yield endpoint
    endpoint.close()


@pytest.fixture
def control(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.control_url, headers=AUTH, timeout=10) as client:
        yield client


@pytest.fixture
def api(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, headers=AUTH, timeout=10) as client:
        yield client


def configure(control: httpx.Client, **knobs: Any) -> dict[str, Any]:
    response = control.patch("/config", json=knobs)
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def verified(deliveries: list[Delivery], secret: str) -> list[dict[str, Any]]:
    """Every delivery checked by Svix's library (it raises on a bad signature), then parsed."""
    webhook = Webhook(secret)
    for delivery in deliveries:
        webhook.verify(delivery.body, delivery.headers)
    return [d.event() for d in deliveries]


def sender_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == SENDER and t.is_alive()]


def user_ids_in(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["id"] for e in events]


# ---------------------------------------------------------------------------------------------
# Envelopes and signatures
# ---------------------------------------------------------------------------------------------


def test_every_change_arrives_signed_in_clerks_envelope(
    emulator: RunningEmulator, control: httpx.Client, api: httpx.Client, receiver: Receiver
) -> None:
    knobs = configure(control, webhook_url=receiver.url)
    secret = knobs["webhook_secret"]  # generated: none was given
    assert secret.startswith("whsec_")
    assert secret == emulator.webhooks.secret == emulator.emulator.config.webhook_secret
    assert "secret_key" not in knobs
    assert KEY not in json.dumps(knobs)

    expected: list[tuple[str, dict[str, Any]]] = []
    created = control.post("/users", json={"first_name": "Ada", "email": "ada@example.com"})
    uid = created.json()["id"]
    expected.append(("user.created", api.get(f"/users/{uid}").json()))
    for method, path, body in (
        ("PATCH", f"/users/{uid}", {"last_name": "Lovelace"}),
        ("POST", f"/users/{uid}/ban", None),
        ("POST", f"/users/{uid}/unban", None),
    ):
        assert control.request(method, path, json=body).status_code == 200
        expected.append(("user.updated", api.get(f"/users/{uid}").json()))
    assert control.delete(f"/users/{uid}").status_code == 200
    expected.append(("user.deleted", {"object": "user", "id": uid, "deleted": True}))

    assert emulator.webhooks.wait_idle(5)
    deliveries = receiver.wait_for(len(expected))
    events = verified(deliveries, secret)
    instance_id = api.get("/instance").json()["id"]
    now_ms = time.time() * 1000
    for delivery, event, (kind, data) in zip(deliveries, events, expected, strict=True):
        assert delivery.method == "POST"
        assert delivery.path == "/webhooks/clerk"
        assert delivery.headers["content-type"] == "application/json"
        assert MSG_ID.match(delivery.msg_id)
        assert abs(int(delivery.headers["svix-timestamp"]) - now_ms / 1000) < 60
        assert event == {
            "data": data,
            "object": "event",
            "type": kind,
            "timestamp": event["timestamp"],
            "instance_id": instance_id,
            "event_attributes": {"http_request": {"client_ip": "", "user_agent": ""}},
        }
        assert isinstance(event["timestamp"], int)
        assert abs(event["timestamp"] - now_ms) < 60_000
    assert len({d.msg_id for d in deliveries}) == len(deliveries)
    updated_at = [e["data"]["updated_at"] for e in events[:-1]]
    assert updated_at == sorted(set(updated_at))  # every change advanced it
    assert [e["data"]["banned"] for e in events[1:4]] == [False, True, False]

    stats = control.get("/stats").json()["webhooks"]
    assert stats["emitted"] == stats["delivered"] == len(expected)
    assert (stats["failed_attempts"], stats["dropped"], stats["pending"]) == (0, 0, 0)
    assert control.post("/reset-stats").json()["webhooks"]["delivered"] == 0


def test_python_api_changes_send_events_with_a_given_secret(receiver: Receiver) -> None:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    config = EmulatorConfig(users=3, seed=7, webhook_url=receiver.url, webhook_secret=secret)
    assert secret not in repr(config)
    with start_emulator(config) as running:
        emulator = running.emulator
        base_user = emulator.user_ids()[0]
        new = emulator.create_user(first_name="Grace")
        emulator.update_user(base_user, first_name="Edsger")
        emulator.ban_user(new["id"])
        emulator.unban_user(new["id"])
        emulator.delete_user(base_user)
        assert running.webhooks.wait_idle(5)
        assert running.webhooks.secret == secret
        events = verified(receiver.wait_for(5), secret)
    assert [(e["type"], e["data"]["id"]) for e in events] == [
        ("user.created", new["id"]),
        ("user.updated", base_user),
        ("user.updated", new["id"]),
        ("user.updated", new["id"]),
        ("user.deleted", base_user),
    ]
    assert events[0]["data"] == new
    assert events[1]["data"]["first_name"] == "Edsger"
    assert sender_threads() == []


def test_no_url_no_events_no_thread(emulator: RunningEmulator) -> None:
    emulator.emulator.create_user(first_name="Quiet")
    assert emulator.emulator.config.webhook_secret is None  # only generated for a URL
    assert emulator.webhooks.stats()["emitted"] == 0
    assert emulator.webhooks.wait_idle(0)
    assert sender_threads() == []


# ---------------------------------------------------------------------------------------------
# Misbehaviour: drops, duplicates, reordering
# ---------------------------------------------------------------------------------------------


def test_drop_everything_delivers_nothing(
    emulator: RunningEmulator, control: httpx.Client, receiver: Receiver
) -> None:
    configure(control, webhook_url=receiver.url, webhook_drop=1.0)
    for n in range(5):
        emulator.emulator.create_user(first_name=f"Lost{n}")
    assert emulator.webhooks.wait_idle(5)
    time.sleep(0.05)
    assert receiver.deliveries == []
    stats = emulator.webhooks.stats()
    assert (stats["emitted"], stats["dropped"], stats["delivered"]) == (5, 5, 0)


def test_duplicate_everything_delivers_each_message_twice(
    emulator: RunningEmulator, control: httpx.Client, receiver: Receiver
) -> None:
    secret = configure(control, webhook_url=receiver.url, webhook_duplicate=1.0)["webhook_secret"]
    for n in range(4):
        emulator.emulator.create_user(first_name=f"Twice{n}")
    assert emulator.webhooks.wait_idle(5)
    deliveries = receiver.wait_for(8)
    verified(deliveries, secret)
    assert set(Counter(d.msg_id for d in deliveries).values()) == {2}
    bodies: dict[str, set[bytes]] = {}
    for delivery in deliveries:
        bodies.setdefault(delivery.msg_id, set()).add(delivery.body)
    assert all(len(same) == 1 for same in bodies.values())  # the same event, twice
    stats = emulator.webhooks.stats()
    assert (stats["duplicated"], stats["delivered"]) == (4, 8)


def _arrival_order(receiver: Receiver) -> list[int]:
    """Create 12 users with reordering on; the creation index of each event, as it arrived."""
    config = EmulatorConfig(seed=7, webhook_url=receiver.url, webhook_reorder=True)
    with start_emulator(config) as running:
        made = [running.emulator.create_user(first_name=f"R{n}")["id"] for n in range(12)]
        assert running.webhooks.wait_idle(5)
        secret = running.webhooks.secret
    assert secret is not None
    events = verified(receiver.wait_for(12), secret)
    return [made.index(uid) for uid in user_ids_in(events)]


def test_reorder_lets_later_events_overtake_and_repeats_with_the_seed() -> None:
    orders = []
    for _ in range(2):
        endpoint = Receiver()
        try:
            orders.append(_arrival_order(endpoint))
        finally:
            endpoint.close()
    first = orders[0]
    assert sorted(first) == list(range(12))  # every event, once
    assert first != list(range(12))  # ... not in the order of the changes
    assert orders[1] == first  # the same seed misbehaves the same way


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------


def test_failed_delivery_is_retried_with_the_same_message_id(
    emulator: RunningEmulator, control: httpx.Client
) -> None:
    endpoint = Receiver(status=lambda n: 500 if n == 0 else 200)
    try:
        secret = configure(control, webhook_url=endpoint.url, webhook_retry_scale=0.0001)[
            "webhook_secret"
        ]
        emulator.emulator.create_user(first_name="Retry")
        assert emulator.webhooks.wait_idle(5)
        first, second = endpoint.wait_for(2)
        verified([first, second], secret)
        assert first.msg_id == second.msg_id
        assert first.body == second.body
        stats = emulator.webhooks.stats()
        assert (stats["failed_attempts"], stats["retries"], stats["delivered"]) == (1, 1, 1)
        assert stats["given_up"] == 0
    finally:
        endpoint.close()


def test_unreachable_endpoint_gets_svixs_whole_schedule_then_is_given_up(
    emulator: RunningEmulator, control: httpx.Client
) -> None:
    endpoint = Receiver()
    url = endpoint.url
    endpoint.close()  # nothing listens there any more: every attempt is a connection error
    configure(control, webhook_url=url, webhook_retry_scale=0.000001)
    emulator.emulator.create_user(first_name="Nobody")
    assert emulator.webhooks.wait_idle(5)
    stats = emulator.webhooks.stats()
    assert stats["failed_attempts"] == len(RETRY_SCHEDULE_S) == 8
    assert (stats["retries"], stats["given_up"], stats["delivered"]) == (7, 1, 0)


def test_no_retry_gives_up_after_one_attempt(
    emulator: RunningEmulator, control: httpx.Client
) -> None:
    endpoint = Receiver(status=lambda n: 503)
    try:
        configure(control, webhook_url=endpoint.url, webhook_retry=False)
        emulator.emulator.create_user(first_name="Once")
        assert emulator.webhooks.wait_idle(5)
        assert len(endpoint.wait_for(1)) == 1
        stats = emulator.webhooks.stats()
        assert (stats["failed_attempts"], stats["retries"], stats["given_up"]) == (1, 0, 1)
    finally:
        endpoint.close()


# ---------------------------------------------------------------------------------------------
# Stopping
# ---------------------------------------------------------------------------------------------


#: What is pending when the emulator stops, and the knobs that make it so.
PENDING: dict[str, dict[str, Any]] = {
    "in_flight": {},  # the receiver hangs on the first delivery; two more wait behind it
    "delayed": {"webhook_delay_ms": 60_000},
    "retry_later": {"webhook_retry_scale": 1.0},  # the receiver fails; the first retry is 5 s away
}


@pytest.mark.parametrize("pending", list(PENDING))
def test_stop_with_pending_deliveries_is_prompt_and_quiet(
    pending: str, capfd: pytest.CaptureFixture[str]
) -> None:
    endpoint = Receiver(status=lambda n: 500 if pending == "retry_later" else 200)
    endpoint.hang = pending == "in_flight"
    running = start_emulator(EmulatorConfig(seed=7, webhook_url=endpoint.url, **PENDING[pending]))
    try:
        for n in range(3):
            running.emulator.create_user(first_name=f"Pending{n}")
        if pending != "delayed":
            endpoint.wait_for(1)  # the first delivery reached the receiver
        assert not running.webhooks.wait_idle(0.05)
        assert running.webhooks.stats()["pending"] >= 1
        started = time.monotonic()
        running.stop()
        assert time.monotonic() - started < 1.5
        assert sender_threads() == []
        assert running.webhooks.stats()["pending"] == 0
        running.emulator.create_user(first_name="After")  # still works; no longer sent
        assert sender_threads() == []
    finally:
        running.stop()  # idempotent
        endpoint.close()
    assert "Traceback" not in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def test_webhook_knobs_default_and_are_validated(control: httpx.Client) -> None:
    defaults = control.get("/config").json()
    assert {name: value for name, value in defaults.items() if name.startswith("webhook_")} == {
        "webhook_url": None,
        "webhook_secret": None,
        "webhook_drop": 0.0,
        "webhook_duplicate": 0.0,
        "webhook_reorder": False,
        "webhook_delay_ms": 0.0,
        "webhook_retry": True,
        "webhook_retry_scale": 0.001,
    }
    secret_value = "whsec_not*base64*at*all"
    for bad in (
        {"webhook_url": "ftp://example.com/hook"},
        {"webhook_url": "example.com/hook"},
        {"webhook_url": "http://"},
        {"webhook_url": "http://example.com:99999/"},
        {"webhook_url": "http://exa mple.com/"},
        {"webhook_url": 5},
        {"webhook_secret": secret_value},
        {"webhook_secret": "whsec_c2hvcnQ="},  # base64, but too short a key
        {"webhook_drop": 1.5},
        {"webhook_duplicate": -0.1},
        {"webhook_reorder": "yes"},
        {"webhook_retry": 1},
        {"webhook_delay_ms": -1},
        {"webhook_retry_scale": float("inf")},
    ):
        response = control.patch("/config", content=json.dumps(bad))
        assert response.status_code == 422, (bad, response.text)
        assert secret_value not in response.text
    changed = configure(
        control, webhook_url="https://hooks.example.com/clerk", webhook_drop=1, webhook_retry=False
    )
    assert changed["webhook_url"] == "https://hooks.example.com/clerk"  # another host: allowed
    assert changed["webhook_drop"] == 1.0
    assert changed["webhook_secret"].startswith("whsec_")
    assert configure(control, webhook_secret=None)["webhook_secret"] != changed["webhook_secret"]
    assert configure(control, webhook_url=None)["webhook_url"] is None

    with pytest.raises(ValueError, match="webhook_url"):
        EmulatorConfig(webhook_url="mailto:someone@example.com")
    with pytest.raises(ValueError, match="webhook_drop"):
        EmulatorConfig(webhook_drop=2)
    with pytest.raises(ValueError, match="webhook signing secret"):
        EmulatorConfig(webhook_url="http://127.0.0.1:1/", webhook_secret="whsec_???")


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def cli_emulator(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    """``clerk-sync emulator ARGS`` as a user starts it, and the CLERK_API_URL it prints."""
    process = subprocess.Popen(
        [sys.executable, "-m", "clerk_sync_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    match = re.search(r"CLERK_API_URL=(\S+)", cast(Any, process.stdout).readline())
    if not match:
        process.kill()
        process.wait()
        pytest.fail("the emulator printed no CLERK_API_URL")
    return process, match.group(1)


def test_cli_sends_webhooks_and_never_prints_the_secret(receiver: Receiver) -> None:
    args = [
        "emulator",
        "--port",
        "0",
        "--users",
        "0",
        "--webhook-url",
        receiver.url,
        "--webhook-duplicate",
        "1",
        "--webhook-delay-ms",
        "1",
        "--no-webhook-retry",
    ]
    process, api = cli_emulator(args)
    try:
        stdout = cast(Any, process.stdout)
        control_url = api.removesuffix("/v1") + "/_emulator"
        knobs = httpx.get(control_url + "/config", headers=AUTH).json()
        assert (knobs["webhook_duplicate"], knobs["webhook_retry"]) == (1.0, False)
        secret = knobs["webhook_secret"]
        httpx.post(control_url + "/users", headers=AUTH, json={"first_name": "Cli"})
        events = verified(receiver.wait_for(2), secret)
        assert [e["type"] for e in events] == ["user.created"] * 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        output = stdout.read() + cast(Any, process.stderr).read()
        assert "generated secret" in output
        assert "/_emulator/config" in output
        assert "Traceback" not in output
        assert secret not in output
        assert secret.removeprefix("whsec_")[:12] not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_refuses_a_bad_webhook_url_or_secret() -> None:
    from typer.testing import CliRunner

    from clerk_sync_cli.cli import app

    runner = CliRunner()
    help_text = runner.invoke(app, ["emulator", "--help"], env={"COLUMNS": "200"}).output
    for option in (
        "--webhook-url",
        "--webhook-secret",
        "--webhook-drop",
        "--webhook-duplicate",
        "--webhook-reorder",
        "--webhook-delay-ms",
        "--no-webhook-retry",
    ):
        assert option in help_text
    bad_url = runner.invoke(app, ["emulator", "--port", "0", "--webhook-url", "ftp://x/"])
    assert bad_url.exit_code != 0
    assert "webhook_url" in bad_url.output + bad_url.stderr
    secret_value = "whsec_%%%secretish%%%"
    args = ["emulator", "--port", "0", "--webhook-url", "http://127.0.0.1:1/"]
    bad_secret = runner.invoke(app, [*args, "--webhook-secret", secret_value])
    assert bad_secret.exit_code != 0
    assert "signing secret" in bad_secret.output + bad_secret.stderr
    assert secret_value not in bad_secret.output + bad_secret.stderr
    assert runner.invoke(app, ["emulator", "--webhook-drop", "2"]).exit_code == 2


@pytest.mark.parametrize(("cache_mb", "all_kept"), [(1, False), (256, True)])
def test_cli_cache_mb_bounds_the_users_kept_rendered(cache_mb: int, all_kept: bool) -> None:
    """``--cache-mb``: what the benchmark raises at 1M users so the emulator is not what it
    measures; within the budget every listed user stays rendered, beyond it the oldest go."""
    args = ["emulator", "--port", "0", "--users", "1500", "--cache-mb", str(cache_mb)]
    process, api = cli_emulator(args)
    try:
        for offset in (0, 500, 1000):
            page = httpx.get(api + "/users", params={"limit": 500, "offset": offset}, headers=AUTH)
            assert len(page.json()) == 500
        cache = httpx.get(api.removesuffix("/v1") + "/_emulator/stats", headers=AUTH).json()[
            "render_cache"
        ]
        assert cache["budget"] == cache_mb * 1024 * 1024
        assert cache["bytes"] <= cache["budget"]
        assert (cache["users"] == 1500) is all_kept, cache
    finally:
        process.kill()
        process.wait()

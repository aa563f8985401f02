"""Signed webhooks for the emulator's own changes, delivered the way Svix delivers Clerk's.

Every change made through the mutators (so also through the control API) becomes one event,
``user.created``, ``user.updated`` (bans and unbans too) or ``user.deleted``, in Clerk's
envelope, signed with :func:`clerk_sync_cli.signatures.sign` and POSTed to ``webhook_url``.
A client's webhook receiver can so be tested against the same emulator its sync runs on, with
the misbehaviours Svix allows itself: events dropped, delivered twice (the same ``svix-id``),
out of order, late, and retried on Svix's schedule after a failed attempt.

One sender thread (started on the first event) works through a queue ordered by due time;
the change that made an event never waits for its delivery. Which events are dropped,
duplicated or held back is drawn from a random generator seeded by the emulator's seed, so a
scenario repeats; message ids are truly random (unique across runs, as a receiver's
idempotency keys must be). Each attempt is signed afresh with its own timestamp, as Svix's
are, so a late retry is not refused as stale.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import random
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from clerk_sync_cli.emulator.config import EmulatorConfig, ensure_webhook_secret
from clerk_sync_cli.emulator.ids import b62
from clerk_sync_cli.emulator.render import json_bytes
from clerk_sync_cli.signatures import sign

#: Svix's retry schedule: the wait before each attempt, counted from the failure of the one
#: before (the first is immediate). Eight attempts in all, about 27.6 hours; scaled by
#: ``webhook_retry_scale``.
RETRY_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
#: How long Svix waits for an answer before counting an attempt as failed.
TIMEOUT_S = 15.0
#: With ``webhook_reorder``, how long an event is held back waiting for a later one to
#: overtake it, before it is sent anyway.
REORDER_HOLD_S = 0.5
#: How long :meth:`Webhooks.close` waits for the sender thread.
STOP_TIMEOUT_S = 5.0
USER_AGENT = "Svix-Webhooks/1.0 (clerk-sync emulator; +https://www.svix.com/http-sender/)"
#: Clerk fills these in for changes made by a request from the user's browser; changes made
#: through the Backend API (as the emulator's are) carry them empty.
_EVENT_ATTRIBUTES: dict[str, Any] = {"http_request": {"client_ip": "", "user_agent": ""}}
_THREAD_NAME = "clerk-emulator-webhooks"


def _empty_stats() -> dict[str, int]:
    return {
        "emitted": 0,
        "delivered": 0,
        "failed_attempts": 0,
        "retries": 0,
        "given_up": 0,
        "dropped": 0,
        "duplicated": 0,
    }


def new_message_id() -> str:
    """A Svix message id: ``msg_`` and 27 random base62 characters."""
    return "msg_" + b62(os.urandom(27))


@dataclass(slots=True)
class _Delivery:
    """One delivery of one event (a duplicate is a second delivery with the same id)."""

    msg_id: str
    body: bytes
    url: str
    secret: str
    attempts: int = 0


class Webhooks:
    """The webhook sender of one emulator: a queue, its thread and its counters. Thread-safe.

    The endpoint (URL and secret) is the one configured when an event is emitted; the other
    knobs are read when it is emitted (drop, duplicate, reorder, delay) or when an attempt
    fails (retry, retry scale).
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._cond = threading.Condition()
        seed = f"clerk-emulator-webhooks:{config.seed}"
        self._rng = random.Random(seed)  # noqa: S311 - reproducible misbehaviour, not secrets
        self._queue: list[tuple[float, int, _Delivery]] = []  # a heap by (due, order)
        self._order = itertools.count()
        self._held: list[_Delivery] = []  # held back by webhook_reorder
        self._held_until = 0.0
        self._in_flight = 0
        self._stream: Any = None  # the network stream of the attempt in flight
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stats = _empty_stats()

    @property
    def secret(self) -> str | None:
        """The signing secret deliveries are signed with (generated if none was given)."""
        return self.config.webhook_secret

    # -- events --------------------------------------------------------------------------------

    def emit(self, event_type: str, data: Mapping[str, Any]) -> str | None:
        """Queue the event ``event_type`` about ``data`` (a user as the API renders it).

        Returns its message id (also for a dropped event), or None when no URL is set or the
        sender is closed. Never blocks on a delivery. Callers emit under the emulator's lock,
        so events queue in the order of the changes.
        """
        config = self.config
        url = config.webhook_url
        if url is None:
            return None
        secret = ensure_webhook_secret(config)
        assert secret is not None
        envelope = {
            "data": data,
            "object": "event",
            "type": event_type,
            "timestamp": int(time.time() * 1000),
            "instance_id": config.instance_id,
            "event_attributes": _EVENT_ATTRIBUTES,
        }
        body = json_bytes(envelope)
        msg_id = new_message_id()
        with self._cond:
            if self._closed:
                return None
            self._stats["emitted"] += 1
            # three draws for every event, so one knob's value does not shift the others'
            drop, duplicate, hold = (self._rng.random() for _ in range(3))
            if drop < config.webhook_drop:
                self._stats["dropped"] += 1
                return msg_id
            copies = [_Delivery(msg_id, body, url, secret)]
            if duplicate < config.webhook_duplicate:
                self._stats["duplicated"] += 1
                copies.append(_Delivery(msg_id, body, url, secret))
            due = time.monotonic() + config.webhook_delay_ms / 1000
            if config.webhook_reorder and not self._held and hold < 0.5:
                self._held = copies
                self._held_until = due + REORDER_HOLD_S
            else:
                self._push(due, copies)
                self._release_held(due)  # behind this event: it overtakes the held one
            self._start()
            self._cond.notify_all()
        return msg_id

    def _push(self, due: float, deliveries: list[_Delivery]) -> None:
        for delivery in deliveries:
            heapq.heappush(self._queue, (due, next(self._order), delivery))

    def _release_held(self, due: float) -> None:
        if self._held:
            self._push(due, self._held)
            self._held = []

    # -- waiting, counters, stopping -----------------------------------------------------------

    def _pending(self) -> int:
        return len(self._queue) + len(self._held) + self._in_flight

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued delivery was made or given up (retries included).

        Returns False if ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def stats(self) -> dict[str, int]:
        """Counters since start (or the last reset).

        ``emitted`` events, ``delivered`` (attempts answered 2xx; a duplicate counts twice),
        ``failed_attempts`` (non-2xx, timeouts, connection errors), ``retries`` (attempts
        scheduled after a failure), ``given_up`` (deliveries whose last attempt failed),
        ``dropped`` and ``duplicated`` (events), and ``pending`` (deliveries queued, held
        back or in flight; not reset).
        """
        with self._cond:
            return {**self._stats, "pending": self._pending()}

    def reset_stats(self) -> None:
        """Zero the counters (pending deliveries stay pending)."""
        with self._cond:
            self._stats = _empty_stats()

    def close(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the sender: pending deliveries are abandoned, one in flight is cut off.

        Later events are not sent. Idempotent; waits up to ``timeout`` for the thread.
        """
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._held = []
            self._interrupt()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _interrupt(self) -> None:
        """Shut down the socket of the attempt in flight, so its read returns at once."""
        if self._stream is not None:
            sock = self._stream.get_extra_info("socket")
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    # -- the sender thread ---------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=_THREAD_NAME, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # No keep-alive: every attempt opens its own connection, whose socket _trace records
        # so that close() can cut it off. No proxies from the environment: Svix has none.
        with httpx.Client(
            timeout=TIMEOUT_S,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,
        ) as client:
            while (delivery := self._next()) is not None:
                self._settle(delivery, self._attempt(client, delivery))

    def _next(self) -> _Delivery | None:
        """The next delivery once it is due (None once closed); counted as in flight."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._held and now >= self._held_until:
                    self._release_held(now)
                if self._queue and self._queue[0][0] <= now:
                    self._in_flight += 1
                    return heapq.heappop(self._queue)[2]
                wakes = [self._queue[0][0]] if self._queue else []
                if self._held:
                    wakes.append(self._held_until)
                self._cond.wait(min(wakes) - now if wakes else None)
            return None

    def _attempt(self, client: httpx.Client, delivery: _Delivery) -> bool:
        """POST one delivery, signed now; True if the receiver answered 2xx."""
        headers = sign(delivery.secret, delivery.msg_id, int(time.time()), delivery.body)
        headers["Content-Type"] = "application/json"
        try:
            response = client.post(
                delivery.url,
                content=delivery.body,
                headers=headers,
                extensions={"trace": self._trace},
            )
        except Exception:  # whatever went wrong, it is a failed attempt; the sender goes on
            return False
        finally:
            with self._cond:
                self._stream = None
        return response.is_success

    def _trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's ``trace`` extension: remember the stream each attempt connects."""
        if event.endswith("connect_tcp.complete"):
            with self._cond:
                self._stream = info.get("return_value")
                if self._closed:
                    self._interrupt()

    def _settle(self, delivery: _Delivery, ok: bool) -> None:
        """Count an attempt; after a failure, schedule the next on Svix's schedule or give up."""
        with self._cond:
            self._in_flight -= 1
            delivery.attempts += 1
            if ok:
                self._stats["delivered"] += 1
            else:
                self._stats["failed_attempts"] += 1
                config = self.config
                if config.webhook_retry and delivery.attempts < len(RETRY_SCHEDULE_S):
                    if not self._closed:  # closing abandons what is pending
                        self._stats["retries"] += 1
                        wait = RETRY_SCHEDULE_S[delivery.attempts] * config.webhook_retry_scale
                        self._push(time.monotonic() + wait, [delivery])
                else:
                    self._stats["given_up"] += 1
            self._cond.notify_all()

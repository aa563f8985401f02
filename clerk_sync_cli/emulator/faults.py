"""Injected faults on ``/v1`` requests and the request counters that report them.

Applied in this order: ``latency_ms`` (+ ``deep_offset_ms_per_1000`` x offset / 1000, before
auth), ``rate_limit`` (a sliding 10 s window), ``throttle_every`` (429), ``fail_every`` (500);
``truncate_every`` cuts successful list responses short after they are built.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from clerk_sync_cli.emulator.config import RATE_LIMIT_WINDOW_S, EmulatorConfig
from clerk_sync_cli.emulator.errors import ApiError, too_many


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


class Faults:
    """The fault knobs of ``config`` at work, and the counters; thread-safe through ``lock``."""

    def __init__(self, config: EmulatorConfig, lock: threading.RLock) -> None:
        self.config = config
        self._lock = lock
        self._window: deque[float] = deque()
        self._fault_seq = 0
        self._list_seq = 0
        self._stats = _empty_stats()

    # -- counters ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A copy of the counters (see :meth:`Emulator.stats`)."""
        with self._lock:
            out = dict(self._stats)
            out["by_endpoint"] = dict(self._stats["by_endpoint"])
            out["by_status"] = dict(self._stats["by_status"])
            return out

    def reset(self) -> None:
        """Zero the counters and the fail/throttle/truncate cadence (not the rate-limit window)."""
        with self._lock:
            self._stats = _empty_stats()
            self._fault_seq = 0
            self._list_seq = 0

    def count_connection(self) -> None:
        with self._lock:
            self._stats["connections"] += 1

    def count_served(self, users: int) -> None:
        with self._lock:
            self._stats["users_served"] += users

    def count_request(self, label: str, is_api: bool) -> None:
        with self._lock:
            st = self._stats
            st["requests_total"] += 1
            st["api_requests" if is_api else "control_requests"] += 1
            st["by_endpoint"][label] = st["by_endpoint"].get(label, 0) + 1

    def count_response(
        self, status: int, label: str, headers: dict[str, str], payload: bytes
    ) -> tuple[dict[str, str], bytes]:
        """Count an answer; every ``truncate_every``-th list answer comes back cut in half,
        its headers announcing the full ``Content-Length`` and closing the connection."""
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
                    headers = {
                        **headers,
                        "Content-Length": str(len(payload)),
                        "Connection": "close",
                    }
                    payload = payload[: len(payload) // 2]
        return headers, payload

    # -- faults --------------------------------------------------------------------------------

    def delay(self, params: Mapping[str, list[str]]) -> None:
        delay_ms = self.config.latency_ms
        per_1000 = self.config.deep_offset_ms_per_1000
        if per_1000:
            with contextlib.suppress(KeyError, ValueError, IndexError):  # no or bad offset
                delay_ms += per_1000 * max(0, int(params["offset"][0])) / 1000
        if delay_ms > 0:
            time.sleep(delay_ms / 1000)

    def admit(self) -> None:
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
                    raise too_many(wait)
                window.append(now)
            self._fault_seq += 1
            n = self._fault_seq
            every = self.config.throttle_every
            if every and n % every == 0:
                raise too_many(self.config.retry_after)
            every = self.config.fail_every
            if every and n % every == 0:
                raise ApiError(
                    500,
                    "internal_clerk_error",
                    "Oops, an unexpected error occurred",
                    "There was an internal error on our servers. We've been notified and are "
                    "working on fixing it.",
                )

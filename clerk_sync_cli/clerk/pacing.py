"""Pacing: how fast a run may ask Clerk. One token bucket (:class:`RateLimiter`) is shared by
every request of a run, retries and concurrent walkers included; its pace is inferred from the
key (:func:`default_max_rps`) unless given, and a 429's ``Retry-After``
(:func:`retry_after_seconds`) holds every request at once (:meth:`RateLimiter.cool_down`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from pydantic import SecretStr

RATE_LIMITS = {"sk_live_": 1000, "sk_test_": 100}  # requests per 10 s, per instance


def default_max_rps(secret_key: SecretStr) -> float:
    """A pace safely under the instance's limit, inferred from the key's prefix."""
    value = secret_key.get_secret_value()
    per_10s = next((n for p, n in RATE_LIMITS.items() if value.startswith(p)), 100)
    return per_10s / 10 * 0.9


class RateLimiter:
    """A token bucket shared by every request of a run, retries included.

    ``cool_down`` stops everyone until a server-given time, so one 429 pauses all workers.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._sleep = sleep
        self.capacity = max(1.0, rate)  # at most one second's worth in a burst
        self._tokens = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._resume_at = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                wait = max(self._resume_at - now, 0.0)
                if wait == 0.0 and self._tokens >= 1.0 - 1e-9:  # tolerate float rounding
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return
                if wait == 0.0:
                    wait = (1.0 - self._tokens) / self.rate
            self._sleep(wait)

    def cool_down(self, seconds: float) -> None:
        with self._lock:
            self._resume_at = max(self._resume_at, self._clock() + seconds)
            self._tokens = 0.0


def retry_after_seconds(header: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: an integer, or an HTTP date."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))

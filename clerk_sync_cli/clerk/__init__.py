"""Clerk's Backend API, by concern:

- :mod:`.client` — :class:`ClerkClient`: auth, requests, what an answer means, the retry
  policy, bounded bodies (:class:`ByteBudget`). The only module that speaks HTTP.
- :mod:`.pacing` — :class:`RateLimiter`, the one pace every request of a run shares.
- :mod:`.walking` — walking the user list: windows by cursor with an offset fallback, several
  at once, by ``created_at`` filters alone, newest change first.

:class:`Window` lives in :mod:`clerk_sync_cli.windows` (the store checkpoints it too) and is
re-exported here with the names the rest of the package imports from ``clerk_sync_cli.clerk``.
"""

from clerk_sync_cli.clerk.client import (
    MAX_BODIES_BYTES,
    MAX_BODY_BYTES,
    PARSERS,
    ByteBudget,
    ClerkClient,
    RetryPolicy,
)
from clerk_sync_cli.clerk.pacing import (
    RATE_LIMITS,
    RateLimiter,
    default_max_rps,
    retry_after_seconds,
)
from clerk_sync_cli.clerk.walking import (
    PAGE_LIMIT,
    Page,
    RecentPage,
    at_ms,
    both,
    created_at_range,
    sweep,
    walk,
    walk_concurrently,
    walk_recent,
)
from clerk_sync_cli.windows import Window, split_windows

__all__ = [
    "MAX_BODIES_BYTES",
    "MAX_BODY_BYTES",
    "PAGE_LIMIT",
    "PARSERS",
    "RATE_LIMITS",
    "ByteBudget",
    "ClerkClient",
    "Page",
    "RateLimiter",
    "RecentPage",
    "RetryPolicy",
    "Window",
    "at_ms",
    "both",
    "created_at_range",
    "default_max_rps",
    "retry_after_seconds",
    "split_windows",
    "sweep",
    "walk",
    "walk_concurrently",
    "walk_recent",
]

"""What defines an emulated Clerk instance: :class:`EmulatorConfig` and its runtime knobs.

Light on purpose (the stdlib, and :mod:`clerk_sync_cli.signatures`, itself stdlib-only):
``clerk_sync_cli.cli`` imports it at start-up for every command, the heavy modules only when
the emulator runs.
"""

from __future__ import annotations

import base64
import math
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from clerk_sync_cli.signatures import SECRET_PREFIX, secret_key

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

#: The settings :func:`configure` may change at runtime (faults and undocumented behaviours).
KNOBS: tuple[str, ...] = (
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
    "webhook_url",
    "webhook_secret",
    "webhook_drop",
    "webhook_duplicate",
    "webhook_reorder",
    "webhook_delay_ms",
    "webhook_retry",
    "webhook_retry_scale",
)
#: Knobs that are true or false (a JSON body must say so, not 1 or "yes").
_BOOL_KNOBS = frozenset({"unstable_ties", "webhook_reorder", "webhook_retry"})
#: Numeric knobs kept as floats (the others are integers).
_FLOAT_KNOBS = frozenset(
    {"latency_ms", "deep_offset_ms_per_1000", "webhook_delay_ms", "webhook_retry_scale"}
)
#: Numeric knobs that are probabilities, 0..1.
_PROBABILITY_KNOBS = frozenset({"webhook_drop", "webhook_duplicate"})


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


def check_webhook_url(value: object) -> str | None:
    """``None`` (webhooks off) or an absolute http(s) URL with a host, stripped of blanks.

    Any host is accepted (the user's choice); the message never quotes the value, which may
    carry a token.
    """
    if value is None:
        return None
    problem = "webhook_url must be an absolute http:// or https:// URL with a host, or null"
    if not isinstance(value, str):
        raise ValueError(problem)
    url = value.strip()
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(problem)
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number in 0..65535 raises here
    except ValueError:
        raise ValueError(problem) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(problem)
    return url


def check_webhook_secret(value: object) -> str | None:
    """``None`` (one is generated when a URL is set) or a Svix signing secret, ``whsec_<base64>``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("webhook_secret must be a string (whsec_ followed by base64) or null")
    secret_key(value)  # SecretError (a ValueError) quoting none of it
    return value.strip()


def new_webhook_secret() -> str:
    """A random signing secret, as Svix generates them (24 random bytes, base64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def ensure_webhook_secret(config: EmulatorConfig) -> str | None:
    """The signing secret, generated first if a webhook URL is set and none was given."""
    if config.webhook_url is not None and config.webhook_secret is None:
        config.webhook_secret = new_webhook_secret()
    return config.webhook_secret


def check_knob(name: str, value: object) -> Any:
    """``value`` validated (and normalised) for knob ``name``; ValueError if it is not valid."""
    if name == "rate_limit":
        return resolve_rate_limit(value)
    if name == "webhook_url":
        return check_webhook_url(value)
    if name == "webhook_secret":
        return check_webhook_secret(value)
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
    if name in _BOOL_KNOBS:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0")
    if name in _PROBABILITY_KNOBS:
        if value > 1:
            raise ValueError(f"{name} must be a probability, 0..1")
        return float(value)
    if name in _FLOAT_KNOBS:
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
    #: Clerk leaves these open; see "Undocumented behaviours" in the package docstring.
    cursor_ties: str = "id"
    deleted_cursor: str = "continue"
    unstable_ties: bool = False
    #: Signed webhooks for the emulator's own changes; see "Webhooks" in the package docstring.
    webhook_url: str | None = None  # None: no webhooks
    #: None: a random one, generated when a URL is set. Never in the repr.
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_drop: float = 0.0  # probability an event is never delivered
    webhook_duplicate: float = 0.0  # probability an event is delivered twice
    webhook_reorder: bool = False  # hold events back so that later ones arrive first
    webhook_delay_ms: float = 0.0  # before each event's first attempt
    webhook_retry: bool = True  # retry failed attempts on Svix's schedule
    webhook_retry_scale: float = 1 / 1000  # that schedule compressed (1: real time)
    environment_type: str | None = None  # None: from the key prefix (sk_live_ -> production)
    instance_id: str = "ins_emulator"
    #: Upper bound of the serialized-user cache (base users), in bytes.
    cache_bytes: int = field(default=256 * 1024 * 1024, repr=False)

    def __post_init__(self) -> None:
        self.rate_limit = resolve_rate_limit(self.rate_limit)
        self.cursor_ties = check_knob("cursor_ties", self.cursor_ties)
        self.deleted_cursor = check_knob("deleted_cursor", self.deleted_cursor)
        self.unstable_ties = check_knob("unstable_ties", self.unstable_ties)
        for name in KNOBS:
            if name.startswith("webhook_"):
                setattr(self, name, check_knob(name, getattr(self, name)))
        ensure_webhook_secret(self)
        if not self.secret_key:
            raise ValueError("secret_key must not be empty")
        if self.users < 0:
            raise ValueError("users must be >= 0")
        if self.environment_type not in (None, "development", "production"):
            raise ValueError("environment_type must be 'development', 'production' or None")


def knob_values(config: EmulatorConfig) -> dict[str, Any]:
    """The current value of every knob."""
    return {name: getattr(config, name) for name in KNOBS}


def configure(config: EmulatorConfig, changes: dict[str, Any]) -> dict[str, Any]:
    """Validate every change first, then apply them all; returns every knob's value.

    A webhook URL set without a secret (or a secret set to null) gets a generated one.
    """
    unknown = sorted(set(changes) - set(KNOBS))
    if unknown:
        raise ValueError(f"unknown or read-only setting(s): {', '.join(unknown)}")
    checked = {name: check_knob(name, value) for name, value in changes.items()}
    for name, value in checked.items():
        setattr(config, name, value)
    ensure_webhook_secret(config)
    return knob_values(config)

"""Settings: read once from options, the environment and ``./.env``; validated without echoing.

Precedence is the usual one: a command-line option, then the environment, then ``.env`` in the
working directory. Secrets are held as :class:`~pydantic.SecretStr` and every message about them
names the variable, never the value.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg.conninfo
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from clerk_sync_cli.errors import ConfigError
from clerk_sync_cli.scrub import register
from clerk_sync_cli.signatures import SECRET_PREFIX, SecretError, parse_secrets
from clerk_sync_cli.tables import Tables

DEFAULT_CLERK_API_URL = "https://api.clerk.com/v1"
ENV_EXAMPLE_HINT = "Set it in the environment or in .env (see .env.example)."


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
    )

    clerk_secret_key: SecretStr | None = None
    database_url: SecretStr | None = None
    clerk_api_url: str = DEFAULT_CLERK_API_URL
    #: Let CLERK_API_URL be plain http:// to a host other than this machine (the key then
    #: travels unencrypted): only for a trusted network, such as an emulator in CI.
    clerk_sync_allow_insecure_http: bool = False
    #: How hard to retry Clerk: attempts per request, and seconds per request in all.
    clerk_sync_max_attempts: int = Field(default=8, ge=1, le=100)
    clerk_sync_retry_seconds: float = Field(default=300.0, gt=0, le=3600)
    #: Longest a statement may run, and wait for a row lock, before the page is retried.
    clerk_sync_statement_timeout_ms: int = Field(default=60_000, ge=100, le=3_600_000)
    clerk_sync_lock_timeout_ms: int = Field(default=10_000, ge=10, le=600_000)
    #: Where the app's tables are, if not public.users / public.user_monitoring_settings.
    clerk_sync_schema: str = Field(default="public", min_length=1, max_length=63)
    clerk_sync_users_table: str = Field(default="users", min_length=1, max_length=63)
    clerk_sync_settings_table: str = Field(
        default="user_monitoring_settings", min_length=1, max_length=63
    )
    #: Pinged after each run (healthchecks.io style); a secret, since its path is the token.
    clerk_sync_ping_url: SecretStr | None = None
    #: ``serve``: Svix's signing secret(s) of the Clerk webhook endpoint, ``whsec_…``; several
    #: separated by spaces during a rotation.
    clerk_webhook_signing_secret: SecretStr | None = None
    #: ``serve``'s sign-in endpoints: the instance's PEM public key (verification with no
    #: network call; else the JWKS is fetched), and the origins allowed to call them.
    clerk_jwt_key: SecretStr | None = None
    clerk_authorized_parties: str | None = None
    #: ``serve``: database connections shared by its handlers (webhooks use at most half).
    clerk_sync_serve_connections: int = Field(default=8, ge=1, le=200)

    def _pieces(self) -> list[str]:
        """Secrets of which no piece may show: the key, the password, the ping URL's token."""
        found = [self.clerk_secret_key.get_secret_value()] if self.clerk_secret_key else []
        if self.database_url is not None:
            try:
                password = psycopg.conninfo.conninfo_to_dict(self.database_url.get_secret_value())
            except psycopg.ProgrammingError:
                password = {}
            if password.get("password"):
                found.append(str(password["password"]))
            found += url_passwords(self.database_url.get_secret_value())
        if self.clerk_sync_ping_url is not None:
            parts = urlsplit(self.clerk_sync_ping_url.get_secret_value())
            found += [parts.path.strip("/"), parts.query, parts.password or ""]
        if self.clerk_webhook_signing_secret is not None:
            for secret in self.clerk_webhook_signing_secret.get_secret_value().split():
                found += [secret, secret.removeprefix(SECRET_PREFIX)]
        return [s for s in found if s]

    def _wholes(self) -> list[str]:
        """Secrets whose other parts (a host, a port) may be printed."""
        found = [u.get_secret_value() for u in (self.database_url, self.clerk_sync_ping_url) if u]
        return [s for s in found if s]

    def register_secrets(self) -> None:
        register(*self._pieces())
        register(*self._wholes(), pieces=False)

    def secret_key(self) -> SecretStr:
        """The Clerk secret key, checked for shape; ConfigError naming the variable otherwise."""
        key = self.clerk_secret_key
        if key is None or not key.get_secret_value().strip():
            raise ConfigError("CLERK_SECRET_KEY is not set.", ENV_EXAMPLE_HINT)
        value = key.get_secret_value().strip()
        if not value.startswith("sk_") or any(c.isspace() for c in value):
            raise ConfigError(
                "CLERK_SECRET_KEY is malformed: a Clerk secret key starts with sk_test_ or sk_live_.",
                "Copy it from the Clerk dashboard → Configure → API keys.",
            )
        return SecretStr(value)

    def dsn(self) -> str:
        """The database connection string, checked for shape."""
        url = self.database_url
        if url is None or not url.get_secret_value().strip():
            raise ConfigError("DATABASE_URL is not set.", ENV_EXAMPLE_HINT)
        value = url.get_secret_value().strip()
        if unencoded_userinfo(value):
            raise ConfigError(
                "DATABASE_URL is malformed: its user or password holds a character that must be "
                "percent-encoded in a URL (one of / ? # @ [ ] or a % not followed by two hex "
                "digits).",
                "Percent-encode the password (e.g. python3 -c 'import urllib.parse, getpass; "
                'print(urllib.parse.quote(getpass.getpass(), safe=""))\'), or use the '
                "key=value form: host=… user=… password=… dbname=….",
            )
        try:
            psycopg.conninfo.conninfo_to_dict(value)
        except psycopg.ProgrammingError:
            raise ConfigError(
                "DATABASE_URL is malformed: expected postgresql://user:password@host:5432/dbname.",
                "In Supabase: Project Settings → Database → Connection string (session pooler).",
            ) from None
        return value

    def webhook_keys(self) -> tuple[bytes, ...]:
        """The HMAC keys of CLERK_WEBHOOK_SIGNING_SECRET; ConfigError naming it otherwise."""
        value = self.clerk_webhook_signing_secret
        if value is None or not value.get_secret_value().strip():
            raise ConfigError(
                "CLERK_WEBHOOK_SIGNING_SECRET is not set: serve verifies every webhook with it.",
                "Clerk dashboard → Configure → Webhooks → your endpoint → Signing Secret "
                "(whsec_…). Set it in the environment or in .env.",
            )
        try:
            return parse_secrets(value.get_secret_value())
        except SecretError as exc:
            raise ConfigError(
                f"CLERK_WEBHOOK_SIGNING_SECRET is malformed: {exc}.",
                "Copy it whole from the endpoint's page in Clerk's dashboard (whsec_…); "
                "separate several with spaces.",
            ) from None

    def authorized_parties(self) -> frozenset[str]:
        """CLERK_AUTHORIZED_PARTIES, required for the sign-in endpoints."""
        value = self.clerk_authorized_parties
        if value is None or not value.strip():
            raise ConfigError(
                "CLERK_AUTHORIZED_PARTIES is not set: the sign-in endpoints accept session "
                "tokens only from the app's own origins.",
                "Set it to the frontend's origins, comma-separated (e.g. "
                "https://app.example.com,http://localhost:3000), or run serve --no-signin.",
            )
        return parse_parties(value)

    def tables(self) -> Tables:
        return Tables(
            self.clerk_sync_schema, self.clerk_sync_users_table, self.clerk_sync_settings_table
        )

    def api_url(self) -> str:
        value = self.clerk_api_url.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                "CLERK_API_URL is malformed: expected a URL such as https://api.clerk.com/v1."
            )
        host = parts.hostname or ""
        if (
            parts.scheme == "http"
            and not is_loopback(host)
            and not self.clerk_sync_allow_insecure_http
        ):
            raise ConfigError(
                f"CLERK_API_URL is plain http:// to {host}: the secret key would travel "
                "unencrypted; refusing.",
                "Use https://, or set CLERK_SYNC_ALLOW_INSECURE_HTTP=1 if that network is "
                "trusted (plain http:// to localhost is always allowed).",
            )
        return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine: localhost, 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_URL_SCHEMES = ("postgres://", "postgresql://")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _userinfo(dsn: str) -> str | None:
    """A URL's userinfo as written (up to its last ``@``), or None for a key=value string or
    a URL without one. A query value holding an ``@`` makes it look longer: it is then
    refused too, which is safe."""
    if not dsn.lower().startswith(_URL_SCHEMES):
        return None
    rest = dsn.split("://", 1)[1]
    return rest.rsplit("@", 1)[0] if "@" in rest else None


def unencoded_userinfo(dsn: str) -> bool:
    """Whether a URL's user or password holds a character that must be percent-encoded there:
    libpq would then split the URL elsewhere and quote pieces of the password in its errors."""
    userinfo = _userinfo(dsn)
    if userinfo is None:
        return False
    return any(c in userinfo for c in "/?#@[]") or bool(_PERCENT.search(userinfo))


def url_passwords(dsn: str) -> list[str]:
    """The password of a URL as written and as decoded, for the scrubber."""
    userinfo = _userinfo(dsn)
    if userinfo is None or ":" not in userinfo:
        return []
    written = userinfo.split(":", 1)[1]
    return [written, unquote(written)]


def load_settings(**overrides: Any) -> Settings:
    """Build settings; ``overrides`` are command-line values (``None`` means not given)."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        names = ", ".join(str(err["loc"][0]).upper() for err in exc.errors() if err["loc"])
        raise ConfigError(f"Invalid setting: {names or 'unknown'}.", ENV_EXAMPLE_HINT) from None
    settings.register_secrets()
    return settings


def key_kind(key: SecretStr | str) -> str:
    """What kind of key this is, safe to print: ``sk_live_…``, ``sk_test_…`` or ``sk_…``."""
    value = key.get_secret_value() if isinstance(key, SecretStr) else key
    for prefix in ("sk_live_", "sk_test_"):
        if value.startswith(prefix):
            return prefix + "…"
    return "sk_…"


@dataclass(frozen=True)
class DatabaseTarget:
    """Where a connection string points, without its password: safe to print."""

    host: str
    port: str
    dbname: str
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


def describe_dsn(dsn: str) -> DatabaseTarget:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
    return DatabaseTarget(
        host=host,
        port=str(params.get("port") or os.environ.get("PGPORT") or "5432"),
        dbname=str(params.get("dbname") or params.get("user") or "postgres"),
        user=str(params.get("user") or os.environ.get("PGUSER") or "postgres"),
    )


def env_file_warning(path: Path = Path(".env")) -> str | None:
    """A warning when ``.env`` holds secrets but is readable (or writable) by others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return f"{path} is readable by other users of this machine; run: chmod 600 {path}"
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by other users of this machine; run: chmod 600 {path}"
    return None


#: The variables ``doctor`` reports, in the order it shows them.
REPORTED_SETTINGS = (
    "CLERK_SECRET_KEY",
    "DATABASE_URL",
    "CLERK_API_URL",
    "CLERK_SYNC_PING_URL",
    "CLERK_SYNC_SCHEMA",
    "CLERK_SYNC_USERS_TABLE",
    "CLERK_SYNC_SETTINGS_TABLE",
)


def setting_sources(
    given: dict[str, str | None], path: Path = Path(".env")
) -> list[tuple[str, str]]:
    """Where each setting comes from (option, environment, .env, or not set): never a value.
    ``given``: the command-line options, by variable name."""
    from dotenv import dotenv_values  # pydantic-settings' own .env reader

    in_file = dotenv_values(path) if path.is_file() else {}
    sources = []
    for name in REPORTED_SETTINGS:
        if given.get(name) and given[name] != os.environ.get(name):
            source = "option"  # (an option's envvar fills it from the environment too)
        elif os.environ.get(name):
            source = "environment"
        elif in_file.get(name):
            source = ".env"
        else:
            source = "not set"
        sources.append((name, source))
    return sources


def connection_kind(host: str, port: str) -> tuple[str, str]:
    """What kind of Postgres endpoint this is, and what that means for clerk-sync."""
    if port == "6543":
        return (
            "transaction pooler (port 6543)",
            "works (no prepared statements, one transaction per unit); if a run ever hangs "
            "here, use the session pooler on port 5432",
        )
    if host.endswith(".pooler.supabase.com"):
        return "Supabase session pooler", "recommended: a session per run, IPv4"
    if host.startswith("db.") and host.endswith(".supabase.co"):
        return "Supabase direct connection", "fine where IPv6 reaches it"
    if host.startswith("/") or host in ("localhost", "127.0.0.1", "::1"):
        return "local server", "direct"
    return "direct connection", "fine"


def parse_parties(value: str) -> frozenset[str]:
    """``CLERK_AUTHORIZED_PARTIES``: comma-separated origins (``https://app.example.com``)."""
    parties = set()
    for part in value.split(","):
        origin = part.strip().rstrip("/")
        if not origin:
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ConfigError(
                "CLERK_AUTHORIZED_PARTIES holds something that is not an origin: expected "
                "scheme://host[:port], comma-separated (e.g. https://app.example.com)."
            )
        parties.add(origin)
    if not parties:
        raise ConfigError("CLERK_AUTHORIZED_PARTIES is empty.")
    return frozenset(parties)

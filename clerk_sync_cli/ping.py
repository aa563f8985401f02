"""Dead-man's-switch pings (healthchecks.io style): after a run, GET the URL on success and the
URL + ``/fail`` on failure. A ping never changes the run's outcome, and the URL — which often
carries a token in its path — is never printed: messages name its host only.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from clerk_sync_cli import __version__

TIMEOUT_S = 10.0


def ping_target(url: str, *, ok: bool) -> str:
    """The URL to hit: ``url`` on success, ``url/fail`` on failure (query string kept)."""
    parts = urlsplit(url)
    if ok:
        return url
    return parts._replace(path=parts.path.rstrip("/") + "/fail").geturl()


def url_host(url: str) -> str:
    """What may be printed about a ping URL: its host, never its path, query or password."""
    try:
        return urlsplit(url).hostname or "the ping URL"
    except ValueError:
        return "the ping URL"


def check_ping_url(url: str) -> str | None:
    """Why ``url`` cannot be pinged, or None."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises on a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        return "expected an http(s) URL such as https://hc-ping.com/<uuid>"
    return None


def ping(url: str, *, ok: bool, timeout: float = TIMEOUT_S) -> str | None:
    """Hit the ping URL once. Returns a warning to show (naming the host only), or None."""
    host = url_host(url)
    problem = check_ping_url(url)
    if problem:
        return f"not pinging {host}: {problem}"
    try:
        response = httpx.get(
            ping_target(url, ok=ok),
            headers={"User-Agent": f"clerk-sync/{__version__}"},
            timeout=timeout,
            follow_redirects=True,
        )
    except httpx.TimeoutException:
        return f"could not ping {host}: no answer within {timeout:.0f}s"
    except httpx.HTTPError as exc:
        return f"could not ping {host}: {type(exc).__name__}"
    if response.status_code >= 400:
        return f"ping to {host} answered HTTP {response.status_code}"
    return None

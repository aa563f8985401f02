"""The one scrubber every message passes through before it reaches stderr, stdout, a ``--json``
document, a log line or the run history: secrets never leave the process, whole or in part.

The secrets are registered once, when settings are loaded (:func:`register`): the Clerk key,
the database password and URL, the ping URL. Each is removed where it appears whole, and a
long one (a key, a token) also where any piece of it of :data:`FRAGMENT` characters or more
appears — a message cut short, or a server echoing a header back, can hold only part of it.
Whatever looks like a Clerk secret key, a bearer token or a URL's password is masked too, known
or not.
"""

from __future__ import annotations

import re
import threading
from typing import IO, Any, cast

MASK = "***"
FRAGMENT = 8  # a piece of a long secret this long or longer is a leak
LONG = 16  # secrets at least this long are scrubbed in pieces too

_PATTERNS = (
    # (not the emulator's well-known default key, sk_test_emulator: it is no secret)
    (re.compile(r"\b(sk_(?:live|test))_(?!emulator\b)[A-Za-z0-9]{4,}"), r"\1_…"),
    (re.compile(r"(?i)\b(bearer)\s+[^\s'\"<>]+"), r"\1 " + MASK),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]{4,}"), "whsec_…"),  # a webhook signing secret
    (re.compile(r"(?i)\b(postgres(?:ql)?://[^:/@\s]*):[^@\s]*@"), r"\1:" + MASK + "@"),
)

_KIND = re.compile(r"^sk_(?:live|test)_")
_lock = threading.Lock()
_secrets: dict[str, bool] = {}  # secret -> scrub its pieces too


def register(*secrets: str | None, pieces: bool = True) -> None:
    """Remember secrets to scrub from now on (empty and very short values are ignored: they
    would mask ordinary words). ``pieces=False``: only where it appears whole (a connection
    string, whose host may be printed while its password may not)."""
    with _lock:
        for secret in secrets:
            if secret and len(secret) >= 4:
                _secrets[secret] = _secrets.get(secret, False) or pieces


def scrub(text: str) -> str:
    for secret, pieces in sorted(_secrets.items(), key=lambda item: -len(item[0])):
        if secret in text:
            text = text.replace(secret, MASK)
        if pieces and len(_KIND.sub("", secret, count=1)) >= LONG:
            text = _scrub_pieces(text, secret)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _scrub_pieces(text: str, secret: str) -> str:
    """Mask every run of ``text`` that is a piece of ``secret`` of FRAGMENT characters or
    more. Cheap when there is none: one look per FRAGMENT-long piece. A Clerk key's kind
    (``sk_live_``) is public: only what follows it counts."""
    secret = _KIND.sub("", secret, count=1)
    pieces = {secret[i : i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)}
    if not any(piece in text for piece in pieces):
        return text
    for size in range(len(secret), FRAGMENT - 1, -1):
        for start in range(len(secret) - size + 1):
            piece = secret[start : start + size]
            if piece in text:
                text = text.replace(piece, MASK)
    return text


def scrub_value(value: Any) -> Any:
    """Scrub every string inside a JSON-like value."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v) for v in value]
    return value


class ScrubbedStream:
    """A text stream that scrubs what is written to it (rich writes each print whole)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @classmethod
    def of(cls, stream: IO[str]) -> IO[str]:
        return cast(IO[str], cls(stream))

    def write(self, text: str) -> int:
        return int(self._stream.write(scrub(text)))

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

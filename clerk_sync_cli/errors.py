"""Exit codes and the one exception family the library raises.

Library code raises a :class:`ClerkSyncError` subclass where a failure is understood; the CLI
turns it into its message and :attr:`ClerkSyncError.exit_code` in exactly one place, and the
server (``clerk-sync serve``) into :attr:`ClerkSyncError.http_status`, in one place too.
Messages are written for the person at the terminal: what happened, then what to do.
They never contain a secret: every message is scrubbed when the error is made
(:mod:`clerk_sync_cli.scrub`).
"""

from __future__ import annotations

from enum import IntEnum

from clerk_sync_cli.scrub import scrub


class ExitCode(IntEnum):
    OK = 0
    DRIFT = 1  # drift found with --exit-code, `user` found the id nowhere, or `sync --no-full`
    #            found that a full reconcile is needed
    CONFIG = 2  # usage or configuration (missing setting, rejected key, missing table)
    REFUSED = 3  # a safety guard refused to act
    PARTIAL = 4  # some users could not be synced; they are listed
    UNAVAILABLE = 5  # Clerk or the database unavailable after retries
    INTERNAL = 70  # a bug: anything the CLI could not turn into one of the above (EX_SOFTWARE)


class ClerkSyncError(Exception):
    """An expected failure, with a message fit to print and an exit code."""

    exit_code: ExitCode = ExitCode.CONFIG
    #: What ``serve`` answers: 4xx only for what the sender did, 503 for what a retry can fix.
    http_status: int = 500

    def __init__(self, message: str, hint: str | None = None) -> None:
        message = scrub(message)  # from here it may reach any output, and the run history
        super().__init__(message)
        self.message = message
        self.hint = None if hint is None else scrub(hint)


class ConfigError(ClerkSyncError):
    exit_code = ExitCode.CONFIG


class SchemaError(ClerkSyncError):
    """The database lacks something the sync relies on (a table, a column, a constraint)."""

    exit_code = ExitCode.CONFIG
    http_status = 503


class ClerkAuthError(ClerkSyncError):
    exit_code = ExitCode.CONFIG


class ClerkRequestError(ClerkSyncError):
    """Clerk rejected a request for a reason retrying cannot fix (400, 404 on a list, 422)."""

    exit_code = ExitCode.CONFIG


class ClerkUnavailableError(ClerkSyncError):
    exit_code = ExitCode.UNAVAILABLE
    http_status = 503
    #: Clerk's Retry-After, when it rate-limited (seconds)
    retry_after: float | None = None


class ClerkDataError(ClerkSyncError):
    """Clerk answered 200 with a body of the wrong shape: fail closed."""

    exit_code = ExitCode.UNAVAILABLE


class UnconfirmedError(ClerkSyncError):
    """Clerk's answer cannot confirm that a user is gone: a 404 that is not Clerk's own, or a
    lookup path that fails its check against a user Clerk lists. Nothing is deactivated on it."""

    exit_code = ExitCode.PARTIAL


class DatabaseUnavailableError(ClerkSyncError):
    exit_code = ExitCode.UNAVAILABLE
    http_status = 503


class BatchDataError(ClerkSyncError):
    """The database refused a batch's data (a constraint or a value); the batch is undone."""

    exit_code = ExitCode.PARTIAL


class RefusedError(ClerkSyncError):
    """A safety check refused to start or to go on."""

    exit_code = ExitCode.REFUSED
    http_status = 409


class LockHeldError(RefusedError):
    """Another run holds the lock (or took it over from this one)."""


class InstanceMismatchError(RefusedError):
    """The secret key belongs to another Clerk instance than the one that filled the table."""


class InvalidEventError(ClerkSyncError):
    """A webhook whose signature is valid but whose body cannot be processed (answered 400,
    so the sender sees why; Svix retries, and a fixed body would be a new message)."""

    http_status = 400


class UnauthorizedError(ClerkSyncError):
    """A sign-in request whose Clerk session token is missing or does not verify (401)."""

    http_status = 401


class NotFoundError(ClerkSyncError):
    """What a request asks for does not exist (404): no row yet, or Clerk deleted the user."""

    http_status = 404


class RetriableError(Exception):
    """Raised inside a retried call; never escapes the retry loop as itself."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        message = scrub(message)
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

"""The one writer lock (``clerk_sync.locks``), held by a lease: who holds it, taking it (and
taking it over from a run that stopped), and keeping it fresh.

A lease is one acquisition, with a token of its own: the heartbeat, the check before each
commit and the release go by it, so a run that resumes another's run id never shares its
lease. Whether a silent holder's process is gone is decided here too (:func:`process_alive`).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path

from clerk_sync_cli.errors import ClerkSyncError, LockHeldError
from clerk_sync_cli.history import Origin
from clerk_sync_cli.store.connection import Cursor, Store

LOCK_NAME = "sync"


@dataclass(frozen=True)
class LockHolder:
    """The lock row as read: its run (for display), where that run's process runs, its token
    (None: taken by a clerk-sync older than migration 005) and its heartbeat, exactly."""

    run_id: int
    host: str
    pid: int
    heartbeat_age_s: float
    heartbeat_at: datetime
    token: str | None = None
    boot_id: str | None = None
    pid_ns: str | None = None

    @property
    def origin(self) -> Origin:
        return Origin(self.host, self.pid, self.boot_id, self.pid_ns)

    def is_stale(self, stale_after_s: float) -> bool:
        """Silent for too long, or a process known to be gone (see :func:`process_alive`)."""
        if self.heartbeat_age_s > stale_after_s:
            return True
        return not process_alive(self.origin)


@dataclass(frozen=True)
class Lease:
    """One acquisition of the writer lock, for run ``run_id``. ``token`` is this
    acquisition's alone. ``replaced``: the stale holder this acquisition took over, if any.
    A unit of work run ``locked_by`` a lease refreshes it and, before it commits, confirms
    it is still held (see :meth:`Store.atomic`)."""

    run_id: int
    token: str = field(repr=False)
    replaced: LockHolder | None = None

    def refresh(self, cur: Cursor) -> None:
        """Refresh the heartbeat (the row stays locked by this transaction until it ends);
        the answer is read by :meth:`confirm`, in pipeline mode with the unit's own."""
        cur.execute(
            "UPDATE clerk_sync.locks SET heartbeat_at = now() WHERE name = %s AND token = %s "
            "RETURNING 1",
            (LOCK_NAME, self.token),
        )

    def confirm(self, cur: Cursor) -> None:
        if cur.fetchone() is None:
            raise LockHeldError(
                "Another clerk-sync run took over the lock (this run was silent too long); "
                "stopping.",
                "Nothing from this page was applied.",
            )

    def release(self, cur: Cursor) -> None:
        """Delete the lock row if this lease still holds it; else LockHeldError."""
        cur.execute(
            "DELETE FROM clerk_sync.locks WHERE name = %s AND token = %s RETURNING 1",
            (LOCK_NAME, self.token),
        )
        if cur.fetchone() is None:
            raise LockHeldError(
                "Another clerk-sync run took over the lock (this run was silent too long); "
                "its end was not recorded.",
                "The run history is the other run's now.",
            )


def _held(holder: LockHolder, stale_after_s: float) -> LockHeldError:
    return LockHeldError(
        f"Another clerk-sync run holds the lock (run {holder.run_id}, pid {holder.pid} "
        f"on {holder.host}, last heard from {holder.heartbeat_age_s:.0f}s ago).",
        "Nothing was changed. It will be taken over if that run stays silent for "
        f"{stale_after_s / 60:.0f} minutes.",
    )


def holder(cur: Cursor) -> LockHolder | None:
    """The lock row, if any. Reads a lock table older than migration 005 too (``status``
    and ``doctor`` migrate nothing): the columns it lacks read as None."""
    cur.execute(
        "SELECT run_id, host, pid, extract(epoch FROM now() - heartbeat_at), "
        "heartbeat_at, to_jsonb(l)->>'token', to_jsonb(l)->>'boot_id', "
        "to_jsonb(l)->>'pid_ns' FROM clerk_sync.locks l WHERE name = %s",
        (LOCK_NAME,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    run_id, host, pid, age, heartbeat_at, token, boot_id, pid_ns = row
    return LockHolder(int(run_id), host, int(pid), float(age), heartbeat_at, token, boot_id, pid_ns)


def _take(cur: Cursor, run_id: int, token: str, replacing: LockHolder | None) -> bool:
    here = this_process()
    mine = (run_id, token, here.host, here.pid, here.boot_id, here.pid_ns)
    if replacing is None:
        cur.execute(
            "INSERT INTO clerk_sync.locks (name, run_id, token, host, pid, boot_id, pid_ns) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING 1",
            (LOCK_NAME, *mine),
        )
    else:
        cur.execute(
            "UPDATE clerk_sync.locks SET run_id = %s, token = %s, host = %s, pid = %s, "
            "boot_id = %s, pid_ns = %s, acquired_at = now(), heartbeat_at = now() "
            "WHERE name = %s AND token IS NOT DISTINCT FROM %s AND heartbeat_at = %s "
            "RETURNING 1",
            (*mine, LOCK_NAME, replacing.token, replacing.heartbeat_at),
        )
    return cur.fetchone() is not None


def acquire(store: Store, run_id: int, *, stale_after_s: float) -> Lease:
    """Take the one writer lock for run ``run_id``: a new lease, with a token of its own.
    Raises LockHeldError while a live run holds it.

    A stale holder (a crashed run) is replaced only if it is still exactly the holder read
    (same token, same heartbeat to the microsecond): one that was heard from in between
    keeps the lock, and of two runs taking over at once (both resuming the same crashed
    run, say) exactly one wins."""
    token = secrets.token_hex(16)
    current = store.run(holder)
    if current is not None and not current.is_stale(stale_after_s):
        raise _held(current, stale_after_s)
    if not store.run(_take, run_id, token, current):  # taken (or its holder spoke) meanwhile
        winner = store.run(holder)
        if winner is None:
            raise LockHeldError("Another clerk-sync run holds the lock.", "Nothing was changed.")
        if winner.token != token:  # else: ours, committed before a lost connection
            raise _held(winner, stale_after_s)
    return Lease(run_id, token, current)


def touch(store: Store, lease: Lease) -> None:
    """Refresh the lease between units of work (during long confirmation loops)."""
    store.atomic(lambda cur: None, locked_by=lease)


@contextmanager
def heartbeat_in_background(store: Store, lease: Lease | None, *, every_s: float) -> Iterator[None]:
    """Keep ``lease`` fresh from a background thread while the caller waits on something
    that is not the database (a prompt), every ``every_s`` seconds. The thread uses
    ``store``, so the caller must not meanwhile; it is stopped and joined on exit. If the
    lease is lost, the thread stops; the caller's next unit of work finds out."""
    if lease is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            try:
                touch(store, lease)
            except LockHeldError:
                return
            except ClerkSyncError:
                continue  # the database is away: try again next time

    thread = threading.Thread(target=beat, name="clerk-sync-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# -- is a process gone? --------------------------------------------------------------------


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _read_link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


@cache
def _boot_and_pid_ns() -> tuple[str | None, str | None]:
    """This boot's id and this process's PID namespace (neither changes while it runs)."""
    return _read_text("/proc/sys/kernel/random/boot_id"), _read_link("/proc/self/ns/pid")


def this_process() -> Origin:
    """Where this process runs, as recorded with a run and a lock."""
    boot_id, pid_ns = _boot_and_pid_ns()
    return Origin(socket.gethostname(), os.getpid(), boot_id, pid_ns)


def process_alive(origin: Origin) -> bool:
    """False only when the process is known to be gone: it ran on this host, in this boot and
    in this PID namespace (all three known and equal to ours), and no process has its pid.
    Anywhere else (another host, or a container sharing this hostname) the pid means nothing
    here, so the process is presumed alive: only its heartbeat can tell."""
    here = this_process()
    if origin.pid is None or origin.boot_id is None or origin.pid_ns is None:
        return True
    if (origin.host, origin.boot_id, origin.pid_ns) != (here.host, here.boot_id, here.pid_ns):
        return True
    return _process_alive(origin.pid)

"""The database side of ``serve``, shared by its handlers (webhooks, sign-in): a pool of
connections, and the apply target (the app's tables as they are), prepared once.

Preparing brings clerk-sync's bookkeeping up to date and reads the app's tables. It runs on
the first request that needs it and again after a failure, so ``serve`` starts, and answers
503, while the database is down.
"""

from __future__ import annotations

import threading

from clerk_sync_cli.apply import Target
from clerk_sync_cli.project import schema_info
from clerk_sync_cli.store import bookkeeping, schema
from clerk_sync_cli.store.pool import Pool
from clerk_sync_cli.tables import Tables


class Backend:
    def __init__(self, pool: Pool, tables: Tables) -> None:
        self.pool = pool
        self.tables = tables
        self._target: Target | None = None
        self._ready = threading.Lock()

    def check(self) -> None:
        """Reach the database (``/healthz``): DatabaseUnavailableError when it cannot."""
        with self.pool.store(timeout=5.0) as store:
            store.run(lambda cur: cur.execute("SELECT 1"))

    def target(self) -> Target:
        """Where users are written, read once (see the module's docstring)."""
        with self._ready:
            if self._target is None:
                with self.pool.store() as store:
                    store.run(bookkeeping.migrate)
                    project = store.run(schema.read, self.tables)
                self._target = Target(self.tables, schema_info(project, writing=True))
            return self._target

    def close(self) -> None:
        self.pool.close()

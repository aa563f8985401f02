"""The Postgres side, by concern: every module holds the SQL of one thing, as functions that
take an open transaction's cursor first; :class:`Store` runs them as units of work.

- :mod:`.connection` — connecting, transactions, reconnects (:class:`Store`), driver errors;
- :mod:`.schema` — the app's tables, triggers and privileges, read (and ``doctor --fix``);
- :mod:`.bookkeeping` — clerk-sync's own schema and its migrations;
- :mod:`.users` — the ``users`` and settings rows: set-based compare, upsert, deactivate;
- :mod:`.runs` — the run history; :mod:`.lock` — the writer lock and its lease;
- :mod:`.checkpoints` — what a run walked and saw; :mod:`.pin` — the pinned Clerk instance.
"""

from clerk_sync_cli.store.connection import Cursor, Store, connect
from clerk_sync_cli.store.lock import Lease, LockHolder, process_alive, this_process

__all__ = ["Cursor", "Lease", "LockHolder", "Store", "connect", "process_alive", "this_process"]

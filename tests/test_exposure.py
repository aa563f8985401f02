"""Where the key or the users could travel further than meant (issue 11, hardening): a plain
http:// CLERK_API_URL to another machine, and an emulator that is reachable from elsewhere or
that would adopt a live key from the environment. Each test fails if its protection is removed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import httpx
import psycopg
import pytest

from clerk_sync_cli.emulator import DEFAULT_SECRET_KEY, RunningEmulator
from clerk_sync_cli.errors import ConfigError
from clerk_sync_cli.settings import load_settings

from .support import Cli, populate

LIVE = "sk_live_" + "x" * 40


@pytest.mark.parametrize(
    "url", ["http://api.clerk.example/v1", "http://10.0.0.7:8765/v1", "http://[2001:db8::1]/v1"]
)
def test_plain_http_to_another_machine_is_refused(cli: Cli, url: str) -> None:
    result = cli("diff", "--dry-run", CLERK_API_URL=url)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "plain http://" in result.stderr
    assert "CLERK_SYNC_ALLOW_INSECURE_HTTP=1" in result.stderr
    assert LIVE not in result.stderr


def test_plain_http_is_allowed_to_this_machine_or_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for url in ("http://localhost:8765/v1", "http://127.0.0.2/v1", "http://[::1]:1/v1"):
        assert load_settings(clerk_api_url=url).api_url() == url
    with pytest.raises(ConfigError, match="plain http://"):
        load_settings(clerk_api_url="http://10.0.0.7/v1").api_url()
    monkeypatch.setenv("CLERK_SYNC_ALLOW_INSECURE_HTTP", "1")
    assert load_settings(clerk_api_url="http://10.0.0.7/v1").api_url() == "http://10.0.0.7/v1"


def test_localhost_by_name_reaches_the_emulator(
    cli: Cli, emulator: RunningEmulator, db: psycopg.Connection[Any]
) -> None:
    populate(emulator, 2)
    url = emulator.base_url.replace("127.0.0.1", "localhost")
    doc = cli.json("diff", "--dry-run", CLERK_API_URL=url)
    assert doc["counts"]["create"] == 2


# -- the emulator -------------------------------------------------------------------------------


def serve_emulator(
    *args: str, env_key: str | None, probe: tuple[str, ...]
) -> tuple[str, dict[str, int]]:
    """Run ``clerk-sync emulator *args`` with CLERK_SECRET_KEY=env_key (None: unset) until it
    serves; ask it for the count with each key of ``probe``; stop it. Returns what it printed
    on stderr and the status each probe got."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CLERK_SECRET_KEY", None)
    if env_key is not None:
        env["CLERK_SECRET_KEY"] = env_key
    process = subprocess.Popen(
        [sys.executable, "-m", "clerk_sync_cli", "emulator", "--port", "0", "--users", "3", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"CLERK_API_URL=http://[^:]+:(\d+)/v1", line)
        assert match, line
        url = f"http://127.0.0.1:{match.group(1)}/v1/users/count"
        statuses = {
            key: httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code
            for key in probe
        }
        process.terminate()
        process.wait(timeout=10)
        assert process.stderr is not None
        return process.stderr.read(), statuses
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_emulator_never_adopts_a_live_key_from_the_environment() -> None:
    stderr, status = serve_emulator(env_key=LIVE, probe=(LIVE, DEFAULT_SECRET_KEY))
    assert status == {LIVE: 401, DEFAULT_SECRET_KEY: 200}
    [warning] = [line for line in stderr.splitlines() if "CLERK_SECRET_KEY" in line]
    assert warning.startswith("warning: emulator: ignoring CLERK_SECRET_KEY from the environment")
    assert "accepting its default test key instead" in warning
    assert LIVE not in stderr


def test_emulator_takes_a_live_key_given_explicitly_and_a_test_key_from_the_environment() -> None:
    stderr, status = serve_emulator(
        "--secret-key", LIVE, env_key=None, probe=(LIVE, DEFAULT_SECRET_KEY)
    )
    assert status == {LIVE: 200, DEFAULT_SECRET_KEY: 401}
    assert "warning" not in stderr
    stderr, status = serve_emulator(env_key="sk_test_mine", probe=("sk_test_mine",))
    assert status == {"sk_test_mine": 200}
    assert "warning" not in stderr


def test_emulator_warns_when_bound_beyond_loopback() -> None:
    wide = "0.0.0.0"  # noqa: S104 - the point of the test
    stderr, _ = serve_emulator("--host", wide, env_key=None, probe=())
    [warning] = [line for line in stderr.splitlines() if "beyond this machine" in line]
    assert warning.startswith(f"warning: emulator: listening on {wide}")
    stderr, _ = serve_emulator("--host", "127.0.0.1", env_key=None, probe=())
    assert "warning" not in stderr

"""``clerk-sync serve`` as its own process, as a user runs it, for the serve tests: started on a
free port with a given environment, waited for until ``/healthz`` answers 200, always stopped.
Each test file adds its own ways of talking to it (deliveries, sign-in calls) on top."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

SERVE = [sys.executable, "-m", "clerk_sync_cli", "serve"]


#: Names serve reads that a developer's environment must not leak into a test.
SERVE_NAMES = ("CLERK_WEBHOOK_SIGNING_SECRET", "CLERK_AUTHORIZED_PARTIES", "CLERK_JWT_KEY")


def serve_environment(
    base: Mapping[str, str], settings: Mapping[str, str | None]
) -> dict[str, str]:
    """What a user sets for serve: this environment without serve's own names, ``base`` (the
    CLI's: database, Clerk) and ``settings`` on top (``None`` unsets a name)."""
    merged: dict[str, str | None] = {
        **{k: v for k, v in os.environ.items() if k not in SERVE_NAMES},
        **base,
        **settings,
    }
    return {name: value for name, value in merged.items() if value is not None}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.log()}")
            with suppress(httpx.TransportError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        pytest.fail(f"serve was not healthy within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


S = TypeVar("S", bound=ServeProcess)


@contextmanager
def serve_processes(
    kind: type[S], logs: Path, args: tuple[str, ...], env: Mapping[str, str], count: int = 1
) -> Iterator[list[S]]:
    """``count`` healthy serve processes (``kind``), always stopped afterwards. Their stdout
    and stderr go to one file each (a pipe nobody reads would block them)."""
    servers: list[S] = []
    try:
        for _ in range(count):
            port = free_port()
            log_path = logs / f"serve-{port}.log"
            with log_path.open("wb") as out:
                process = subprocess.Popen(
                    [*SERVE, "--host", "127.0.0.1", "--port", str(port), *args],
                    env=dict(env),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            servers.append(kind(process, port, log_path))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def refused_start(env: Mapping[str, str], what: str) -> subprocess.CompletedProcess[str]:
    """Start serve where it must refuse to: its exit and output (fails the test if it
    started, naming ``what`` it started without)."""
    args = [*SERVE, "--port", str(free_port())]
    process = subprocess.Popen(
        args, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"serve started without {what}")
    return subprocess.CompletedProcess(args, process.returncode, out, err)

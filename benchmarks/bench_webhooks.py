#!/usr/bin/env python
"""A burst of Clerk webhooks into ``clerk-sync serve`` (issue 14's target).

    .venv/bin/python benchmarks/bench_webhooks.py [--events 10000] [--senders 32]

Starts a throwaway embedded Postgres, creates the guide's tables, starts ``clerk-sync serve
--no-signin`` as its own process (so it does not share a GIL with the senders), creates N
users by ``user.created`` events, then fires N ``user.updated`` events (each user once, a
newer version: a bulk change in Clerk) from ``--senders`` threads with keep-alive clients.
Reports sustained events/s, p50/p95/p99 client-side latency, lost events (not 200, or a row
without its new name) and events applied twice (claimed rows per svix-id), and replays 500 of
them, which must all answer ``duplicate``. Everything binds 127.0.0.1 and is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
from bench import _proc_cpu  # this directory: the run is `python benchmarks/bench_webhooks.py`

from clerk_sync_cli.embedded_postgres import embedded_postgres
from clerk_sync_cli.signatures import secret_key, sign, signature

SECRET = "whsec_" + base64.b64encode(b"clerk-sync-benchmark-secret!").decode()
INSTANCE = "ins_bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user(i: int, version: int, name: str) -> dict[str, Any]:
    uid = f"user_bench{i:08d}"
    email = f"bench{i}@example.com"
    return {
        "id": uid,
        "object": "user",
        "first_name": name,
        "last_name": f"Last{i}",
        "image_url": f"https://img.clerk.com/{uid}",
        "primary_email_address_id": f"idn_bench{i:08d}",
        "email_addresses": [
            {"id": f"idn_bench{i:08d}", "object": "email_address", "email_address": email}
        ],
        "banned": False,
        "created_at": 1_700_000_000_000 + i,
        "updated_at": version,
    }


def event(kind: str, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "data": data,
            "object": "event",
            "type": kind,
            "timestamp": data["updated_at"],
            "instance_id": INSTANCE,
        }
    ).encode()


@contextmanager
def serving(dsn: str, port: int, connections: int, profile: str | None) -> Iterator[str]:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "CLERK_WEBHOOK_SIGNING_SECRET": SECRET,
        "CLERK_SYNC_SERVE_CONNECTIONS": str(connections),
    }
    log = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "clerk_sync_cli", "serve", "--no-signin", "--port", str(port)]
    if profile:  # py-spy (pip install py-spy) samples serve while it holds the GIL: .svg a flame
        # graph to open in a browser, .txt collapsed stacks
        fmt = "raw" if profile.endswith(".txt") else "flamegraph"
        command = [
            "py-spy",
            "record",
            "--gil",
            "--rate",
            "50",
            "--format",
            fmt,
            "--output",
            profile,
            "--",
            *command,
        ]
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT; serve stops
        proc.wait(timeout=30)
        log.close()


def cpu_seconds(match: str) -> float:
    """User + system CPU of every live process whose command line contains ``match``."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):  # gone meanwhile, or not text
            continue
        if match in cmdline and int(pid) != os.getpid():
            total += _proc_cpu(int(pid))
    return total


def burst(
    base: str, bodies: list[tuple[str, bytes]], senders: int, *, lean: bool = True
) -> tuple[list[float], dict[str, int], float]:
    """Send every (svix_id, body) from ``senders`` concurrent keep-alive connections;
    (latencies s, outcomes, wall s). ``lean``: one asyncio loop writing each request's bytes
    and reading the answer by Content-Length (as a load generator such as wrk does, so the
    senders, which in production are Svix's, take little of the 2 cores); otherwise one
    httpx client per thread, the first runs' senders (~7x the CPU per event)."""
    if not lean:
        return _burst_httpx(base, bodies, senders)
    return asyncio.run(_burst_lean(base, bodies, senders))


async def _burst_lean(
    base: str, bodies: list[tuple[str, bytes]], senders: int
) -> tuple[list[float], dict[str, int], float]:
    host, port = base.removeprefix("http://").split(":")
    key = secret_key(SECRET)
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    work = iter(bodies)

    async def sender() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for msg_id, body in work:  # one iterator shared by all: each body sent once
                stamp = int(time.time())
                head = (
                    f"POST /api/webhooks/clerk HTTP/1.1\r\nhost: {host}:{port}\r\n"
                    f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                    f"svix-id: {msg_id}\r\nsvix-timestamp: {stamp}\r\n"
                    f"svix-signature: v1,{signature(key, msg_id, stamp, body)}\r\n\r\n"
                )
                started = time.perf_counter()
                writer.write(head.encode() + body)
                status_and_headers = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    status_and_headers.lower().split(b"content-length:", 1)[1].split(b"\r\n")[0]
                )
                answer = await reader.readexactly(length)
                took = time.perf_counter() - started
                status = status_and_headers[9:12].decode()
                outcome = json.loads(answer).get("outcome", status) if status == "200" else status
                latencies.append(took)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    return latencies, outcomes, time.perf_counter() - started


def _burst_httpx(
    base: str, bodies: list[tuple[str, bytes]], senders: int
) -> tuple[list[float], dict[str, int], float]:
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    work = iter(bodies)

    def sender() -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            while True:
                with lock:
                    item = next(work, None)
                if item is None:
                    return
                msg_id, body = item
                headers = {
                    **sign(SECRET, msg_id, int(time.time()), body),
                    "content-type": "application/json",
                }
                started = time.perf_counter()
                response = http.post("/api/webhooks/clerk", content=body, headers=headers)
                took = time.perf_counter() - started
                outcome = (
                    response.json().get("outcome", str(response.status_code))
                    if response.status_code == 200
                    else str(response.status_code)
                )
                with lock:
                    latencies.append(took)
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, outcomes, time.perf_counter() - started


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--httpx-senders",
        action="store_true",
        help="send with one httpx client per thread, as the first runs did (more sender CPU)",
    )
    parser.add_argument(
        "--profile", metavar="SVG", help="record serve with py-spy into SVG (or .txt)"
    )
    args = parser.parse_args()
    n = args.events
    lean = not args.httpx_senders
    with embedded_postgres() as dsn:
        subprocess.run(
            [sys.executable, "-m", "clerk_sync_cli", "init-db"],
            env={**os.environ, "DATABASE_URL": dsn},
            check=True,
            capture_output=True,
        )
        with serving(dsn, free_port(), args.connections, args.profile) as base:
            created = [
                (f"msg_c{i}", event("user.created", user(i, 1_700_000_000_000 + i, f"First{i}")))
                for i in range(n)
            ]
            _, outcomes, wall = burst(base, created, args.senders, lean=lean)
            print(f"created {n} users by webhook in {wall:.2f}s: {outcomes}")
            updated = [
                (f"msg_u{i}", event("user.updated", user(i, 1_800_000_000_000 + i, f"Bulk{i}")))
                for i in range(n)
            ]
            cpu0 = time.process_time()
            serve0, pg0 = cpu_seconds("clerk_sync_cli serve"), cpu_seconds("postgres:")
            lat, outcomes, wall = burst(base, updated, args.senders, lean=lean)
            sender_cpu = time.process_time() - cpu0
            serve_cpu = cpu_seconds("clerk_sync_cli serve") - serve0
            pg_cpu = cpu_seconds("postgres:") - pg0
            replay_lat, replay, _ = burst(base, copy.copy(updated[:500]), args.senders, lean=lean)
        with psycopg.connect(dsn) as conn:
            renamed = conn.execute(
                "SELECT count(*) FROM users WHERE first_name LIKE 'Bulk%%'"
            ).fetchone()
            twice = conn.execute(
                "SELECT count(*) FROM (SELECT svix_id FROM clerk_sync.webhook_events WHERE claimed "
                "GROUP BY svix_id HAVING count(*) > 1) d"
            ).fetchone()
    lost = (
        n - (renamed[0] if renamed else 0) + sum(v for k, v in outcomes.items() if k != "applied")
    )
    print(f"{n} user.updated from {args.senders} senders, {args.connections} connections:")
    print(f"  {n / wall:.0f} events/s sustained ({wall:.2f}s)")
    print(
        f"  CPU s: senders {sender_cpu:.1f}, serve {serve_cpu:.1f}, Postgres {pg_cpu:.1f} "
        f"(per event: {sender_cpu / n * 1e3:.2f} / {serve_cpu / n * 1e3:.2f} / "
        f"{pg_cpu / n * 1e3:.2f} ms)"
    )
    print(
        f"  latency p50 {pct(lat, 50):.1f} ms, p95 {pct(lat, 95):.1f} ms, p99 {pct(lat, 99):.1f} ms, max {max(lat) * 1000:.1f} ms"
    )
    print(f"  outcomes {outcomes}; lost {lost}; applied twice {twice[0] if twice else '?'}")
    print(f"  replay of 500: {replay} (p99 {pct(replay_lat, 99):.1f} ms)")
    print(f"  load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

"""Running ``clerk-sync serve``: bind the socket, start uvicorn on the app of
:mod:`clerk_sync_cli.web`, and log one line per delivery to stderr. Stops on SIGINT/SIGTERM,
finishing the requests in flight (at most a few seconds)."""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from clerk_sync_cli.errors import ConfigError

#: How long requests in flight may take to finish once asked to stop.
GRACE_S = 5


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one); ConfigError when it cannot."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise ConfigError(
            f"serve: cannot listen on {host}:{port} ({exc.strerror or exc}).",
            "Choose another --port, or stop what is listening there.",
        ) from None
    sock.set_inheritable(True)
    return sock


def log_to_stderr() -> None:
    """Each delivery's line (``clerk_sync.serve``) and uvicorn's errors, to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    for name, level in (("clerk_sync.serve", logging.INFO), ("uvicorn.error", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def run(app: ASGIApp, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until a signal stops it."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACE_S,
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def in_background(app: ASGIApp, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` on a free port of ``host`` from a thread (the demo's ``serve``); yields its
    base URL, stops it on exit."""
    sock = bind(host, 0)
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", log_level="error")
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="clerk-sync-serve", daemon=True
    )
    thread.start()
    try:
        while not server.started and thread.is_alive():
            threading.Event().wait(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=GRACE_S + 1)
        sock.close()

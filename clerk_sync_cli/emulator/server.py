"""The HTTP server around an :class:`Emulator`: in a background thread, or in the foreground.

``http.server.ThreadingHTTPServer``, HTTP/1.1 keep-alive, ``Content-Length`` on every response.
Stopping the server stops the emulator's webhook sender too.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, cast

from clerk_sync_cli.emulator.api import Emulator
from clerk_sync_cli.emulator.config import DEFAULT_PORT, EmulatorConfig
from clerk_sync_cli.emulator.webhooks import Webhooks


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-response are normal (truncation, timeouts): stay quiet."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "clerk-emulator"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        cast(_Server, self.server).emulator.note_connection()

    def _dispatch(self) -> None:
        emulator = cast(_Server, self.server).emulator
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path, _, query = self.path.partition("?")
        headers = {k: v for k, v in self.headers.items()}
        status, out_headers, payload = emulator.handle(self.command, path, query, headers, body)
        self.send_response(status)
        declared = out_headers.pop("Content-Length", None)
        if out_headers.pop("Connection", "") == "close":
            self.close_connection = True
            self.send_header("Connection", "close")
        for name, value in out_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", declared or str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log."""


def _url(server: _Server) -> str:
    host, port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else str(host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


class RunningEmulator:
    """An emulator serving on a background daemon thread; stop() (or ``with``) shuts it down."""

    def __init__(self, emulator: Emulator, server: _Server, thread: threading.Thread) -> None:
        self.emulator = emulator
        #: the emulator's webhook sender (``wait_idle()``, ``stats()``, ``secret``)
        self.webhooks: Webhooks = emulator.webhooks
        self.base_url = _url(server)  # what CLERK_API_URL is set to
        self.control_url = self.base_url[: -len("/v1")] + "/_emulator"
        self.port: int = server.server_address[1]
        self._server = server
        self._thread = thread
        self._stopped = False

    def stop(self) -> None:
        """Stop serving, then stop the webhook sender (pending deliveries are abandoned)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.emulator.close()

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_emulator(
    config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Start an emulator on ``host:port`` (0: a free port) in a daemon thread."""
    emulator = Emulator(config)
    server = _Server((host, port), emulator)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"clerk-emulator:{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return RunningEmulator(emulator, server, thread)


def serve(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until KeyboardInterrupt or SIGTERM; ``on_ready(base_url)`` once."""
    emulator = Emulator(config)
    server = _Server((host, port), emulator)

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous: Any = None
    installed = False
    with contextlib.suppress(ValueError):  # signals can only be set from the main thread
        previous = signal.signal(signal.SIGTERM, _stop)
        installed = True
    try:
        if on_ready is not None:
            on_ready(_url(server))
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        emulator.close()
        if installed:
            signal.signal(signal.SIGTERM, previous)

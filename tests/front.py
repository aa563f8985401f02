"""A reverse proxy in front of the emulator, standing in for what sits between clerk-sync and
Clerk in real deployments (an egress proxy, an API gateway, a misrouted ingress): it forwards
each request, sends it to another path, or answers it itself.

``route(path)`` decides, per request path (without the query): None forwards it unchanged; a
string forwards it to that path instead; a :class:`Reply` is answered by the proxy. A reply
whose body is an iterable of chunks is sent chunked, without ``Content-Length``.
"""

from __future__ import annotations

import gzip
import http.client
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from clerk_sync_cli.emulator import RunningEmulator


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes | Iterable[bytes]
    content_type: str = "text/html"
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[str], Reply | str | None]

NOT_FOUND_HTML = Reply(404, b"<html>Not Found</html>")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int], route: Route, *, gzip: bool) -> None:
        self.upstream = upstream
        self.route = route
        self.gzip = gzip
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return  # the client hung up on a body it did not want: expected
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = cast(_Server, self.server)
        path, _, query = self.path.partition("?")
        decided = server.route(path)
        if isinstance(decided, Reply):
            self._reply(decided)
            return
        target = (decided or path) + (f"?{query}" if query else "")
        upstream = http.client.HTTPConnection(*server.upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            upstream.request("GET", target, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
            extra: tuple[tuple[str, str], ...] = ()
            if server.gzip and "gzip" in self.headers.get("Accept-Encoding", ""):
                body, extra = gzip.compress(body), (("Content-Encoding", "gzip"),)
            self._reply(Reply(answer.status, body, answer.getheader("Content-Type") or "", extra))
        finally:
            upstream.close()

    def _reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers:
            self.send_header(name, value)
        if isinstance(reply.body, bytes):
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        for chunk in reply.body:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@dataclass(frozen=True)
class Front:
    base_url: str  # what CLERK_API_URL is set to


@contextmanager
def front(upstream: RunningEmulator, route: Route, *, gzip: bool = False) -> Iterator[Front]:
    """Serve the proxy; with ``gzip``, forwarded answers are gzipped when the client accepts
    it (as Clerk's are)."""
    server = _Server(("127.0.0.1", upstream.port), route, gzip=gzip)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield Front(f"http://127.0.0.1:{server.server_address[1]}/v1")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def user_lookup(path: str) -> bool:
    """Whether ``path`` is ``GET /v1/users/{id}`` (not the list, not the count)."""
    parts = path.strip("/").split("/")
    return len(parts) == 3 and parts[:2] == ["v1", "users"] and parts[2] != "count"

"""Run the S3 frontend: uvicorn's HTTP/1.1 server (httptools parser) on uvloop,
serving the bare ASGI app of frontend/s3/app.py.

Why uvicorn + httptools: measured against aiohttp's server for PUT and GET
(see the closing note of the S3 issue and `make bench-http`); it handles
keep-alive, `Expect: 100-continue`, chunked request bodies and TLS, streams both
ways with flow control, and adds the least CPU per request.

`serve()` starts listening, calls `on_ready(endpoint)` once the socket accepts
requests, and returns after SIGINT/SIGTERM, having stopped cleanly:
1. in-flight requests finish; idle keep-alive connections are closed at once —
   over TLS by abort, since a TLS close waits up to 30 s for a close_notify that
   an idle client pool never sends;
2. the signal is not re-raised (uvicorn's default), so the caller's cleanup runs
   and the process exits 0.
A request the HTTP parser rejects (before the app sees it) is answered like any
other error: S3 error XML (BadRequest) with an x-amz-request-id.
Each connection writes through common/framing.py's `TurnWriter`, so the small writes
of one loop turn leave in one write: uvicorn writes a response's head and body
separately, two packets and two wake-ups of the client where one does (measured:
4 KiB GET @64 +6 %, the client's CPU per GET -30 %).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from typing import Callable, Iterator

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from common import framing
from common.config import Config
from common.ids import new_http_request_id
from common.seams import BlobStore, MetadataStore
from frontend.s3 import errors
from frontend.s3.app import S3App
from frontend.s3.auth import Authenticator, User
from frontend.s3.request import Services

log = logging.getLogger("cairn.frontend")


def build_app(config: Config, meta: MetadataStore, blobs: BlobStore, clock_us: Callable[[], int]) -> S3App:
    users = [User(name=user.name, access_key=user.access_key, secret_key=user.secret_key) for user in config.users]
    services = Services(meta=meta, blobs=blobs, limits=config.limits, region=config.region, clock_us=clock_us)
    return S3App(services, Authenticator(users), domains=config.domains)


class _Protocol(HttpToolsProtocol):
    def connection_made(self, transport) -> None:
        super().connection_made(framing.TurnWriter(transport))

    def shutdown(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.transport.get_extra_info("sslcontext") is not None:
            self.transport.abort()          # step 1: no TLS close handshake with an idle peer
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        request_id = new_http_request_id()
        body = errors.BadRequest().to_xml("", request_id)
        head = (f"HTTP/1.1 400 Bad Request\r\ncontent-type: application/xml\r\nx-amz-request-id: {request_id}\r\n"
                f"server: Cairn\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, without re-raising the signal afterwards (step 2)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {number: signal.signal(number, self.handle_exit) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in original.items():
                signal.signal(number, handler)


async def serve(
    app: S3App, *, host: str, port: int, tls_cert: str | None = None, tls_key: str | None = None,
    on_ready: Callable[[str], None] | None = None, limit_concurrency: int | None = None,
    reuse_port: bool = False, listen_fd: int | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. With `reuse_port`, the socket is bound with
    SO_REUSEPORT so several worker processes share one port (DESIGN §1)."""
    config = uvicorn.Config(
        app, host=host, port=port, loop="none", http=_Protocol, lifespan="off",
        access_log=False, log_level="warning", ssl_certfile=tls_cert, ssl_keyfile=tls_key,
        timeout_keep_alive=75, limit_concurrency=limit_concurrency, server_header=False,
        date_header=False,
    )
    server = _Server(config)
    sockets = None
    if listen_fd is not None:
        sockets = [socket.socket(fileno=listen_fd)]
    elif reuse_port:
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((host, port))
        listener.listen(2048)
        listener.set_inheritable(True)
        sockets = [listener]
    task = asyncio.ensure_future(server.serve(sockets=sockets))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the HTTP server stopped before it started")
        await asyncio.sleep(0.02)
    if on_ready is not None:
        scheme = "https" if tls_cert else "http"
        bound = port
        for listener in server.servers:
            for sock in listener.sockets:
                bound = sock.getsockname()[1]
                break
        on_ready(f"{scheme}://{host}:{bound}")
    await task

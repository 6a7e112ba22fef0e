"""The framed protocol of the hot paths (DESIGN §1): many requests in flight on one TCP connection.

Wire form of a frame (little-endian), see common/framing.proto:

    magic u16 | version u8 | reserved u8 | header length u32 | payload length u32
    | FrameHeader protobuf (id, kind, type, error, meta) | payload bytes

Protocol:
1. A connection is long-lived and symmetric once open: either side sends REQUEST
   frames (answered, by id, with one RESPONSE or ERROR, in any order) and ONEWAY
   frames (never answered). The server dispatches a received frame by `kind` to
   its handler; a RESPONSE/ERROR resolves the caller's pending call of that id.
2. Receiving: small frames are parsed out of one reusable receive buffer (one
   copy of a small payload); a payload of LARGE_PAYLOAD_BYTES or more gets its own
   buffer that the socket reads into directly. The socket is read at most
   RECEIVE_WINDOW_BYTES at a time into the shared buffer, so of a large payload only
   what arrived with its header (at most a window) is copied after the kernel hands
   it over (with the whole 512 KiB buffer offered, up to half of each MiB was).
3. Bounds: a header above MAX_HEADER_BYTES or a payload above the connection's
   max_payload_bytes, a bad magic/version/type or an unparsable header is a
   protocol error: the connection is aborted (never resynchronised) and its calls fail.
   A server connection with max_in_flight requests unanswered stops reading
   until one is answered (TCP back-pressure reaches the sender).
4. Every call has a deadline (DeadlineExceeded; a late answer is dropped). A
   connection that closes fails its pending calls with ConnectionLost — including
   a peer that died mid-frame (the partial frame is discarded).
5. `Client` connects lazily and reconnects with exponential backoff and jitter;
   `send` (one-way) on a client that is not connected drops the frame and starts
   a reconnect (the journal's cores resend what was not acknowledged).
6. Small frames (payload under 16 KiB) written in one event loop turn leave
   together, in one write at the start of the next turn (`TurnWriter`: one syscall,
   and one wake-up of the peer, however many requests and answers the turn
   produced; measured, 64 KiB GET @32 +4-9 % and 4 KiB GET @64 +16 % through the
   cluster). A large frame is written at once, after the small ones queued before
   it. Writes can also be corked: frames queued between `cork()` and `uncork()`
   leave at the uncork, in one write with the small ones the turn wrote before
   them; frames keep the order they were written in either way.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from typing import Callable, NamedTuple

from common import framing_pb2 as pb

MAGIC = 0xCA1F
VERSION = 1
_FIXED = struct.Struct("<HBBII")
FIXED_BYTES = _FIXED.size
MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES_DEFAULT = 64 << 20
LARGE_PAYLOAD_BYTES = 256 << 10
RECEIVE_BUFFER_BYTES = 512 << 10
RECEIVE_WINDOW_BYTES = 64 << 10      # offered to one socket read of the shared buffer (step 2)
MAX_IN_FLIGHT_DEFAULT = 1024

REQUEST = pb.FrameHeader.REQUEST
RESPONSE = pb.FrameHeader.RESPONSE
ERROR = pb.FrameHeader.ERROR
ONEWAY = pb.FrameHeader.ONEWAY

log = logging.getLogger("cairn.framing")


class FramingError(Exception):
    """Base of the framed protocol's errors."""


class ConnectionLost(FramingError):
    """The connection closed (or could not be opened) before the answer came."""


class DeadlineExceeded(FramingError):
    """The call's deadline passed before its answer came."""


class ProtocolError(FramingError):
    """The peer sent a malformed frame; the connection was aborted."""


class RemoteError(FramingError):
    """The peer answered the request with an ERROR frame."""


class Frame(NamedTuple):
    id: int
    kind: int
    type: int
    error: str
    meta: bytes
    payload: bytes | bytearray


Handler = Callable[["Connection", Frame], None]


def encode_frame(id: int, kind: int, type: int, meta: bytes = b"", payload: bytes | bytearray | memoryview = b"",
                 error: str = "") -> tuple[bytes, bytes | bytearray | memoryview]:
    """Returns (fixed header + protobuf header, payload): write both, in order."""
    header = pb.FrameHeader(id=id, kind=kind, type=type, error=error, meta=meta).SerializeToString()
    return _FIXED.pack(MAGIC, VERSION, 0, len(header), len(payload)) + header, payload


class TurnWriter:
    """A transport whose small writes of one event loop turn leave together, in one
    write at the start of the next turn (step 6): one syscall, and one wake-up of the
    peer, however many frames (or a response's head and body) the turn produced. A
    write of LARGE_WRITE_BYTES or more goes at once, in one writelines with what
    waits before it, so bytes keep the order they were written in. close() sends
    what waits first; abort() drops it. Everything else is the transport's own.
    Framed connections and the HTTP frontend (frontend/server.py) write through one."""

    LARGE_WRITE_BYTES = 16384

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._waiting: list = []

    def write(self, data) -> None:
        if not data:
            return
        if len(data) >= self.LARGE_WRITE_BYTES:
            if self._waiting:
                waiting, self._waiting = self._waiting, []
                waiting.append(data)
                self._transport.writelines(waiting)
            else:
                self._transport.write(data)
            return
        if not self._waiting:
            self._loop.call_soon(self.flush)
        self._waiting.append(bytes(data))

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what waits now, not at the next turn."""
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            if not self._transport.is_closing():
                self._transport.write(waiting[0] if len(waiting) == 1 else b"".join(waiting))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._waiting = []
        self._transport.abort()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class Connection(asyncio.BufferedProtocol):
    """One framed connection, either side. `handler(connection, frame)` gets REQUEST and ONEWAY frames."""

    def __init__(self, handler: Handler | None, *, max_in_flight: int = MAX_IN_FLIGHT_DEFAULT,
                 max_payload_bytes: int = MAX_PAYLOAD_BYTES_DEFAULT,
                 on_close: Callable[["Connection"], None] | None = None) -> None:
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.max_payload_bytes = max_payload_bytes
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.close_reason: Exception | None = None
        self.peer: str = "?"
        # Receiving (step 2).
        self._buffer = bytearray(RECEIVE_BUFFER_BYTES)
        self._start = 0
        self._end = 0
        self._large: bytearray | None = None        # a large payload being read in place
        self._large_filled = 0
        self._large_header: pb.FrameHeader | None = None
        # Requests this side received and has not answered yet (step 3).
        self.in_flight = 0
        self._reading_paused = False
        # Calls this side made (step 4).
        self._next_id = 1
        self._pending: dict[int, asyncio.Future] = {}
        self._slots: asyncio.Semaphore | None = None
        # Writing.
        self._write_paused = False
        self._drained: asyncio.Future | None = None
        self._cork_depth = 0
        self._corked: list = []
        self.closed_future: asyncio.Future = asyncio.get_event_loop().create_future()

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport) -> None:
        self.transport = TurnWriter(transport)      # step 6
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def connection_lost(self, exc) -> None:
        self._closed(ConnectionLost(f"connection to {self.peer} lost" + (f": {exc}" if exc else "")))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._large is not None:
            return memoryview(self._large)[self._large_filled:]
        if self._end == len(self._buffer):
            if self._start > 0:                       # compact: same size, no reallocation
                size = self._end - self._start
                self._buffer[:size] = self._buffer[self._start:self._end]
                self._start, self._end = 0, size
            else:                                     # one frame bigger than the buffer
                grown = bytearray(len(self._buffer) * 2)
                grown[:self._end] = self._buffer[:self._end]
                self._buffer = grown
        return memoryview(self._buffer)[self._end:self._end + RECEIVE_WINDOW_BYTES]

    def buffer_updated(self, nbytes: int) -> None:
        if self._large is not None:
            self._large_filled += nbytes
            if self._large_filled == len(self._large):
                header, payload = self._large_header, self._large
                self._large, self._large_header, self._large_filled = None, None, 0
                self._dispatch(header, payload)
            return
        self._end += nbytes
        self._parse()

    def eof_received(self) -> bool:
        return False                                  # close our side too

    # ------------------------------------------------------------ step 2: parse

    def _parse(self) -> None:
        buffer = self._buffer
        while not self.closed and not self._reading_paused and self._large is None:
            available = self._end - self._start
            if available < FIXED_BYTES:
                break
            magic, version, reserved, header_bytes, payload_bytes = _FIXED.unpack_from(buffer, self._start)
            if magic != MAGIC or version != VERSION or reserved != 0:
                self._protocol_error(f"bad frame prefix {magic:#x} v{version}")
                return
            if header_bytes > MAX_HEADER_BYTES or payload_bytes > self.max_payload_bytes:
                self._protocol_error(f"frame too large: header {header_bytes}, payload {payload_bytes}")
                return
            header_end = self._start + FIXED_BYTES + header_bytes
            total = FIXED_BYTES + header_bytes + payload_bytes
            if available < FIXED_BYTES + header_bytes:
                break
            if available < total and payload_bytes < LARGE_PAYLOAD_BYTES:
                break
            header = pb.FrameHeader()
            try:
                header.ParseFromString(memoryview(buffer)[self._start + FIXED_BYTES:header_end])
            except Exception as error:  # noqa: BLE001 - any parse failure is the peer's malformed frame
                self._protocol_error(f"unparsable frame header: {error}")
                return
            if available < total:                    # a large payload: read the rest in place
                have = self._end - header_end
                self._large = bytearray(payload_bytes)
                self._large[:have] = memoryview(buffer)[header_end:self._end]
                self._large_filled = have
                self._large_header = header
                self._start = self._end = 0
                return
            payload = bytes(memoryview(buffer)[header_end:self._start + total])
            self._start += total
            self._dispatch(header, payload)
        if self._start == self._end:
            self._start = self._end = 0

    def _dispatch(self, header: pb.FrameHeader, payload) -> None:
        frame_type = header.type
        if frame_type == RESPONSE or frame_type == ERROR:
            future = self._pending.pop(header.id, None)
            if future is not None and not future.done():
                if frame_type == ERROR:
                    future.set_exception(RemoteError(header.error))
                else:
                    future.set_result(Frame(header.id, header.kind, frame_type, "", header.meta, payload))
            return                                    # an answer after its deadline: dropped
        if frame_type != REQUEST and frame_type != ONEWAY:
            self._protocol_error(f"unknown frame type {frame_type}")
            return
        frame = Frame(header.id, header.kind, frame_type, "", header.meta, payload)
        if frame_type == REQUEST:
            self.in_flight += 1
            if self.in_flight >= self.max_in_flight and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()
        if self.handler is None:
            if frame_type == REQUEST:
                self.reply_error(header.id, "this side serves no requests")
            return
        try:
            self.handler(self, frame)
        except Exception as error:  # noqa: BLE001 - the boundary: one request fails, the connection lives
            log.exception("FrameHandlerFailed kind=%d peer=%s", header.kind, self.peer)
            if frame_type == REQUEST:
                self.reply_error(header.id, repr(error))

    def _protocol_error(self, message: str) -> None:
        log.warning("FramingProtocolError peer=%s %s", self.peer, message)
        self._closed(ProtocolError(message))
        if self.transport is not None:
            self.transport.abort()

    def _closed(self, reason: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(reason)
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(reason)
        if not self.closed_future.done():
            self.closed_future.set_result(None)
        if self.on_close is not None:
            self.on_close(self)

    # ------------------------------------------------------------ sending

    def _write(self, prefix: bytes, payload) -> None:
        if self.closed:
            raise ConnectionLost(f"connection to {self.peer} is closed")
        if self._cork_depth:
            self._corked.append(prefix)
            if payload:
                self._corked.append(payload)
        elif len(payload) < TurnWriter.LARGE_WRITE_BYTES:
            self.transport.write(prefix + payload if payload else prefix)
        else:
            self.transport.writelines((prefix, payload))

    def cork(self) -> None:
        self._cork_depth += 1

    def uncork(self) -> None:
        self._cork_depth -= 1
        if self._cork_depth == 0 and self._corked:
            chunks, self._corked = self._corked, []
            if not self.closed:
                self.transport.writelines(chunks)       # after what this turn wrote before
                self.transport.flush()                  # corked frames leave now, in one write

    async def drain(self) -> None:
        if self.closed:
            raise self.close_reason or ConnectionLost("closed")
        if self._write_paused:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    def send(self, kind: int, meta: bytes = b"", payload=b"") -> None:
        """A ONEWAY frame (step 1)."""
        self._write(*encode_frame(0, kind, ONEWAY, meta, payload))

    def reply(self, id: int, kind: int, meta: bytes = b"", payload=b"") -> None:
        self._answered()
        if not self.closed:
            self._write(*encode_frame(id, kind, RESPONSE, meta, payload))

    def reply_error(self, id: int, message: str) -> None:
        self._answered()
        if not self.closed:
            self._write(*encode_frame(id, 0, ERROR, error=message))

    def _answered(self) -> None:
        self.in_flight -= 1
        if self._reading_paused and self.in_flight < self.max_in_flight and not self.closed:
            self._reading_paused = False
            self._parse()                             # frames already buffered first
            if not self._reading_paused:
                self.transport.resume_reading()

    async def call(self, kind: int, meta: bytes = b"", payload=b"", *, timeout_s: float) -> Frame:
        """Send a REQUEST and wait for its answer, at most timeout_s (step 4)."""
        if self.closed:
            raise self.close_reason or ConnectionLost("closed")
        id = self._next_id
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[id] = future
        try:
            self._write(*encode_frame(id, kind, REQUEST, meta, payload))
            if self._write_paused:
                await asyncio.wait_for(self.drain(), timeout_s)
            return await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"kind {kind} to {self.peer}: no answer within {timeout_s:.3f} s") from None
        finally:
            self._pending.pop(id, None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# ------------------------------------------------------------ server

class Server:
    """Listens on host:port; each accepted connection dispatches by kind to `handlers`."""

    def __init__(self, handlers: dict[int, Handler], *, max_in_flight: int = MAX_IN_FLIGHT_DEFAULT,
                 max_payload_bytes: int = MAX_PAYLOAD_BYTES_DEFAULT) -> None:
        self.handlers = handlers
        self.max_in_flight = max_in_flight
        self.max_payload_bytes = max_payload_bytes
        self.connections: set[Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self.host = ""
        self.port = 0

    def _handle(self, connection: Connection, frame: Frame) -> None:
        handler = self.handlers.get(frame.kind)
        if handler is None:
            if frame.type == REQUEST:
                connection.reply_error(frame.id, f"unknown kind {frame.kind}")
            return
        handler(connection, frame)

    def _protocol(self) -> Connection:
        connection = Connection(self._handle, max_in_flight=self.max_in_flight,
                                max_payload_bytes=self.max_payload_bytes, on_close=self.connections.discard)
        self.connections.add(connection)
        return connection

    async def start(self, host: str, port: int) -> "Server":
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host, port, reuse_address=True)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()


# ------------------------------------------------------------ client

class Client:
    """A connection to one address, opened lazily and reopened with backoff (step 5)."""

    def __init__(self, host: str, port: int, *, handler: Handler | None = None,
                 max_in_flight: int = MAX_IN_FLIGHT_DEFAULT, max_payload_bytes: int = MAX_PAYLOAD_BYTES_DEFAULT,
                 backoff_initial_s: float = 0.01, backoff_max_s: float = 1.0, connect_timeout_s: float = 2.0) -> None:
        self.host, self.port = host, port
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.max_payload_bytes = max_payload_bytes
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        self.connection: Connection | None = None
        self._connecting: asyncio.Task | None = None
        self._backoff_s = 0.0
        self._not_before = 0.0
        self._slots = asyncio.Semaphore(max_in_flight)
        self._closed = False

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.closed

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        delay = self._not_before - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(self.handler, max_in_flight=self.max_in_flight,
                                                          max_payload_bytes=self.max_payload_bytes),
                                       self.host, self.port),
                self.connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as error:
            self._backoff_s = min(self.backoff_max_s, max(self.backoff_initial_s, self._backoff_s * 2))
            self._not_before = loop.time() + self._backoff_s * random.uniform(0.5, 1.0)
            raise ConnectionLost(f"connect to {self.host}:{self.port}: {error}") from None
        self._backoff_s = 0.0
        if self._closed:
            connection.close()
            raise ConnectionLost("client closed")
        self.connection = connection
        return connection

    async def connect(self) -> Connection:
        if self.connected:
            return self.connection
        if self._closed:
            raise ConnectionLost("client closed")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._connecting)

    def _kick(self) -> None:
        """Start a reconnect in the background (its failure is only remembered as backoff)."""
        if self._closed or (self._connecting is not None and not self._connecting.done()):
            return
        self._connecting = asyncio.ensure_future(self._open())
        self._connecting.add_done_callback(lambda task: task.cancelled() or task.exception())

    def send(self, kind: int, meta: bytes = b"", payload=b"") -> bool:
        """A ONEWAY frame if connected; otherwise dropped (False) and a reconnect started."""
        if not self.connected:
            self._kick()
            return False
        self.connection.send(kind, meta, payload)
        return True

    async def call(self, kind: int, meta: bytes = b"", payload=b"", *, timeout_s: float) -> Frame:
        """A REQUEST with a deadline covering the connect, the in-flight bound and the answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                connection = self.connection if self.connected else await self.connect()
                async with self._slots:
                    return await connection.call(kind, meta, payload, timeout_s=max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise DeadlineExceeded(f"kind {kind} to {self.host}:{self.port}: no answer within {timeout_s:.3f} s") \
                from None

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self.connection is not None:
            self.connection.close()
            await asyncio.wait([self.connection.closed_future], timeout=1.0)

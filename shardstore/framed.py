"""The shardstore's data protocol: its operations on the framed protocol of common/framing.py.

One `FramedServer` per process serves every disk of the process (DESIGN §1, §9);
each request names its disk (`Disks.node`: an unknown id is `UnknownDisk`, naming
the disks served). Kinds, metas and the error form are in shardstore.proto
(`FrameKind`): shard bytes ride in frame payloads, never in protobuf; kinds start
at 64, clear of the journal's.

Steps the code cites:
1. PUT: one shard, its bytes the payload, the sender's per-block xxh3-128 in the
   meta (required: their count must fit the length) and verified by the node
   before the ack; answered with the put time once durable.
2. PUT_MANY: small shards of one disk, their bytes concatenated in the payload in
   meta order. Every put is queued before any waits, so the batch rides one group
   commit (one fsync); each shard has its own Outcome (put time or refusal), so one
   bad shard refuses only itself.
3. Streamed put of a shard of known length: PUT_OPEN (a REQUEST answered only when
   the shard is durable, or with the stream's refusal), then PUT_PIECE requests in
   order, each block-aligned but the last, with its blocks' checksums. A piece is
   answered when the node has taken it, so a client that keeps at most W pieces
   unanswered (its window) bounds the bytes buffered here to W pieces per stream.
   The node writes SHARD_WRITE_STEP_BYTES steps and checks the sender's checksums
   step by step; a mismatch, an abort (PUT_ABORT), a lost connection or a stop cuts
   the record off, so nothing becomes visible. A stream holds a stream slot
   (SHARD_STREAMS_MAX; beyond, TooBusy). Pieces waiting when a stream fails are
   answered with its refusal.
4. GET: the node reads and verifies the blocks covering [start, end); the answer's
   payload is exactly those blocks (from the range's first block boundary) and its
   meta their stored checksums, so the client verifies what it received and cuts
   the range out itself. The shard is located and its read begun in one turn of
   the event loop (no await between), so the checksums sent are those of the
   blocks read.
5. GET_MANY: small shard reads of one disk in one frame, the read-side twin of
   PUT_MANY. At most MANY_ITEMS_MAX items, and the blocks they would send at most
   MANY_PAYLOAD_MAX_BYTES (counted from the index before anything is read; more is
   BadShardRequest for the whole frame). Each item is step 4, all of them
   concurrently; each has its own Outcome, so a missing shard, a bad range or a
   corrupt block (recorded as a finding, as any read's) refuses only itself. The
   payload is the answered items' blocks concatenated in request order, each
   item's meta naming how many bytes are its own. (`read_many`: the bounds and
   the reads, shared with the gRPC GetShards.)
6. DELETE_MANY: every delete queued before any waits (one group commit); deleting
   a missing shard is OK.
7. LIST, STAT, CORRUPT: the node's ListShards page (with put times), Stats, and the
   corrupt findings not since deleted or re-put (scrubber's and reads').
8. Refusals: a `ShardStoreError` is an ERROR frame "<class name>: <message>" (the
   client raises the same class); anything else is logged and refused as
   ShardStoreError. A malformed meta is BadShardRequest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable, Mapping, Sequence

from common import framing
from shardstore import format as fmt
from shardstore import shardstore_pb2 as pb
from shardstore.format import Entry, ShardId
from shardstore.node import BadShardRequest, Node, ShardStoreError, UnknownDisk

log = logging.getLogger("cairn.shardstore")

KIND_PUT = pb.PUT
KIND_PUT_MANY = pb.PUT_MANY
KIND_PUT_OPEN = pb.PUT_OPEN
KIND_PUT_PIECE = pb.PUT_PIECE
KIND_PUT_ABORT = pb.PUT_ABORT
KIND_GET = pb.GET
KIND_DELETE_MANY = pb.DELETE_MANY
KIND_LIST = pb.LIST
KIND_STAT = pb.STAT
KIND_CORRUPT = pb.CORRUPT
KIND_GET_MANY = pb.GET_MANY

# Bounds of one frame (module constants until common/limits.py grows them).
MANY_ITEMS_MAX = 1024                   # shards in one PUT_MANY, GET_MANY or DELETE_MANY
MANY_PAYLOAD_MAX_BYTES = 16 << 20       # bytes in one PUT_MANY, and blocks in one GET_MANY's answer


def frame_payload_max_bytes(node_limits) -> int:
    """The largest payload a server accepts: a PUT_MANY, or a shard or piece (SHARD_CHUNK_MAX_BYTES)."""
    return max(MANY_PAYLOAD_MAX_BYTES, node_limits.SHARD_CHUNK_MAX_BYTES)


def error_text(error: ShardStoreError) -> str:
    return f"{type(error).__name__}: {error}"


def shard_of(message: pb.ShardId) -> ShardId:
    return ShardId(bytes(message.data_id), message.shard_index)


def shard_pb(shard: ShardId) -> pb.ShardId:
    return pb.ShardId(data_id=shard.data_id, shard_index=shard.shard_index)


class Disks:
    """The nodes of one process by disk id: the one routing rule of both services."""

    def __init__(self, nodes: Mapping[str, Node]) -> None:
        self.nodes = dict(nodes)

    def node(self, disk: str) -> Node:
        node = self.nodes.get(disk)
        if node is not None:
            return node
        if not disk and len(self.nodes) == 1:
            return next(iter(self.nodes.values()))
        served = ", ".join(repr(name) for name in sorted(self.nodes))
        if not disk:
            raise UnknownDisk(f"name a disk: this process serves {served}")
        raise UnknownDisk(f"unknown disk {disk!r}: this process serves {served}")


class _Stream:
    """Step 3: one streamed put in progress on one connection."""

    def __init__(self, connection: framing.Connection, length: int) -> None:
        self.connection = connection
        self.length = length
        self.received = 0                   # bytes of the pieces arrived
        self.checksums: list[bytes] = []    # the sender's, extended as pieces arrive
        self.pieces: asyncio.Queue = asyncio.Queue()   # (frame id, payload); bounded by the client's window
        self.task: asyncio.Task | None = None
        self.failed: ShardStoreError | None = None


Reply = tuple[int, bytes, object]           # (kind, meta, payload)


class FramedServer:
    """Serves `Disks` on one framed listener; `start(host, port)`, `close()`."""

    def __init__(self, disks: Disks) -> None:
        self.disks = disks
        limits = next(iter(disks.nodes.values())).limits
        self.server = framing.Server({
            KIND_PUT: self._on_put, KIND_PUT_MANY: self._on_put_many, KIND_PUT_OPEN: self._on_put_open,
            KIND_PUT_PIECE: self._on_put_piece, KIND_PUT_ABORT: self._on_put_abort, KIND_GET: self._on_get,
            KIND_DELETE_MANY: self._on_delete_many, KIND_LIST: self._on_list, KIND_STAT: self._on_stat,
            KIND_CORRUPT: self._on_corrupt, KIND_GET_MANY: self._on_get_many,
        }, max_payload_bytes=frame_payload_max_bytes(limits))
        self._streams: dict[tuple[int, int], _Stream] = {}     # (id(connection), stream) -> stream
        self._watched: set[int] = set()                         # connections whose close aborts their streams
        self._tasks: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self, host: str, port: int) -> "FramedServer":
        await self.server.start(host, port)
        return self

    async def close(self) -> None:
        """Stop listening, drop the connections and cancel what is still running (streams are cut off)."""
        await self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------ answering (step 8)

    def _answer(self, connection: framing.Connection, frame: framing.Frame,
                work: Callable[[], Awaitable[Reply]]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._run(connection, frame.id, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, connection: framing.Connection, frame_id: int, work: Callable[[], Awaitable[Reply]]) -> None:
        try:
            kind, meta, payload = await work()
        except ShardStoreError as error:
            connection.reply_error(frame_id, error_text(error))
        except asyncio.CancelledError:
            connection.reply_error(frame_id, error_text(ShardStoreError("shardstore stopping")))
            raise
        except Exception as error:  # noqa: BLE001 - the boundary: log the unexpected, refuse the request
            log.exception("FramedRequestFailed peer=%s", connection.peer)
            connection.reply_error(frame_id, error_text(ShardStoreError(f"internal error: {error!r}")))
        else:
            connection.reply(frame_id, kind, meta, payload)

    @staticmethod
    def _parse(message_type, meta: bytes):
        try:
            return message_type.FromString(meta)
        except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise BadShardRequest(f"malformed {message_type.__name__}: {error}") from None

    # ------------------------------------------------------------ step 1: PUT

    def _on_put(self, connection: framing.Connection, frame: framing.Frame) -> None:
        async def work() -> Reply:
            request = self._parse(pb.PutShardRequest, frame.meta)
            node = self.disks.node(request.disk)
            if request.length != len(frame.payload):
                raise BadShardRequest(f"length {request.length} but {len(frame.payload)} bytes sent")
            put_time_us = await node.put(shard_of(request.id), len(frame.payload), frame.payload, None,
                                         list(request.block_checksums))
            return KIND_PUT, pb.PutShardResponse(put_time_us=put_time_us).SerializeToString(), b""
        self._answer(connection, frame, work)

    # ------------------------------------------------------------ step 2: PUT_MANY

    def _on_put_many(self, connection: framing.Connection, frame: framing.Frame) -> None:
        async def work() -> Reply:
            request = self._parse(pb.PutShardsRequest, frame.meta)
            node = self.disks.node(request.disk)
            if len(request.shards) > MANY_ITEMS_MAX:
                raise BadShardRequest(f"at most {MANY_ITEMS_MAX} shards per batch")
            if sum(item.length for item in request.shards) != len(frame.payload):
                raise BadShardRequest("the payload is not the shards' lengths")
            payload = memoryview(frame.payload)
            puts, offset = [], 0
            for item in request.shards:
                data = payload[offset:offset + item.length]
                offset += item.length
                puts.append(node.put(shard_of(item.id), item.length, data, None, list(item.block_checksums)))
            outcomes = []
            for result in await asyncio.gather(*puts, return_exceptions=True):
                if isinstance(result, ShardStoreError):
                    outcomes.append(refusal_outcome(result))
                elif isinstance(result, BaseException):
                    raise result
                else:
                    outcomes.append(pb.Outcome(code=0, put_time_us=result))
            return KIND_PUT_MANY, pb.PutShardsResponse(outcomes=outcomes).SerializeToString(), b""
        self._answer(connection, frame, work)

    # ------------------------------------------------------------ step 3: streamed put

    def _on_put_open(self, connection: framing.Connection, frame: framing.Frame) -> None:
        try:
            request = self._parse(pb.PutStreamOpen, frame.meta)
            node = self.disks.node(request.disk)
            key = (id(connection), request.stream)
            if key in self._streams:
                raise BadShardRequest(f"stream {request.stream} is already open")
        except ShardStoreError as error:
            connection.reply_error(frame.id, error_text(error))
            return
        stream = _Stream(connection, request.length)
        self._streams[key] = stream
        if id(connection) not in self._watched:
            self._watched.add(id(connection))
            connection.closed_future.add_done_callback(lambda _: self._connection_closed(connection))

        async def pieces() -> AsyncIterator:
            taken = 0
            while taken < stream.length:
                frame_id, piece = await stream.pieces.get()
                connection.reply(frame_id, KIND_PUT_PIECE)          # taken: the window moves on
                taken += len(piece)
                yield piece

        async def work() -> Reply:
            try:
                with node.stream_slot():
                    put_time_us = await node.put(shard_of(request.id), request.length, b"", pieces(),
                                                 stream.checksums, checksums_follow=True)
                return KIND_PUT_OPEN, pb.PutShardResponse(put_time_us=put_time_us).SerializeToString(), b""
            except ShardStoreError as error:
                stream.failed = error
                raise
            except asyncio.CancelledError:
                if stream.failed is None:                            # the server is stopping
                    stream.failed = ShardStoreError("shardstore stopping")
                    raise
                raise stream.failed from None                       # aborted: _fail_stream cancelled us
            finally:
                self._end_stream(key, stream)

        stream.task = self._answer(connection, frame, work)

    def _on_put_piece(self, connection: framing.Connection, frame: framing.Frame) -> None:
        stream = None
        try:
            request = self._parse(pb.PutStreamPiece, frame.meta)
            stream = self._streams.get((id(connection), request.stream))
            if stream is None:
                raise BadShardRequest(f"no open stream {request.stream} (failed, finished or never opened)")
            if stream.failed is not None:
                raise stream.failed
            size = len(frame.payload)
            block_size = next(iter(self.disks.nodes.values())).limits.CHECKSUM_BLOCK
            if request.offset != stream.received:
                raise BadShardRequest(f"piece at {request.offset}, expected {stream.received}")
            if stream.received + size > stream.length:
                raise BadShardRequest("shard longer than its length")
            if size % block_size and stream.received + size != stream.length:
                raise BadShardRequest(f"a piece but the last must be a multiple of {block_size} bytes")
            if len(request.block_checksums) != fmt.block_count(size, block_size):
                raise BadShardRequest("wrong number of block checksums for the piece")
        except ShardStoreError as error:
            connection.reply_error(frame.id, error_text(error))
            if stream is not None and stream.failed is None:
                self._fail_stream(stream, error)
            return
        stream.received += size
        stream.checksums.extend(request.block_checksums)
        stream.pieces.put_nowait((frame.id, frame.payload))

    def _on_put_abort(self, connection: framing.Connection, frame: framing.Frame) -> None:
        try:
            request = pb.PutStreamAbort.FromString(frame.meta)
        except Exception:  # noqa: BLE001 - a one-way frame: nothing to answer
            return
        stream = self._streams.get((id(connection), request.stream))
        if stream is not None:
            self._fail_stream(stream, ShardStoreError("stream aborted by the client"))
        if frame.type == framing.REQUEST:
            connection.reply(frame.id, KIND_PUT_ABORT)

    def _fail_stream(self, stream: _Stream, error: ShardStoreError) -> None:
        """Cancel the stream's put (the node cuts its record off); its OPEN is answered with `error`."""
        if stream.failed is None:
            stream.failed = error
        if stream.task is not None:
            stream.task.cancel()

    def _end_stream(self, key: tuple[int, int], stream: _Stream) -> None:
        if self._streams.get(key) is stream:
            del self._streams[key]
        error = stream.failed or BadShardRequest("the shard was complete before this piece")
        while not stream.pieces.empty():
            frame_id, _ = stream.pieces.get_nowait()
            stream.connection.reply_error(frame_id, error_text(error))

    def _connection_closed(self, connection: framing.Connection) -> None:
        self._watched.discard(id(connection))
        for (connection_id, _), stream in list(self._streams.items()):
            if connection_id == id(connection):
                self._fail_stream(stream, ShardStoreError("connection lost"))

    # ------------------------------------------------------------ step 4: GET

    def _on_get(self, connection: framing.Connection, frame: framing.Frame) -> None:
        async def work() -> Reply:
            request = self._parse(pb.GetShardRequest, frame.meta)
            reply, data = await _read_blocks(self.disks.node(request.disk), request)
            return KIND_GET, reply.SerializeToString(), data
        self._answer(connection, frame, work)

    # ------------------------------------------------------------ step 5: GET_MANY

    def _on_get_many(self, connection: framing.Connection, frame: framing.Frame) -> None:
        async def work() -> Reply:
            request = self._parse(pb.GetShardsRequest, frame.meta)
            items, payloads = [], []
            for result in await read_many(self.disks.node(request.disk), request.shards):
                if isinstance(result, ShardStoreError):
                    items.append(pb.GetShardsItem(outcome=refusal_outcome(result)))
                else:
                    reply, data = result
                    items.append(pb.GetShardsItem(outcome=pb.Outcome(code=0), reply=reply, payload_bytes=len(data)))
                    payloads.append(data)
            return KIND_GET_MANY, pb.GetShardsFrameReply(items=items).SerializeToString(), b"".join(payloads)
        self._answer(connection, frame, work)

    # ------------------------------------------------------------ steps 6-7

    def _on_delete_many(self, connection: framing.Connection, frame: framing.Frame) -> None:
        async def work() -> Reply:
            request = self._parse(pb.DeleteShardsRequest, frame.meta)
            node = self.disks.node(request.disk)
            if len(request.ids) > MANY_ITEMS_MAX:
                raise BadShardRequest(f"at most {MANY_ITEMS_MAX} shards per batch")
            results = await asyncio.gather(*(node.delete(shard_of(shard)) for shard in request.ids),
                                           return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return KIND_DELETE_MANY, b"", b""
        self._answer(connection, frame, work)

    def _on_list(self, connection: framing.Connection, frame: framing.Frame) -> None:
        async def work() -> Reply:
            request = self._parse(pb.ListShardsRequest, frame.meta)
            return KIND_LIST, list_page(self.disks.node(request.disk), request).SerializeToString(), b""
        self._answer(connection, frame, work)

    def _on_stat(self, connection: framing.Connection, frame: framing.Frame) -> None:
        async def work() -> Reply:
            request = self._parse(pb.StatRequest, frame.meta)
            return KIND_STAT, stat_pb(self.disks.node(request.disk)).SerializeToString(), b""
        self._answer(connection, frame, work)

    def _on_corrupt(self, connection: framing.Connection, frame: framing.Frame) -> None:
        async def work() -> Reply:
            request = self._parse(pb.CorruptRequest, frame.meta)
            node = self.disks.node(request.disk)
            return KIND_CORRUPT, pb.ScrubResponse(corrupt=[shard_pb(shard) for shard in sorted(node.corrupt)]) \
                .SerializeToString(), b""
        self._answer(connection, frame, work)


# ---------------------------------------------------------------- steps 4-5: one shard's blocks


def _blocks_of(entry: Entry, request: pb.GetShardRequest) -> tuple[int, int, int, int]:
    """The blocks covering the request's range of the shard `entry` describes: (first,
    one past the last, the shard offset of the first's first byte, of one past the
    last's last byte); none for an empty range. A range outside the shard is BadShardRequest."""
    end = request.end if request.has_end else entry.length
    if not 0 <= request.start <= end <= entry.length:
        raise BadShardRequest(f"range {request.start}-{end} outside 0-{entry.length}")
    block = entry.block_size
    first, last = request.start // block, -(-end // block)
    if request.start == end:
        first = last = 0
    return first, last, first * block, min(last * block, entry.length)


def _blocks_bytes(node: Node, request: pb.GetShardRequest) -> int:
    """How many bytes `_read_blocks` would send for `request` (0 for one it will refuse)."""
    try:
        _, _, start, stop = _blocks_of(node.locate(shard_of(request.id)), request)
    except ShardStoreError:
        return 0
    return stop - start


async def _read_blocks(node: Node, request: pb.GetShardRequest) -> tuple[pb.GetShardFrameReply, bytes | bytearray]:
    """Step 4 for one shard: its blocks covering the range, read and verified by the
    node (a mismatch is ShardCorrupt and a finding), and the reply naming them and
    their stored checksums. Refusals: ShardNotFound, BadShardRequest (id or range)."""
    shard = shard_of(request.id)
    entry = node.locate(shard)
    first, last, start, stop = _blocks_of(entry, request)
    data = b""
    if stop > start:
        # `read` locates the shard again in this same turn (no await between): the same entry.
        pieces = [piece async for piece in await node.read(shard, start, stop, piece_bytes=stop - start)]
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)    # one whole piece (bytes or bytearray): no copy
    reply = pb.GetShardFrameReply(length=entry.length, start=start, block_size=entry.block_size,
                                  block_checksums=entry.checksums[first:last])
    return reply, data


async def read_many(node: Node, requests: Sequence[pb.GetShardRequest]) \
        -> list[ShardStoreError | tuple[pb.GetShardFrameReply, bytes | bytearray]]:
    """Step 5 for GET_MANY and the gRPC GetShards: the bounds, checked before anything
    is read (beyond them, BadShardRequest for the whole request), then step 4 for every
    item concurrently. Per item, in request order: its reply and blocks, or its refusal."""
    if len(requests) > MANY_ITEMS_MAX:
        raise BadShardRequest(f"at most {MANY_ITEMS_MAX} shards per batch")
    total = sum(_blocks_bytes(node, item) for item in requests)
    if total > MANY_PAYLOAD_MAX_BYTES:
        raise BadShardRequest(f"{total} bytes of blocks exceed a batch's {MANY_PAYLOAD_MAX_BYTES}")
    results = await asyncio.gather(*(_read_blocks(node, item) for item in requests), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, ShardStoreError):
            raise result
    return results


# ---------------------------------------------------------------- shared with the gRPC service

_GRPC_CODES = {"OK": 0, "INTERNAL": 13, "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "DATA_LOSS": 15,
               "RESOURCE_EXHAUSTED": 8, "INVALID_ARGUMENT": 3}


def _grpc_code(error: ShardStoreError) -> int:
    return _GRPC_CODES.get(error.status, 13)


def refusal_outcome(error: ShardStoreError) -> pb.Outcome:
    """A batch item's refusal: its status code, message and class name (the client's exception)."""
    return pb.Outcome(code=_grpc_code(error), message=str(error), error=type(error).__name__)


def list_page(node: Node, request: pb.ListShardsRequest) -> pb.ListShardsResponse:
    after = shard_of(request.start_after) if request.HasField("start_after") else None
    limit = min(request.limit or node.limits.SHARD_LIST_MAX, node.limits.SHARD_LIST_MAX)
    page = node.list(after, limit)
    return pb.ListShardsResponse(
        shards=[pb.ShardInfo(id=shard_pb(shard), length=entry.length, put_time_us=entry.put_time_us)
                for shard, entry in page],
        truncated=len(page) == limit)


def stat_pb(node: Node) -> pb.StatResponse:
    stats = node.stat()
    return pb.StatResponse(
        capacity_bytes=stats.capacity_bytes, used_bytes=stats.used_bytes, free_bytes=stats.free_bytes,
        live_bytes=stats.live_bytes, fill_ratio=stats.fill_ratio,
        read_bytes_per_s=stats.read_bytes_per_s, write_bytes_per_s=stats.write_bytes_per_s,
        read_ops_per_s=stats.read_ops_per_s, write_ops_per_s=stats.write_ops_per_s,
        in_flight=stats.in_flight, corrupt_count=stats.corrupt_count, extent_count=stats.extent_count,
        commit_batches=stats.commit_batches, committed_records=stats.committed_records)

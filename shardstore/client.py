"""The shardstore data-path client: one `ShardClient` per shardstore process (its
--data-listen address), on one long-lived framed connection (common/framing.py),
many requests in flight. The wire side is shardstore/framed.py (steps cited below).

Contract:
- Every call names its disk and has a deadline (`timeout_s`). An unreachable or
  silent store raises common.framing's ConnectionLost / DeadlineExceeded, so callers
  route around the disk; the connection reopens lazily with backoff.
- A refusal raises the node's own exception class (ShardNotFound, ShardExists,
  ShardCorrupt, DiskFull, TooBusy, BadShardRequest, UnknownDisk; else
  ShardStoreError); `put_many` and `get_many` return it per shard instead.
- Puts carry the sender's xxh3-128 per CHECKSUM_BLOCK (`block_checksums`), which
  the store verifies before its ack. A get verifies every block it receives against
  the stored checksums the store sends with them: a mismatch is ShardCorrupt
  (`_verified`, the one check both `get` and `get_many` use).
- Payloads are not copied here except where the frame needs them contiguous
  (`put_many` joins its small shards); a buffer handed to a put must not change
  until the call returns. A get returns the received buffer or a memoryview of it;
  `get_many` memoryviews of its one received buffer.
- Frames that would break the framed protocol's bounds are refused here
  (BadShardRequest), never sent: an oversized frame would abort the connection.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from typing import NamedTuple, Sequence

import xxhash

from common import framing
from common.limits import DEFAULT_LIMITS, Limits
from shardstore import format as fmt
from shardstore import shardstore_pb2 as pb
from shardstore.format import ShardId
from shardstore.framed import (
    KIND_CORRUPT, KIND_DELETE_MANY, KIND_GET, KIND_GET_MANY, KIND_LIST, KIND_PUT, KIND_PUT_ABORT, KIND_PUT_MANY,
    KIND_PUT_OPEN, KIND_PUT_PIECE, KIND_STAT, MANY_ITEMS_MAX, MANY_PAYLOAD_MAX_BYTES, frame_payload_max_bytes,
    shard_of, shard_pb,
)
from shardstore.node import (
    ERRORS, BadShardRequest, DiskFull, ShardCorrupt, ShardExists, ShardNotFound, ShardStoreError, Stats, TooBusy,
    UnknownDisk,
)

__all__ = ["ShardClient", "ShardWriter", "ShardInfo", "ShardId", "Stats", "block_checksums", "ShardStoreError",
           "ShardNotFound", "ShardExists", "ShardCorrupt", "DiskFull", "TooBusy", "BadShardRequest", "UnknownDisk"]

WINDOW_PIECES_DEFAULT = 4


def block_checksums(data, block_bytes: int) -> list[bytes]:
    """The sender's xxh3-128 of each `block_bytes` block of `data` (the last may be shorter)."""
    return fmt.block_checksums(data, block_bytes)


class ShardInfo(NamedTuple):
    id: ShardId
    length: int
    put_time_us: int


def refusal(error: framing.RemoteError) -> ShardStoreError:
    """The store's ERROR frame ("<class name>: <message>") as that exception."""
    name, separator, message = str(error).partition(": ")
    kind = ERRORS.get(name) if separator else None
    return kind(message) if kind is not None else ShardStoreError(str(error))


def _refused(outcome: pb.Outcome) -> ShardStoreError:
    """A batch item's refusal (code != 0) as the node's exception class."""
    return ERRORS.get(outcome.error, ShardStoreError)(outcome.message)


def _outcome(outcome: pb.Outcome) -> int | ShardStoreError:
    if outcome.code == 0:
        return outcome.put_time_us
    return _refused(outcome)


def _verified(reply: pb.GetShardFrameReply, payload, start: int, end: int | None):
    """Framed step 4 at this end: `payload` must be exactly the blocks covering
    [start, end) of the shard `reply` describes, each matching its stored xxh3-128;
    returns the bytes [start, end) (`payload` itself or a memoryview of it). Anything
    else is ShardCorrupt: bytes that do not match never leave this function."""
    end = reply.length if end is None else end
    block = reply.block_size
    if start == end:
        return b""
    expected = min(-(-end // block) * block, reply.length) - reply.start if block else -1
    if block <= 0 or reply.start != start // block * block or len(payload) != expected or \
            len(reply.block_checksums) != fmt.block_count(len(payload), block):
        raise ShardCorrupt(f"the store sent {len(payload)} bytes from {reply.start} for {start}-{end}")
    view = memoryview(payload)
    for number, checksum in enumerate(reply.block_checksums):
        if xxhash.xxh3_128_digest(view[number * block:(number + 1) * block]) != checksum:
            raise ShardCorrupt(f"block {reply.start // block + number} failed its checksum in transit")
    low, high = start - reply.start, end - reply.start
    if low == 0 and high == len(payload):
        return payload
    return view[low:high]


class ShardClient:
    def __init__(self, address: str, *, limits: Limits = DEFAULT_LIMITS, connect_timeout_s: float = 2.0,
                 backoff_initial_s: float = 0.01, backoff_max_s: float = 1.0) -> None:
        host, separator, port = address.rpartition(":")
        if not separator or not port.isdigit():
            raise ValueError(f"shardstore address {address!r} is not HOST:PORT")
        self.address = address
        self.limits = limits
        self._payload_max_bytes = frame_payload_max_bytes(limits)
        self._framing = framing.Client(host.strip("[]"), int(port),
                                       max_payload_bytes=max(framing.MAX_PAYLOAD_BYTES_DEFAULT,
                                                             limits.SHARD_MAX_BYTES + (1 << 20)),
                                       connect_timeout_s=connect_timeout_s, backoff_initial_s=backoff_initial_s,
                                       backoff_max_s=backoff_max_s)
        self._stream_ids = itertools.count(1)

    async def _call(self, kind: int, meta: bytes, payload=b"", *, timeout_s: float) -> framing.Frame:
        try:
            return await self._framing.call(kind, meta, payload, timeout_s=timeout_s)
        except framing.RemoteError as error:
            raise refusal(error) from None

    # ------------------------------------------------------------ puts (framed steps 1-3)

    async def put(self, disk: str, shard: ShardId, data, block_checksums: Sequence[bytes], *,
                  timeout_s: float) -> int:
        """One shard in one frame; returns its put time (µs) once durable."""
        if len(data) > self._payload_max_bytes:
            raise BadShardRequest(f"{len(data)} bytes do not fit one frame: use open_put")
        meta = pb.PutShardRequest(disk=disk, id=shard_pb(shard), length=len(data), block_checksums=block_checksums)
        frame = await self._call(KIND_PUT, meta.SerializeToString(), data, timeout_s=timeout_s)
        return pb.PutShardResponse.FromString(frame.meta).put_time_us

    async def put_many(self, disk: str, items: Sequence[tuple[ShardId, object, Sequence[bytes]]], *,
                       timeout_s: float) -> list[int | ShardStoreError]:
        """Small shards of one disk in one frame and one fsync; per shard its put time or its refusal."""
        if len(items) > MANY_ITEMS_MAX:
            raise BadShardRequest(f"at most {MANY_ITEMS_MAX} shards per put_many")
        total = sum(len(data) for _, data, _ in items)
        if total > MANY_PAYLOAD_MAX_BYTES:
            raise BadShardRequest(f"{total} bytes exceed a put_many's {MANY_PAYLOAD_MAX_BYTES}")
        meta = pb.PutShardsRequest(disk=disk, shards=[
            pb.PutShardRequest(id=shard_pb(shard), length=len(data), block_checksums=checksums)
            for shard, data, checksums in items])
        payload = b"".join(data for _, data, _ in items)
        frame = await self._call(KIND_PUT_MANY, meta.SerializeToString(), payload, timeout_s=timeout_s)
        outcomes = pb.PutShardsResponse.FromString(frame.meta).outcomes
        if len(outcomes) != len(items):
            raise ShardStoreError(f"{len(outcomes)} outcomes for {len(items)} shards")
        return [_outcome(outcome) for outcome in outcomes]

    def open_put(self, disk: str, shard: ShardId, length: int, *, timeout_s: float,
                 window_pieces: int = WINDOW_PIECES_DEFAULT) -> "ShardWriter":
        """A streamed put of a shard of `length` bytes; `timeout_s` covers the whole stream."""
        return ShardWriter(self, disk, shard, length, timeout_s, window_pieces)

    # ------------------------------------------------------------ gets (framed steps 4-5)

    async def get(self, disk: str, shard: ShardId, start: int = 0, end: int | None = None, *, timeout_s: float):
        """Exactly the bytes [start, end) of the shard, every block verified here."""
        meta = pb.GetShardRequest(disk=disk, id=shard_pb(shard), start=start, end=end or 0,
                                  has_end=end is not None)
        frame = await self._call(KIND_GET, meta.SerializeToString(), timeout_s=timeout_s)
        return _verified(pb.GetShardFrameReply.FromString(frame.meta), frame.payload, start, end)

    async def get_many(self, disk: str, items: Sequence[tuple[ShardId, int, int | None]], *,
                       timeout_s: float) -> list:
        """Ranges [start, end) (end None: to the shard's end) of small shards of one disk
        in one frame: per item, in order, exactly its bytes (verified as `get` verifies
        them) or the exception `get` would have raised for it alone (ShardNotFound,
        ShardCorrupt, BadShardRequest, ...). A failure of the whole call (ConnectionLost,
        DeadlineExceeded, a refused or malformed frame) raises instead."""
        if len(items) > MANY_ITEMS_MAX:
            raise BadShardRequest(f"at most {MANY_ITEMS_MAX} shards per get_many")
        asked = sum(max(0, end - start) for _, start, end in items if end is not None)
        if asked > MANY_PAYLOAD_MAX_BYTES:
            raise BadShardRequest(f"{asked} bytes exceed a get_many's {MANY_PAYLOAD_MAX_BYTES}")
        meta = pb.GetShardsRequest(disk=disk, shards=[
            pb.GetShardRequest(id=shard_pb(shard), start=start, end=end or 0, has_end=end is not None)
            for shard, start, end in items])
        frame = await self._call(KIND_GET_MANY, meta.SerializeToString(), timeout_s=timeout_s)
        answers = pb.GetShardsFrameReply.FromString(frame.meta).items
        if len(answers) != len(items):
            raise ShardStoreError(f"{len(answers)} answers for {len(items)} shards")
        payload = memoryview(frame.payload)
        if sum(answer.payload_bytes for answer in answers) != len(payload):
            raise ShardCorrupt(f"the store sent {len(payload)} bytes, its items name another total")
        results: list = []
        offset = 0
        for (_, start, end), answer in zip(items, answers):
            piece = payload[offset:offset + answer.payload_bytes]
            offset += answer.payload_bytes
            if answer.outcome.code != 0:
                results.append(_refused(answer.outcome))
                continue
            try:
                results.append(_verified(answer.reply, piece, start, end))
            except ShardCorrupt as error:
                results.append(error)
        return results

    # ------------------------------------------------------------ the rest (framed steps 6-7)

    async def delete_many(self, disk: str, shards: Sequence[ShardId], *, timeout_s: float) -> None:
        """Delete shards, durably on return; deleting a missing shard is OK."""
        batches = [shards[i:i + MANY_ITEMS_MAX] for i in range(0, len(shards), MANY_ITEMS_MAX)] or [[]]
        await asyncio.gather(*(
            self._call(KIND_DELETE_MANY, pb.DeleteShardsRequest(disk=disk, ids=[shard_pb(s) for s in batch])
                       .SerializeToString(), timeout_s=timeout_s) for batch in batches))

    async def list(self, disk: str, start_after: ShardId | None = None, limit: int = 1000, *,
                   timeout_s: float) -> tuple[list[ShardInfo], bool]:
        """A page of the disk's shards in id order after `start_after`; True if there may be more."""
        meta = pb.ListShardsRequest(disk=disk, limit=limit)
        if start_after is not None:
            meta.start_after.CopyFrom(shard_pb(start_after))
        frame = await self._call(KIND_LIST, meta.SerializeToString(), timeout_s=timeout_s)
        page = pb.ListShardsResponse.FromString(frame.meta)
        return [ShardInfo(shard_of(info.id), info.length, info.put_time_us) for info in page.shards], page.truncated

    async def stat(self, disk: str, *, timeout_s: float) -> Stats:
        frame = await self._call(KIND_STAT, pb.StatRequest(disk=disk).SerializeToString(), timeout_s=timeout_s)
        reply = pb.StatResponse.FromString(frame.meta)
        return Stats(**{name: getattr(reply, name) for name in Stats.__dataclass_fields__})

    async def corrupt(self, disk: str, *, timeout_s: float) -> list[ShardId]:
        """Shards found corrupt (by the scrubber or a read) and not since deleted or re-put."""
        frame = await self._call(KIND_CORRUPT, pb.CorruptRequest(disk=disk).SerializeToString(), timeout_s=timeout_s)
        return [shard_of(shard) for shard in pb.ScrubResponse.FromString(frame.meta).corrupt]

    async def close(self) -> None:
        await self._framing.close()


class ShardWriter:
    """One streamed put (framed step 3): `await write(piece, checksums)` per piece, in order,
    each a multiple of CHECKSUM_BLOCK but the last and at most SHARD_CHUNK_MAX_BYTES
    (≥ 1 MiB pieces are the efficient size); `write` waits while `window_pieces` pieces
    are unanswered. `finish()` returns the put time once the shard is durable; `abort()`
    (or leaving `async with` by an exception) drops it, leaving nothing visible.
    After any error the writer is dead: every later call raises that error."""

    def __init__(self, client: ShardClient, disk: str, shard: ShardId, length: int, timeout_s: float,
                 window_pieces: int) -> None:
        limits = client.limits
        if not 0 <= length <= limits.SHARD_MAX_BYTES:
            raise BadShardRequest(f"shard length must be in 0..{limits.SHARD_MAX_BYTES}")
        if window_pieces < 1:
            raise ValueError("window_pieces must be at least 1")
        self._client = client
        self._disk, self._shard, self.length = disk, shard, length
        self._timeout_s = timeout_s
        self._window = window_pieces
        self._deadline: float | None = None
        self._connection: framing.Connection | None = None
        self._stream = next(client._stream_ids)
        self._open: asyncio.Future | None = None
        self._pieces: collections.deque[asyncio.Future] = collections.deque()
        self.offset = 0
        self._error: BaseException | None = None
        self._finished = False

    async def __aenter__(self) -> "ShardWriter":
        return self

    async def __aexit__(self, kind, error, traceback) -> None:
        if error is not None or not self._finished:
            await self.abort()

    def _remaining_s(self) -> float:
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + self._timeout_s
        remaining = self._deadline - loop.time()
        if remaining <= 0:
            raise framing.DeadlineExceeded(f"streamed put to {self._client.address}: deadline passed")
        return remaining

    async def _start(self) -> None:
        remaining = self._remaining_s()
        try:
            self._connection = await asyncio.wait_for(self._client._framing.connect(), remaining)
        except asyncio.TimeoutError:
            raise framing.DeadlineExceeded(f"connect to {self._client.address}: deadline passed") from None
        meta = pb.PutStreamOpen(disk=self._disk, id=shard_pb(self._shard), length=self.length, stream=self._stream)
        # Tasks start in creation order, and a call writes its frame before its first
        # wait: the OPEN leaves before any piece, on this same connection.
        self._open = asyncio.ensure_future(self._connection.call(KIND_PUT_OPEN, meta.SerializeToString(),
                                                                 timeout_s=self._remaining_s()))

    def _alive(self) -> None:
        if self._error is not None:
            raise self._error
        if self._finished:
            raise BadShardRequest("the streamed put is finished")

    async def write(self, piece, block_checksums: Sequence[bytes]) -> None:
        self._alive()
        block = self._client.limits.CHECKSUM_BLOCK
        size = len(piece)
        problem = None
        if self.offset + size > self.length:
            problem = f"piece of {size} at {self.offset} passes the shard's length {self.length}"
        elif size % block and self.offset + size != self.length:
            problem = f"a piece but the last must be a multiple of {block} bytes"
        elif size > self._client.limits.SHARD_CHUNK_MAX_BYTES:
            problem = f"a piece is at most {self._client.limits.SHARD_CHUNK_MAX_BYTES} bytes"
        elif len(block_checksums) != fmt.block_count(size, block):
            problem = "wrong number of block checksums for the piece"
        if problem is not None:
            raise BadShardRequest(problem)                 # nothing sent: the writer stays usable
        try:
            if self._open is None:
                await self._start()
            while len(self._pieces) >= self._window:
                await self._settle(self._pieces.popleft())
            meta = pb.PutStreamPiece(stream=self._stream, offset=self.offset, block_checksums=block_checksums)
            self._pieces.append(asyncio.ensure_future(self._connection.call(
                KIND_PUT_PIECE, meta.SerializeToString(), piece, timeout_s=self._remaining_s())))
            self.offset += size
        except BaseException as error:
            await self._fail(error)
            raise self._error from None

    async def finish(self) -> int:
        """The put time (µs) of the shard, once the store has made it durable."""
        self._alive()
        try:
            if self.offset != self.length:
                raise BadShardRequest(f"finish after {self.offset} of {self.length} bytes")
            if self._open is None:
                await self._start()
            while self._pieces:
                await self._settle(self._pieces.popleft())
            frame = await self._open
        except BaseException as error:
            await self._fail(error)
            raise self._error from None
        self._finished = True
        return pb.PutShardResponse.FromString(frame.meta).put_time_us

    async def abort(self) -> None:
        """Drop the stream: the store cuts off what it wrote; nothing becomes visible."""
        if self._finished:
            return
        if self._error is None:
            self._error = ShardStoreError("streamed put aborted")
        await self._cancel()

    async def _settle(self, piece: asyncio.Future) -> None:
        try:
            await piece
        except framing.RemoteError as error:
            # The stream failed at the store: its OPEN answers why (the node's refusal).
            if self._open is not None:
                await asyncio.wait({self._open}, timeout=min(1.0, max(0.0, self._deadline - asyncio.get_running_loop().time())))
                if self._open.done() and not self._open.cancelled() and \
                        isinstance(self._open.exception(), framing.RemoteError):
                    raise refusal(self._open.exception()) from None
            raise refusal(error) from None

    async def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = refusal(error) if isinstance(error, framing.RemoteError) else error
        await self._cancel()

    async def _cancel(self) -> None:
        connection = self._connection
        if self._open is not None and not self._open.done() and connection is not None and not connection.closed:
            connection.send(KIND_PUT_ABORT, pb.PutStreamAbort(stream=self._stream).SerializeToString())
        waiting = list(self._pieces) + ([self._open] if self._open is not None else [])
        self._pieces.clear()
        for future in waiting:
            future.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

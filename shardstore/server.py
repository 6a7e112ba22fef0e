"""The gRPC shell around a `Node`: decode requests, call the node, map refusals to statuses.

The one error boundary of the process: `ShardStoreError` subclasses carry their
status name; anything else is logged and answered INTERNAL. Bugs
(`InvariantViolation`) are not caught here either — they surface as INTERNAL with
the traceback logged.

Stream bounds: PutShard, PutShardUnary and GetShard take a stream slot
(SHARD_STREAMS_MAX: calls holding shard bytes) and are refused RESOURCE_EXHAUSTED
beyond it. A client that goes away mid-put cancels the
handler; the node cuts the unfinished record off, so nothing becomes visible.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import grpc

from shardstore import shardstore_pb2 as pb
from shardstore import shardstore_pb2_grpc as pb_grpc
from shardstore.format import ShardId
from shardstore.node import BadShardRequest, Node, ShardStoreError

log = logging.getLogger("cairn.shardstore")


def _shard(message: pb.ShardId) -> ShardId:
    return ShardId(bytes(message.data_id), message.shard_index)


def _status(error: ShardStoreError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.status)


class ShardStoreService(pb_grpc.ShardStoreServicer):
    def __init__(self, node: Node) -> None:
        self.node = node

    async def _fail(self, context: grpc.aio.ServicerContext, error: ShardStoreError) -> None:
        await context.abort(_status(error), str(error))

    async def PutShard(self, request_iterator: AsyncIterator[pb.PutShardRequest], context) -> pb.PutShardResponse:
        try:
            with self.node.stream_slot():
                first = await anext(aiter(request_iterator), None)
                if first is None or not first.HasField("id"):
                    raise BadShardRequest("the first message must name the shard")

                async def rest() -> AsyncIterator[bytes]:
                    async for message in request_iterator:
                        yield message.data

                checksums = list(first.block_checksums) or None
                put_time_us = await self.node.put(_shard(first.id), first.length, first.data, rest(), checksums)
        except ShardStoreError as error:
            await self._fail(context, error)
        return pb.PutShardResponse(put_time_us=put_time_us)

    async def PutShardUnary(self, request: pb.PutShardRequest, context) -> pb.PutShardResponse:
        """A whole shard in one message (length == len(data)), answered like PutShard;
        it rides the node's group commit with every other small put."""
        try:
            with self.node.stream_slot():
                if not request.HasField("id"):
                    raise BadShardRequest("the message must name the shard")
                checksums = list(request.block_checksums) or None
                put_time_us = await self.node.put(_shard(request.id), request.length, request.data, None, checksums)
        except ShardStoreError as error:
            await self._fail(context, error)
        return pb.PutShardResponse(put_time_us=put_time_us)

    async def PutShards(self, request: pb.PutShardsRequest, context) -> pb.PutShardsResponse:
        """Many small shards, one group commit: every put is queued before any waits."""

        async def one(message: pb.PutShardRequest) -> pb.Outcome:
            try:
                checksums = list(message.block_checksums) or None
                await self.node.put(_shard(message.id), message.length, message.data, None, checksums)
                return pb.Outcome(code=0)
            except ShardStoreError as error:
                return pb.Outcome(code=_status(error).value[0], message=str(error))

        outcomes = await asyncio.gather(*(one(message) for message in request.shards))
        return pb.PutShardsResponse(outcomes=outcomes)

    async def GetShard(self, request: pb.GetShardRequest, context):
        try:
            with self.node.stream_slot():
                shard = _shard(request.id)
                entry = self.node.locate(shard)
                end = request.end if request.has_end else None
                pieces = await self.node.read(shard, request.start, end)
                first = True
                async for piece in pieces:
                    yield pb.GetShardResponse(data=piece, length=entry.length if first else 0)
                    first = False
                if first:
                    yield pb.GetShardResponse(data=b"", length=entry.length)
        except ShardStoreError as error:
            await self._fail(context, error)

    async def DeleteShard(self, request: pb.DeleteShardRequest, context) -> pb.DeleteShardResponse:
        try:
            await self.node.delete(_shard(request.id))
        except ShardStoreError as error:
            await self._fail(context, error)
        return pb.DeleteShardResponse()

    async def ListShards(self, request: pb.ListShardsRequest, context) -> pb.ListShardsResponse:
        try:
            after = _shard(request.start_after) if request.HasField("start_after") else None
            limit = min(request.limit or self.node.limits.SHARD_LIST_MAX, self.node.limits.SHARD_LIST_MAX)
            page = self.node.list(after, limit)
        except ShardStoreError as error:
            await self._fail(context, error)
        return pb.ListShardsResponse(
            shards=[pb.ShardInfo(id=pb.ShardId(data_id=shard.data_id, shard_index=shard.shard_index),
                                 length=entry.length, put_time_us=entry.put_time_us) for shard, entry in page],
            truncated=len(page) == limit)

    async def Stat(self, request, context) -> pb.StatResponse:
        stats = self.node.stat()
        return pb.StatResponse(
            capacity_bytes=stats.capacity_bytes, used_bytes=stats.used_bytes, free_bytes=stats.free_bytes,
            live_bytes=stats.live_bytes, fill_ratio=stats.fill_ratio,
            read_bytes_per_s=stats.read_bytes_per_s, write_bytes_per_s=stats.write_bytes_per_s,
            read_ops_per_s=stats.read_ops_per_s, write_ops_per_s=stats.write_ops_per_s,
            in_flight=stats.in_flight, corrupt_count=stats.corrupt_count, extent_count=stats.extent_count,
            commit_batches=stats.commit_batches, committed_records=stats.committed_records)

    async def Scrub(self, request: pb.ScrubRequest, context) -> pb.ScrubResponse:
        if request.run_now:
            await self.node.scrub()
        return pb.ScrubResponse(corrupt=[pb.ShardId(data_id=shard.data_id, shard_index=shard.shard_index)
                                         for shard in sorted(self.node.corrupt)])

    async def Compact(self, request, context) -> pb.CompactResponse:
        return pb.CompactResponse(extents_dropped=await self.node.compact())


async def serve(node: Node, listen: str) -> grpc.aio.Server:
    """Start serving `node` on `listen` (HOST:PORT); returns the started server."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", node.limits.SHARD_CHUNK_MAX_BYTES + (1 << 20)),
        ("grpc.max_send_message_length", node.limits.SHARD_CHUNK_MAX_BYTES + (1 << 20)),
        ("grpc.max_concurrent_streams", node.limits.SHARD_STREAMS_MAX + 64),
    ])
    pb_grpc.add_ShardStoreServicer_to_server(ShardStoreService(node), server)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    return server

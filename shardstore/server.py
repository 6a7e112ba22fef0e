"""The gRPC shell around a process's `Node`s: decode requests, route each to its disk's
node (`framed.Disks`: the request's `disk`, or the only one), call it, map refusals
to statuses.

The one error boundary of the process: `ShardStoreError` subclasses carry their
status name; anything else is logged and answered INTERNAL. Bugs
(`InvariantViolation`) are not caught here either — they surface as INTERNAL with
the traceback logged.

Stream bounds: PutShard, PutShardUnary, GetShard and GetShards take a stream slot
(SHARD_STREAMS_MAX: calls holding shard bytes) and are refused RESOURCE_EXHAUSTED
beyond it. A client that goes away mid-put cancels the
handler; the node cuts the unfinished record off, so nothing becomes visible.

GetShards is the framed GET_MANY (framed.py step 5) with the same code
(`framed.read_many`): the same bounds, checked before anything is read and refusing
the call whole (INVALID_ARGUMENT), and per-item outcomes. Its answer holds up to
MANY_PAYLOAD_MAX_BYTES of blocks in one message, so the send limit is sized for it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import grpc

from shardstore import shardstore_pb2 as pb
from shardstore import shardstore_pb2_grpc as pb_grpc
from shardstore.format import ShardId
from shardstore.framed import MANY_PAYLOAD_MAX_BYTES, Disks, list_page, read_many, refusal_outcome, stat_pb
from shardstore.node import BadShardRequest, ShardStoreError

log = logging.getLogger("cairn.shardstore")


def _shard(message: pb.ShardId) -> ShardId:
    return ShardId(bytes(message.data_id), message.shard_index)


def _status(error: ShardStoreError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.status)


class ShardStoreService(pb_grpc.ShardStoreServicer):
    def __init__(self, disks: Disks) -> None:
        self.disks = disks

    async def _fail(self, context: grpc.aio.ServicerContext, error: ShardStoreError) -> None:
        await context.abort(_status(error), str(error))

    async def PutShard(self, request_iterator: AsyncIterator[pb.PutShardRequest], context) -> pb.PutShardResponse:
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None or not first.HasField("id"):
                raise BadShardRequest("the first message must name the shard")
            node = self.disks.node(first.disk)
            with node.stream_slot():

                async def rest() -> AsyncIterator[bytes]:
                    async for message in request_iterator:
                        yield message.data

                checksums = list(first.block_checksums) or None
                put_time_us = await node.put(_shard(first.id), first.length, first.data, rest(), checksums)
        except ShardStoreError as error:
            await self._fail(context, error)
        return pb.PutShardResponse(put_time_us=put_time_us)

    async def PutShardUnary(self, request: pb.PutShardRequest, context) -> pb.PutShardResponse:
        """A whole shard in one message (length == len(data)), answered like PutShard;
        it rides the node's group commit with every other small put."""
        try:
            node = self.disks.node(request.disk)
            with node.stream_slot():
                if not request.HasField("id"):
                    raise BadShardRequest("the message must name the shard")
                checksums = list(request.block_checksums) or None
                put_time_us = await node.put(_shard(request.id), request.length, request.data, None, checksums)
        except ShardStoreError as error:
            await self._fail(context, error)
        return pb.PutShardResponse(put_time_us=put_time_us)

    async def PutShards(self, request: pb.PutShardsRequest, context) -> pb.PutShardsResponse:
        """Many small shards, one group commit: every put is queued before any waits."""

        try:
            node = self.disks.node(request.disk)
        except ShardStoreError as error:
            await self._fail(context, error)

        async def one(message: pb.PutShardRequest) -> pb.Outcome:
            try:
                checksums = list(message.block_checksums) or None
                put_time_us = await node.put(_shard(message.id), message.length, message.data, None, checksums)
                return pb.Outcome(code=0, put_time_us=put_time_us)
            except ShardStoreError as error:
                return pb.Outcome(code=_status(error).value[0], message=str(error), error=type(error).__name__)

        outcomes = await asyncio.gather(*(one(message) for message in request.shards))
        return pb.PutShardsResponse(outcomes=outcomes)

    async def GetShard(self, request: pb.GetShardRequest, context):
        try:
            node = self.disks.node(request.disk)
            with node.stream_slot():
                shard = _shard(request.id)
                entry = node.locate(shard)
                end = request.end if request.has_end else None
                pieces = await node.read(shard, request.start, end)
                first = True
                async for piece in pieces:
                    yield pb.GetShardResponse(data=bytes(piece), length=entry.length if first else 0)  # protobuf takes no bytearray
                    first = False
                if first:
                    yield pb.GetShardResponse(data=b"", length=entry.length)
        except ShardStoreError as error:
            await self._fail(context, error)

    async def GetShards(self, request: pb.GetShardsRequest, context) -> pb.GetShardsResponse:
        """Ranges of small shards of one disk in one call: per item, in order, the blocks
        covering its range with their stored checksums (as GET), or its own refusal."""
        try:
            node = self.disks.node(request.disk)
            with node.stream_slot():
                results = await read_many(node, request.shards)
        except ShardStoreError as error:
            await self._fail(context, error)
        items = []
        for result in results:
            if isinstance(result, ShardStoreError):
                items.append(pb.GetShardsResponseItem(outcome=refusal_outcome(result)))
            else:
                reply, data = result
                items.append(pb.GetShardsResponseItem(outcome=pb.Outcome(code=0), reply=reply,
                                                      data=bytes(data)))    # protobuf takes no bytearray
        return pb.GetShardsResponse(items=items)

    async def DeleteShard(self, request: pb.DeleteShardRequest, context) -> pb.DeleteShardResponse:
        try:
            await self.disks.node(request.disk).delete(_shard(request.id))
        except ShardStoreError as error:
            await self._fail(context, error)
        return pb.DeleteShardResponse()

    async def ListShards(self, request: pb.ListShardsRequest, context) -> pb.ListShardsResponse:
        try:
            return list_page(self.disks.node(request.disk), request)
        except ShardStoreError as error:
            await self._fail(context, error)

    async def Stat(self, request: pb.StatRequest, context) -> pb.StatResponse:
        try:
            return stat_pb(self.disks.node(request.disk))
        except ShardStoreError as error:
            await self._fail(context, error)

    async def Scrub(self, request: pb.ScrubRequest, context) -> pb.ScrubResponse:
        try:
            node = self.disks.node(request.disk)
        except ShardStoreError as error:
            await self._fail(context, error)
        if request.run_now:
            await node.scrub()
        return pb.ScrubResponse(corrupt=[pb.ShardId(data_id=shard.data_id, shard_index=shard.shard_index)
                                         for shard in sorted(node.corrupt)])

    async def Compact(self, request: pb.CompactRequest, context) -> pb.CompactResponse:
        try:
            node = self.disks.node(request.disk)
        except ShardStoreError as error:
            await self._fail(context, error)
        return pb.CompactResponse(extents_dropped=await node.compact())


async def serve(disks: Disks, listen: str) -> tuple[grpc.aio.Server, int]:
    """Start serving `disks` on `listen` (HOST:PORT, port 0 picks one); returns the
    started server and the port it bound."""
    limits = next(iter(disks.nodes.values())).limits
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limits.SHARD_CHUNK_MAX_BYTES + (1 << 20)),
        ("grpc.max_send_message_length",          # GetShards answers hold up to MANY_PAYLOAD_MAX_BYTES of blocks
         max(limits.SHARD_CHUNK_MAX_BYTES, MANY_PAYLOAD_MAX_BYTES) + (1 << 20)),
        ("grpc.max_concurrent_streams", len(disks.nodes) * limits.SHARD_STREAMS_MAX + 64),
    ])
    pb_grpc.add_ShardStoreServicer_to_server(ShardStoreService(disks), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    return server, port

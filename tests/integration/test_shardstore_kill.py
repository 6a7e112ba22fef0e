"""Property: SIGKILL of a real shardstore process loses no acknowledged operation.

Method: start `python -m shardstore.main` on a temporary disk directory, run a
storm of concurrent gRPC clients (unary and streamed puts, deletes, each client on
its own shards so each shard's history is sequential), SIGKILL the process
mid-storm, restart it on the same directory, and check every shard: it holds the
state of its last acknowledged operation, or — when an operation was in flight at
the kill — the state that operation would have produced, wholly (never a torn
shard). Runs twice (two kill points). Every process started is stopped.
Also: PutShardUnary answers like PutShard (idempotent re-put, ALREADY_EXISTS,
INVALID_ARGUMENT for a shard that does not fit its one message).
"""

from __future__ import annotations

import asyncio
import random
import tempfile

import grpc
import pytest

from conftest import ShardstoreProcess
from shardstore import shardstore_pb2 as pb
from shardstore import shardstore_pb2_grpc as pb_grpc




NodeProcess = ShardstoreProcess


def _shard(client: int, slot: int) -> pb.ShardId:
    return pb.ShardId(data_id=bytes([client]) * 8 + bytes([slot]) * 8, shard_index=slot)


async def _put(stub, shard: pb.ShardId, data: bytes, chunk: int) -> None:
    """One PutShardUnary call when the shard fits one message, else a PutShard stream."""
    if chunk >= len(data):
        await stub.PutShardUnary(pb.PutShardRequest(id=shard, length=len(data), data=data), timeout=20)
        return

    async def messages():
        yield pb.PutShardRequest(id=shard, length=len(data), data=data[:chunk])
        for start in range(chunk, len(data), chunk):
            yield pb.PutShardRequest(data=data[start:start + chunk])
    await stub.PutShard(messages(), timeout=20)


async def _client(address: str, client: int, history: dict, stop: asyncio.Event) -> None:
    """history[shard key] = (acknowledged state, in-flight state or the marker 'none')."""
    rng = random.Random(client)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ShardStoreStub(channel)
        generation = 0
        while not stop.is_set():
            slot = rng.randrange(6)
            shard = _shard(client, slot)
            key = (client, slot)
            acknowledged, _ = history.get(key, (None, "none"))
            try:
                if acknowledged is not None and rng.random() < 0.4:
                    history[key] = (acknowledged, None)
                    await stub.DeleteShard(pb.DeleteShardRequest(id=shard), timeout=20)
                    history[key] = (None, "none")
                elif acknowledged is None:
                    generation += 1
                    size = rng.choice([1, 4096, 70_000, 3 << 20])
                    data = random.Random(client * 1_000_003 + generation).randbytes(size)
                    history[key] = (None, data)
                    await _put(stub, shard, data, rng.choice([size, 65536, 1 << 20]))
                    history[key] = (data, "none")
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                return          # the node is gone: this client's in-flight op stays ambiguous


async def _storm(address: str, clients: int, seconds: float, node: NodeProcess) -> dict:
    history: dict = {}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_client(address, client, history, stop)) for client in range(clients)]
    await asyncio.sleep(seconds)
    node.kill()                                          # mid-storm
    await asyncio.wait(tasks, timeout=30)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return history


async def _check(address: str, history: dict) -> tuple[int, int]:
    checked = ambiguous = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ShardStoreStub(channel)
        for (client, slot), (acknowledged, in_flight) in history.items():
            try:
                got = b"".join([m.data async for m in stub.GetShard(pb.GetShardRequest(id=_shard(client, slot)),
                                                                      timeout=20)])
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND, error
                got = None
            allowed = [acknowledged] if in_flight == "none" else [acknowledged, in_flight]
            assert got in allowed, (client, slot, None if got is None else len(got))
            checked += 1
            ambiguous += in_flight != "none"
        listed = await stub.ListShards(pb.ListShardsRequest(limit=1000), timeout=20)
        assert all(info.put_time_us > 0 for info in listed.shards)
    return checked, ambiguous


@pytest.mark.timeout(180)
@pytest.mark.parametrize("storm_seconds", [1.5, 3.0])
def test_sigkill_mid_storm_loses_no_acknowledged_operation(storm_seconds):
    with tempfile.TemporaryDirectory(prefix="cairn-shardstore-kill-") as disk:
        node = NodeProcess(disk)
        try:
            node.start()
            history = asyncio.run(_storm(node.address, 16, storm_seconds, node))
            assert sum(1 for acknowledged, _ in history.values() if acknowledged is not None) > 0
            node.start()                                  # recover on the same disk
            checked, ambiguous = asyncio.run(_check(node.address, history))
            assert checked == len(history) > 10
            assert node.stop() == 0
        finally:
            node.kill()


async def _unary_answers(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ShardStoreStub(channel)
        shard = _shard(200, 1)
        first = await stub.PutShardUnary(pb.PutShardRequest(id=shard, length=3, data=b"abc"), timeout=20)
        assert first.put_time_us > 0
        again = await stub.PutShardUnary(pb.PutShardRequest(id=shard, length=3, data=b"abc"), timeout=20)
        assert again.put_time_us == first.put_time_us           # the stored copy serves
        refusals = [(pb.PutShardRequest(id=shard, length=3, data=b"abd"), grpc.StatusCode.ALREADY_EXISTS),
                    (pb.PutShardRequest(id=_shard(200, 2), length=9, data=b"abc"), grpc.StatusCode.INVALID_ARGUMENT),
                    (pb.PutShardRequest(length=3, data=b"abc"), grpc.StatusCode.INVALID_ARGUMENT)]
        for request, code in refusals:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.PutShardUnary(request, timeout=20)
            assert refused.value.code() == code, refused.value
        got = b"".join([m.data async for m in stub.GetShard(pb.GetShardRequest(id=shard), timeout=20)])
        assert got == b"abc"
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetShard(pb.GetShardRequest(id=_shard(200, 2)), timeout=20).read()
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.timeout(60)
def test_put_shard_unary_answers_like_put_shard():
    with tempfile.TemporaryDirectory(prefix="cairn-shardstore-unary-") as disk:
        node = NodeProcess(disk)
        try:
            node.start()
            asyncio.run(_unary_answers(node.address))
            assert node.stop() == 0
        finally:
            node.kill()

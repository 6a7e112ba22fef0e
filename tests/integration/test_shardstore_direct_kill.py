"""Property: a streamed shard written with O_DIRECT survives SIGKILL of its real
shardstore process like any other: every acknowledged shard reads back intact after a
restart, a stream killed between its direct steps and its trailer leaves nothing
(and the same shard can be put again), and an in-flight one is wholly there or absent.

Method: start `python -m shardstore.main` (default limits: 1 MiB direct steps) on a
temporary directory, put 6 MiB shards on four concurrent gRPC streams in 1 MiB
messages, hold one more stream after 4 MiB of its 6 (several direct steps written,
no trailer), check through /proc that the process holds an extent open with O_DIRECT,
SIGKILL it, restart it on the same directory and check every shard. Every process
started is stopped.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile

import grpc
import pytest

from conftest import ShardstoreProcess
from shardstore import shardstore_pb2 as pb
from shardstore import shardstore_pb2_grpc as pb_grpc
from shardstore.disk import RealDisk

MiB = 1 << 20
SHARD_BYTES = 6 * MiB



class StoreProcess(ShardstoreProcess):
    def extents_open_direct(self) -> int:
        """How many extent files the process holds open with O_DIRECT (from /proc)."""
        count = 0
        base = f"/proc/{self.process.pid}"
        for fd in os.listdir(f"{base}/fd"):
            try:
                target = os.readlink(f"{base}/fd/{fd}")
                with open(f"{base}/fdinfo/{fd}") as info:
                    flags = int(info.read().split("flags:")[1].split()[0], 8)
            except (OSError, IndexError, ValueError):
                continue
            count += "/extent-" in target and bool(flags & os.O_DIRECT)
        return count


def _shard(stream: int, number: int) -> pb.ShardId:
    return pb.ShardId(data_id=bytes([stream]) * 8 + number.to_bytes(8, "big"), shard_index=stream)


def _data(stream: int, number: int) -> bytes:
    return random.Random(stream * 1_000_003 + number).randbytes(SHARD_BYTES)


async def _put(stub, shard: pb.ShardId, data: bytes, hold: asyncio.Event | None = None,
               held: asyncio.Event | None = None) -> None:
    async def messages():
        yield pb.PutShardRequest(id=shard, length=len(data), data=data[:MiB])
        for start in range(MiB, len(data), MiB):
            if hold is not None and start == 4 * MiB:
                held.set()
                await hold.wait()                   # never set: the kill comes first
            yield pb.PutShardRequest(data=data[start:start + MiB])
    await stub.PutShard(messages(), timeout=60)


async def _storm(store: StoreProcess) -> tuple[dict, dict]:
    acknowledged: dict = {}
    in_flight: dict = {}

    async def streamer(stub, stream: int) -> None:
        number = 0
        while True:
            shard = _shard(stream, number)
            in_flight[(stream, number)] = shard
            await _put(stub, shard, _data(stream, number))
            del in_flight[(stream, number)]
            acknowledged[(stream, number)] = shard
            number += 1

    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.ShardStoreStub(channel)
        hold, held = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(streamer(stub, stream)) for stream in range(4)]
        tasks.append(asyncio.create_task(_put(stub, _shard(9, 0), _data(9, 0), hold, held)))
        await asyncio.wait_for(held.wait(), 30)
        while len(acknowledged) < 6:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)                                # the held stream's direct steps land
        if RealDisk(store.disk).direct_alignment:
            assert store.extents_open_direct() > 0
        store.kill()
        await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return acknowledged, in_flight


async def _get(stub, shard: pb.ShardId) -> bytes | None:
    try:
        return b"".join([m.data async for m in stub.GetShard(pb.GetShardRequest(id=shard), timeout=30)])
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return None


async def _check(store: StoreProcess, acknowledged: dict, in_flight: dict) -> None:
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.ShardStoreStub(channel)
        for (stream, number), shard in acknowledged.items():
            assert await _get(stub, shard) == _data(stream, number), (stream, number)
        for (stream, number), shard in in_flight.items():
            assert await _get(stub, shard) in (None, _data(stream, number)), (stream, number)
        held = _shard(9, 0)
        assert await _get(stub, held) is None                   # direct steps without a trailer: gone
        await _put(stub, held, _data(9, 0))                     # and the shard can be put again
        assert await _get(stub, held) == _data(9, 0)
        stat = await stub.Stat(pb.StatRequest(), timeout=10)
        assert stat.corrupt_count == 0


@pytest.mark.timeout(180)
def test_sigkill_between_direct_steps_loses_nothing_acknowledged():
    with tempfile.TemporaryDirectory(prefix="cairn-shardstore-direct-kill-", dir="/var/tmp") as disk:
        store = StoreProcess(disk)
        try:
            store.start()
            acknowledged, in_flight = asyncio.run(_storm(store))
            assert len(acknowledged) >= 6
            store.start()                                       # recover on the same disk
            asyncio.run(_check(store, acknowledged, in_flight))
            assert store.stop() == 0
        finally:
            store.kill()

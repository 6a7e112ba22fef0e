"""Property: the cluster BlobStore's small-read batcher (shardstore/blob_read.py
`GetBatcher`) makes concurrent small shard reads bound for one disk share `get_many`
calls — fewer calls than reads, never more than SMALL_GET_BATCH_MAX reads in one —
while every reader gets exactly its own bytes or its own error; a failed call fails
every read in it with that error (and marks the disk down), so the Reader fails over
as around a lone get; a reader that gives up does not disturb the others.

Method: six real shardstore `Node`s on simulated disks behind `CountingClient`, an
in-memory twin of `shardstore.client.ShardClient` (get, get_many, put, put_many,
delete_many, stat) that counts its calls, records each get_many's size, and can hold
each call until the test lets it through or fail a disk's calls with ConnectionLost. Small limits as in
tests/unit/test_shard_blobs.py, and a READ_HEDGE_MS long enough that no hedge fires,
so every read makes exactly one shard read and the calls can be counted exactly.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import random

import pytest

from common.framing import ConnectionLost
from common.limits import DEFAULT_LIMITS, KiB
from shardstore.blobstore import DiskSpec, ShardBlobStore
from shardstore.disk import SimDisk
from shardstore.format import ShardId, block_checksums
from shardstore.node import Node, ShardNotFound, ShardStoreError

LIMITS = dataclasses.replace(
    DEFAULT_LIMITS, CHECKSUM_BLOCK=16 * KiB, CHUNK_MAX=64 * KiB, SMALL_OBJECT_MAX=16 * KiB,
    SHARD_MAX_BYTES=256 * KiB, SHARD_CHUNK_MAX_BYTES=256 * KiB, PUT_HEDGE_MS=100, READ_HEDGE_MS=60_000,
    SHARD_CALL_TIMEOUT_MS=2000, DISK_STAT_INTERVAL_MS=60_000, SMALL_GET_BATCH_MAX=8)
DISKS = [f"d{index}" for index in range(LIMITS.EC_K + LIMITS.EC_M)]


class CountingClient:
    """ShardClient's API over in-process Nodes; counts calls; can hold or fail them."""

    def __init__(self, nodes: dict[str, Node]) -> None:
        self.nodes = nodes
        self.calls: collections.Counter = collections.Counter()
        self.batches: list[int] = []        # items in each get_many, in call order
        self.down: set[str] = set()         # every call to these disks raises ConnectionLost
        self.gate: asyncio.Semaphore | None = None  # when set, each call waits for one release

    async def _node(self, disk: str) -> Node:
        if self.gate is not None:
            await self.gate.acquire()
        if disk in self.down:
            raise ConnectionLost(f"{disk} unreachable")
        return self.nodes[disk]

    async def get(self, disk, shard, start=0, end=None, *, timeout_s):
        self.calls["get"] += 1
        node = await self._node(disk)
        return await node.read_all(shard, start, end)

    async def get_many(self, disk, items, *, timeout_s):
        self.calls["get_many"] += 1
        self.batches.append(len(items))
        node = await self._node(disk)
        results = []
        for shard, start, end in items:
            try:
                results.append(await node.read_all(shard, start, end))
            except ShardStoreError as error:
                results.append(error)
        return results

    async def put(self, disk, shard, data, checksums, *, timeout_s):
        node = await self._node(disk)
        return await node.put(shard, len(data), bytes(data), None, list(checksums))

    async def put_many(self, disk, items, *, timeout_s):
        node = await self._node(disk)
        results = []
        for shard, data, checksums in items:
            try:
                results.append(await node.put(shard, len(data), bytes(data), None, list(checksums)))
            except ShardStoreError as error:
                results.append(error)
        return results

    async def delete_many(self, disk, shards, *, timeout_s):
        node = await self._node(disk)
        for shard in shards:
            await node.delete(shard)

    async def stat(self, disk, *, timeout_s):
        return (await self._node(disk)).stat()

    async def close(self):
        pass


class Cluster:
    def __init__(self, directory: str, limits=LIMITS) -> None:
        self.directory, self.limits = directory, limits

    async def __aenter__(self) -> "Cluster":
        self.nodes = {disk: await Node.open(SimDisk(), os.path.join(self.directory, disk), self.limits)
                      for disk in DISKS}
        self.client = CountingClient(self.nodes)
        self.store = ShardBlobStore({disk: DiskSpec(self.client, disk) for disk in DISKS}, limits=self.limits,
                                    rng=random.Random(3))
        await self.store.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.store.close()
        for node in self.nodes.values():
            await node.close()

    async def put_shard(self, disk: str, shard: ShardId, data: bytes) -> None:
        await self.nodes[disk].put(shard, len(data), data, None, block_checksums(data, self.limits.CHECKSUM_BLOCK))


async def _one(data: bytes):
    yield data


async def _read(store: ShardBlobStore, ref) -> bytes:
    return b"".join([piece async for piece in store.read(ref, 0, ref.size)])


def sid(n: int) -> ShardId:
    return ShardId(n.to_bytes(16, "big"), 0)


def test_concurrent_small_reads_share_get_many_calls_and_each_gets_its_bytes(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            bodies = [random.Random(n).randbytes(1 + n * 300) for n in range(48)]     # all <= SMALL_OBJECT_MAX
            refs = await asyncio.gather(*(cluster.store.write(os.urandom(16), _one(body), len(body), ())
                                          for body in bodies))
            cluster.client.calls.clear()
            got = await asyncio.gather(*(_read(cluster.store, ref) for ref in refs))
            assert got == bodies                                    # each reader its own bytes
            calls = cluster.client.calls
            assert calls["get_many"] >= 1
            assert calls["get"] + sum(cluster.client.batches) == len(bodies)   # one shard read per blob read
            assert calls["get"] + calls["get_many"] < len(bodies) / 2
            assert max(cluster.client.batches) <= LIMITS.SMALL_GET_BATCH_MAX
    asyncio.run(run())


def test_a_lone_read_goes_at_once_as_a_plain_get(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            body = os.urandom(5000)
            ref = await cluster.store.write(os.urandom(16), _one(body), len(body), ())
            cluster.client.calls.clear()
            assert await _read(cluster.store, ref) == body
            assert cluster.client.calls == {"get": 1}
    asyncio.run(run())


def test_each_read_of_a_batch_has_its_own_outcome(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            data = {n: os.urandom(100 * n) for n in range(1, 6)}
            for n, body in data.items():
                await cluster.put_shard("d0", sid(n), body)
            batcher = cluster.store._get_batcher("d0")
            futures = [batcher.get(sid(n), 0, len(body)) for n, body in data.items()]
            futures.insert(2, batcher.get(sid(99), 0, 10))          # never put
            results = await asyncio.gather(*futures, return_exceptions=True)
            assert cluster.client.batches == [6]
            assert isinstance(results.pop(2), ShardNotFound)
            assert [bytes(result) for result in results] == list(data.values())
            assert "d0" not in cluster.store.down                    # a refused read is not a down disk
    asyncio.run(run())


def test_a_failed_call_fails_every_read_in_it_and_marks_the_disk_down(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            for n in range(4):
                await cluster.put_shard("d1", sid(n), b"x" * 100)
            cluster.client.down = {"d1"}
            batcher = cluster.store._get_batcher("d1")
            results = await asyncio.gather(*(batcher.get(sid(n), 0, 100) for n in range(4)),
                                           return_exceptions=True)
            assert cluster.client.batches == [4]
            assert all(isinstance(result, ConnectionLost) for result in results), results
            assert "d1" in cluster.store.down
    asyncio.run(run())


def test_reads_fail_over_when_a_disk_fails_a_batch(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            bodies = [os.urandom(1000 + n) for n in range(24)]
            refs = await asyncio.gather(*(cluster.store.write(os.urandom(16), _one(body), len(body), ())
                                          for body in bodies))
            cluster.client.down = {"d2", "d4"}                       # the store has not noticed yet
            assert await asyncio.gather(*(_read(cluster.store, ref) for ref in refs)) == bodies
    asyncio.run(run())


def test_a_reader_that_gives_up_does_not_disturb_the_others(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            data = {n: os.urandom(200 + n) for n in range(8)}
            for n, body in data.items():
                await cluster.put_shard("d3", sid(n), body)
            batcher = cluster.store._get_batcher("d3")
            gate = cluster.client.gate = asyncio.Semaphore(0)

            async def reader(n: int):
                return bytes(await batcher.get(sid(n), 0, len(data[n])))

            first = asyncio.ensure_future(reader(0))
            await asyncio.sleep(0.01)                # read 0 is sent alone and held
            assert cluster.client.calls == {"get": 1}
            waiting = {n: asyncio.ensure_future(reader(n)) for n in range(1, 8)}
            await asyncio.sleep(0.01)                # reads 1-7 queue behind it
            waiting[2].cancel()                      # gives up before being sent: skipped
            first.cancel()                           # gives up while in flight: its answer is dropped
            gate.release()
            await asyncio.sleep(0.01)                # reads 1, 3-7 sent as one batch, held
            assert cluster.client.batches == [6]     # read 2 was never sent
            waiting[5].cancel()                      # gives up while its batch is in flight
            cluster.client.gate = None
            gate.release()
            results = await asyncio.gather(*waiting.values(), return_exceptions=True)
            for n, result in zip(waiting, results):
                if n in (2, 5):
                    assert isinstance(result, asyncio.CancelledError)
                else:
                    assert result == data[n], n
            assert first.cancelled()
            assert bytes(await batcher.get(sid(7), 0, 10)) == data[7][:10]     # the batcher still serves
    asyncio.run(run())


@pytest.mark.parametrize("items_max, bytes_max, per_call", [(1, LIMITS.SMALL_GET_BATCH_MAX_BYTES, 1),
                                                           (3, LIMITS.SMALL_GET_BATCH_MAX_BYTES, 3),
                                                           (64, 100 * KiB, 2)])
def test_batches_respect_the_item_and_byte_caps(tmp_path, items_max, bytes_max, per_call):
    """A read counts its range plus up to a block each side (the blocks the store may
    send): 4 KiB reads with 16 KiB blocks count ~36 KiB, so two fit in 100 KiB."""
    async def run():
        limits = dataclasses.replace(LIMITS, SMALL_GET_BATCH_MAX=items_max, SMALL_GET_BATCH_MAX_BYTES=bytes_max)
        async with Cluster(str(tmp_path), limits) as cluster:
            for n in range(10):
                await cluster.put_shard("d5", sid(n), bytes([n]) * 4 * KiB)
            batcher = cluster.store._get_batcher("d5")
            results = await asyncio.gather(*(batcher.get(sid(n), 0, 4 * KiB) for n in range(10)))
            assert [bytes(result) for result in results] == [bytes([n]) * 4 * KiB for n in range(10)]
            calls = cluster.client.calls
            assert calls["get"] + sum(cluster.client.batches) == 10
            assert max(cluster.client.batches, default=1) == per_call
    asyncio.run(run())

"""Property: GET_MANY (framed step 5, `ShardClient.get_many`) answers every item exactly
as a GET of that item alone would: the same bytes, verified against the stored block
checksums, or the same error class — and one item's failure (missing shard, bad range,
corrupt block) fails only that item. Oversized requests are refused whole, before
anything is read.

Method: one real `cairn shardstore` process (`python -m deploy.cli shardstore`, one
disk "a", no scrubber, framed data protocol on 127.0.0.1 port 0) per module, reached by
real `ShardClient`s, one uvloop loop per test (per example for the property). Cases:
ranges within and across blocks, empty ranges and whole shards; a missing shard and
bad ranges among present shards; a byte flipped in the extent file (found by searching
the files for the shard's bytes) -> that item is ShardCorrupt, the others are served,
and the node lists the shard as a finding (CORRUPT); too many items refused by the
client and, sent raw, by the server; too many bytes refused by the server before
reading; an unknown disk refused whole. A hypothesis property (modest examples) checks
get_many against per-shard get on random ranges of random shards, missing ones
included. The process is stopped (SIGTERM, exit 0) by the fixture that started it.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings

from common import framing
from conftest import range_requests
from common.limits import DEFAULT_LIMITS
from shardstore import shardstore_pb2 as pb
from shardstore.client import (
    BadShardRequest, ShardClient, ShardCorrupt, ShardId, ShardNotFound, ShardStoreError, UnknownDisk,
    block_checksums,
)
from shardstore.framed import KIND_GET_MANY, MANY_ITEMS_MAX, MANY_PAYLOAD_MAX_BYTES, shard_pb

ROOT = Path(__file__).resolve().parents[2]
BLOCK = DEFAULT_LIMITS.CHECKSUM_BLOCK
T = 20.0                                    # every call's deadline
LISTENING = re.compile(r"listening: grpc=(\S+) data=(\S+)")
SIZES = [0, 1, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5]   # the shards the property reads


class Store:
    """One `cairn shardstore` process serving disk "a" under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "shardstore", "--disk", f"a={directory}",
             "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--no-scrub", "--log-level", "WARNING"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        match = LISTENING.fullmatch(line.strip())
        if match is None:
            self.stop()
            raise AssertionError(f"no listening line: {line!r}")
        self.data = match.group(2)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise
        return self.process.returncode

    def flip(self, data: bytes, offset: int) -> None:
        """Flip one bit of the stored copy of `data` (unique random bytes) at `offset` in it."""
        found = []
        for path in (self.directory / "extents").iterdir():
            content = path.read_bytes()
            at = content.find(data)
            if at >= 0:
                found.append((path, at))
        assert len(found) == 1, found
        path, at = found[0]
        with open(path, "r+b") as extent:
            extent.seek(at + offset)
            byte = extent.read(1)
            extent.seek(at + offset)
            extent.write(bytes([byte[0] ^ 0x40]))
            extent.flush()
            os.fsync(extent.fileno())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    running = Store(tmp_path_factory.mktemp("get_many"))
    try:
        yield running
    finally:
        assert running.stop() == 0


def sid(n: int, index: int = 0) -> ShardId:
    return ShardId(n.to_bytes(16, "big"), index)


def data_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def with_client(store: Store, body):
    client = ShardClient(store.data)
    try:
        return await body(client)
    finally:
        await client.close()


async def put(client: ShardClient, shard: ShardId, data: bytes) -> None:
    await client.put("a", shard, data, block_checksums(data, BLOCK), timeout_s=T)


@pytest.fixture(scope="module")
def shards(store) -> dict[ShardId, bytes]:
    """The property's shards: one per size in SIZES, ids 100.. (sid(99) is never put)."""
    stored = {sid(100 + number): data_of(100 + number, size) for number, size in enumerate(SIZES)}

    async def body(client):
        for shard, data in stored.items():
            await put(client, shard, data)
    uvloop.run(with_client(store, body))
    return stored


def test_ranges_empty_ranges_and_whole_shards_come_back_exactly(store):
    async def body(client):
        small, large = data_of(1, 1000), data_of(2, 3 * BLOCK + 5)
        await put(client, sid(1), small)
        await put(client, sid(2), large)
        items = [(sid(1), 0, None), (sid(2), 0, None), (sid(2), 10, 70_000), (sid(2), BLOCK, 2 * BLOCK),
                 (sid(2), BLOCK - 1, BLOCK + 1), (sid(1), 7, 7), (sid(2), len(large), len(large)),
                 (sid(2), 3 * BLOCK, None), (sid(1), 999, 1000)]
        results = await client.get_many("a", items, timeout_s=T)
        assert len(results) == len(items)
        for (shard, start, end), result in zip(items, results):
            data = small if shard == sid(1) else large
            assert not isinstance(result, BaseException), (start, end, result)
            assert bytes(result) == data[start:end], (shard, start, end)
            assert bytes(result) == bytes(await client.get("a", shard, start, end, timeout_s=T))
        assert await client.get_many("a", [], timeout_s=T) == []
    uvloop.run(with_client(store, body))


def test_a_missing_shard_or_bad_range_fails_only_its_item(store):
    async def body(client):
        data = data_of(3, 2 * BLOCK)
        await put(client, sid(3), data)
        results = await client.get_many("a", [
            (sid(3), 0, 100), (sid(4), 0, 10), (sid(3), 5, len(data) + 1), (sid(3), BLOCK, None),
            (ShardId(b"short", 0), 0, 1), (sid(3), 20, 10)], timeout_s=T)
        assert bytes(results[0]) == data[:100]
        assert isinstance(results[1], ShardNotFound)
        assert isinstance(results[2], BadShardRequest)
        assert bytes(results[3]) == data[BLOCK:]
        assert isinstance(results[4], BadShardRequest)         # not a 16-byte data id
        assert isinstance(results[5], BadShardRequest)         # end before start
        with pytest.raises(ShardNotFound):                     # the same class `get` raises
            await client.get("a", sid(4), 0, 10, timeout_s=T)
    uvloop.run(with_client(store, body))


def test_a_corrupt_shard_fails_only_its_item_and_is_recorded(store):
    async def body(client):
        good, bad = data_of(5, 2 * BLOCK + 9), data_of(6, 3 * BLOCK)
        await put(client, sid(5), good)
        await put(client, sid(6), bad)
        store.flip(bad, BLOCK + 17)                             # bit rot in block 1 of shard 6
        results = await client.get_many("a", [
            (sid(5), 0, None), (sid(6), 0, None), (sid(6), 0, BLOCK), (sid(6), BLOCK + 100, BLOCK + 200),
            (sid(5), 3, 2 * BLOCK)], timeout_s=T)
        assert bytes(results[0]) == good
        assert isinstance(results[1], ShardCorrupt)
        assert bytes(results[2]) == bad[:BLOCK]                 # block 0 is intact
        assert isinstance(results[3], ShardCorrupt)
        assert bytes(results[4]) == good[3:2 * BLOCK]
        assert await client.corrupt("a", timeout_s=T) == [sid(6)]     # the reads' finding
        await client.delete_many("a", [sid(6)], timeout_s=T)           # leave no finding for others
        assert await client.corrupt("a", timeout_s=T) == []
    uvloop.run(with_client(store, body))


def test_too_many_items_or_bytes_and_an_unknown_disk_are_refused_whole(store):
    async def body(client):
        data = data_of(7, 100)
        await put(client, sid(7), data)
        too_many = [(sid(7), 0, 1)] * (MANY_ITEMS_MAX + 1)
        with pytest.raises(BadShardRequest, match="at most"):   # refused by the client, never sent
            await client.get_many("a", too_many, timeout_s=T)
        host, port = store.data.rsplit(":", 1)
        raw = framing.Client(host, int(port))
        try:                                                    # the server's own bound, sent raw
            meta = pb.GetShardsRequest(disk="a", shards=[
                pb.GetShardRequest(id=shard_pb(shard), start=start, end=end, has_end=True)
                for shard, start, end in too_many])
            with pytest.raises(framing.RemoteError, match="^BadShardRequest: at most"):
                await raw.call(KIND_GET_MANY, meta.SerializeToString(), timeout_s=T)
        finally:
            await raw.close()
        big = data_of(8, 4 << 20)
        await put(client, sid(8), big)
        copies = MANY_PAYLOAD_MAX_BYTES // len(big) + 1
        with pytest.raises(BadShardRequest):                    # the client adds up the ranges it asks
            await client.get_many("a", [(sid(8), 0, len(big))] * copies, timeout_s=T)
        with pytest.raises(BadShardRequest, match="exceed"):    # open ranges: the server counts, then refuses
            await client.get_many("a", [(sid(8), 0, None)] * copies, timeout_s=T)
        with pytest.raises(UnknownDisk):
            await client.get_many("nope", [(sid(7), 0, 1)], timeout_s=T)
        fitting = MANY_PAYLOAD_MAX_BYTES // len(big) - 1          # room left for the small shard
        results = await client.get_many("a", [(sid(8), 0, None)] * fitting + [(sid(7), 0, None)], timeout_s=T)
        assert [bytes(result) for result in results] == [big] * fitting + [data]
        await client.delete_many("a", [sid(8)], timeout_s=T)
    uvloop.run(with_client(store, body))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=range_requests(SIZES))
def test_get_many_equals_a_get_per_item(store, shards, items):
    items = [(sid(number), start, end) for number, start, end in items]

    async def body(client):
        results = await client.get_many("a", items, timeout_s=T)
        assert len(results) == len(items)
        for (shard, start, end), result in zip(items, results):
            try:
                alone = bytes(await client.get("a", shard, start, end, timeout_s=T))
            except ShardStoreError as error:
                assert type(result) is type(error), (shard, start, end, result)
                continue
            assert not isinstance(result, BaseException), (shard, start, end, result)
            assert bytes(result) == alone == shards[shard][start:end]
    uvloop.run(with_client(store, body))

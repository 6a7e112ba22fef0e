"""The cluster BlobStore over real shardstores: real `Node`s on real disks (tmp dirs),
served by the real framed server on 127.0.0.1 (port 0), reached by the real
`ShardClient` — bytes written come back equal, around a stopped shardstore and a
flipped byte on disk, and a write that cannot reach enough disks leaves nothing.

Method: in-process servers (one event loop, uvloop), small limits (16 KiB blocks,
64 KiB chunks, 16 KiB small objects, 256 KiB shards so objects over 1 MiB span
segments). Layout A: six servers of one disk each, every disk its own domain.
Layout B: three servers ("hosts") of two disks each, so a stopped server takes two
disks (= m) down and placement co-locates two shards per host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random

import pytest
import uvloop

from common import blob_placement as bp
from common.errors import ServiceUnavailable
from common.limits import DEFAULT_LIMITS, KiB, MiB
from shardstore.blobstore import DiskSpec, ShardBlobStore
from shardstore import format as fmt
from shardstore.client import ShardClient
from shardstore.disk import RealDisk
from shardstore.framed import Disks, FramedServer
from shardstore.node import Node

LIMITS = dataclasses.replace(
    DEFAULT_LIMITS, CHECKSUM_BLOCK=16 * KiB, CHUNK_MAX=64 * KiB, SMALL_OBJECT_MAX=16 * KiB,
    SHARD_MAX_BYTES=256 * KiB, SHARD_CHUNK_MAX_BYTES=256 * KiB, PUT_HEDGE_MS=200, READ_HEDGE_MS=50,
    SHARD_CALL_TIMEOUT_MS=3000, DISK_STAT_INTERVAL_MS=200)
K, M = LIMITS.EC_K, LIMITS.EC_M
STRIPE = K * LIMITS.CHUNK_MAX
SEGMENT = STRIPE * (LIMITS.SHARD_MAX_BYTES // LIMITS.CHUNK_MAX)
SIX_HOSTS = [[f"d{index}"] for index in range(6)]
THREE_HOSTS = [["d0", "d1"], ["d2", "d3"], ["d4", "d5"]]


class Cluster:
    def __init__(self, tmp_path, hosts: list[list[str]]) -> None:
        self.tmp_path, self.hosts = tmp_path, hosts
        self.nodes: dict[str, Node] = {}
        self.servers: list[FramedServer | None] = []

    async def start(self) -> None:
        layout = {}
        for host, disks in enumerate(self.hosts):
            nodes = {}
            for disk in disks:
                nodes[disk] = self.nodes[disk] = await Node.open(
                    RealDisk(str(self.tmp_path / disk / "extents")), str(self.tmp_path / disk / "index"), LIMITS)
            server = await FramedServer(Disks(nodes)).start("127.0.0.1", 0)
            self.servers.append(server)
            client = ShardClient(f"127.0.0.1:{server.port}", limits=LIMITS, connect_timeout_s=0.5)
            for disk in disks:
                layout[disk] = DiskSpec(client, f"host{host}")
        self.store = ShardBlobStore(layout, limits=LIMITS, rng=random.Random(3))
        await self.store.start()

    async def stop_host(self, host: int) -> None:
        await self.servers[host].close()

    async def close(self) -> None:
        await self.store.close()
        for server in self.servers:
            await server.close()
        for node in self.nodes.values():
            await node.close()

    def shard_count(self) -> int:
        return sum(len(node.list()) for node in self.nodes.values())


@contextlib.asynccontextmanager
async def cluster(tmp_path, hosts):
    running = Cluster(tmp_path, hosts)
    try:
        await running.start()
        yield running
    finally:
        await running.close()


async def _stream(data: bytes, piece: int = 100_000):
    for start in range(0, len(data), piece):
        yield data[start:start + piece]


async def _read(store, ref, start=0, end=None) -> bytes:
    end = ref.size if end is None else end
    return b"".join([piece async for piece in store.read(ref, start, end)])


SIZES = [0, 1, LIMITS.SMALL_OBJECT_MAX, LIMITS.SMALL_OBJECT_MAX + 1, STRIPE - 1, STRIPE + 1, SEGMENT - 1,
         SEGMENT + 1, 2 * SEGMENT + STRIPE + 3]


@pytest.mark.parametrize("hosts", [SIX_HOSTS, THREE_HOSTS], ids=["six-hosts", "three-hosts"])
def test_round_trips_and_a_stopped_host(tmp_path, hosts):
    rng = random.Random(5)

    async def body():
        async with cluster(tmp_path, hosts) as running:
            refs = {}
            for size in SIZES:
                for known in (True, False):
                    data = rng.randbytes(size)
                    ref = await running.store.write(os.urandom(16), _stream(data), size if known else None, ())
                    assert ref.md5_hex == hashlib.md5(data).hexdigest()
                    assert await _read(running.store, ref) == data
                    start = rng.randrange(size + 1)
                    end = rng.randrange(start, size + 1)
                    assert await _read(running.store, ref, start, end) == data[start:end]
                    refs[ref.data_id] = (ref, data)
            placement = bp.decode_placement(list(refs.values())[-1][0].placement)      # RS
            assert placement.survives_domain_losses == (M if hosts is SIX_HOSTS else 1)
            await running.stop_host(0)          # one disk, or two (= m) disks, gone
            for ref, data in refs.values():
                assert await _read(running.store, ref) == data
            assert "d0" in running.store.down
    uvloop.run(body())


def test_flipped_byte_on_disk_is_decoded_around(tmp_path):
    async def body():
        async with cluster(tmp_path, SIX_HOSTS) as running:
            data = os.urandom(3 * STRIPE)
            ref = await running.store.write(os.urandom(16), _stream(data), len(data), ())
            placement = bp.decode_placement(ref.placement)
            node = running.nodes[placement.disks[0]]
            entry = node.locate(fmt.ShardId(ref.data_id, 0))
            path = tmp_path / placement.disks[0] / "extents" / fmt.extent_name(entry.location.extent)
            with open(path, "r+b") as extent:
                extent.seek(entry.data_offset + 100)
                byte = extent.read(1)
                extent.seek(entry.data_offset + 100)
                extent.write(bytes([byte[0] ^ 1]))
            assert await _read(running.store, ref) == data
            assert await _read(running.store, ref, 50, 150) == data[50:150]
    uvloop.run(body())


def test_write_around_a_down_disk_and_too_few_disks(tmp_path):
    async def body():
        async with cluster(tmp_path, SIX_HOSTS) as running:
            await running.stop_host(5)           # not yet noticed by the store
            data = os.urandom(SEGMENT + STRIPE)
            ref = await running.store.write(os.urandom(16), _stream(data), len(data), ())
            placement = bp.decode_placement(ref.placement)
            assert [placement.disks[slot] for slot in placement.missing] == ["d5"]
            assert await _read(running.store, ref) == data
            before = running.shard_count()
            await running.stop_host(4)
            await running.stop_host(3)
            await running.store.stat_round()
            # Three live disks: two shards on each, which survives one disk's loss: accepted.
            degraded = await running.store.write(os.urandom(16), _stream(data), len(data), ())
            assert bp.decode_placement(degraded.placement).survives_domain_losses == 1
            assert await _read(running.store, degraded) == data
            await running.store.delete(degraded)
            await running.stop_host(2)
            await running.store.stat_round()
            # Two live disks: three shards on each would not survive one loss: refused.
            with pytest.raises(ServiceUnavailable):
                await running.store.write(os.urandom(16), _stream(data), len(data), ())
            assert running.shard_count() == before
            with pytest.raises(ValueError):
                await running.store.write(os.urandom(16), _stream(os.urandom(100)), 99, ())
            assert running.shard_count() == before
    uvloop.run(body())

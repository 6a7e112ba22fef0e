"""The cluster BlobStore (shardstore/blobstore.py) returns exactly the bytes
it acknowledged, around down, corrupt and slow disks, and keeps nothing of a write
that failed.

Method: six real shardstore `Node`s on simulated disks behind `FakeShardClient`, an
in-memory twin of `shardstore.client.ShardClient` with the same API (a disk marked
down raises ConnectionLost, a delay slows its gets, a flipped byte in an extent is
caught by the node's checksum check as ShardCorrupt). Small limits (16 KiB blocks,
64 KiB chunks, 16 KiB small objects, 256 KiB shards so objects over 1 MiB span
segments) keep it fast. Examples at every size boundary, known and unknown size,
read whole and in ranges; hypothesis round trips over random bodies, chunkings and
ranges; reads with every pair of disks down; a flipped byte; a slow disk; degraded
and failed writes (nothing left on any disk); the small-put batcher; delete.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from common import blob_placement as bp
from common.errors import BlobCorrupt, InsufficientStorage, ServiceUnavailable
from common.framing import ConnectionLost
from common.limits import DEFAULT_LIMITS, KiB, MiB
from shardstore.blobstore import DiskSpec, ShardBlobStore
from shardstore import format as fmt
from shardstore.disk import SimDisk
from shardstore.node import BadShardRequest, Node, ShardStoreError

LIMITS = dataclasses.replace(
    DEFAULT_LIMITS, CHECKSUM_BLOCK=16 * KiB, CHUNK_MAX=64 * KiB, SMALL_OBJECT_MAX=16 * KiB,
    SHARD_MAX_BYTES=256 * KiB, SHARD_CHUNK_MAX_BYTES=256 * KiB, PUT_HEDGE_MS=100, READ_HEDGE_MS=30,
    SHARD_CALL_TIMEOUT_MS=2000, DISK_STAT_INTERVAL_MS=50)
K, M = LIMITS.EC_K, LIMITS.EC_M
CHUNK = LIMITS.CHUNK_MAX
STRIPE = K * CHUNK
SEGMENT = STRIPE * (LIMITS.SHARD_MAX_BYTES // CHUNK)     # 1 MiB of data per segment
DISKS = [f"d{index}" for index in range(K + M)]


class FakeWriter:
    def __init__(self, client: "FakeShardClient", disk: str, shard, length: int) -> None:
        self.client, self.disk = client, disk
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=2)
        node = client.nodes[disk]
        self.task = asyncio.ensure_future(node.put(shard, length, b"", self._pieces(), None))

    async def _pieces(self):
        while (piece := await self.queue.get()) is not None:
            yield piece

    async def write(self, piece, block_checksums) -> None:
        self.client._check(self.disk)
        if fmt.block_checksums(piece, LIMITS.CHECKSUM_BLOCK) != list(block_checksums):
            raise BadShardRequest("block checksums differ from the piece")
        if self.task.done():
            self.task.result()
            raise BadShardRequest("writer finished")
        await self.queue.put(bytes(piece))

    async def finish(self) -> int:
        self.client._check(self.disk)
        await self.queue.put(None)
        return await self.task

    async def abort(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class FakeShardClient:
    """ShardClient's API over in-process Nodes, with fault injection."""

    def __init__(self, nodes: dict[str, Node]) -> None:
        self.nodes = nodes
        self.down: set[str] = set()
        self.get_delay_s: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def _check(self, disk: str) -> Node:
        if disk in self.down:
            raise ConnectionLost(f"{disk} unreachable")
        return self.nodes[disk]

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    async def put(self, disk, shard, data, block_checksums, *, timeout_s):
        self._count("put")
        node = self._check(disk)
        return await node.put(shard, len(data), bytes(data), None, list(block_checksums))

    async def put_many(self, disk, items, *, timeout_s):
        self._count("put_many")
        node = self._check(disk)

        async def one(shard, data, checksums):
            try:
                return await node.put(shard, len(data), bytes(data), None, list(checksums))
            except ShardStoreError as error:
                return error

        return list(await asyncio.gather(*(one(*item) for item in items)))

    def open_put(self, disk, shard, length, *, timeout_s):
        self._count("open_put")
        self._check(disk)
        return FakeWriter(self, disk, shard, length)

    async def get(self, disk, shard, start=0, end=None, *, timeout_s):
        self._count("get")
        node = self._check(disk)
        delay = self.get_delay_s.get(disk)
        if delay:
            await asyncio.sleep(delay)
        return await node.read_all(shard, start, end)

    async def get_many(self, disk, items, *, timeout_s):
        """Per item its bytes or its error; a disk down fails the whole call, as a lost connection does."""
        self._count("get_many")
        node = self._check(disk)
        delay = self.get_delay_s.get(disk)
        if delay:
            await asyncio.sleep(delay)

        async def one(shard, start, end):
            try:
                return await node.read_all(shard, start, end)
            except ShardStoreError as error:
                return error

        return list(await asyncio.gather(*(one(*item) for item in items)))

    async def delete_many(self, disk, shards, *, timeout_s):
        self._count("delete_many")
        node = self._check(disk)
        for shard in shards:
            await node.delete(shard)

    async def stat(self, disk, *, timeout_s):
        return self._check(disk).stat()

    async def close(self):
        pass


class Cluster:
    def __init__(self, directory, hosts: list[str] | None = None) -> None:
        self.directory, self.hosts = directory, hosts

    async def __aenter__(self) -> "Cluster":
        self.nodes = {disk: await Node.open(SimDisk(), os.path.join(self.directory, disk), LIMITS) for disk in DISKS}
        self.client = FakeShardClient(self.nodes)
        hosts = self.hosts or DISKS
        self.store = ShardBlobStore({disk: DiskSpec(self.client, host) for disk, host in zip(DISKS, hosts)},
                                    limits=LIMITS, rng=random.Random(7))
        await self.store.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.store.close()
        for node in self.nodes.values():
            await node.close()

    def shard_count(self) -> int:
        return sum(len(node.list()) for node in self.nodes.values())

    def corrupt(self, disk: str, data_id: bytes, shard_index: int, offset: int = 0) -> None:
        node = self.nodes[disk]
        entry = node.locate(fmt.ShardId(data_id, shard_index))
        name = fmt.extent_name(entry.location.extent)
        at = entry.data_offset + offset
        byte = node.disk.read(name, at, 1)
        node.disk.write(name, at, bytes([byte[0] ^ 0x40]))


async def _stream(data: bytes, cuts=()):
    previous = 0
    for cut in sorted(set(min(cut, len(data)) for cut in cuts)) + [len(data)]:
        if cut > previous:
            yield data[previous:cut]
            previous = cut


async def _read(store, ref, start=0, end=None) -> bytes:
    end = ref.size if end is None else end
    return b"".join([piece async for piece in store.read(ref, start, end)])


def _run(coroutine):
    return asyncio.run(coroutine)


BOUNDARY_SIZES = sorted({0, 1, LIMITS.SMALL_OBJECT_MAX - 1, LIMITS.SMALL_OBJECT_MAX, LIMITS.SMALL_OBJECT_MAX + 1,
                         CHUNK - 1, CHUNK, CHUNK + 1, STRIPE - 1, STRIPE, STRIPE + 1, 2 * STRIPE + 1,
                         SEGMENT - 1, SEGMENT, SEGMENT + 1, SEGMENT + STRIPE, 3 * MiB + 12_345})


@pytest.mark.parametrize("known", [True, False], ids=["known-size", "unknown-size"])
def test_boundary_sizes_round_trip(tmp_path, known):
    rng = random.Random(1)

    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            for size in BOUNDARY_SIZES:
                data = rng.randbytes(size)
                cuts = [rng.randrange(size + 1) for _ in range(3)]
                data_id = os.urandom(16)
                ref = await cluster.store.write(data_id, _stream(data, cuts), size if known else None, ("crc32",))
                assert ref.size == size and ref.md5_hex == hashlib.md5(data).hexdigest(), size
                placement = bp.decode_placement(ref.placement)
                assert placement.scheme == (bp.COPIES if size <= LIMITS.SMALL_OBJECT_MAX else bp.RS), size
                assert not placement.missing and placement.length == size
                assert await _read(cluster.store, ref) == data, size
                for _ in range(4):
                    start = rng.randrange(size + 1)
                    end = rng.randrange(start, size + 1)
                    assert await _read(cluster.store, ref, start, end) == data[start:end], (size, start, end)
                layout = bp.Layout(placement)
                stored = sum(layout.shard_length(index) for slot in range(layout.slots)
                             for index in layout.shard_indexes(slot))
                expected = (M + 1) * size if layout.copies else \
                    size + M * sum(layout.chunk_length(stripe, K) for stripe in range(layout.stripe_count))
                assert stored == expected
    _run(run())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 2 * SEGMENT), known=st.booleans(), cuts=st.lists(st.integers(0, 2 * SEGMENT), max_size=5),
       data=st.data())
def test_random_round_trips(tmp_path_factory, size, known, cuts, data):
    body = random.Random(size).randbytes(size)

    async def run():
        async with Cluster(str(tmp_path_factory.mktemp("c"))) as cluster:
            ref = await cluster.store.write(os.urandom(16), _stream(body, cuts), size if known else None, ())
            for _ in range(3):
                start = data.draw(st.integers(0, size))
                end = data.draw(st.integers(start, size))
                assert await _read(cluster.store, ref, start, end) == body[start:end]
            await cluster.store.delete(ref)
            assert cluster.shard_count() == 0
    _run(run())


def test_reads_with_any_m_disks_down(tmp_path):
    """Down as the client sees it (ConnectionLost on every call), before and after
    the store has marked the disks down."""
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            bodies = {size: os.urandom(size) for size in (LIMITS.SMALL_OBJECT_MAX, 2 * STRIPE + 100, SEGMENT + STRIPE + 5)}
            refs = {size: await cluster.store.write(os.urandom(16), _stream(body), size, ()) for size, body in bodies.items()}
            for down in itertools.combinations(DISKS, M):
                cluster.client.down = set(down)
                for size, body in bodies.items():
                    assert await _read(cluster.store, refs[size]) == body
                    assert await _read(cluster.store, refs[size], 7, size - 3) == body[7:size - 3]
                cluster.client.down = set()
                await cluster.store.stat_round()
                assert not cluster.store.down
            cluster.client.down = set(DISKS[:M + 1])
            await cluster.store.stat_round()
            with pytest.raises(ServiceUnavailable):
                await _read(cluster.store, refs[2 * STRIPE + 100])
    _run(run())


def test_flipped_byte_is_decoded_around(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            body = os.urandom(2 * STRIPE)
            ref = await cluster.store.write(b"\x01" * 16, _stream(body), len(body), ())
            placement = bp.decode_placement(ref.placement)
            cluster.corrupt(placement.disks[1], ref.data_id, 1, offset=CHUNK + 5)     # stripe 1, chunk 1
            assert await _read(cluster.store, ref) == body
            assert await _read(cluster.store, ref, STRIPE + CHUNK, STRIPE + CHUNK + 10) == \
                body[STRIPE + CHUNK:STRIPE + CHUNK + 10]
            small = os.urandom(1000)
            copies = await cluster.store.write(b"\x02" * 16, _stream(small), len(small), ())
            for disk in bp.decode_placement(copies.placement).disks[:M]:
                slot = list(bp.decode_placement(copies.placement).disks).index(disk)
                cluster.corrupt(disk, copies.data_id, slot, offset=10)
            assert await _read(cluster.store, copies) == small
            # Corrupt beyond the redundancy: an error, never wrong bytes.
            for slot in (0, 2):
                cluster.corrupt(placement.disks[slot], ref.data_id, slot, offset=CHUNK + 5)
            with pytest.raises(BlobCorrupt):
                await _read(cluster.store, ref, STRIPE, 2 * STRIPE)
            assert await _read(cluster.store, ref, 0, STRIPE) == body[:STRIPE]
    _run(run())


def test_slow_disk_is_hedged(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            body = os.urandom(4 * STRIPE)
            ref = await cluster.store.write(os.urandom(16), _stream(body), len(body), ())
            cluster.client.get_delay_s[bp.decode_placement(ref.placement).disks[2]] = 1.5
            started = time.monotonic()
            assert await _read(cluster.store, ref) == body
            assert time.monotonic() - started < 1.0
    _run(run())


def test_write_with_a_disk_down_records_it_missing(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            cluster.client.down = {"d3"}            # the store has not noticed yet
            for size in (100, SEGMENT + STRIPE + 1, 2 * STRIPE):
                body = os.urandom(size)
                ref = await cluster.store.write(os.urandom(16), _stream(body), size, ())
                placement = bp.decode_placement(ref.placement)
                if "d3" in placement.disks:
                    assert list(placement.missing) == [list(placement.disks).index("d3")]
                    assert placement.survives_domain_losses == len(placement.disks) - len(placement.missing) - \
                        (1 if placement.scheme == bp.COPIES else K)
                assert await _read(cluster.store, ref) == body
                assert "d3" in cluster.store.down
                await cluster.store.stat_round()
            # Known down: five live domains for six shards -> co-located, reduced durability, none missing.
            body = os.urandom(2 * STRIPE)
            ref = await cluster.store.write(os.urandom(16), _stream(body), len(body), ())
            placement = bp.decode_placement(ref.placement)
            assert "d3" not in placement.disks and not placement.missing
            assert placement.survives_domain_losses == 1
            cluster.client.down = set()
            assert await _read(cluster.store, ref) == body
    _run(run())


def test_too_few_disks_fails_and_leaves_nothing(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            cluster.client.down = {"d0", "d1"}      # not yet noticed: 4 of 6 shards land, k+1 = 5 needed
            for size in (2 * STRIPE, SEGMENT + 3 * STRIPE, None):
                body = os.urandom(size or 3 * STRIPE)
                with pytest.raises(ServiceUnavailable):
                    await cluster.store.write(os.urandom(16), _stream(body), size, ())
                cluster.store.down.clear()
                cluster.store._refresh()
                assert cluster.shard_count() == 0
            cluster.client.down = set(DISKS[:M + 2])
            await cluster.store.stat_round()        # copies need 2 of 3: only 2 disks left -> fine
            ref = await cluster.store.write(os.urandom(16), _stream(b"x" * 100), 100, ())
            assert await _read(cluster.store, ref) == b"x" * 100
            cluster.client.down = set(DISKS[:5])
            await cluster.store.stat_round()
            with pytest.raises(ServiceUnavailable):
                await cluster.store.write(os.urandom(16), _stream(b"x" * 100), 100, ())
    _run(run())


def test_full_disks_refuse_with_insufficient_storage_and_keep_nothing(tmp_path):
    """Disks that refuse shards to keep their compaction reserve make the write
    InsufficientStorage (HTTP 507: no retry helps), not the retryable
    ServiceUnavailable of disks that are down; what was stored stays readable."""
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            kept = await cluster.store.write(os.urandom(16), _stream(b"k" * 1000), 1000, ())
            for node in cluster.nodes.values():
                node.disk._capacity_bytes = node.disk._used() + node.reserve_bytes() + 10_000
            for size in (100_000, 3 * STRIPE + 7, SEGMENT + STRIPE, None):
                before = cluster.shard_count()
                with pytest.raises(InsufficientStorage):
                    await cluster.store.write(os.urandom(16), _stream(os.urandom(size or 2 * STRIPE)), size, ())
                assert cluster.shard_count() == before
            assert await _read(cluster.store, kept) == b"k" * 1000
            for node in cluster.nodes.values():
                node.disk._capacity_bytes = 1 << 40
            cluster.client.down = set(DISKS[:5])
            await cluster.store.stat_round()
            with pytest.raises(ServiceUnavailable) as raised:
                await cluster.store.write(os.urandom(16), _stream(b"x" * 100), 100, ())
            assert not isinstance(raised.value, InsufficientStorage)
    _run(run())


@pytest.mark.parametrize("size", [100, LIMITS.SMALL_OBJECT_MAX + 10, 3 * STRIPE + 7, SEGMENT + STRIPE])
@pytest.mark.parametrize("delta", [-1, 1])
def test_length_mismatch_raises_and_keeps_nothing(tmp_path, size, delta):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            body = os.urandom(size + delta)
            with pytest.raises(ValueError):
                await cluster.store.write(os.urandom(16), _stream(body, [size // 3, size - 2]), size, ())
            assert cluster.shard_count() == 0
    _run(run())


def test_failing_stream_keeps_nothing(tmp_path):
    async def broken():
        yield os.urandom(SEGMENT + STRIPE)
        raise OSError("client went away")

    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            with pytest.raises(OSError):
                await cluster.store.write(os.urandom(16), broken(), None, ())
            assert cluster.shard_count() == 0
    _run(run())


def test_small_puts_to_a_disk_share_put_many_calls(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            bodies = [os.urandom(2000 + index) for index in range(32)]
            refs = await asyncio.gather(*(cluster.store.write(os.urandom(16), _stream(body), len(body), ())
                                          for body in bodies))
            assert cluster.client.calls["put_many"] < 32 * (M + 1) / 2
            for ref, body in zip(refs, bodies):
                assert await _read(cluster.store, ref) == body
    _run(run())


def test_delete_skips_down_disks(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            ref = await cluster.store.write(os.urandom(16), _stream(os.urandom(SEGMENT + 1)), SEGMENT + 1, ())
            cluster.client.down = {"d5"}
            await cluster.store.delete(ref)         # no error: the sweep finds what d5 keeps
            assert sum(len(node.list()) for disk, node in cluster.nodes.items() if disk != "d5") == 0
            cluster.client.down = set()
            await cluster.store.stat_round()        # d5 answers again: marked up
            await cluster.store.delete(ref)
            assert cluster.shard_count() == 0
    _run(run())


def test_monitor_marks_disks_down_and_up(tmp_path):
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            cluster.client.down = {"d2"}
            await asyncio.sleep(0.2)
            assert cluster.store.down == {"d2"} and not cluster.store.disk_map.get("d2").up
            cluster.client.down = set()
            await asyncio.sleep(0.2)
            assert not cluster.store.down
    _run(run())


def test_placement_round_trip_and_layout():
    placement = bp.BlobPlacement(
        scheme=bp.RS, code_id="rs-4+2-abc", k=4, m=2, chunk_bytes=CHUNK, length=SEGMENT * 2 + 5,
        segment_stripes=4, disks=DISKS, missing=[3], survives_domain_losses=1, generation=2, written_us=12345)
    raw = bp.encode_placement(placement)
    assert bp.decode_placement(raw) == placement
    assert bp.disks_of(raw) == set(DISKS)
    layout = bp.Layout(placement)
    assert (layout.stripe_count, layout.segment_count) == (9, 3)
    assert layout.shard_index(8, 5) == 2 * 6 + 5 and layout.chunk_offset(5) == CHUNK
    assert layout.shard_length(12) == 5 and layout.shard_length(13) == 0 and layout.shard_length(16) == 5
    assert bp.segment_shard_lengths(4, 2, CHUNK, SEGMENT) == [4 * CHUNK] * 6
    assert bp.segment_shard_lengths(4, 2, 10, 25) == [10, 10, 5, 0, 10, 10]


def _slowed(function, delay_s: float):
    async def slow(*args, **kwargs):
        await asyncio.sleep(delay_s)
        return await function(*args, **kwargs)
    return slow


@pytest.mark.parametrize("size", [1000, 3 * STRIPE])
def test_cancelled_write_keeps_nothing(tmp_path, size):
    """A PUT cancelled mid-flight (the HTTP client went away) deletes what it wrote."""
    async def run():
        async with Cluster(str(tmp_path)) as cluster:
            for node in cluster.nodes.values():        # every put takes 50 ms: cancel mid-flight
                node.put = _slowed(node.put, 0.05)
            task = asyncio.ensure_future(cluster.store.write(os.urandom(16), _stream(os.urandom(size)), size, ()))
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):
                await asyncio.sleep(0.02)
                if not cluster.store._background and cluster.shard_count() == 0:
                    break
            assert cluster.shard_count() == 0
    _run(run())

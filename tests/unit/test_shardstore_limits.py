"""Property: a shardstore node refuses bad input and overload with the right error and
leaves its state consistent (checked by reading back, and after a crash-and-reopen).

Method: a `Node` over `SimDisk` (no sockets), with shrunk limits; one case per rule.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from common.limits import Limits
from shardstore import format as fmt
from shardstore.disk import SimDisk
from shardstore.node import BadShardRequest, DiskFull, Node, ShardExists, ShardId, ShardNotFound, TooBusy

LIMITS = Limits(EXTENT_MAX_BYTES=16 * 1024, CHECKSUM_BLOCK=256, SHARD_WRITE_STEP_BYTES=1024,
                SHARD_MAX_BYTES=8192, SHARD_CHUNK_MAX_BYTES=2048, SHARD_STREAMS_MAX=2)
A = ShardId(b"a" * 16, 0)
B = ShardId(b"b" * 16, 1)


class Loop:
    """A test's event loop: runs coroutines, and at the end closes every node still
    open on it (its committer is a task of this loop) before closing the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.nodes: list[Node] = []

    def __call__(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        try:
            for node in self.nodes:
                if node.failed is None:         # not closed or abandoned by the test
                    self(node.close())
            self(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


@pytest.fixture
def run():
    loop = Loop()
    yield loop
    loop.close()


def open_node(run: Loop, tmp_path, disk) -> Node:
    node = run(Node.open(disk, str(tmp_path / "index"), LIMITS))
    run.nodes.append(node)
    return node


async def pieces(data: bytes, size: int):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_size_maxima_and_bad_ids(run, tmp_path):
    node = open_node(run, tmp_path, SimDisk())
    with pytest.raises(BadShardRequest):
        run(node.put(A, LIMITS.SHARD_MAX_BYTES + 1, b"x"))
    with pytest.raises(BadShardRequest):
        run(node.put(A, 3000, b"x" * 3000))                      # one chunk over SHARD_CHUNK_MAX_BYTES
    with pytest.raises(BadShardRequest):
        run(node.put(A, 5000, b"x" * 1000, pieces(b"y" * 4000, 4000)))
    with pytest.raises(BadShardRequest):
        run(node.put(ShardId(b"short", 0), 1, b"x"))
    with pytest.raises(BadShardRequest):
        run(node.put(A, 10, b"x" * 5, pieces(b"y" * 6, 6)))        # longer than announced
    with pytest.raises(BadShardRequest):
        run(node.put(A, 4, b"abcd", None, [b"\0" * 16]))          # sender checksum differs
    assert node.list() == []
    run(node.put(A, LIMITS.SHARD_MAX_BYTES, b"z" * 2048, pieces(b"z" * 6144, 2048)))
    assert run(node.read_all(A)) == b"z" * LIMITS.SHARD_MAX_BYTES


def test_not_found_exists_and_idempotence(run, tmp_path):
    node = open_node(run, tmp_path, SimDisk())
    with pytest.raises(ShardNotFound):
        run(node.read_all(A))
    run(node.delete(A))                                          # deleting a missing shard is OK
    run(node.put(A, 3, b"abc"))
    run(node.put(A, 3, b"abc"))                                  # same bytes again: OK
    with pytest.raises(ShardExists):
        run(node.put(A, 3, b"abd"))
    with pytest.raises(ShardExists):
        run(node.put(A, 4, b"abcd"))
    with pytest.raises(BadShardRequest):
        run(node.read_all(A, 2, 9))
    assert run(node.read_all(A, 1, 3)) == b"bc"
    run(node.delete(A))
    with pytest.raises(ShardNotFound):
        run(node.read_all(A))


def test_disk_full_refuses_before_the_reserve_and_keeps_the_index_consistent(run, tmp_path):
    disk = SimDisk(capacity_bytes=64 * 1024)        # reserve = 2 extents = 32 KiB
    node = open_node(run, tmp_path, disk)
    stored = {}
    with pytest.raises(DiskFull):
        for number in range(100):
            shard = ShardId(bytes([number]) * 16, 0)
            data = random.Random(number).randbytes(2000)
            run(node.put(shard, len(data), data))
            stored[shard] = data
    assert 10 < len(stored) < 100
    assert disk.free_bytes() >= node.reserve_bytes() - fmt.record_bytes(2000, 256)
    listed = [shard for shard, _ in node.list(limit=1000)]
    assert listed == sorted(stored)
    for number, shard in enumerate(list(stored)):    # deletes still work when full
        if number % 4:
            run(node.delete(shard))
            del stored[shard]
    used_before = sum(node.extent_sizes.values())
    run(node.compact())
    assert sum(node.extent_sizes.values()) < used_before
    run(asyncio.gather(*node.abandon(), return_exceptions=True))
    disk.crash(random.Random(0))
    node = open_node(run, tmp_path, disk)
    assert [shard for shard, _ in node.list(limit=1000)] == sorted(stored)
    for shard, data in stored.items():
        assert run(node.read_all(shard)) == data
    run(node.put(B, 2000, b"q" * 2000))              # compaction freed room
    assert run(node.read_all(B)) == b"q" * 2000
    run(node.close())


def test_streams_are_bounded(run, tmp_path):
    node = open_node(run, tmp_path, SimDisk())
    with node.stream_slot(), node.stream_slot():
        with pytest.raises(TooBusy):
            with node.stream_slot():
                pass
    with node.stream_slot():
        pass


def test_a_client_gone_mid_put_leaves_nothing(run, tmp_path):
    disk = SimDisk()
    node = open_node(run, tmp_path, disk)

    async def broken():
        yield b"y" * 1500
        yield b"y" * 1500
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        run(node.put(A, 6000, b"x" * 1500, broken()))
    with pytest.raises(ShardNotFound):
        run(node.read_all(A))
    assert sum(disk.size(name) for name in disk.list_files()) == 0      # the partial record was cut off
    run(node.put(A, 3, b"abc"))
    assert run(node.read_all(A)) == b"abc"

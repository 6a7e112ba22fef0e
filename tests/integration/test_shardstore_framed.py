"""Property: the shardstore's framed data protocol (shardstore/framed.py, shardstore/client.py)
does what the node does, refuses what the node refuses with the node's own error class,
checks checksums at both ends and keeps disks apart.

Method: real `Node`s on RealDisk in temporary directories (two disks, "a" and "b", in
one `FramedServer`), a real `ShardClient`, 127.0.0.1 sockets on port 0, one uvloop
loop per test; answers checked against the bytes put. Cases: every operation; a bad
sender checksum on each put form refused with nothing stored; ranges verified; a byte
flipped in an extent file -> ShardCorrupt from get, listed by CORRUPT after a scrub,
cleared by a re-put; put_many with one bad shard stores the others in one group
commit; a streamed put equals a unary put of the same bytes; abort and a lost
connection leave nothing; an unknown disk is a clear error; the client's own check of
received blocks; an unreachable or silent store -> ConnectionLost / DeadlineExceeded.
Every server, client and node a test starts is stopped by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random

import pytest
import uvloop

from common import framing
from common.limits import DEFAULT_LIMITS
from shardstore import format as fmt
from shardstore import shardstore_pb2 as pb
from shardstore.client import (
    BadShardRequest, ShardClient, ShardCorrupt, ShardExists, ShardId, ShardNotFound, Stats, UnknownDisk,
    block_checksums,
)
from shardstore.disk import RealDisk
from shardstore.framed import KIND_GET, Disks, FramedServer
from shardstore.node import Node

BLOCK = DEFAULT_LIMITS.CHECKSUM_BLOCK
MiB = 1 << 20
T = 20.0            # every call's deadline


def sid(n: int, index: int = 0) -> ShardId:
    return ShardId(n.to_bytes(16, "big"), index)


def data_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sums(data) -> list[bytes]:
    return block_checksums(data, BLOCK)


@contextlib.asynccontextmanager
async def store(tmp_path, disks=("a", "b")):
    """Nodes for `disks` under tmp_path, one FramedServer, one client; all stopped on exit."""
    nodes: dict[str, Node] = {}
    server = client = None
    try:
        for disk in disks:
            nodes[disk] = await Node.open(RealDisk(str(tmp_path / disk / "extents")), str(tmp_path / disk / "index"))
        server = await FramedServer(Disks(nodes)).start("127.0.0.1", 0)
        client = ShardClient(f"127.0.0.1:{server.port}")
        yield client, nodes
    finally:
        if client is not None:
            await client.close()
        if server is not None:
            await server.close()
        for node in nodes.values():
            await node.close()


def run(coroutine):
    return uvloop.run(coroutine)


async def stream_put(client: ShardClient, disk: str, shard: ShardId, data: bytes, piece: int = MiB,
                     window: int = 4) -> int:
    writer = client.open_put(disk, shard, len(data), timeout_s=T, window_pieces=window)
    for start in range(0, len(data), piece):
        chunk = data[start:start + piece]
        await writer.write(chunk, sums(chunk))
    return await writer.finish()


# ---------------------------------------------------------------- puts and gets


def test_put_get_whole_and_verified_ranges(tmp_path):
    async def body():
        async with store(tmp_path) as (client, _):
            data = data_of(1, 5 * BLOCK + 1234)
            put_time = await client.put("a", sid(1), data, sums(data), timeout_s=T)
            assert put_time > 0
            assert bytes(await client.get("a", sid(1), timeout_s=T)) == data
            for start, end in [(0, 1), (10, 70_000), (BLOCK, 2 * BLOCK), (BLOCK - 1, BLOCK + 1),
                               (3 * BLOCK + 5, len(data)), (len(data) - 1, len(data)), (7, 7), (len(data), len(data))]:
                got = await client.get("a", sid(1), start, end, timeout_s=T)
                assert bytes(got) == data[start:end], (start, end)
            with pytest.raises(BadShardRequest):
                await client.get("a", sid(1), 10, len(data) + 1, timeout_s=T)
            with pytest.raises(ShardNotFound):
                await client.get("a", sid(2), timeout_s=T)
            # The same bytes again: OK, the stored copy serves; other bytes: ShardExists.
            assert await client.put("a", sid(1), data, sums(data), timeout_s=T) == put_time
            other = data_of(2, len(data))
            with pytest.raises(ShardExists):
                await client.put("a", sid(1), other, sums(other), timeout_s=T)
            empty = await client.put("a", sid(3), b"", [], timeout_s=T)
            assert empty > 0 and bytes(await client.get("a", sid(3), timeout_s=T)) == b""
    run(body())


def test_bad_sender_checksum_refused_on_every_put_form_and_nothing_stored(tmp_path):
    async def body():
        async with store(tmp_path) as (client, nodes):
            data = data_of(3, 3 * BLOCK + 10)
            bad = sums(data)
            bad[1] = bytes(16)
            used = nodes["a"].stat().used_bytes
            with pytest.raises(BadShardRequest, match="checksum"):
                await client.put("a", sid(1), data, bad, timeout_s=T)
            with pytest.raises(BadShardRequest, match="checksums"):
                await client.put("a", sid(1), data, bad[:2], timeout_s=T)
            [outcome] = await client.put_many("a", [(sid(2), data, bad)], timeout_s=T)
            assert isinstance(outcome, BadShardRequest)
            big = data_of(4, 3 * MiB + 77)
            big_sums = sums(big)
            writer = client.open_put("a", sid(3), len(big), timeout_s=T)
            with pytest.raises(BadShardRequest, match="checksum"):
                for number, start in enumerate(range(0, len(big), MiB)):
                    piece = big[start:start + MiB]
                    piece_sums = sums(piece)
                    if number == 1:
                        piece_sums[3] = bytes(16)
                    await writer.write(piece, piece_sums)
                await writer.finish()
            with pytest.raises(BadShardRequest):            # the writer is dead
                await writer.finish()
            for shard in (sid(1), sid(2), sid(3)):
                with pytest.raises(ShardNotFound):
                    await client.get("a", shard, timeout_s=T)
            assert await client.list("a", timeout_s=T) == ([], False)
            assert nodes["a"].stat().used_bytes == used      # the streamed record was cut off
            # The store still works after the refusals, on the same connection.
            assert await stream_put(client, "a", sid(3), big) > 0
            assert bytes(await client.get("a", sid(3), timeout_s=T)) == big
            assert big_sums == sums(big)
    run(body())


def test_put_many_one_bad_item_the_others_stored_in_one_group_commit(tmp_path):
    async def body():
        async with store(tmp_path) as (client, nodes):
            items = [(sid(n), data_of(n, 4096 + n), sums(data_of(n, 4096 + n))) for n in range(8)]
            items[3] = (items[3][0], items[3][1], [bytes(16)])
            before = nodes["b"].stat()
            outcomes = await client.put_many("b", items, timeout_s=T)
            after = nodes["b"].stat()
            assert isinstance(outcomes[3], BadShardRequest)
            assert all(isinstance(outcome, int) and outcome > 0 for i, outcome in enumerate(outcomes) if i != 3)
            assert after.commit_batches - before.commit_batches == 1
            assert after.committed_records - before.committed_records == 7
            for n, (shard, data, _) in enumerate(items):
                if n == 3:
                    with pytest.raises(ShardNotFound):
                        await client.get("b", shard, timeout_s=T)
                else:
                    assert bytes(await client.get("b", shard, timeout_s=T)) == data
            # A taken id with other bytes refuses only itself.
            other = data_of(99, 100)
            outcomes = await client.put_many("b", [(sid(0), other, sums(other)), (sid(50), other, sums(other))],
                                             timeout_s=T)
            assert isinstance(outcomes[0], ShardExists) and isinstance(outcomes[1], int)
            assert await client.put_many("b", [], timeout_s=T) == []
    run(body())


def test_streamed_put_equals_a_unary_put_of_the_same_bytes(tmp_path):
    async def body():
        async with store(tmp_path) as (client, nodes):
            data = data_of(5, 3 * MiB + 4321)
            await client.put("a", sid(1), data, sums(data), timeout_s=T)
            await stream_put(client, "a", sid(2), data, window=1)
            await stream_put(client, "a", sid(3), data, piece=2 * MiB, window=4)
            for shard in (sid(1), sid(2), sid(3)):
                assert bytes(await client.get("a", shard, timeout_s=T)) == data
                assert nodes["a"].locate(shard).checksums == tuple(sums(data))
            page, truncated = await client.list("a", timeout_s=T)
            assert [(info.id, info.length) for info in page] == [(sid(n), len(data)) for n in (1, 2, 3)]
            assert not truncated and all(info.put_time_us > 0 for info in page)
            # Re-putting the same bytes streamed is OK; other bytes are ShardExists.
            assert await stream_put(client, "a", sid(1), data) > 0
            other = data_of(6, len(data))
            with pytest.raises(ShardExists):
                await stream_put(client, "a", sid(1), other)
            # Many streams at once on one connection.
            shards = [sid(10 + n) for n in range(6)]
            await asyncio.gather(*(stream_put(client, "b", shard, data_of(n, MiB + n)) for n, shard in
                                   enumerate(shards)))
            for n, shard in enumerate(shards):
                assert bytes(await client.get("b", shard, timeout_s=T)) == data_of(n, MiB + n)
            assert await stream_put(client, "b", sid(20), b"") > 0
            assert nodes["a"].streams == nodes["b"].streams == 0
    run(body())


def test_streamed_put_misuse_abort_and_lost_connection_leave_nothing(tmp_path):
    async def body():
        async with store(tmp_path) as (client, nodes):
            data = data_of(7, 3 * MiB)
            writer = client.open_put("a", sid(1), len(data), timeout_s=T)
            with pytest.raises(BadShardRequest):             # refused locally, writer still usable
                await writer.write(data[:1000], sums(data[:1000]))
            await writer.write(data[:MiB], sums(data[:MiB]))
            with pytest.raises(BadShardRequest):
                await writer.write(data[MiB:], sums(data[MiB:]) + [bytes(16)])
            await writer.abort()
            with pytest.raises(Exception):
                await writer.write(data[MiB:2 * MiB], sums(data[MiB:2 * MiB]))
            async with client.open_put("a", sid(2), len(data), timeout_s=T) as writer:
                await writer.write(data[:MiB], sums(data[:MiB]))       # left without finish: aborted
            # A second client that goes away mid-stream.
            other = ShardClient(client.address)
            try:
                writer = other.open_put("a", sid(3), len(data), timeout_s=T)
                await writer.write(data[:MiB], sums(data[:MiB]))
                await writer.write(data[MiB:2 * MiB], sums(data[MiB:2 * MiB]))
            finally:
                await other.close()
            for _ in range(200):
                if nodes["a"].streams == 0:
                    break
                await asyncio.sleep(0.01)
            assert nodes["a"].streams == 0
            for shard in (sid(1), sid(2), sid(3)):
                with pytest.raises(ShardNotFound):
                    await client.get("a", shard, timeout_s=T)
            with pytest.raises(BadShardRequest):
                await client.open_put("a", sid(4), 10, timeout_s=T).finish()
    run(body())


# ---------------------------------------------------------------- corruption


def test_flipped_byte_is_shard_corrupt_from_get_and_listed_after_a_scrub(tmp_path):
    async def body():
        async with store(tmp_path) as (client, nodes):
            node = nodes["a"]
            data = data_of(8, 4 * BLOCK)
            for n in (1, 2, 3):
                await client.put("a", sid(n), data, sums(data), timeout_s=T)
            for n in (1, 2):                                 # bit rot in block 2 of shards 1 and 2
                entry = node.locate(sid(n))
                path = tmp_path / "a" / "extents" / fmt.extent_name(entry.location.extent)
                with open(path, "r+b") as extent:
                    extent.seek(entry.data_offset + 2 * BLOCK + 17)
                    byte = extent.read(1)
                    extent.seek(entry.data_offset + 2 * BLOCK + 17)
                    extent.write(bytes([byte[0] ^ 0x40]))
            with pytest.raises(ShardCorrupt):
                await client.get("a", sid(1), timeout_s=T)
            with pytest.raises(ShardCorrupt):
                await client.get("a", sid(1), 2 * BLOCK + 100, 2 * BLOCK + 200, timeout_s=T)
            assert bytes(await client.get("a", sid(1), 0, 2 * BLOCK, timeout_s=T)) == data[:2 * BLOCK]
            assert await client.corrupt("a", timeout_s=T) == [sid(1)]       # the read's finding
            assert await node.scrub() == [sid(1), sid(2)]
            assert await client.corrupt("a", timeout_s=T) == [sid(1), sid(2)]
            assert (await client.stat("a", timeout_s=T)).corrupt_count == 2
            assert await client.corrupt("b", timeout_s=T) == []
            await client.put("a", sid(1), data, sums(data), timeout_s=T)     # repair: a fresh copy serves
            await client.delete_many("a", [sid(2)], timeout_s=T)
            assert await client.corrupt("a", timeout_s=T) == []
            assert bytes(await client.get("a", sid(1), timeout_s=T)) == data
    run(body())


def test_the_client_verifies_the_blocks_it_receives(tmp_path):
    """A store whose answer was damaged after its own check: the client's check catches it."""
    async def body():
        data = data_of(9, 2 * BLOCK + 5)
        checksums = sums(data)

        def damaged(connection, frame):
            payload = bytearray(data)
            payload[BLOCK + 3] ^= 1
            reply = pb.GetShardFrameReply(length=len(data), start=0, block_size=BLOCK, block_checksums=checksums)
            connection.reply(frame.id, KIND_GET, reply.SerializeToString(), bytes(payload))

        server = await framing.Server({KIND_GET: damaged}).start("127.0.0.1", 0)
        client = ShardClient(f"127.0.0.1:{server.port}")
        try:
            with pytest.raises(ShardCorrupt, match="block 1"):
                await client.get("a", sid(1), timeout_s=T)
            with pytest.raises(ShardCorrupt, match="sent"):          # not the blocks of the range asked for
                await client.get("a", sid(1), 0, BLOCK, timeout_s=T)
        finally:
            await client.close()
            await server.close()
    run(body())


# ---------------------------------------------------------------- disks, listing, stats


def test_unknown_disk_is_a_clear_error_on_every_operation(tmp_path):
    async def body():
        async with store(tmp_path) as (client, _):
            data = b"x" * 100
            calls = [client.put("c", sid(1), data, sums(data), timeout_s=T),
                     client.put_many("c", [(sid(1), data, sums(data))], timeout_s=T),
                     client.open_put("c", sid(1), 0, timeout_s=T).finish(),
                     client.get("c", sid(1), timeout_s=T), client.delete_many("c", [sid(1)], timeout_s=T),
                     client.list("c", timeout_s=T), client.stat("c", timeout_s=T), client.corrupt("c", timeout_s=T),
                     client.get("", sid(1), timeout_s=T)]
            for call in calls:
                with pytest.raises(UnknownDisk) as refused:
                    await call
                assert "'a', 'b'" in str(refused.value)
        async with store(tmp_path / "one", disks=("only",)) as (client, _):
            await client.put("", sid(1), b"abc", sums(b"abc"), timeout_s=T)      # the only disk may go unnamed
            assert bytes(await client.get("only", sid(1), timeout_s=T)) == b"abc"
    run(body())


def test_two_disks_in_one_process_are_independent(tmp_path):
    async def body():
        async with store(tmp_path) as (client, nodes):
            one, two = data_of(10, 5000), data_of(11, 7000)
            await client.put("a", sid(1), one, sums(one), timeout_s=T)
            await client.put("b", sid(1), two, sums(two), timeout_s=T)      # the same id, other bytes: OK
            assert bytes(await client.get("a", sid(1), timeout_s=T)) == one
            assert bytes(await client.get("b", sid(1), timeout_s=T)) == two
            await client.delete_many("a", [sid(1)], timeout_s=T)
            with pytest.raises(ShardNotFound):
                await client.get("a", sid(1), timeout_s=T)
            assert bytes(await client.get("b", sid(1), timeout_s=T)) == two
            stats_a, stats_b = await client.stat("a", timeout_s=T), await client.stat("b", timeout_s=T)
            assert isinstance(stats_a, Stats)
            assert stats_a.live_bytes == 0 and stats_b.live_bytes == nodes["b"].stat().live_bytes > 7000
            assert stats_b.capacity_bytes > 0 and 0 <= stats_b.fill_ratio <= 1
            assert [info.id for info in (await client.list("b", timeout_s=T))[0]] == [sid(1)]
            assert (await client.list("a", timeout_s=T))[0] == []
    run(body())


def test_list_pages_and_delete_many(tmp_path):
    async def body():
        async with store(tmp_path) as (client, _):
            items = [(sid(n), data_of(n, 10 + n), sums(data_of(n, 10 + n))) for n in range(25)]
            assert all(isinstance(o, int) for o in await client.put_many("a", items, timeout_s=T))
            seen, after = [], None
            while True:
                page, truncated = await client.list("a", after, limit=10, timeout_s=T)
                seen += page
                if not truncated:
                    break
                after = page[-1].id
            assert [(info.id, info.length) for info in seen] == [(sid(n), 10 + n) for n in range(25)]
            assert all(info.put_time_us > 0 for info in seen)
            await client.delete_many("a", [sid(n) for n in range(0, 25, 2)] + [sid(1000)], timeout_s=T)
            await client.delete_many("a", [], timeout_s=T)
            page, _ = await client.list("a", timeout_s=T)
            assert [info.id for info in page] == [sid(n) for n in range(1, 25, 2)]
    run(body())


# ---------------------------------------------------------------- an unreachable store


def test_unreachable_or_silent_store_raises_framing_errors():
    async def body():
        client = ShardClient("127.0.0.1:1", connect_timeout_s=1.0)
        try:
            with pytest.raises(framing.ConnectionLost):
                await client.stat("a", timeout_s=2)
        finally:
            await client.close()
        silent = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        client = ShardClient(f"127.0.0.1:{port}")
        try:
            with pytest.raises(framing.DeadlineExceeded):
                await client.get("a", sid(1), timeout_s=0.3)
            writer = client.open_put("a", sid(1), 10, timeout_s=0.3)
            with pytest.raises(framing.DeadlineExceeded):
                await writer.write(b"0123456789", sums(b"0123456789"))
                await writer.finish()
        finally:
            await client.close()
            silent.close()
            await silent.wait_closed()
    run(body())

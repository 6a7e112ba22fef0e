"""Property: a real `cairn shardstore` process compacts by itself, and a SIGKILL at any
moment of its background compaction loses no shard, resurrects no deleted one and
serves nothing torn; once it is left to finish, the space of the deleted shards is back.

Method: a process on one disk whose limits (`--limits`) make extents small (1 MiB) and
the compactor eager (a pass every 100 ms) and slow (its reads at 4 MiB/s), so a pass
spans several kills. Over the framed protocol: small shards in put_many batches and
large ones streamed, then two of every three deleted, leaving every extent mostly
dead (compaction may start meanwhile, beside the puts and deletes). Then, five times:
restart, wait a seeded random 0.1 - 1.2 s (compaction copying), SIGKILL. Last:
restart, and wait (at most 60 s) until the extents hold little more than the kept
shards' bytes; no Compact call is ever made. Every kept shard
reads back byte for byte, every deleted one is not found, the listing is exactly the
kept ones. Every process started is stopped (SIGTERM, exit 0; SIGKILL if a test fails).
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import uvloop

from common.limits import DEFAULT_LIMITS
from conftest import FramedShardstoreProcess
from shardstore.client import ShardClient, ShardId, ShardNotFound, block_checksums

BLOCK = DEFAULT_LIMITS.CHECKSUM_BLOCK
MiB = 1 << 20
T = 30.0
LIMITS = """[[users]]
name = "ann"
access_key = "AKIAEXAMPLE0001"
secret_key = "secret-secret"

[limits]
EXTENT_MAX_BYTES = 1048576
SHARD_COMPACT_INTERVAL_MS = 100
SHARD_COMPACT_BYTES_PER_S = 4194304
"""


def _shard(number: int) -> ShardId:
    return ShardId(number.to_bytes(16, "big"), number % 6)


def _data(number: int) -> bytes:
    size = 1 * MiB + 1234 if number % 25 == 0 else random.Random(number).choice([1, 4096, 65536, 100_000])
    return random.Random(number).randbytes(size)


async def _fill(address: str) -> tuple[dict, set]:
    """Put 200 shards, delete two of every three; returns (kept: shard -> bytes, deleted)."""
    client = ShardClient(address)
    try:
        numbers = list(range(200))
        small = [number for number in numbers if len(_data(number)) < MiB]
        for start in range(0, len(small), 16):
            batch = [(_shard(number), _data(number), block_checksums(_data(number), BLOCK))
                     for number in small[start:start + 16]]
            outcomes = await client.put_many("d0", batch, timeout_s=T)
            assert all(isinstance(outcome, int) for outcome in outcomes), outcomes
        for number in numbers:
            data = _data(number)
            if len(data) >= MiB:
                writer = client.open_put("d0", _shard(number), len(data), timeout_s=T)
                for offset in range(0, len(data), MiB):
                    piece = data[offset:offset + MiB]
                    await writer.write(piece, block_checksums(piece, BLOCK))
                await writer.finish()
        deleted = {_shard(number) for number in numbers if number % 3}
        await client.delete_many("d0", sorted(deleted), timeout_s=T)
        kept = {_shard(number): _data(number) for number in numbers if not number % 3}
        return kept, deleted
    finally:
        await client.close()


async def _used_bytes(address: str) -> int:
    client = ShardClient(address)
    try:
        return (await client.stat("d0", timeout_s=T)).used_bytes
    finally:
        await client.close()


async def _check(address: str, kept: dict, deleted: set) -> None:
    client = ShardClient(address)
    try:
        for shard, data in kept.items():
            assert bytes(await client.get("d0", shard, timeout_s=T)) == data, shard
        for shard in deleted:
            try:
                await client.get("d0", shard, timeout_s=T)
            except ShardNotFound:
                continue
            raise AssertionError(f"deleted shard {shard} is back")
        listed, after = [], None
        while True:
            page, more = await client.list("d0", after, 1000, timeout_s=T)
            listed += [info.id for info in page]
            if not more or not page:
                break
            after = page[-1].id
        assert listed == sorted(kept)
    finally:
        await client.close()


def test_sigkill_during_background_compaction_loses_nothing_and_space_comes_back(tmp_path):
    limits = tmp_path / "cairn.toml"
    limits.write_text(LIMITS)
    store = FramedShardstoreProcess({"d0": str(tmp_path / "d0")}, ("--limits", str(limits)))
    rng = random.Random(2026)
    try:
        store.start()
        kept, deleted = uvloop.run(_fill(store.data))
        store.kill()
        for _ in range(5):
            store.start()
            time.sleep(rng.uniform(0.1, 1.2))
            store.kill()
        store.start()
        uvloop.run(_check(store.data, kept, deleted))       # before compaction is done, too
        # Two of every three shards' bytes are dead: compacted, the disk holds about the
        # kept ones (with their records' framing and a head or two).
        target = 1.3 * sum(map(len, kept.values())) + 2 * MiB
        assert target < 0.6 * sum(len(_data(number)) for number in range(200))
        deadline = time.monotonic() + 60
        while (used := uvloop.run(_used_bytes(store.data))) > target:
            assert time.monotonic() < deadline, f"{used} bytes used, {target:.0f} expected: no compaction"
            time.sleep(0.2)
        uvloop.run(_check(store.data, kept, deleted))
        on_disk = sum(entry.stat().st_size for entry in os.scandir(tmp_path / "d0" / "extents"))
        assert on_disk <= target
        assert store.stop() == 0
    finally:
        store.kill()

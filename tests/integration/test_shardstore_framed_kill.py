"""Property: a real `cairn shardstore` process with two disks, SIGKILLed in the middle of a
storm of framed puts, loses no acknowledged shard; nothing half-written is ever served.

Method: start `cairn shardstore --disk a=DIR --disk b=DIR --listen 127.0.0.1:0
--data-listen 127.0.0.1:0` (ports learned from its `listening:` line); several
ShardClients (each its own connection) put batches of small shards with put_many and
large shards with streamed puts to both disks; SIGKILL the process mid-storm, restart
it on the same directories, and read every shard back: each acknowledged one is intact
on its disk; each in flight at the kill is absent or intact, never torn; listings hold
nothing else. Then the gRPC side of the same process: a request without a disk is
refused naming the disks, with one it is served. Runs at two kill points. Every
process started is stopped (SIGTERM, exit 0; SIGKILL if a test fails).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile

import grpc
import pytest

from common import framing
from conftest import FramedShardstoreProcess as StoreProcess
from common.limits import DEFAULT_LIMITS
from shardstore import shardstore_pb2 as pb
from shardstore import shardstore_pb2_grpc as pb_grpc
from shardstore.client import ShardClient, ShardId, ShardNotFound, ShardStoreError, block_checksums

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = DEFAULT_LIMITS.CHECKSUM_BLOCK
MiB = 1 << 20


def _data(client: int, number: int, size: int) -> bytes:
    return random.Random(client * 1_000_003 + number).randbytes(size)


async def _client(address: str, client: int, acked: dict, in_flight: dict) -> None:
    """acked / in_flight: (disk, shard) -> bytes. Each shard is put once."""
    rng = random.Random(client)
    shards = ShardClient(address)
    number = 0
    try:
        while True:
            disk = "ab"[number % 2]
            if client % 4 == 3:                                   # a streamed put of a large shard
                number += 1
                shard = ShardId(client.to_bytes(8, "big") + number.to_bytes(8, "big"), 1)
                data = _data(client, number, rng.choice([MiB + 5, 2 * MiB + BLOCK + 3]))
                in_flight[(disk, shard)] = data
                writer = shards.open_put(disk, shard, len(data), timeout_s=20)
                for start in range(0, len(data), MiB):
                    piece = data[start:start + MiB]
                    await writer.write(piece, block_checksums(piece, BLOCK))
                await writer.finish()
                acked[(disk, shard)] = in_flight.pop((disk, shard))
                continue
            items = []
            for _ in range(rng.randrange(1, 17)):
                number += 1
                shard = ShardId(client.to_bytes(8, "big") + number.to_bytes(8, "big"), 0)
                data = _data(client, number, rng.choice([1, 4096, 10_000, 70_000]))
                items.append((shard, data, block_checksums(data, BLOCK)))
                in_flight[(disk, shard)] = data
            outcomes = await shards.put_many(disk, items, timeout_s=20)
            for (shard, _, _), outcome in zip(items, outcomes):
                assert isinstance(outcome, int), outcome
                acked[(disk, shard)] = in_flight.pop((disk, shard))
    except (framing.ConnectionLost, framing.DeadlineExceeded):
        return                    # the store is gone: what is in flight stays ambiguous
    except ShardStoreError as error:
        assert "connection" in str(error) or "stopping" in str(error), error
    finally:
        await shards.close()


async def _storm(process: StoreProcess, clients: int, seconds: float) -> tuple[dict, dict]:
    acked: dict = {}
    in_flight: dict = {}
    tasks = [asyncio.create_task(_client(process.data, client, acked, in_flight)) for client in range(clients)]
    await asyncio.sleep(seconds)
    process.kill()
    done, pending = await asyncio.wait(tasks, timeout=30)
    assert not pending
    for task in done:
        task.result()                                         # a client's assertion fails the test
    return acked, in_flight


async def _check(process: StoreProcess, acked: dict, in_flight: dict) -> int:
    shards = ShardClient(process.data)
    intact_in_flight = 0
    try:
        for (disk, shard), data in acked.items():
            assert bytes(await shards.get(disk, shard, timeout_s=20)) == data, (disk, shard)
        for (disk, shard), data in in_flight.items():
            try:
                assert bytes(await shards.get(disk, shard, timeout_s=20)) == data, (disk, shard)
                intact_in_flight += 1
            except ShardNotFound:
                pass
        for disk in "ab":
            listed, after = [], None
            while True:
                page, truncated = await shards.list(disk, after, timeout_s=20)
                listed += page
                if not truncated:
                    break
                after = page[-1].id
            for info in listed:
                data = acked.get((disk, info.id), in_flight.get((disk, info.id)))
                assert data is not None and len(data) == info.length and info.put_time_us > 0, info
    finally:
        await shards.close()
    return intact_in_flight


async def _grpc_names_the_disk(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ShardStoreStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Stat(pb.StatRequest(), timeout=20)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'a', 'b'" in refused.value.details()
        assert (await stub.Stat(pb.StatRequest(disk="a"), timeout=20)).live_bytes > 0
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.ListShards(pb.ListShardsRequest(disk="c"), timeout=20)
        assert "unknown disk 'c'" in unknown.value.details()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("storm_seconds", [1.0, 2.5])
def test_sigkill_mid_put_storm_loses_no_acknowledged_shard_on_either_disk(storm_seconds):
    with tempfile.TemporaryDirectory(prefix="cairn-shardstore-framed-kill-") as base:
        process = StoreProcess({"a": os.path.join(base, "a"), "b": os.path.join(base, "b")})
        try:
            process.start()
            acked, in_flight = asyncio.run(_storm(process, 8, storm_seconds))
            assert sum(1 for disk, _ in acked if disk == "a") > 10 and sum(1 for disk, _ in acked if disk == "b") > 10
            assert in_flight                                  # the kill did land mid-request
            process.start()                                   # recover both disks
            asyncio.run(_check(process, acked, in_flight))
            asyncio.run(_grpc_names_the_disk(process.grpc))
            assert process.stop() == 0
        finally:
            process.kill()


def test_help_names_the_command_and_bad_disks_are_refused():
    help_text = subprocess.run([sys.executable, "-m", "deploy.cli", "shardstore", "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0 and help_text.stdout.startswith("usage: cairn shardstore")
    assert "--data-listen" in help_text.stdout and "ID=PATH" in help_text.stdout
    for disks in (["a=/tmp/x", "a=/tmp/y"], ["a=/tmp/x", "b=/tmp/x"], ["bad id=/tmp/x"]):
        command = [sys.executable, "-m", "deploy.cli", "shardstore", "--listen", "127.0.0.1:0"]
        for disk in disks:
            command += ["--disk", disk]
        refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "disk" in refused.stderr, (disks, refused.stderr)

"""Shardstore benchmark: one node process on loopback, over gRPC and over the framed data protocol.

Reports, in one run on one filesystem: `dd conv=fsync` and `dd oflag=direct` write
speed (the disk's own figures); large shards, put and got by several concurrent
streams of SHARD_MIB shards — gRPC PutShard/GetShard with 1 MiB chunks, and framed
streamed puts with 1 MiB pieces (window 4) and framed gets of GET_PIECE_MIB ranges;
a full scrub of the large shards (unpaced: MiB/s and node CPU
per MiB); and 4 KiB puts/s at 32 concurrent clients — gRPC: one PutShardUnary call per shard
(the path for shards that fit one message), one single-message PutShard stream per
shard (the old path, for comparison), PutShards batches of 16; framed: one PUT frame
per shard, PUT_MANY batches of 16 — every put acknowledged only after fsync. Each
small run also prints the CPU it cost per put, in the node process and in the client
process, measured from their CPU times (other processes share the cores, so puts/s
alone says little). Plus the machine (CPU model, cores, load). The framed client runs
on uvloop, as every Cairn process does; the gRPC client on asyncio's default loop.

    .venv/bin/python -m bench.shardstore_bench [--dir DIR] [--seconds S] [--transports grpc,framed]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import grpc
import uvloop

from common.limits import DEFAULT_LIMITS
from shardstore import shardstore_pb2 as pb
from shardstore import shardstore_pb2_grpc as pb_grpc
from shardstore.client import ShardClient, ShardId, block_checksums

MiB = 1 << 20


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, load average {load} at start"


def dd(directory: str, flag: str, mib: int = 256) -> str:
    target = os.path.join(directory, "dd.test")
    try:
        result = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}", flag],
                                capture_output=True, text=True, timeout=120)
        match = re.search(r"([\d.,]+ [GMk]?B/s)", result.stderr)
        return match.group(1) if match else result.stderr.strip().splitlines()[-1]
    finally:
        if os.path.exists(target):
            os.unlink(target)


def shard_id(prefix: int, number: int) -> pb.ShardId:
    return pb.ShardId(data_id=prefix.to_bytes(4, "big") + number.to_bytes(12, "big"), shard_index=0)


async def put_large(stub, shard: pb.ShardId, payload: bytes, shard_mib: int) -> None:
    async def messages():
        yield pb.PutShardRequest(id=shard, length=shard_mib * MiB, data=payload)
        for _ in range(shard_mib - 1):
            yield pb.PutShardRequest(data=payload)
    await stub.PutShard(messages(), timeout=120)


async def large(address: str, shard_mib: int, shards: int, streams: int) -> tuple[float, float]:
    payload = os.urandom(MiB)
    options = [("grpc.max_receive_message_length", 8 * MiB)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.ShardStoreStub(channel)
        queue = list(range(shards))

        async def putter():
            while queue:
                await put_large(stub, shard_id(1, queue.pop()), payload, shard_mib)

        started = time.perf_counter()
        await asyncio.gather(*(putter() for _ in range(streams)))
        put_mib_s = shards * shard_mib / (time.perf_counter() - started)

        queue = list(range(shards))
        received = 0

        async def getter():
            nonlocal received
            while queue:
                async for message in stub.GetShard(pb.GetShardRequest(id=shard_id(1, queue.pop())), timeout=120):
                    received += len(message.data)

        started = time.perf_counter()
        await asyncio.gather(*(getter() for _ in range(streams)))
        get_mib_s = received / MiB / (time.perf_counter() - started)
        assert received == shards * shard_mib * MiB
    return put_mib_s, get_mib_s


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def small(address: str, clients: int, seconds: float, batch: int, prefix: int,
                unary: bool = True) -> float:
    payload = os.urandom(4096)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ShardStoreStub(channel)
        done = 0
        deadline = time.perf_counter() + seconds

        async def client(number: int):
            nonlocal done
            sequence = 0
            while time.perf_counter() < deadline:
                if batch == 1 and unary:
                    await stub.PutShardUnary(pb.PutShardRequest(id=shard_id(prefix + number, sequence), length=4096,
                                                                data=payload), timeout=30)
                elif batch == 1:
                    await stub.PutShard(iter([pb.PutShardRequest(id=shard_id(prefix + number, sequence), length=4096,
                                                                 data=payload)]), timeout=30)
                else:
                    response = await stub.PutShards(pb.PutShardsRequest(shards=[
                        pb.PutShardRequest(id=shard_id(prefix + number, sequence + i), length=4096, data=payload)
                        for i in range(batch)]), timeout=30)
                    assert all(outcome.code == 0 for outcome in response.outcomes)
                sequence += batch
                done += batch

        started = time.perf_counter()
        await asyncio.gather(*(client(number) for number in range(clients)))
        return done / (time.perf_counter() - started)


async def scrub(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await pb_grpc.ShardStoreStub(channel).Scrub(pb.ScrubRequest(run_now=True), timeout=600)
    assert not response.corrupt, response


async def stat(address: str) -> pb.StatResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await pb_grpc.ShardStoreStub(channel).Stat(pb.StatRequest(), timeout=30)


# ---------------------------------------------------------------- the framed data protocol

DISK = "0"


def framed_id(prefix: int, number: int) -> ShardId:
    return ShardId(prefix.to_bytes(4, "big") + number.to_bytes(12, "big"), 0)


async def framed_large(address: str, shard_mib: int, shards: int, streams: int,
                       get_piece_mib: int) -> tuple[float, float]:
    payload = os.urandom(MiB)
    checksums = block_checksums(payload, DEFAULT_LIMITS.CHECKSUM_BLOCK)
    client = ShardClient(address)
    try:
        queue = list(range(shards))

        async def putter():
            while queue:
                writer = client.open_put(DISK, framed_id(2, queue.pop()), shard_mib * MiB, timeout_s=120)
                for _ in range(shard_mib):
                    await writer.write(payload, checksums)
                await writer.finish()

        started = time.perf_counter()
        await asyncio.gather(*(putter() for _ in range(streams)))
        put_mib_s = shards * shard_mib / (time.perf_counter() - started)

        queue = list(range(shards))
        received = 0

        async def getter():
            nonlocal received
            while queue:
                shard = framed_id(2, queue.pop())
                for start in range(0, shard_mib * MiB, get_piece_mib * MiB):
                    data = await client.get(DISK, shard, start, min(start + get_piece_mib * MiB, shard_mib * MiB),
                                            timeout_s=120)
                    received += len(data)

        started = time.perf_counter()
        await asyncio.gather(*(getter() for _ in range(streams)))
        get_mib_s = received / MiB / (time.perf_counter() - started)
        assert received == shards * shard_mib * MiB
    finally:
        await client.close()
    return put_mib_s, get_mib_s


async def framed_small(address: str, clients: int, seconds: float, batch: int, prefix: int) -> float:
    payload = os.urandom(4096)
    checksums = block_checksums(payload, DEFAULT_LIMITS.CHECKSUM_BLOCK)
    client = ShardClient(address)
    done = 0
    deadline = time.perf_counter() + seconds

    async def one(number: int):
        nonlocal done
        sequence = 0
        while time.perf_counter() < deadline:
            if batch == 1:
                await client.put(DISK, framed_id(prefix + number, sequence), payload, checksums, timeout_s=30)
            else:
                outcomes = await client.put_many(DISK, [(framed_id(prefix + number, sequence + i), payload, checksums)
                                                        for i in range(batch)], timeout_s=30)
                assert all(isinstance(outcome, int) for outcome in outcomes), outcomes
            sequence += batch
            done += batch

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(number) for number in range(clients)))
        return done / (time.perf_counter() - started)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shardstore_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="directory on the filesystem to test (default: a temp dir)")
    parser.add_argument("--shard-mib", type=int, default=64, help="large shard size in MiB (default 64)")
    parser.add_argument("--shards", type=int, default=8, help="large shards to put and get (default 8)")
    parser.add_argument("--streams", type=int, default=2, help="concurrent large-shard streams (default 2)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each small-put run (default 5)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent small-put clients (default 32)")
    parser.add_argument("--small-only", action="store_true", help="skip dd and the large-shard runs")
    parser.add_argument("--small-runs", default="unary,stream,batch,framed-unary,framed-many",
                        help="which 4 KiB runs, comma-separated (default unary,stream,batch,framed-unary,"
                             "framed-many; a node older than PutShardUnary takes stream,batch)")
    parser.add_argument("--transports", default="grpc,framed", help="large-shard runs: grpc, framed or both")
    parser.add_argument("--get-piece-mib", type=int, default=4, help="range size of a framed large get (default 4)")
    arguments = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix="cairn-shardstore-bench-", dir=arguments.dir)
    process = subprocess.Popen([sys.executable, "-m", "shardstore.main", "--disk", os.path.join(base, "disk"),
                                "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--no-scrub",
                                "--log-level", "WARNING"],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().strip()
        match = re.fullmatch(r"listening: grpc=(\S+) data=(\S+)", line)
        assert match, line
        address, data_address = match.groups()
        print(f"machine: {machine()}")
        print(f"filesystem dir: {base}")
        transports = arguments.transports.split(",")
        if not arguments.small_only:
            print(f"dd bs=1M count=256 conv=fsync : {dd(base, 'conv=fsync')}")
            print(f"dd bs=1M count=256 oflag=direct: {dd(base, 'oflag=direct')}")
            if "grpc" in transports:
                put_mib_s, get_mib_s = asyncio.run(large(address, arguments.shard_mib, arguments.shards,
                                                         arguments.streams))
                print(f"PutShard {arguments.shards} x {arguments.shard_mib} MiB, 1 MiB chunks, {arguments.streams} "
                      f"streams: {put_mib_s:.0f} MiB/s (goal >= 250)")
                print(f"GetShard same shards, {arguments.streams} streams: {get_mib_s:.0f} MiB/s (goal >= 400)")
            if "framed" in transports:
                node_cpu_s, client_cpu_s = process_cpu_s(process.pid), time.process_time()
                put_mib_s, get_mib_s = uvloop.run(framed_large(data_address, arguments.shard_mib, arguments.shards,
                                                               arguments.streams, arguments.get_piece_mib))
                mib = 2 * arguments.shards * arguments.shard_mib
                print(f"framed streamed put {arguments.shards} x {arguments.shard_mib} MiB, 1 MiB pieces, window 4, "
                      f"{arguments.streams} streams: {put_mib_s:.0f} MiB/s")
                print(f"framed get same shards, {arguments.get_piece_mib} MiB ranges, {arguments.streams} streams: "
                      f"{get_mib_s:.0f} MiB/s; CPU per MiB put+got: node "
                      f"{(process_cpu_s(process.pid) - node_cpu_s) / mib * 1e3:.2f} ms, client "
                      f"{(time.process_time() - client_cpu_s) / mib * 1e3:.2f} ms")
                node_cpu_s, started = process_cpu_s(process.pid), time.perf_counter()
                asyncio.run(scrub(address))
                seconds, mib = time.perf_counter() - started, arguments.shards * arguments.shard_mib
                print(f"scrub of those shards (unpaced; written and read direct, so not cached): "
                      f"{mib / seconds:.0f} MiB/s; node CPU per MiB {(process_cpu_s(process.pid) - node_cpu_s) / mib * 1e3:.2f} ms")
        runs = {"unary": ("4 KiB PutShardUnary, one call per shard", 1, 1000, True, " (goal >= 2500)"),
                "stream": ("4 KiB PutShard stream of one message per shard", 1, 2000, False, ""),
                "batch": ("4 KiB shards via PutShards batches of 16", 16, 3000, True, ""),
                "framed-unary": ("4 KiB framed PUT, one frame per shard", 1, 4000, None, ""),
                "framed-many": ("4 KiB framed PUT_MANY batches of 16", 16, 5000, None, "")}
        for name in filter(None, arguments.small_runs.split(",")):
            label, batch, prefix, unary, goal = runs[name]
            node_cpu_s, client_cpu_s = process_cpu_s(process.pid), time.process_time()
            before = asyncio.run(stat(address))
            if unary is None:
                rate = uvloop.run(framed_small(data_address, arguments.clients, arguments.seconds, batch, prefix))
            else:
                rate = asyncio.run(small(address, arguments.clients, arguments.seconds, batch, prefix, unary))
            after = asyncio.run(stat(address))
            puts = rate * arguments.seconds
            node_us = (process_cpu_s(process.pid) - node_cpu_s) / puts * 1e6
            client_us = (time.process_time() - client_cpu_s) / puts * 1e6
            batches = after.commit_batches - before.commit_batches
            per_batch = (after.committed_records - before.committed_records) / batches if batches else 0
            print(f"{label}, {arguments.clients} clients: {rate:.0f} puts/s{goal}; "
                  f"CPU per put: node {node_us:.0f} µs, client {client_us:.0f} µs; "
                  f"{per_batch:.1f} puts per fsync")
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cluster BlobStore benchmark: shardstore/blobstore.py over six real shardstore
disks in two `cairn shardstore` processes (three disks each, on tmp dirs), reached on
the framed data protocol; the store runs in this process on uvloop, with the default
limits (RS 4+2, 1 MiB chunks, 3 copies up to 256 KiB). Each disk is its own failure
domain (one filesystem underneath: the disk figures are the box's, not six disks').

Runs, each printing throughput and the CPU it cost in this process ("store": MD5,
encode, xxh3, framing) and in the two shardstore processes ("nodes"), per MiB or per op:
- 64 MiB PUT, then GET of the same objects, one stream, then four concurrent streams;
- 64 MiB GET with the disks of data slots 0 and 1 marked down in the store's view
  (the reader routes around them and decodes every stripe from 2 data + 2 parity);
- 64 KiB PUTs (3 copies, batched into put_many per disk), then GETs, 32 in flight.
No HTTP: the bytes come from memory and go nowhere. The box is shared (2 cores with
other engineers' work): throughput moves ±30–50 % between runs; CPU per unit moves less.

    .venv/bin/python -m bench.ec_blob_bench [--dir DIR] [--objects 4] [--seconds 5]
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

import uvloop

from bench.shardstore_bench import machine, process_cpu_s
from common.limits import DEFAULT_LIMITS
from shardstore.blobstore import DiskSpec, ShardBlobStore
from shardstore.client import ShardClient

MiB = 1 << 20
KiB = 1 << 10
BIG = 64 * MiB
SMALL = 64 * KiB


class Meter:
    """Wall time and CPU of this process and the node processes over one run."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def __enter__(self) -> "Meter":
        self.wall = time.perf_counter()
        self.own = time.process_time()
        self.nodes = sum(process_cpu_s(pid) for pid in self.pids)
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.own = time.process_time() - self.own
        self.nodes = sum(process_cpu_s(pid) for pid in self.pids) - self.nodes


async def _body(data: bytes, piece: int = MiB):
    view = memoryview(data)
    for start in range(0, len(data), piece):
        yield bytes(view[start:start + piece])     # as an HTTP body arrives: fresh bytes per piece


async def _drain(store: ShardBlobStore, ref) -> int:
    total = 0
    async for piece in store.read(ref, 0, ref.size):
        total += len(piece)
    return total


def _large(label: str, meter: Meter, mib: float, store: ShardBlobStore | None = None) -> str:
    line = (f"{label}: {mib / meter.wall:.0f} MiB/s; CPU per MiB: store {meter.own / mib * 1e3:.2f} ms, "
            f"nodes {meter.nodes / mib * 1e3:.2f} ms")
    if store is not None:
        counters = store.counters
        line += (f"; stripes direct {counters['stripes_direct']}, decoded {counters['stripes_decoded']}, "
                 f"hedges {counters['read_hedges']}")
        for name in counters:
            counters[name] = 0
    return line


def _small(label: str, meter: Meter, ops: int) -> str:
    return (f"{label}: {ops / meter.wall:.0f}/s; CPU per op: store {meter.own / ops * 1e6:.0f} µs, "
            f"nodes {meter.nodes / ops * 1e6:.0f} µs")


async def run(addresses: list[tuple[str, list[str]]], pids: list[int], objects: int, seconds: float) -> None:
    layout = {}
    for address, disks in addresses:
        client = ShardClient(address)
        for disk in disks:
            layout[disk] = DiskSpec(client, None)
    store = ShardBlobStore(layout)
    await store.start()
    try:
        payload = os.urandom(BIG)
        # Single stream.
        refs = []
        with Meter(pids) as meter:
            for _ in range(objects):
                refs.append(await store.write(os.urandom(16), _body(payload), BIG, ()))
        print(_large(f"64 MiB PUT x {objects}, 1 stream", meter, objects * 64))
        with Meter(pids) as meter:
            for ref in refs:
                assert await _drain(store, ref) == BIG
        print(_large(f"64 MiB GET x {objects}, 1 stream", meter, objects * 64, store))
        # Four streams.
        with Meter(pids) as meter:
            more = await asyncio.gather(*(store.write(os.urandom(16), _body(payload), BIG, ()) for _ in range(4)))
        print(_large("64 MiB PUT x 4, 4 streams", meter, 4 * 64))
        with Meter(pids) as meter:
            await asyncio.gather(*(_drain(store, ref) for ref in more))
        print(_large("64 MiB GET x 4, 4 streams", meter, 4 * 64, store))
        # Degraded: the disks of data slots 0 and 1 down in the store's view.
        from common import blob_placement as bp
        placement = bp.decode_placement(refs[0].placement)
        lost = {placement.disks[0], placement.disks[1]}
        store.down |= lost
        store._refresh()
        with Meter(pids) as meter:
            assert await _drain(store, refs[0]) == BIG
        print(_large(f"64 MiB GET, 1 stream, disks {sorted(lost)} (data slots 0, 1) down: decode", meter, 64, store))
        store.down -= lost
        store._refresh()
        for ref in refs + list(more):
            await store.delete(ref)
        # Small objects, 32 in flight.
        small_payload = os.urandom(SMALL)
        small_refs = []

        async def writer(deadline: float) -> None:
            while time.perf_counter() < deadline:
                small_refs.append(await store.write(os.urandom(16), _body(small_payload), SMALL, ()))

        with Meter(pids) as meter:
            deadline = time.perf_counter() + seconds
            await asyncio.gather(*(writer(deadline) for _ in range(32)))
        before = {disk: stat for disk, stat in zip(layout, await asyncio.gather(
            *(spec.client.stat(disk, timeout_s=5) for disk, spec in layout.items())))}
        print(_small("64 KiB PUT (3 copies), 32 in flight", meter, len(small_refs)))
        position = 0

        async def reader(deadline: float, counter: list[int]) -> None:
            nonlocal position
            while time.perf_counter() < deadline:
                ref = small_refs[position % len(small_refs)]
                position += 1
                await _drain(store, ref)
                counter[0] += 1

        counter = [0]
        with Meter(pids) as meter:
            deadline = time.perf_counter() + seconds
            await asyncio.gather(*(reader(deadline, counter) for _ in range(32)))
        print(_small("64 KiB GET (1 copy), 32 in flight", meter, counter[0]))
        batches = sum(stat.commit_batches for stat in before.values())
        records = sum(stat.committed_records for stat in before.values())
        print(f"shardstore group commits so far: {records / max(batches, 1):.1f} records per fsync")
        gate = asyncio.Semaphore(32)         # thousands of deletes at once would starve the Stat rounds

        async def delete(ref) -> None:
            async with gate:
                await store.delete(ref)

        await asyncio.gather(*(delete(ref) for ref in small_refs))
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ec_blob_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="directory for the disks (default: a temp dir)")
    parser.add_argument("--objects", type=int, default=4, help="64 MiB objects in the single-stream runs (default 4)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each 64 KiB run (default 5)")
    arguments = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix="cairn-ec-blob-bench-", dir=arguments.dir)
    processes: list[subprocess.Popen] = []
    addresses: list[tuple[str, list[str]]] = []
    try:
        for process_number in range(2):
            disks = [f"disk{process_number * 3 + index}" for index in range(3)]
            command = [sys.executable, "-m", "deploy.cli", "shardstore"]
            for disk in disks:
                command += ["--disk", f"{disk}={os.path.join(base, disk)}"]
            command += ["--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--no-scrub",
                        "--log-level", "WARNING"]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            processes.append(process)
            line = process.stdout.readline().strip()
            match = re.fullmatch(r"listening: grpc=(\S+) data=(\S+)", line)
            if not match:
                raise RuntimeError(f"shardstore did not start: {line!r}")
            addresses.append((match.group(2), disks))
        print(f"machine: {machine()}")
        print(f"disks: 6 in 2 `cairn shardstore` processes under {base}; RS {DEFAULT_LIMITS.EC_K}+"
              f"{DEFAULT_LIMITS.EC_M}, chunk {DEFAULT_LIMITS.CHUNK_MAX // KiB} KiB, copies up to "
              f"{DEFAULT_LIMITS.SMALL_OBJECT_MAX // KiB} KiB")
        uvloop.run(run(addresses, [process.pid for process in processes], arguments.objects, arguments.seconds))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

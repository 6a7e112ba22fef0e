"""Cached vs uncached reads on the metadata cluster (DESIGN §4), without HTTP.

    .venv/bin/python -m bench.cache_bench                 # 64 in flight, 90 % reads, 8 s
    .venv/bin/python -m bench.cache_bench --reads 0.99 --keys 4096

Starts three real metadata nodes (`cairn metanode`, fsynced journal, RocksDB index)
on a temporary directory and drives one ClusterMetadataStore (as one frontend worker
holds it: one journal client, one record cache) from this process: CONCURRENCY
closed-loop tasks, each reading a uniformly random key with probability READS and
otherwise overwriting one (inline 100 B bodies). Every read goes to one metadata
node, with the as-of of its cached answer if it has one; the node answers CURRENT
(the cache serves: a hit) unless a newer write raised the key's witness slot.

Reported: reads/s and writes/s; the hit rate; read latency p50/p99 for hits and
for misses; then the same mix with every read sent uncached (`fresh=True`), for the
latency of a read that always carries the record. A hit still costs the read's
message round trip (the witness check): it saves the record's transfer and decode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.loadgen import machine_line
from common.errors import BucketAlreadyOwnedByYou
from common.limits import DEFAULT_LIMITS
from common.seams import CreateBucket, Inline, ObjectDraft, PutObject
from index.client import ClusterMetadataStore
from index.transport import JournalTransport

BUCKET = "bench"
_LAST_HIT: contextvars.ContextVar[bool | None] = contextvars.ContextVar("last_hit", default=None)


def start_nodes(directory: Path) -> tuple[list[subprocess.Popen], dict[int, tuple[str, int]]]:
    from deploy.cluster_dev import write_cluster_toml
    from journal.server import load_config

    cluster = write_cluster_toml(directory)
    config = load_config(str(cluster))
    processes = []
    for node in config.nodes:
        process = subprocess.Popen([sys.executable, "-m", "index.metanode", "--node", str(node.id),
                                    "--config", str(cluster), "--log-level", "WARNING"],
                                   stdout=subprocess.PIPE, text=True)
        line = process.stdout.readline()
        if not line.startswith("listening: "):
            raise SystemExit(f"metanode {node.id} did not start: {line!r}")
        processes.append(process)
    return processes, {node.id: (node.host, node.port) for node in config.nodes}


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


async def run_mix(nodes, *, keys: int, concurrency: int, reads: float, seconds: float, fresh: bool) -> dict:
    store = ClusterMetadataStore(JournalTransport(nodes), limits=DEFAULT_LIMITS)
    record_hit = store.cache.record_hit

    def noting(hit: bool) -> None:
        _LAST_HIT.set(hit)
        record_hit(hit)
    store.cache.record_hit = noting
    try:
        created = await store.commit(CreateBucket(BUCKET, "bench", "us-east-1"), None, os.urandom(16), 2**62)
        incarnation = created.bucket_incarnation
    except BucketAlreadyOwnedByYou:                       # the second mix
        incarnation = (await store.get_bucket(BUCKET)).incarnation
    body = Inline(os.urandom(100))
    draft = ObjectDraft(size=100, etag="0" * 32, body=body)

    async def put(key: int) -> None:
        await store.commit(PutObject(BUCKET, incarnation, f"k{key:06d}", draft), None, os.urandom(16),
                           time.time_ns() // 1000 + 20_000_000)
    for start in range(0, keys, 256):
        await asyncio.gather(*(put(key) for key in range(start, min(keys, start + 256))))
    hits: list[float] = []
    misses: list[float] = []
    writes: list[float] = []
    stop = time.monotonic() + seconds

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            key = rng.randrange(keys)
            began = time.perf_counter()
            if rng.random() < reads:
                _LAST_HIT.set(None)
                await store.get(BUCKET, incarnation, f"k{key:06d}", fresh=fresh)
                (hits if _LAST_HIT.get() else misses).append(time.perf_counter() - began)
            else:
                await put(key)
                writes.append(time.perf_counter() - began)
    began = time.monotonic()
    await asyncio.gather(*(worker(seed) for seed in range(concurrency)))
    elapsed = time.monotonic() - began
    await store.close()
    reads_done = len(hits) + len(misses)
    return {"reads/s": reads_done / elapsed, "writes/s": len(writes) / elapsed,
            "hit rate": len(hits) / reads_done if reads_done else 0.0,
            "hit p50": _percentile(hits, 0.5), "hit p99": _percentile(hits, 0.99),
            "miss p50": _percentile(misses, 0.5), "miss p99": _percentile(misses, 0.99),
            "write p50": _percentile(writes, 0.5), "write p99": _percentile(writes, 0.99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1024, help="keys read and written (default 1024)")
    parser.add_argument("--concurrency", type=int, default=64, help="operations in flight (default 64)")
    parser.add_argument("--reads", type=float, default=0.9, help="fraction of operations that read (default 0.9)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per mix (default 8)")
    arguments = parser.parse_args(argv)
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="cairn-cache-bench-") as directory:
        processes, nodes = start_nodes(Path(directory))
        try:
            for fresh in (False, True):
                import uvloop

                result = uvloop.run(run_mix(nodes, keys=max(1, arguments.keys), concurrency=arguments.concurrency,
                                            reads=arguments.reads, seconds=arguments.seconds, fresh=fresh))
                label = "uncached (every read carries the record)" if fresh else "cached"
                print(f"{label}: {arguments.concurrency} in flight, {arguments.reads:.0%} reads over "
                      f"{arguments.keys} keys", flush=True)
                print(f"  reads/s {result['reads/s']:,.0f}  writes/s {result['writes/s']:,.0f}  "
                      f"hit rate {result['hit rate']:.1%}", flush=True)
                if not fresh:
                    print(f"  read hit  p50 {result['hit p50']:.2f} ms  p99 {result['hit p99']:.2f} ms", flush=True)
                print(f"  read miss p50 {result['miss p50']:.2f} ms  p99 {result['miss p99']:.2f} ms", flush=True)
                print(f"  write     p50 {result['write p50']:.2f} ms  p99 {result['write p99']:.2f} ms", flush=True)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

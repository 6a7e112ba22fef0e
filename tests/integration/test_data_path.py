"""The erasure-coded data path end to end: boto3 against `cairn dev` on six disks (RS 4+2).

Properties, each through real processes (shardstores, metadata nodes, frontend workers):
- every object size around a boundary of the byte path — empty, 1, INLINE_MAX ± 1,
  SMALL_OBJECT_MAX ± 1 (copies vs RS), one chunk ± 1, one stripe ± 1, 8 MiB multipart
  parts, 100 MiB — reads back byte for byte, whole and in ranges that start and end
  on either side of chunk and stripe edges;
- production layout (one shardstore process per disk): with any two of the six
  processes SIGKILLed every GET still returns the right bytes; with one down, PUTs of
  every size keep working and read back;
- bytes flipped in the shard files of one disk never reach a client: GETs decode
  around them (every block is checksummed by the store and again by the reader).
The dev supervisor restarts a killed child after a backoff, so the kill tests first
SIGSTOP the supervisor (it cannot restart anything), kill, check, then SIGCONT it.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import time
from pathlib import Path

import boto3.s3.transfer
import pytest

from deploy.supervisor import child_processes
from conftest import s3_client, start_server

KiB, MiB = 1024, 1024 * 1024
INLINE_MAX, SMALL_OBJECT_MAX, CHUNK, K = 4 * KiB, 256 * KiB, 1 * MiB, 4
STRIPE = CHUNK * K
SIZES = [0, 1, INLINE_MAX, INLINE_MAX + 1, SMALL_OBJECT_MAX - 1, SMALL_OBJECT_MAX, SMALL_OBJECT_MAX + 1,
         CHUNK - 1, CHUNK, CHUNK + 1, STRIPE - 1, STRIPE, STRIPE + 1, 3 * STRIPE + CHUNK + 7]


def _body(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _ranges(size: int) -> list[tuple[int, int]]:
    """Inclusive byte ranges around the chunk and stripe edges inside `size`."""
    edges = sorted({0, 1, size - 1, CHUNK - 1, CHUNK, CHUNK + 1, STRIPE - 1, STRIPE, STRIPE + 1, size // 2})
    edges = [edge for edge in edges if 0 <= edge < size]
    rng = random.Random(size)
    found = {(first, max(first, last)) for first in edges for last in rng.sample(edges, min(3, len(edges)))}
    return sorted(found)[:12]


def _store_pids(supervisor_pid: int) -> dict[str, int]:
    """Disk id -> pid of the shardstore process serving it (production layout: one each)."""
    stores = {}
    for pid, argv in child_processes(supervisor_pid).items():
        if "shardstore.main" in argv:
            disks = [argv[index + 1].split("=", 1)[0] for index, part in enumerate(argv) if part == "--disk"]
            for disk in disks:
                stores[disk] = pid
    return stores


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("data-path")) as server:
        yield server
        assert not server.tracebacks(), server.tracebacks()[:3]


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("data-path-production"), args=("--process-per-disk",)) as server:
        yield server


def test_every_size_around_a_boundary_reads_back_whole_and_in_ranges(cluster):
    s3 = s3_client(cluster)
    s3.create_bucket(Bucket="sizes")
    for size in SIZES:
        body = _body(size, size)
        put = s3.put_object(Bucket="sizes", Key=f"k{size}", Body=body)
        assert put["ETag"].strip('"') == hashlib.md5(body).hexdigest()
        got = s3.get_object(Bucket="sizes", Key=f"k{size}")
        assert got["ContentLength"] == size and got["Body"].read() == body, f"size {size}"
        for first, last in _ranges(size):
            part = s3.get_object(Bucket="sizes", Key=f"k{size}", Range=f"bytes={first}-{last}")["Body"].read()
            assert part == body[first:last + 1], f"size {size} range {first}-{last}"


def test_multipart_with_8_mib_parts_and_a_100_mib_object(cluster):
    s3 = s3_client(cluster)
    s3.create_bucket(Bucket="large")
    transfer = boto3.s3.transfer.TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)
    body = _body(20 * MiB + 5, 1)
    s3.upload_fileobj(io.BytesIO(body), "large", "multi", Config=transfer)
    assert s3.get_object(Bucket="large", Key="multi")["Body"].read() == body
    first, last = 8 * MiB - 3, 16 * MiB + 2            # across both part boundaries
    ranged = s3.get_object(Bucket="large", Key="multi", Range=f"bytes={first}-{last}")["Body"].read()
    assert ranged == body[first:last + 1]
    big = _body(100 * MiB, 2)
    s3.put_object(Bucket="large", Key="big", Body=big)
    digest = hashlib.md5()
    for piece in s3.get_object(Bucket="large", Key="big")["Body"].iter_chunks(1 * MiB):
        digest.update(piece)
    assert digest.hexdigest() == hashlib.md5(big).hexdigest()


def test_flipped_bytes_on_one_disk_never_reach_a_client(cluster):
    s3 = s3_client(cluster)
    s3.create_bucket(Bucket="rot")
    bodies = {size: _body(size, 100 + size) for size in (INLINE_MAX + 1, SMALL_OBJECT_MAX - 1, STRIPE + 1, 3 * MiB)}
    for size, body in bodies.items():
        s3.put_object(Bucket="rot", Key=f"k{size}", Body=body)
    extents = Path(cluster.stderr_path).parent / "data" / "disks" / "d0" / "extents"
    flipped = 0
    for path in sorted(extents.iterdir()):
        data = bytearray(path.read_bytes())
        for offset in range(512, len(data), 4096):       # past each record header, every 4 KiB
            data[offset] ^= 0xFF
            flipped += 1
        path.write_bytes(bytes(data))
    assert flipped, "disk d0 holds shard bytes to damage"
    for size, body in bodies.items():
        assert s3.get_object(Bucket="rot", Key=f"k{size}")["Body"].read() == body, f"size {size}"


def test_production_layout_survives_two_disks_killed_and_writes_with_one_down(production):
    s3 = s3_client(production, read_timeout=60)
    s3.create_bucket(Bucket="kill")
    sizes = [INLINE_MAX + 1, SMALL_OBJECT_MAX + 1, STRIPE + 3, 9 * MiB]
    bodies = {size: _body(size, 200 + size) for size in sizes}
    for size, body in bodies.items():
        s3.put_object(Bucket="kill", Key=f"k{size}", Body=body)
    supervisor = production.process.pid
    stores = _store_pids(supervisor)
    assert sorted(stores) == [f"d{index}" for index in range(6)], stores
    os.kill(supervisor, signal.SIGSTOP)                   # no restarts while disks are down
    try:
        for victims in (("d0", "d1"), ("d2", "d5"), ("d3", "d4")):
            for disk in victims:
                os.kill(stores[disk], signal.SIGKILL)
            for size, body in bodies.items():
                assert s3.get_object(Bucket="kill", Key=f"k{size}")["Body"].read() == body, (victims, size)
                ranged = s3.get_object(Bucket="kill", Key=f"k{size}", Range="bytes=1-4096")["Body"].read()
                assert ranged == body[1:4097]
            os.kill(supervisor, signal.SIGCONT)
            _wait_all_up(supervisor, 6)
            os.kill(supervisor, signal.SIGSTOP)
            stores = _store_pids(supervisor)
        # One down: writes of every size keep working and read back.
        os.kill(stores["d4"], signal.SIGKILL)
        for size in sizes:
            body = _body(size, 300 + size)
            s3.put_object(Bucket="kill", Key=f"w{size}", Body=body)
            assert s3.get_object(Bucket="kill", Key=f"w{size}")["Body"].read() == body
    finally:
        os.kill(supervisor, signal.SIGCONT)
    _wait_all_up(supervisor, 6)
    for size in sizes:
        assert s3.get_object(Bucket="kill", Key=f"w{size}")["Body"].read() == _body(size, 300 + size)


def _wait_all_up(supervisor: int, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(set(_store_pids(supervisor).values())) == count:
            time.sleep(1.5)                               # a Stat round marks them up in the workers
            return
        time.sleep(0.2)
    raise AssertionError(f"the supervisor did not bring back {count} shardstores")

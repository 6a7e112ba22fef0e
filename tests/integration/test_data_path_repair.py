"""Garbage and repair end to end (DESIGN §14): `cairn dev --process-per-disk` with short limits.

Properties, through real processes and boto3:
- bytes flipped in one disk's shard files: GETs stay right; once the scrubber has run
  it reports the shards and repair rebuilds them elsewhere, after which the scrubber
  finds nothing and every object reads back with two other disks' processes killed;
- a disk lost for good (process killed, directory wiped, `cairn disk remove`) and an
  empty one added (`cairn disk add`): repair restores full redundancy (`cairn status`
  shows none below it) and every object reads back with two other disks killed;
- no shard leaks: after a storm of overwrites, deletes, aborted multipart uploads and
  PUTs cut off by SIGKILLing a frontend worker, the reaper and the orphan sweep leave
  exactly the shards of the objects that exist (every data id on disk is referenced,
  and holds a whole placement's worth of shards).
CAIRN_DEEP=1 makes the storm four times longer. Limits are shrunk through the config's [limits] (MAX_WRITE_AGE 6 s, REAP_DELAY 1 s,
maintenance passes every 0.5–1 s), the way a user would tune them.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import boto3.s3.transfer
import grpc
import pytest

from deploy.supervisor import child_processes
from conftest import CAIRN, User, s3_client, start_server, write_config

KiB, MiB = 1024, 1024 * 1024
DEEP = os.environ.get("CAIRN_DEEP") == "1"          # make test-deep: a longer storm
LIMITS = {"MAX_WRITE_AGE_MS": 6000, "REAP_DELAY_MS": 1000, "MAX_CLOCK_SKEW_MS": 200, "COMMIT_DEADLINE_MS": 5000,
          "DEDUP_WINDOW_MS": 60_000, "REAP_INTERVAL_MS": 500, "SWEEP_INTERVAL_MS": 1000, "REPAIR_INTERVAL_MS": 500}
SIZES = [5 * KiB, 100 * KiB, 300 * KiB, 4 * MiB + 5, 9 * MiB]


def _config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = write_config(directory / "cairn.toml", [User("admin", "CAIRNREPAIRTEST00001", "repair-secret-key-for-tests-0001")])
    with open(path, "a") as file:
        file.write("\n[limits]\n" + "".join(f"{name} = {value}\n" for name, value in LIMITS.items()))
    return path


@pytest.fixture
def cluster(tmp_path):
    config = _config(tmp_path / "etc")
    with start_server(tmp_path / "dev", config=config, args=("--process-per-disk",)) as server:
        server.data_dir = tmp_path / "dev" / "data"
        yield server


def _body(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _store_pid(server, disk: str) -> int:
    for pid, argv in child_processes(server.process.pid).items():
        if "shardstore.main" in argv and any(part.startswith(f"{disk}=") for part in argv):
            return pid
    raise AssertionError(f"no shardstore process serves {disk}")


def _worker_pids(server) -> list[int]:
    return [pid for pid, argv in child_processes(server.process.pid).items() if "frontend.worker" in argv]


def _cairn(*args: str) -> str:
    done = subprocess.run([str(CAIRN), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"cairn {' '.join(args)}: {done.stderr}"
    return done.stdout


def _layout(server):
    from common.layout import load_layout
    return load_layout(str(server.data_dir / "cluster.toml"))


def _scrub(server, disk: str) -> None:
    from shardstore import shardstore_pb2 as pb
    from shardstore import shardstore_pb2_grpc as pb_grpc

    spec = _layout(server).disk(disk)
    with grpc.insecure_channel(spec.grpc_address) as channel:
        pb_grpc.ShardStoreStub(channel).Scrub(pb.ScrubRequest(run_now=True, disk=disk), timeout=60)


def _shards(server) -> dict[bytes, list[tuple[str, int]]]:
    """data id -> [(disk, shard index)] over every disk that is `in`."""
    from shardstore.client import ShardClient

    async def run():
        found: dict[bytes, list[tuple[str, int]]] = {}
        for disk in _layout(server).disks():
            client = ShardClient(disk.data_address)
            try:
                start = None
                while True:
                    page, truncated = await client.list(disk.id, start_after=start, limit=1000, timeout_s=10)
                    for info in page:
                        found.setdefault(info.id.data_id, []).append((disk.id, info.id.shard_index))
                    if not truncated or not page:
                        break
                    start = page[-1].id
            finally:
                await client.close()
        return found
    return asyncio.run(run())


def _corrupt(server) -> int:
    from shardstore.client import ShardClient

    async def run():
        total = 0
        for disk in _layout(server).disks():
            client = ShardClient(disk.data_address)
            try:
                total += len(await client.corrupt(disk.id, timeout_s=10))
            finally:
                await client.close()
        return total
    return asyncio.run(run())


def _eventually(check, timeout_s: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except AssertionError as error:
            last = error
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what} {last or ''}")


def _read_all_with_two_down(server, s3, bodies: dict[str, bytes], victims: tuple[str, str]) -> None:
    """SIGSTOP the supervisor (no restarts), SIGKILL two disks' processes, read every object."""
    supervisor = server.process.pid
    os.kill(supervisor, signal.SIGSTOP)
    try:
        for disk in victims:
            os.kill(_store_pid(server, disk), signal.SIGKILL)
        time.sleep(1.5)                                       # a Stat round marks them down
        for key, body in bodies.items():
            assert s3.get_object(Bucket="bkt", Key=key)["Body"].read() == body, (key, victims)
    finally:
        os.kill(supervisor, signal.SIGCONT)
    _eventually(lambda: all(_store_pid(server, disk) for disk in victims), 30, "killed disks back")
    time.sleep(1.5)


def _below_full_redundancy(server) -> int:
    text = _cairn("status", "--cluster", str(server.data_dir / "cluster.toml"))
    line = next(line for line in text.splitlines() if line.startswith("objects below full redundancy"))
    return int(line.split(":", 1)[1].split()[0])


def _put_all(s3, seed: int) -> dict[str, bytes]:
    s3.create_bucket(Bucket="bkt")
    bodies = {f"k{size}": _body(size, seed + size) for size in SIZES}
    for key, body in bodies.items():
        s3.put_object(Bucket="bkt", Key=key, Body=body)
    return bodies


def test_flipped_bytes_are_found_by_the_scrubber_and_repaired(cluster):
    s3 = s3_client(cluster, read_timeout=60)
    bodies = _put_all(s3, 1)
    extents = cluster.data_dir / "disks" / "d0" / "extents"
    for path in sorted(extents.iterdir()):
        data = bytearray(path.read_bytes())
        for offset in range(300, len(data), 8192):
            data[offset] ^= 0x5A
        path.write_bytes(bytes(data))
    for key, body in bodies.items():                           # never served, before any repair
        assert s3.get_object(Bucket="bkt", Key=key)["Body"].read() == body
    _scrub(cluster, "d0")
    _eventually(lambda: _corrupt(cluster) == 0, 60, "repair rebuilt and dropped every corrupt shard")
    _scrub(cluster, "d0")
    assert _corrupt(cluster) == 0, "a second scrub finds nothing left"
    _read_all_with_two_down(cluster, s3, bodies, ("d3", "d4"))
    assert not cluster.tracebacks(), cluster.tracebacks()[:2]


def test_a_lost_disk_is_replaced_and_repair_restores_full_redundancy(cluster):
    s3 = s3_client(cluster, read_timeout=60)
    bodies = _put_all(s3, 2)
    cluster_toml = str(cluster.data_dir / "cluster.toml")
    supervisor = cluster.process.pid
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(_store_pid(cluster, "d2"), signal.SIGKILL)      # the disk dies ...
        shutil.rmtree(cluster.data_dir / "disks" / "d2")         # ... for good
        _cairn("disk", "remove", "d2", "--cluster", cluster_toml)
        _cairn("disk", "add", "d6", "--path", str(cluster.data_dir / "disks" / "d6"), "--store", "store-d2",
               "--domain", "disk:d6", "--cluster", cluster_toml)
    finally:
        os.kill(supervisor, signal.SIGCONT)
    _eventually(lambda: _below_full_redundancy(cluster) == 0, 90, "full redundancy after repair")
    holders = {disk for shards in _shards(cluster).values() for disk, _ in shards}
    assert "d6" in holders, "repair placed shards on the new disk"
    _read_all_with_two_down(cluster, s3, bodies, ("d0", "d5"))
    assert not cluster.tracebacks(), cluster.tracebacks()[:2]


def test_no_shard_leaks_after_overwrites_deletes_aborts_and_killed_puts(cluster):
    s3 = s3_client(cluster, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    s3.create_bucket(Bucket="bkt")
    rng = random.Random(7)
    live: dict[str, int] = {}
    for round_ in range(12 if DEEP else 3):                      # overwrites and deletes
        for index in range(12):
            key = f"o{index}"
            if rng.random() < 0.25 and key in live:
                s3.delete_object(Bucket="bkt", Key=key)
                del live[key]
            else:
                size = rng.choice([5 * KiB, 50 * KiB, 400 * KiB, 5 * MiB])
                s3.put_object(Bucket="bkt", Key=key, Body=_body(size, round_ * 100 + index))
                live[key] = size
    for index in range(3):                                       # aborted multipart uploads
        upload = s3.create_multipart_upload(Bucket="bkt", Key=f"aborted{index}")["UploadId"]
        for part in (1, 2):
            s3.upload_part(Bucket="bkt", Key=f"aborted{index}", UploadId=upload, PartNumber=part,
                           Body=_body(5 * MiB, index * 10 + part))
        s3.abort_multipart_upload(Bucket="bkt", Key=f"aborted{index}", UploadId=upload)
    transfer = boto3.s3.transfer.TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.upload_fileobj(__import__("io").BytesIO(_body(11 * MiB, 9)), "bkt", "multi", Config=transfer)
    live["multi"] = 11 * MiB
    # PUTs cut off mid-body: SIGKILL every frontend worker while large PUTs stream.
    errors: list[Exception] = []

    def slow_put(index: int) -> None:
        client = s3_client(cluster, read_timeout=30, retries={"max_attempts": 1, "mode": "standard"})
        try:
            client.put_object(Bucket="bkt", Key=f"killed{index}", Body=_body(40 * MiB, 1000 + index))
        except Exception as error:  # noqa: BLE001 - expected: the worker died under it
            errors.append(error)
    threads = [threading.Thread(target=slow_put, args=(index,)) for index in range(12 if DEEP else 4)]
    for thread in threads:
        thread.start()
    time.sleep(0.6)
    for pid in _worker_pids(cluster):
        os.kill(pid, signal.SIGKILL)
    for thread in threads:
        thread.join(60)
    # Every worker died at once: connections are refused until the supervisor has
    # restarted one (SO_REUSEPORT, deploy/cluster_dev.py); wait for that.
    def answers() -> bool:
        try:
            return s3.list_buckets() is not None
        except Exception:  # noqa: BLE001 - refused until a worker is back
            return False
    _eventually(answers, 30, "a worker back")
    listed = {item["Key"]: item["Size"] for item in s3.list_objects_v2(Bucket="bkt").get("Contents", [])}
    for key in listed:                                           # a PUT acknowledged before its worker died
        if key.startswith("killed"):
            live[key] = listed[key]
    assert listed == live

    def blob_count() -> int:
        """Blobs the live objects hold: inline ones none, a multipart object one per part."""
        return sum(0 if size <= 4 * KiB else (3 if key == "multi" else 1) for key, size in live.items())

    def settled() -> bool:
        shards = _shards(cluster)
        assert len(shards) == blob_count(), f"{len(shards)} data ids on disk, {blob_count()} referenced"
        for data_id, held in shards.items():
            width = 3 if len(held) == 3 else 6
            assert len(held) % width == 0 and len({index for _, index in held}) == len(held), held
        return True
    _eventually(settled, 90, "the reaper and the sweep leave exactly the referenced shards")
    for key, size in live.items():
        assert len(s3.get_object(Bucket="bkt", Key=key)["Body"].read()) == size

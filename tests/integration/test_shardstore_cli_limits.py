"""Property: a `cairn shardstore` process uses the [limits] of the file `--limits` names
(the frontends' file, so both sides of the data path agree), and refuses a broken
file at start with the reason; `cairn dev` hands every store it starts that file.

Method: a real `shardstore.main` process on 127.0.0.1 (port 0) with SHARD_MAX_BYTES
lowered to 4 MiB in a limits TOML; a real ShardClient puts a shard of exactly the
limit (stored) and one byte more (refused, naming the limit, nothing stored); the same
process without the file takes the larger shard. A limits file with an unknown name
makes the process exit 2 at once, saying which. The store argv `cairn dev` builds
carries `--limits`. Every process a test starts is stopped by it.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from common.limits import DEFAULT_LIMITS
from deploy.cluster_dev import _store_specs, write_cluster_toml
from shardstore.client import BadShardRequest, ShardClient, ShardId, ShardNotFound, block_checksums

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
LIMIT = 4 * MiB
T = 20.0
USERS = '[[users]]\nname = "ann"\naccess_key = "AKIAEXAMPLE0001"\nsecret_key = "secret-secret"\n'


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "shardstore.main", "--disk", f"d0={tmp_path / 'd0'}", "--listen", "127.0.0.1:0",
         "--data-listen", "127.0.0.1:0", "--no-scrub", "--log-level", "WARNING", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("listening:"):
        process.kill()
        process.wait(10)
        raise AssertionError(f"no listening line: {line!r} {process.stderr.read()!r}")
    data = line.split("data=", 1)[1].strip()
    return process, data


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def _stream(client: ShardClient, shard: ShardId, data: bytes) -> int:
    writer = client.open_put("d0", shard, len(data), timeout_s=T)
    for start in range(0, len(data), MiB):
        chunk = data[start:start + MiB]
        await writer.write(chunk, block_checksums(chunk, DEFAULT_LIMITS.CHECKSUM_BLOCK))
    return await writer.finish()


def test_a_store_uses_the_limits_file_it_is_given(tmp_path):
    limits = tmp_path / "cairn.toml"
    limits.write_text(f"{USERS}[limits]\nSHARD_MAX_BYTES = {LIMIT}\n")
    data = random.Random(7).randbytes(LIMIT + 1)
    at_limit, over = ShardId(b"\x01" * 16, 0), ShardId(b"\x02" * 16, 0)

    async def against(address: str, *, limited: bool) -> None:
        client = ShardClient(address)
        try:
            await _stream(client, at_limit, data[:LIMIT])
            assert bytes(await client.get("d0", at_limit, timeout_s=T)) == data[:LIMIT]
            if limited:
                with pytest.raises(BadShardRequest, match=str(LIMIT)):
                    await _stream(client, over, data)
                with pytest.raises(ShardNotFound):
                    bytes(await client.get("d0", over, timeout_s=T))
            else:
                await _stream(client, over, data)
                assert bytes(await client.get("d0", over, timeout_s=T)) == data
        finally:
            await client.close()

    process, address = _start(tmp_path / "limited", "--limits", str(limits))
    try:
        uvloop.run(against(address, limited=True))
    finally:
        _stop(process)
    process, address = _start(tmp_path / "default")
    try:
        uvloop.run(against(address, limited=False))
    finally:
        _stop(process)


def test_a_broken_limits_file_stops_the_store_at_start_saying_why(tmp_path):
    limits = tmp_path / "cairn.toml"
    limits.write_text(f"{USERS}[limits]\nSHARD_MAX_BYTE = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "shardstore.main", "--disk", f"d0={tmp_path / 'd0'}", "--listen", "127.0.0.1:0",
         "--no-scrub", "--limits", str(limits)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "SHARD_MAX_BYTE" in result.stderr and "unknown" in result.stderr


def test_cairn_dev_hands_every_store_the_limits_file(tmp_path):
    cluster = write_cluster_toml(tmp_path)
    specs = _store_specs(cluster, str(tmp_path / "cairn.toml"))
    assert specs
    for spec in specs:
        argv = list(spec.argv)
        assert argv[argv.index("--limits") + 1] == str(tmp_path / "cairn.toml")

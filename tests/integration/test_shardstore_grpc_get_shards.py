"""Property: the gRPC GetShards answers every item as the framed GET_MANY does (it runs
the same code, `framed.read_many`): per requested shard, in order, the blocks covering
its range from the range's first block boundary with their stored xxh3-128, so the
range cut out of them is exactly the bytes a GetShard of that item alone returns — or
that item's own refusal (Outcome code and class name), leaving the other items
served. Requests beyond GET_MANY's bounds (MANY_ITEMS_MAX items,
MANY_PAYLOAD_MAX_BYTES of blocks) and for an unknown disk are refused whole,
INVALID_ARGUMENT; an answer up to the bytes bound comes back in one message.

Method: one real shardstore process (`python -m shardstore.main`, gRPC only, one disk,
no scrubber: conftest's `ShardstoreProcess`) per module, reached by a synchronous gRPC
channel whose receive limit fits the largest answer. Cases: ranges within and across
blocks, empty ranges and whole shards; a missing shard, bad ranges and a malformed id
among present shards; too many items; too many bytes of open ranges (counted by the
server from its index) and a batch just under the bound; an unknown disk. A
hypothesis property (modest examples) checks GetShards against per-item GetShard on
random ranges of random shards, a missing one included. The fixture stops the process
(SIGTERM, exit 0).
"""

from __future__ import annotations

import random
import tempfile

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from common.limits import DEFAULT_LIMITS
from conftest import ShardstoreProcess, range_requests
from shardstore import shardstore_pb2 as pb
from shardstore import shardstore_pb2_grpc as pb_grpc
from shardstore.client import block_checksums
from shardstore.framed import MANY_ITEMS_MAX, MANY_PAYLOAD_MAX_BYTES

BLOCK = DEFAULT_LIMITS.CHECKSUM_BLOCK
T = 20.0                                    # every call's deadline
SIZES = [0, 1, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5]   # the shards the property reads
NOT_FOUND, INVALID_ARGUMENT = grpc.StatusCode.NOT_FOUND.value[0], grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.fixture(scope="module")
def stub():
    with tempfile.TemporaryDirectory(prefix="cairn-get-shards-") as disk:
        node = ShardstoreProcess(disk)
        try:
            node.start()
            options = [("grpc.max_receive_message_length", MANY_PAYLOAD_MAX_BYTES + (1 << 20))]
            with grpc.insecure_channel(node.address, options=options) as channel:
                yield pb_grpc.ShardStoreStub(channel)
            assert node.stop() == 0
        finally:
            node.kill()


def sid(n: int, index: int = 0) -> pb.ShardId:
    return pb.ShardId(data_id=n.to_bytes(16, "big"), shard_index=index)


def data_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def put(stub, shard: pb.ShardId, data: bytes) -> None:
    stub.PutShardUnary(pb.PutShardRequest(id=shard, length=len(data), data=data,
                                          block_checksums=block_checksums(data, BLOCK)), timeout=T)


def request(shard: pb.ShardId, start: int, end: int | None) -> pb.GetShardRequest:
    return pb.GetShardRequest(id=shard, start=start, end=end or 0, has_end=end is not None)


def get_shards(stub, items: list[tuple[pb.ShardId, int, int | None]], disk: str = "") -> list[pb.GetShardsResponseItem]:
    response = stub.GetShards(pb.GetShardsRequest(disk=disk, shards=[request(*item) for item in items]), timeout=T)
    assert len(response.items) == len(items)
    return list(response.items)


def get_shard(stub, shard: pb.ShardId, start: int, end: int | None) -> bytes:
    return b"".join(message.data for message in stub.GetShard(request(shard, start, end), timeout=T))


def cut(item: pb.GetShardsResponseItem, length: int, start: int, end: int | None) -> bytes:
    """The range out of an answered item, after checking it is exactly the range's blocks
    with their checksums (what a client verifies before trusting the bytes)."""
    assert item.outcome.code == 0, item.outcome
    reply, end = item.reply, length if end is None else end
    assert (reply.length, reply.block_size) == (length, BLOCK)
    if start == end:
        assert item.data == b"" and list(reply.block_checksums) == []
        return b""
    assert reply.start == start // BLOCK * BLOCK
    assert len(item.data) == min(-(-end // BLOCK) * BLOCK, length) - reply.start
    assert list(reply.block_checksums) == block_checksums(item.data, BLOCK)
    return item.data[start - reply.start:end - reply.start]


def test_ranges_empty_ranges_and_whole_shards_come_back_exactly(stub):
    small, large = data_of(1, 1000), data_of(2, 3 * BLOCK + 5)
    put(stub, sid(1), small)
    put(stub, sid(2), large)
    items = [(sid(1), 0, None), (sid(2), 0, None), (sid(2), 10, 70_000), (sid(2), BLOCK, 2 * BLOCK),
             (sid(2), BLOCK - 1, BLOCK + 1), (sid(1), 7, 7), (sid(2), len(large), len(large)),
             (sid(2), 3 * BLOCK, None), (sid(1), 999, 1000), (sid(2), 0, 0)]
    for (shard, start, end), item in zip(items, get_shards(stub, items)):
        data = small if shard == sid(1) else large
        got = cut(item, len(data), start, end)
        assert got == data[start:end], (shard.data_id[-1], start, end)
        assert got == get_shard(stub, shard, start, end)
    assert get_shards(stub, []) == []


def test_a_missing_shard_or_bad_range_fails_only_its_item(stub):
    data = data_of(3, 2 * BLOCK)
    put(stub, sid(3), data)
    items = [(sid(3), 0, 100), (sid(4), 0, 10), (sid(3), 5, len(data) + 1), (sid(3), BLOCK, None),
             (pb.ShardId(data_id=b"short"), 0, 1), (sid(3), 20, 10)]
    answers = get_shards(stub, items)
    assert cut(answers[0], len(data), 0, 100) == data[:100]
    assert (answers[1].outcome.code, answers[1].outcome.error) == (NOT_FOUND, "ShardNotFound")
    assert (answers[2].outcome.code, answers[2].outcome.error) == (INVALID_ARGUMENT, "BadShardRequest")
    assert cut(answers[3], len(data), BLOCK, None) == data[BLOCK:]
    assert (answers[4].outcome.code, answers[4].outcome.error) == (INVALID_ARGUMENT, "BadShardRequest")
    assert (answers[5].outcome.code, answers[5].outcome.error) == (INVALID_ARGUMENT, "BadShardRequest")
    for refused in (answers[1], answers[2], answers[4], answers[5]):
        assert refused.outcome.message and refused.data == b"" and not refused.HasField("reply")
    with pytest.raises(grpc.RpcError) as alone:                 # the status GetShard answers alone
        get_shard(stub, sid(4), 0, 10)
    assert alone.value.code() == grpc.StatusCode.NOT_FOUND


def test_too_many_items_or_bytes_and_an_unknown_disk_are_refused_whole(stub):
    data = data_of(7, 100)
    put(stub, sid(7), data)
    refusals = [([(sid(7), 0, 1)] * (MANY_ITEMS_MAX + 1), "", "at most"), ([(sid(7), 0, 1)], "nope", "unknown disk")]
    big = data_of(8, DEFAULT_LIMITS.SHARD_CHUNK_MAX_BYTES)
    put(stub, sid(8), big)
    copies = MANY_PAYLOAD_MAX_BYTES // len(big) + 1
    refusals.append(([(sid(7), 0, None)] + [(sid(8), 0, None)] * copies, "", "exceed"))   # counted by the server
    for items, disk, reason in refusals:
        with pytest.raises(grpc.RpcError) as refused:
            get_shards(stub, items, disk)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in refused.value.details()
    fitting = MANY_PAYLOAD_MAX_BYTES // len(big) - 1              # room left for the small shard
    answers = get_shards(stub, [(sid(8), 0, None)] * fitting + [(sid(7), 0, None)])   # > 4 MiB in one message
    assert [cut(item, len(big), 0, None) for item in answers[:-1]] == [big] * fitting
    assert cut(answers[-1], len(data), 0, None) == data
    stub.DeleteShard(pb.DeleteShardRequest(id=sid(8)), timeout=T)


@pytest.fixture(scope="module")
def shards(stub) -> dict[int, bytes]:
    """The property's shards: one per size in SIZES, ids 100.. (sid(99) is never put)."""
    stored = {100 + number: data_of(100 + number, size) for number, size in enumerate(SIZES)}
    for number, data in stored.items():
        put(stub, sid(number), data)
    return stored


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=range_requests(SIZES))
def test_get_shards_equals_a_get_shard_per_item(stub, shards, items):
    answers = get_shards(stub, [(sid(number), start, end) for number, start, end in items])
    for (number, start, end), item in zip(items, answers):
        try:
            alone = get_shard(stub, sid(number), start, end)
        except grpc.RpcError as error:
            assert item.outcome.code == error.code().value[0], (number, start, end, item.outcome)
            continue
        assert cut(item, len(shards[number]), start, end) == alone == shards[number][start:end]

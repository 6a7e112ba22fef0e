"""Property: streamed shards written with O_DIRECT are the same records as before, and
survive crashes like any other; extents written before O_DIRECT (format version 1, as
the pre-O_DIRECT code cut them) still open, and a node keeps appending to them.

Method: a `Node` over `SimDisk` (whose `write_direct` checks the alignment rules and has
a write's crash semantics) and over `RealDisk` in a temporary directory (real O_DIRECT
where the filesystem takes it). Checks: every direct write is aligned and no page is
written both buffered and direct; the extent bytes equal those of the same puts cut
without O_DIRECT; a crash at any point of direct streams loses nothing acknowledged
and leaves no half-record; the block checksums do not depend on how a stream is cut;
golden extents (written by the version-1 code before this change, zlib+base64 below)
recover and read back; a filesystem refusing O_DIRECT falls back to buffered writes;
`read_direct` returns what `read` does, for any offset and length; a large read goes
direct the first time and through the page cache when repeated.
The SIGKILL of a real process: tests/integration/test_shardstore_direct_kill.py.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import random
import zlib

import pytest

from common.limits import Limits
from shardstore import format as fmt
from shardstore.disk import RealDisk, SimDisk, aligned_buffer
from shardstore.node import Node, ShardCorrupt, ShardId, ShardNotFound

LIMITS = Limits(EXTENT_MAX_BYTES=64 * 1024, CHECKSUM_BLOCK=256, SHARD_WRITE_STEP_BYTES=1024,
                SHARD_MAX_BYTES=8192, SHARD_CHUNK_MAX_BYTES=2048)
REAL_LIMITS = Limits(EXTENT_MAX_BYTES=1 << 20, CHECKSUM_BLOCK=4096, SHARD_WRITE_STEP_BYTES=16384,
                     SHARD_MAX_BYTES=256 * 1024, SHARD_CHUNK_MAX_BYTES=65536)
A, B, C, D = (ShardId(bytes([c]) * 16, i) for i, c in enumerate(b"abcd"))

# Written by the version-1 code (before O_DIRECT) with LIMITS and a clock counting from
# 1.7e15 µs in steps of 1000: put A (300 bytes), streamed put B (5000 bytes in 700-byte
# pieces), streamed put C (3001 bytes in 2048-byte pieces), put D (10 bytes), delete D.
GOLDEN_V1 = {
    "extent-0000000000": (
        "eNpzDvIrZmRkYEhEAwwgwMalIiHnwAABjDpAzIAMPHN/nwqIvZWTaGUABtZQhiGMYQRjGMMYJjCGKYxhBmOYwxgWMIYllGEI"
        "M9kQZrIhzGRDmMmGMJMNYSYbwkw2hJlsCDPZEGayEcxkI5jJRjCTjWAmG8FMNoKZbAQz2QhmshHMZCOYycYwk41hJhuDTa7t"
        "ZzVi+Wr6vfu00dJFOqmcX3o5D53ij9x05NShGa3vqj7CAts5yC91b0ODwJYJWTJ/ov23nSlpv+sMjasUNABUzwyJK+8dUP1c"
        "6HH1vHqD6dRz8y6lwOIqRezxDe2Tm9iu7yt+97Vviu9NqEIWkM2OR5TXp6wLldCZz9a6J+eGOdhmJnw2+y9A2IVq87/i9M1p"
        "Do9zoFxWkPnmaU6OmaGXzNeH6Hmdnbn/BQCwrKIj"),
    "extent-0000000001": (
        "eNpd2G+sFXQdx/ELmBouXVxlSEuiUCBM+v75nT9QDryoXQQKDYxsQ/hodU2WhEAKbmgCAl7ANRAxiVRAG5BYMCl1PggEW6CN"
        "gImSw9HFykumsMBuNPS+t8bv0Xdn53yevR6cd9P1Y6Z16dLQMPmM19DQ0KXh7O79el3SdKTho9f4wOmP/v+tW9dj0dNPtW6a"
        "POTLH72hnYdxOEdwJEfhqHBUOWoc9c7DWDaWjWVj2Vg2lo1lY9lYNpadZWfZWXaWnWVn2Vl2lp1lZzlYDpaD5WA5WA6Wg+Vg"
        "OVgOlpPlZDlZTpaT5WQ5WU6Wk+VkubBcWC4sF5YLy4XlwnJhubBcWK6wXGG5wnKF5QrLFZYrLFdYrrBcYbnKcpXlKstVlqss"
        "V1muslxlucpyleUayzWWayzXWK6xXGO5xnKN5RrLNZbrLNdZrrNcZ7nOcp3lOst1luss1zuXDYOGQcOgYdAwaBg0DBoGDYOG"
        "QcOgYdAwaBg0DBoGDYOGQcOgYdAwaBg0DBoGDYOGQcOgYdAwaBg0DBoGDYOGQcOgYdAwaBg0DBoGDYOGQcOgYdAwaBg0DBoG"
        "DYOGQcOgYdAwaBg0DBoGDYOGQcOgYdAwaBg0DBoGDYOGQcOgYdAwaBg0DBoGDYOGQcOgYdAwaBg0DBoGDYOGQcOgYdAwaBg0"
        "DBoGDYOGQcOgYdAwaBg0DBoGDYOGQcOgYdAx6Bh0DDoGHYOOQcegY9Ax6Bh0DDoGHYOOQcegY9Ax6Bh0DDoGHYOOQcegY9Ax"
        "6Bh0DDoGHYOOQcegY9Ax6Bh0DDoGHYOOQcegY9Ax6Bh0DDoGHYOOQcegY9Ax6Bh0DDoGHYOOQcegY9Ax6Bh0DDoGHYOOQceg"
        "Y9Ax6Bh0DDoGHYOOQcegY9Ax6Bh0DDoGHYOOQcegY9Ax6Bh0DDoGHYOOQcegY9Ax6Bh0DDoGHYOOQcegY9Ax6Bh0DDoGA4OB"
        "wcBgYDAwGBgMDAYGA4OBwcBgYDAwGBgMDAYGA4OBwcBgYDAwGBgMDAYGA4OBwcBgYDAwGBgMDAYGA4OBwcBgYDAwGBgMDAYG"
        "A4OBwcBgYDAwGBgMDAYGA4OBwcBgYDAwGBgMDAYGA4OBwcBgYDAwGBgMDAYGA4OBwcBgYDAwGBgMDAYGA4OBwcBgYDAwGBgM"
        "DAYGA4OBwcBgYDAwGBgMDAYGA4OBwcBgYDAwGBgMDAYGA4OBwcBgYDAxmBhMDCYGE4OJwcRgYjAxmBhMDCYGE4OJwcRgYjAx"
        "mBhMDCYGE4OJwcRgYjAxmBhMDCYGE4OJwcRgYjAxmBhMDCYGE4OJwcRgYjAxmBhMDCYGE4OJwcRgYjAxmBhMDCYGE4OJwcRg"
        "YjAxmBhMDCYGE4OJwcRgYjAxmBhMDCYGE4OJwcRgYjAxmBhMDCYGE4OJwcRgYjAxmBhMDCYGE4OJwcRgYjAxmBhMDCYGE4OJ"
        "wcRgYjAxmBhMDCYGCwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsG"
        "CwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsGCwYLBgsGCwaXbBj6cvvcG/e+27HnpkviR0tbPzV+"
        "w7enXH3LG7r09Y0Xjx8w+7XmrW99bfncT748/+CTH/bY3/Kb3hdWmx/76vEXjnRrGzGhZ9dd2489OaxbbdqbE95r+Nw5l/1w"
        "1Wv9doy+v/dFW+489av/vtV/+zfnzRjfMWvJodVzevWfftbtpw7t7rvy2dWPV/8xsm/7P7ffMe79BwaMHzmrde7Exh8/MezA"
        "6qPHptx4w7ZBXRbuH/etPhvXd2tYMmv5hN0tiz+/ZsScX+yvt08b/Mq1N59399Xr3m1t733N+QuWzVq4cu22XT/ZPf3UtLYv"
        "/GVv95OHqqMHP7phxYGWjouWXrb4gqbG6nV99z1/33VjTva5c25z66h9wycve2bk/F6vtpyzfsuEfw3504T9Y9YNrgz0TU+8"
        "N+Xo6KPf+G3bl25t+cMLV454aEuPUWfPHtb9wi9+/edtxz84t3nsTXsub2vR4UeW37LhqrjUHr/t0c6s2bXp+jG3Tj5WHfSz"
        "8WVBn7un3j956Svrmzo7qc54p7//cSe99tWPf37e1jM76dae8w+vmPHSNtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJ"
        "RScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJ"
        "RScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJ"
        "RScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJ"
        "RScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJ"
        "RScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJ"
        "RScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJ"
        "RScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJ"
        "RScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJ"
        "RScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJ"
        "RScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJRScVnVR0UtFJ"
        "Tx9t/W5YWNs0fOrtHwx7bsC9W7/Teu6ch06sunf5jr/vW/Ng16tqk9ZefMH0T/R5rO9/jsw7cuLQ2Pl6sfL85tsWLNvz53sa"
        "n/ldDvnj9EEHmu+bec36xllfOTG/aeI9Lz48r6v1+t6zD14x6W+jPjyy947jby9aWFt2RXXn8JU/GDjppc1T+2389F1DDg9q"
        "X2r6zM6nfr14xe+Pb/hpz+aJC2euOXjXyX+/8911Sz47cOyO9vPf3/z2zTNzRseuVR2/XH9Wl3Fj3uz3/aND2zsmHpw6+43n"
        "ypSt/dX5P6Tb6T8270zpsfbElYteb93518YFly99+n9ouymV"),
}


def golden_payload(name: bytes, length: int) -> bytes:
    return b"".join(b"%s:%06d;" % (name, i) for i in range(length // 8 + 1))[:length]


GOLDEN_SHARDS = {A: golden_payload(b"a", 300), B: golden_payload(b"b", 5000), C: golden_payload(b"c", 3001)}


class Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.nodes: list[Node] = []

    def __call__(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def open(self, disk, index_path: str, limits: Limits = LIMITS, **keywords) -> Node:
        node = self(Node.open(disk, index_path, limits, **keywords))
        self.nodes.append(node)
        return node

    def close(self) -> None:
        try:
            for node in self.nodes:
                if node.failed is None:
                    self(node.close())
            self(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


@pytest.fixture
def run():
    loop = Loop()
    yield loop
    loop.close()


async def pieces(data: bytes, size: int, fail_after: int | None = None):
    for number, start in enumerate(range(0, len(data), size)):
        if fail_after is not None and number >= fail_after:
            raise ConnectionResetError("client went away")
        await asyncio.sleep(0)
        yield data[start:start + size]


def stream(node: Node, shard: ShardId, data: bytes, piece: int):
    return node.put(shard, len(data), data[:piece], pieces(data[piece:], piece))


class RecordingDisk(SimDisk):
    """A SimDisk that remembers which pages of each file were written buffered or direct."""

    PAGE = 512

    def __init__(self, **keywords) -> None:
        super().__init__(**keywords)
        self.pages: dict[tuple[str, int], set[str]] = {}

    def _mark(self, name: str, offset: int, length: int, how: str) -> None:
        for page in range(offset // self.PAGE, (offset + length + self.PAGE - 1) // self.PAGE):
            self.pages.setdefault((name, page), set()).add(how)

    def write(self, name, offset, data):
        super().write(name, offset, data)
        self._mark(name, offset, len(data), "buffered")

    def write_direct(self, name, offset, data):
        assert offset % self.PAGE == 0 and len(data) % self.PAGE == 0
        SimDisk.write(self, name, offset, data)
        self.direct_writes += 1
        self._mark(name, offset, len(data), "direct")

    def truncate(self, name, length):
        super().truncate(name, length)
        for key in [key for key in self.pages if key[0] == name and key[1] * self.PAGE >= length]:
            del self.pages[key]


def test_block_checksums_do_not_depend_on_the_cuts():
    rng = random.Random(1)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 3000))
        summer = fmt.BlockChecksummer(256)
        position = 0
        while position < len(data):
            cut = rng.choice([1, 7, 255, 256, 257, 700, 2048])
            summer.feed(memoryview(data)[position:position + cut])
            position += cut
        assert summer.finish() == fmt.block_checksums(data, 256)


def test_whole_steps_go_direct_aligned_and_no_page_is_written_both_ways(run, tmp_path):
    disk = RecordingDisk(direct_alignment=RecordingDisk.PAGE)
    node = run.open(disk, str(tmp_path / "index"))
    rng = random.Random(2)
    stored = {}
    for number in range(40):
        shard = ShardId(bytes([number]) * 16, 0)
        data = rng.randbytes(rng.choice([1, 300, 1023, 1024, 2500, 5000, 8192]))
        piece = rng.choice([100, 700, 2048])
        if len(data) <= piece or (rng.random() < 0.3 and len(data) <= LIMITS.SHARD_CHUNK_MAX_BYTES):
            run(node.put(shard, len(data), data))                 # small puts share the small head
        else:
            run(stream(node, shard, data, piece))
        stored[shard] = data
    assert disk.direct_writes > 10
    assert not [key for key, hows in disk.pages.items() if len(hows) > 1]
    for shard, data in stored.items():
        assert run(node.read_all(shard)) == data


def test_direct_and_buffered_cuts_write_the_same_bytes(run, tmp_path):
    extents = []
    for alignment in (0, 512):
        disk = SimDisk(direct_alignment=alignment)
        clock = iter(range(10**15, 2 * 10**15, 1000))
        node = run.open(disk, str(tmp_path / f"index{alignment}"), clock_us=lambda: next(clock))
        for number, length in enumerate([5000, 300, 8192, 2049, 4097]):
            data = random.Random(number).randbytes(length)
            run(stream(node, ShardId(bytes([number]) * 16, 0), data, 700))
        run(node.close())
        assert (disk.direct_writes > 0) == bool(alignment)
        extents.append({name: bytes(file.data) for name, file in disk.files.items()})
    assert extents[0] == extents[1]


@pytest.mark.parametrize("seed", range(30))
def test_a_crash_at_any_point_of_direct_streams_loses_nothing_acknowledged(run, tmp_path, seed):
    rng = random.Random(seed)
    disk = SimDisk()
    node = run.open(disk, str(tmp_path / "index"))
    acknowledged = {}
    for number in range(rng.randrange(0, 4)):
        shard = ShardId(bytes([number]) * 16, 0)
        data = rng.randbytes(rng.choice([2500, 8192]))
        run(stream(node, shard, data, 700))
        acknowledged[shard] = data
    in_flight = {ShardId(bytes([100 + n]) * 16, 1): rng.randbytes(rng.choice([3000, 8192])) for n in range(3)}
    tasks = [run.loop.create_task(stream(node, shard, data, rng.choice([100, 700])))
             for shard, data in in_flight.items()]
    for _ in range(rng.randrange(0, 60)):                   # stop anywhere, trailers included
        run(asyncio.sleep(0))
    for task in tasks:
        task.cancel()
    run(asyncio.gather(*node.abandon(), *tasks, return_exceptions=True))
    disk.crash(rng, tear=rng.random() < 0.8)
    node = run.open(disk, str(tmp_path / "index"))
    for shard, data in acknowledged.items():
        assert run(node.read_all(shard)) == data
    for shard, data in in_flight.items():                  # wholly there or not at all
        try:
            assert run(node.read_all(shard)) == data
        except ShardNotFound:
            pass
    assert not node.corrupt


def golden_disk() -> SimDisk:
    disk = SimDisk()
    for name, encoded in GOLDEN_V1.items():
        disk.create(name)
        disk.write(name, 0, zlib.decompress(base64.b64decode(encoded)))
        disk.sync(name)
    return disk


def check_golden(run, node: Node) -> None:
    for shard, data in GOLDEN_SHARDS.items():
        assert run(node.read_all(shard)) == data
    with pytest.raises(ShardNotFound):
        run(node.read_all(D))
    assert [shard for shard, _ in node.list() if shard in GOLDEN_SHARDS or shard == D] == sorted(GOLDEN_SHARDS)
    assert all(node.locate(shard).put_time_us >= 1_700_000_000_000_000 for shard in GOLDEN_SHARDS)


def test_version_1_extents_still_open_and_take_direct_streams(run, tmp_path):
    assert fmt.FORMAT_VERSION == 1          # the O_DIRECT cut left the record format as it was
    disk = golden_disk()
    node = run.open(disk, str(tmp_path / "index"))
    assert node.recovered_torn_tails == 0 and not node.corrupt
    check_golden(run, node)
    extra = random.Random(3).randbytes(8192)
    run(stream(node, ShardId(b"e" * 16, 0), extra, 2048))
    assert disk.direct_writes > 0
    run(asyncio.gather(*node.abandon(), return_exceptions=True))
    disk.crash(random.Random(3))
    node = run.open(disk, str(tmp_path / "index"))
    check_golden(run, node)
    assert run(node.read_all(ShardId(b"e" * 16, 0))) == extra


def test_version_1_extents_open_on_a_real_disk(run, tmp_path):
    directory = tmp_path / "extents"
    directory.mkdir()
    for name, encoded in GOLDEN_V1.items():
        (directory / name).write_bytes(zlib.decompress(base64.b64decode(encoded)))
    node = run.open(RealDisk(str(directory)), str(tmp_path / "index"), REAL_LIMITS)
    check_golden(run, node)
    big = random.Random(4).randbytes(200_000)
    run(stream(node, ShardId(b"f" * 16, 0), big, 65536))
    run(node.close())
    node = run.open(RealDisk(str(directory)), str(tmp_path / "index"), REAL_LIMITS)
    check_golden(run, node)
    assert run(node.read_all(ShardId(b"f" * 16, 0))) == big


def test_real_disk_direct_streams_read_back_and_an_abort_is_cut_off(run, tmp_path):
    node = run.open(RealDisk(str(tmp_path / "extents")), str(tmp_path / "index"), REAL_LIMITS)
    rng = random.Random(5)
    stored = {}
    for number in range(12):
        shard = ShardId(bytes([number]) * 16, 0)
        data = rng.randbytes(rng.choice([5000, 70_000, 131_072, 250_000]))
        run(stream(node, shard, data, rng.choice([4096, 10_000, 65536])))
        stored[shard] = data
        if number % 4 == 1:                     # a client going away mid-stream, after direct steps
            lost = ShardId(b"x" * 16, number)
            with pytest.raises(ConnectionResetError):
                run(node.put(lost, 250_000, b"y" * 65536, pieces(b"y" * 184_464, 65536, fail_after=2)))
    run(node.close())
    node = run.open(RealDisk(str(tmp_path / "extents")), str(tmp_path / "index"), REAL_LIMITS)
    assert [shard for shard, _ in node.list()] == sorted(stored)
    for shard, data in stored.items():
        assert run(node.read_all(shard)) == data
    assert not node.corrupt


def test_read_direct_returns_what_read_returns(tmp_path):
    disk = RealDisk(str(tmp_path / "extents"))
    disk.create("extent-0000000000")
    rng = random.Random(8)
    data = rng.randbytes(3 << 20)
    disk.write("extent-0000000000", 0, data)
    disk.sync("extent-0000000000")
    disk.write("extent-0000000000", len(data), b"dirty, unsynced tail")       # in the cache only
    whole = data + b"dirty, unsynced tail"
    for _ in range(200):
        offset = rng.randrange(0, len(whole))
        length = rng.choice([0, 1, 4095, 4096, 4097, 70_000, 1 << 20, 2 << 20])
        assert disk.read_direct("extent-0000000000", offset, length) == whole[offset:offset + length]
    disk.close()


def test_read_cached_never_waits_for_the_disk_and_returns_what_read_returns(tmp_path):
    disk = RealDisk(str(tmp_path / "extents"))
    if not disk.direct_alignment:
        pytest.skip("this filesystem takes no O_DIRECT write, so nothing can be written past the cache")
    disk.create("extent-0000000000")
    data = random.Random(10).randbytes(1 << 20)
    buffer = aligned_buffer(len(data))
    buffer.write(data)
    disk.write_direct("extent-0000000000", 0, buffer)          # on the disk, not in the page cache
    disk.sync("extent-0000000000")
    assert disk.read_cached("extent-0000000000", 0, len(data)) is None
    assert disk.read("extent-0000000000", 0, len(data)) == data  # now cached
    assert disk.read_cached("extent-0000000000", 4096, 70_000) == data[4096:74_096]
    disk.close()


def test_a_filesystem_without_nowait_reads_is_asked_once(tmp_path, monkeypatch):
    disk = RealDisk(str(tmp_path / "extents"))
    disk.create("extent-0000000000")
    disk.write("extent-0000000000", 0, b"x" * 8192)
    calls = []

    def refusing_preadv(*arguments):
        calls.append(arguments)
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "preadv", refusing_preadv)
    assert disk.read_cached("extent-0000000000", 0, 4096) is None
    assert disk.read_cached("extent-0000000000", 0, 4096) is None
    assert len(calls) == 1                                    # refused once: the disk stops asking
    assert disk.read("extent-0000000000", 0, 4096) == b"x" * 4096
    disk.close()


def test_a_large_read_goes_direct_first_and_through_the_page_cache_when_repeated(run, tmp_path):
    disk = RealDisk(str(tmp_path / "extents"))
    calls = []
    for method in ("read", "read_direct", "read_cached"):
        original = getattr(disk, method)

        def counted(*arguments, original=original, method=method):
            calls.append(method)
            return original(*arguments)

        setattr(disk, method, counted)
    limits = Limits(EXTENT_MAX_BYTES=4 << 20, CHECKSUM_BLOCK=4096, SHARD_WRITE_STEP_BYTES=65536,
                    SHARD_MAX_BYTES=1 << 20, SHARD_CHUNK_MAX_BYTES=65536)
    node = run.open(disk, str(tmp_path / "index"), limits)
    data = random.Random(9).randbytes(600_000)                # read in one piece above 256 KiB
    run(stream(node, A, data, 65536))
    calls.clear()
    for _ in range(3):
        assert run(node.read_all(A)) == data
    # The first read goes direct, the second through the page cache (from the loop if
    # every byte is cached, else a thread: the direct read cached none of them), and by
    # the third every byte is cached, read from the loop without waiting for the disk.
    assert calls[0] == "read_direct" and "read_direct" not in calls[1:], calls
    assert calls[1] == "read_cached" and calls[-1] == "read_cached", calls


def test_scrub_reads_direct_in_bounded_pieces_and_finds_a_flip_in_any_of_them(run, tmp_path):
    disk = RealDisk(str(tmp_path / "extents"))
    lengths = {"read": [], "read_direct": []}
    for method in lengths:
        original = getattr(disk, method)

        def counted(name, offset, length, original=original, method=method):
            lengths[method].append(length)
            return original(name, offset, length)

        setattr(disk, method, counted)
    node = run.open(disk, str(tmp_path / "index"), REAL_LIMITS)
    rng = random.Random(11)
    shards = {ShardId(bytes([number]) * 16, 0): rng.randbytes(size)
              for number, size in enumerate([0, 1, 4096, 70_000, 250_000, 250_000])}
    for shard, data in shards.items():
        run(stream(node, shard, data, 65536))
    for method in lengths:
        lengths[method].clear()
    assert run(node.scrub()) == []
    step = REAL_LIMITS.SHARD_WRITE_STEP_BYTES
    assert lengths["read"] == [] and lengths["read_direct"] and max(lengths["read_direct"]) <= step
    assert sum(lengths["read_direct"]) == sum(len(data) for data in shards.values())
    # One byte flipped in the first piece of one large shard, in the last piece of the other.
    first, last = (shard for shard, data in shards.items() if len(data) == 250_000)
    for shard, position in ((first, 5), (last, 250_000 - 3)):
        entry = node.locate(shard)
        path = tmp_path / "extents" / fmt.extent_name(entry.location.extent)
        with open(path, "r+b") as file:
            file.seek(entry.data_offset + position)
            byte = file.read(1)
            file.seek(entry.data_offset + position)
            file.write(bytes([byte[0] ^ 0x20]))
    assert sorted(run(node.scrub())) == sorted([first, last])
    assert set(node.corrupt) == {first, last}
    # Paced: at 1 MiB/s, each good piece read costs its share of a second; a bad piece
    # ends its shard's check at once.
    started = run.loop.time()
    assert sorted(run(node.scrub(bytes_per_s=1 << 20))) == sorted([first, last])
    paced = 1 + 4096 + 70_000 + (250_000 - step)     # every good piece before the flips is paced
    assert run.loop.time() - started >= 0.9 * paced / (1 << 20)


def test_compaction_copies_stream_off_the_loop_and_keep_rot_detectable(run, tmp_path):
    import threading

    disk = RealDisk(str(tmp_path / "extents"))
    reads = []                                   # (method, length, on the loop's thread)
    for method in ("read", "read_direct"):
        original = getattr(disk, method)

        def recorded(name, offset, length, original=original, method=method):
            reads.append((method, length, threading.get_ident() == loop_thread))
            return original(name, offset, length)

        setattr(disk, method, recorded)
    loop_thread = threading.get_ident()          # run() drives the loop on this thread
    node = run.open(disk, str(tmp_path / "index"), REAL_LIMITS)
    rng = random.Random(12)
    shards = {ShardId(number.to_bytes(16, "big"), 0): rng.randbytes(rng.choice([1, 4096, 70_000, 250_000]))
              for number in range(40)}
    for shard, data in shards.items():
        run(stream(node, shard, data, 65536))
    for shard in list(shards)[::3]:
        run(node.delete(shard))
        del shards[shard]
    for shard in list(shards)[::2]:              # a gap between the survivors
        run(node.delete(shard))
        del shards[shard]
    run(node.close())
    node = run.open(disk, str(tmp_path / "index"), REAL_LIMITS)     # every old extent is sealed now
    rotten = max(shards, key=lambda shard: len(shards[shard]))
    entry = node.locate(rotten)
    with open(tmp_path / "extents" / fmt.extent_name(entry.location.extent), "r+b") as file:
        file.seek(entry.data_offset + 100_000)
        byte = file.read(1)
        file.seek(entry.data_offset + 100_000)
        file.write(bytes([byte[0] ^ 1]))
    candidates = node.compaction_candidates()
    assert candidates
    reads.clear()
    assert run(node.compact()) >= 1
    assert reads and not any(on_loop for _, _, on_loop in reads), reads
    step = REAL_LIMITS.SHARD_WRITE_STEP_BYTES
    assert max(length for _, length, _ in reads) <= step
    assert {method for method, length, _ in reads if length > fmt.HEADER_BYTES} == {"read_direct"}
    assert set(candidates) - set(node.extent_sizes)            # mostly dead extents are gone
    assert node.corrupt.keys() == {rotten}          # found while copying ...
    for shard, data in shards.items():
        if shard == rotten:
            with pytest.raises(ShardCorrupt):       # ... and still found on the copy
                run(node.read_all(shard))
        else:
            assert run(node.read_all(shard)) == data
    assert node.locate(rotten).location.extent != entry.location.extent


def _refuse_o_direct(monkeypatch) -> None:
    real_open = os.open

    def refusing_open(path, flags, *args, **keywords):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **keywords)

    monkeypatch.setattr(os, "open", refusing_open)


def test_a_filesystem_refusing_o_direct_gets_buffered_steps(run, tmp_path, monkeypatch):
    _refuse_o_direct(monkeypatch)
    disk = RealDisk(str(tmp_path / "extents"))
    assert disk.direct_alignment == 0
    assert disk.list_files() == [] and os.listdir(tmp_path / "extents") == []    # the probe left nothing
    node = run.open(disk, str(tmp_path / "index"), REAL_LIMITS)
    data = random.Random(6).randbytes(200_000)
    run(stream(node, A, data, 65536))
    assert run(node.read_all(A)) == data


def test_a_direct_write_refused_later_falls_back_to_buffered(run, tmp_path, monkeypatch):
    disk = RealDisk(str(tmp_path / "extents"))
    if not disk.direct_alignment:
        pytest.skip("this filesystem refuses O_DIRECT")
    _refuse_o_direct(monkeypatch)
    node = run.open(disk, str(tmp_path / "index"), REAL_LIMITS)
    data = random.Random(7).randbytes(200_000)
    run(stream(node, A, data, 65536))
    assert disk.direct_alignment == 0
    run(node.close())
    node = run.open(RealDisk(str(tmp_path / "extents")), str(tmp_path / "index"), REAL_LIMITS)
    assert run(node.read_all(A)) == data


def test_recovery_checks_large_records_a_step_at_a_time(run, tmp_path):
    """Recovery verifies each record past the checkpoint: its data is read in
    SHARD_WRITE_STEP pieces, never whole, and a flipped byte in any piece is found."""
    disk = SimDisk()
    node = run.open(disk, str(tmp_path / "index"))
    data = random.Random(5).randbytes(8192)
    run(stream(node, A, data, 2048))
    run(node.put(B, 300, data[:300]))
    entry = node.locate(A)
    run(asyncio.gather(*node.abandon(), return_exceptions=True))    # a crash: no flush, A and B past the checkpoint
    name = fmt.extent_name(entry.location.extent)
    at = entry.data_offset + 5000                                   # inside the fifth step
    disk.write(name, at, bytes([disk.read(name, at, 1)[0] ^ 1]))
    lengths = []
    real_read = disk.read
    disk.read = lambda name, offset, length: lengths.append(length) or real_read(name, offset, length)
    node = run.open(disk, str(tmp_path / "index"))
    assert max(lengths) <= LIMITS.SHARD_WRITE_STEP_BYTES
    assert A in node.corrupt and B not in node.corrupt
    assert run(node.read_all(B)) == data[:300]
    with pytest.raises(ShardCorrupt):
        run(node.read_all(A))

"""InMemoryBlobStore honours the BlobStore seam (common/seams.py, DESIGN §11).

Properties, each checked by example or by a hypothesis property, without sockets:
- a write returns exactly the MD5 and x-amz-checksum-* values hashlib, zlib and
  awscrt compute over the same bytes, whatever the stream's chunking;
- a read of any [start, end) returns exactly those bytes, in pieces of at most
  1 MiB, including ranges on piece boundaries;
- a size mismatch or a failing stream keeps nothing;
- a flipped stored byte is detected (BlobCorrupt) before it is served; bytes of
  other pieces still read;
- a missing data id raises BlobNotFound; delete is idempotent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import zlib

import pytest
from awscrt import checksums as crt
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import BlobCorrupt, BlobNotFound, InvariantViolation
from common.ids import new_data_id
from common.seams import BlobRef
from spec.blob_model import PIECE_MAX_BYTES, InMemoryBlobStore

MiB = 1024 * 1024


def run(coroutine):
    return asyncio.run(coroutine)


async def chunks_of(data: bytes, chunk_bytes: int):
    for at in range(0, len(data), chunk_bytes):
        yield data[at:at + chunk_bytes]


async def read_all(store: InMemoryBlobStore, ref: BlobRef, start: int, end: int) -> list[bytes]:
    return [piece async for piece in store.read(ref, start, end)]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def expected_checksums(data: bytes) -> dict[str, str]:
    return {
        "crc32": b64(zlib.crc32(data).to_bytes(4, "big")),
        "crc32c": b64(crt.crc32c(data).to_bytes(4, "big")),
        "crc64nvme": b64(crt.crc64nvme(data).to_bytes(8, "big")),
        "sha1": b64(hashlib.sha1(data).digest()),
        "sha256": b64(hashlib.sha256(data).digest()),
    }


ALL = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


@pytest.mark.parametrize("size,chunk_bytes", [
    (0, 1), (1, 1), (4096, 7), (MiB, 65536), (3 * MiB + 5, 1000 * 1000), (5 * MiB + 3, 5 * MiB + 3),
])
def test_digests_match_reference_libraries(size, chunk_bytes):
    data = os.urandom(size)

    async def scenario():
        store = InMemoryBlobStore()
        ref = await store.write(new_data_id(), chunks_of(data, chunk_bytes), size, ALL)
        assert ref.size == size
        assert ref.md5_hex == hashlib.md5(data).hexdigest()
        assert dict(ref.checksums) == expected_checksums(data)
        pieces = await read_all(store, ref, 0, size)
        assert all(0 < len(piece) <= PIECE_MAX_BYTES for piece in pieces)
        assert all(type(piece) is bytes for piece in pieces)
        assert b"".join(pieces) == data

    run(scenario())


def test_only_requested_checksums_and_unknown_algorithm_refused():
    async def scenario():
        store = InMemoryBlobStore()
        ref = await store.write(new_data_id(), chunks_of(b"abc", 2), None, ("crc32",))
        assert [name for name, _ in ref.checksums] == ["crc32"]
        none = await store.write(new_data_id(), chunks_of(b"abc", 2), None, ())
        assert none.checksums == () and none.md5_hex == hashlib.md5(b"abc").hexdigest()
        data_id = new_data_id()
        with pytest.raises(ValueError):
            await store.write(data_id, chunks_of(b"abc", 2), None, ("md4",))
        assert data_id not in store

    run(scenario())


def test_ranges_at_piece_boundaries():
    data = os.urandom(3 * MiB + 100)

    async def scenario():
        store = InMemoryBlobStore()
        # Mixed chunking: small chunks coalesce, a big one is cut into views.
        async def stream():
            yield data[:10]
            yield data[10:70000]
            yield data[70000:70000 + 2 * MiB + 17]
            yield data[70000 + 2 * MiB + 17:]
        ref = await store.write(new_data_id(), stream(), len(data), ())
        edges = sorted({0, 1, 9, 10, 11, 65535, 65536, 65537, 69999, 70000, 70001,
                        MiB - 1, MiB, MiB + 1, 70000 + MiB, 70000 + 2 * MiB + 17,
                        3 * MiB, len(data) - 1, len(data)})
        for start in edges:
            for end in edges:
                if start <= end:
                    pieces = await read_all(store, ref, start, end)
                    assert b"".join(pieces) == data[start:end], (start, end)
                    assert all(0 < len(piece) <= PIECE_MAX_BYTES for piece in pieces)
        with pytest.raises(ValueError):
            store.read(ref, 5, 4)
        with pytest.raises(ValueError):
            store.read(ref, 0, len(data) + 1)

    run(scenario())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12), st.data())
def test_round_trip_any_chunking_and_range(chunks, draw):
    data = b"".join(chunks)
    start = draw.draw(st.integers(0, len(data)))
    end = draw.draw(st.integers(start, len(data)))

    async def scenario():
        store = InMemoryBlobStore()

        async def stream():
            for chunk in chunks:
                yield chunk
        ref = await store.write(new_data_id(), stream(), len(data), ("crc32c",))
        assert ref.md5_hex == hashlib.md5(data).hexdigest()
        assert dict(ref.checksums)["crc32c"] == expected_checksums(data)["crc32c"]
        assert b"".join(await read_all(store, ref, start, end)) == data[start:end]

    run(scenario())


def test_mutable_chunks_are_copied():
    async def scenario():
        store = InMemoryBlobStore()
        buffer = bytearray(b"x" * 100_000)

        async def stream():
            yield buffer
            yield memoryview(buffer)
        ref = await store.write(new_data_id(), stream(), 200_000, ())
        buffer[:] = b"y" * 100_000
        assert b"".join(await read_all(store, ref, 0, 200_000)) == b"x" * 200_000

    run(scenario())


@pytest.mark.parametrize("declared,actual", [(10, 9), (10, 11), (0, 1), (3 * MiB, 3 * MiB + 1), (3 * MiB, MiB)])
def test_size_mismatch_keeps_nothing(declared, actual):
    data = os.urandom(actual)

    async def scenario():
        store = InMemoryBlobStore()
        data_id = new_data_id()
        with pytest.raises(ValueError):
            await store.write(data_id, chunks_of(data, 65536), declared, ("crc32",))
        assert data_id not in store and store.stored_bytes() == 0
        with pytest.raises(BlobNotFound):
            store.read(BlobRef(data_id, actual, ""), 0, 0)
        # Nothing was kept, so the id may be written again.
        ref = await store.write(data_id, chunks_of(data, 65536), actual, ())
        assert ref.size == actual

    run(scenario())


def test_failing_stream_keeps_nothing_and_reraises():
    class Boom(Exception):
        pass

    async def scenario():
        store = InMemoryBlobStore()
        data_id = new_data_id()

        async def stream():
            for _ in range(5):
                yield os.urandom(MiB)  # a hashing batch is in flight when it fails
            raise Boom()
        with pytest.raises(Boom):
            await store.write(data_id, stream(), None, ("sha256",))
        assert data_id not in store and store.data_ids() == frozenset()

    run(scenario())


def test_corrupt_byte_is_never_served():
    data = os.urandom(3 * MiB)

    async def scenario():
        store = InMemoryBlobStore()
        ref = await store.write(new_data_id(), chunks_of(data, MiB), len(data), ())
        store.corrupt_for_test(ref.data_id, MiB + 12345)
        with pytest.raises(BlobCorrupt):
            await read_all(store, ref, 0, len(data))
        with pytest.raises(BlobCorrupt):
            await read_all(store, ref, MiB + 12345, MiB + 12346)
        # The first piece is served in full before the corrupt one is reached.
        served = []
        with pytest.raises(BlobCorrupt):
            async for piece in store.read(ref, 0, len(data)):
                served.append(piece)
        assert b"".join(served) == data[:MiB]
        # Untouched pieces still read.
        assert b"".join(await read_all(store, ref, 2 * MiB, 3 * MiB)) == data[2 * MiB:]
        assert b"".join(await read_all(store, ref, 10, MiB)) == data[10:MiB]

    run(scenario())


def test_corrupt_small_blob():
    async def scenario():
        store = InMemoryBlobStore()
        ref = await store.write(new_data_id(), chunks_of(b"hello world", 3), 11, ())
        store.corrupt_for_test(ref.data_id, 10)
        with pytest.raises(BlobCorrupt):
            await read_all(store, ref, 0, 1)

    run(scenario())


def test_missing_and_delete_idempotent():
    async def scenario():
        store = InMemoryBlobStore()
        with pytest.raises(BlobNotFound):
            store.read(BlobRef(new_data_id(), 1, ""), 0, 1)
        ref = await store.write(new_data_id(), chunks_of(b"abc", 1), 3, ())
        reader = store.read(ref, 0, 3)  # a read already begun survives a delete
        await store.delete(ref)
        await store.delete(ref)
        assert ref.data_id not in store
        assert b"".join([piece async for piece in reader]) == b"abc"
        with pytest.raises(BlobNotFound):
            store.read(ref, 0, 3)
        await store.close()

    run(scenario())


def test_data_id_written_twice_is_a_bug():
    async def scenario():
        store = InMemoryBlobStore()
        data_id = new_data_id()
        await store.write(data_id, chunks_of(b"abc", 1), 3, ())
        with pytest.raises(InvariantViolation):
            await store.write(data_id, chunks_of(b"abc", 1), 3, ())

    run(scenario())

"""The file-per-blob BlobStore stores exactly what it acknowledges and never serves
corrupt bytes.

Method: hypothesis round trips of random bodies in random chunkings, read back
in random ranges, against the same bytes in memory and digests computed by
hashlib; examples for size mismatches, failing streams (no file left behind,
not even a temporary one), a flipped byte anywhere in the data or footer
(BlobCorrupt on any read touching it), missing blobs and idempotent deletes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import zlib
import base64

import pytest
from hypothesis import given, settings, strategies as st

from common.errors import BlobCorrupt, BlobNotFound
from frontend.dataplane import file_blobs
from frontend.dataplane.file_blobs import FileBlobStore


async def _stream(data: bytes, cuts: list[int]):
    previous = 0
    for cut in sorted(set(min(cut, len(data)) for cut in cuts)) + [len(data)]:
        if cut > previous:
            yield data[previous:cut]
            previous = cut


def _files(directory) -> list[str]:
    return sorted(name for _, _, names in os.walk(directory) for name in names)


async def _read(store, ref, start, end) -> bytes:
    return b"".join([piece async for piece in store.read(ref, start, end)])


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300_000), st.lists(st.integers(0, 300_000), max_size=6), st.data())
def test_round_trip(tmp_path_factory, data, cuts, draw):
    directory = tmp_path_factory.mktemp("blobs")

    async def run():
        store = FileBlobStore(directory)
        ref = await store.write(os.urandom(16), _stream(data, cuts), len(data), ("crc32",))
        assert ref.size == len(data) and ref.md5_hex == hashlib.md5(data).hexdigest()
        assert dict(ref.checksums)["crc32"] == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
        start = draw.draw(st.integers(0, len(data)))
        end = draw.draw(st.integers(start, len(data)))
        assert await _read(store, ref, start, end) == data[start:end]
        assert await _read(store, ref, 0, len(data)) == data
    asyncio.run(run())


def test_size_mismatch_and_failing_streams_leave_nothing(tmp_path):
    async def failing():
        yield b"x" * 3_000_000
        raise ConnectionResetError("client went away")

    async def run():
        store = FileBlobStore(tmp_path)
        with pytest.raises(ValueError):
            await store.write(os.urandom(16), _stream(b"abc", []), 4, ())
        with pytest.raises(ValueError):
            await store.write(os.urandom(16), _stream(b"x" * 2_000_000, [100]), 10, ())
        with pytest.raises(ConnectionResetError):
            await store.write(os.urandom(16), failing(), None, ())
    asyncio.run(run())
    assert _files(tmp_path) == []


@pytest.mark.parametrize("where", ["first", "middle", "last", "footer", "header"])
def test_flipped_byte_is_never_served(tmp_path, where):
    data = os.urandom(3 * file_blobs.BLOCK_BYTES + 123)

    async def run():
        store = FileBlobStore(tmp_path)
        ref = await store.write(os.urandom(16), _stream(data, [5000]), len(data), ())
        path = store._path(ref.data_id)
        offset = {"first": 0, "middle": file_blobs.BLOCK_BYTES + 7, "last": len(data) - 1,
                  "footer": len(data) + 3, "header": -3}[where] + file_blobs.HEADER.size
        raw = bytearray(path.read_bytes())
        raw[offset] ^= 0x40
        path.write_bytes(bytes(raw))
        with pytest.raises(BlobCorrupt):
            await _read(store, ref, 0, len(data))
    asyncio.run(run())


def test_missing_and_delete(tmp_path):
    async def run():
        store = FileBlobStore(tmp_path)
        ref = await store.write(os.urandom(16), _stream(b"hello" * 1000, []), 5000, ())
        await store.delete(ref)
        await store.delete(ref)
        with pytest.raises(BlobNotFound):
            store.read(ref, 0, 1)
    asyncio.run(run())

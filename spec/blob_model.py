"""The in-memory BlobStore (DESIGN §10, §11): bytes in a dict, checked on read.

Write:
1. Consume the stream into fixed segments of SEGMENT_BYTES (the last shorter).
2. Hash each full segment (MD5 + requested x-amz-checksum-* through one
   `Digests`, and an xxh3-128 of the segment) on a worker thread, one segment in
   flight at a time so MD5 stays sequential, while the loop receives the next.
3. On a size mismatch (ValueError, raised as soon as the stream overruns) or a
   stream error, keep nothing and raise; otherwise store the segments and
   their xxh3-128s and return the BlobRef.

Read yields `[start, end)` in pieces of at most SEGMENT_BYTES, each a slice of one
segment (never a copy of the whole blob), verifying every segment it touches
against its xxh3-128 first: corrupt bytes raise BlobCorrupt and are never served.
A read works on the blob as it was when `read()` was called, so a concurrent
delete does not cut a GET short. Delete is idempotent.

Invariants: a data id is written once (InvariantViolation otherwise); a stored
blob's segments are all SEGMENT_BYTES but the last, which is non-empty unless
the blob is empty.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterable, AsyncIterator

import xxhash

from common.checksums import Digests
from common.errors import BlobCorrupt, BlobNotFound, invariant
from common.seams import CHECKSUM_ALGORITHMS, BlobRef

SEGMENT_BYTES = 1024 * 1024
"""Storage, hashing and read-piece unit."""

INLINE_HASH_MAX_BYTES = 64 * 1024
"""A segment this small is hashed on the loop: a thread hop costs more."""

PLACEMENT = b"memory"


class _Blob:
    __slots__ = ("size", "segments", "hashes")

    def __init__(self, size: int, segments: list[bytes], hashes: list[bytes]) -> None:
        self.size = size
        self.segments = segments
        self.hashes = hashes


def _absorb(digests: Digests, segment: bytes, segments: list[bytes], hashes: list[bytes]) -> None:
    """Step 2 for one segment; runs on a worker thread for large segments."""
    digests.update(segment)
    segments.append(segment)
    hashes.append(xxhash.xxh3_128_digest(segment))


class InMemoryBlobStore:
    """BlobStore (common/seams.py) in one process's memory."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, _Blob] = {}

    async def write(
        self, data_id: bytes, stream: AsyncIterable[bytes], size: int | None,
        algorithms: tuple[str, ...],
    ) -> BlobRef:
        invariant(data_id not in self._blobs, f"data id {data_id.hex()} written twice")
        unknown = set(algorithms) - set(CHECKSUM_ALGORITHMS)
        if unknown:
            raise ValueError(f"unknown checksum algorithms {sorted(unknown)}")
        digests = Digests(algorithms)
        segments: list[bytes] = []
        hashes: list[bytes] = []
        pending = bytearray()
        hashing: asyncio.Future[None] | None = None
        total = 0
        try:
            async for chunk in stream:
                total += len(chunk)
                if size is not None and total > size:
                    raise ValueError(f"stream is longer than the declared {size} bytes")
                pending += chunk
                while len(pending) >= SEGMENT_BYTES:
                    with memoryview(pending) as view:
                        segment = bytes(view[:SEGMENT_BYTES])
                    del pending[:SEGMENT_BYTES]
                    if hashing is not None:
                        await hashing
                    hashing = asyncio.ensure_future(
                        asyncio.to_thread(_absorb, digests, segment, segments, hashes))
            if size is not None and total != size:
                raise ValueError(f"stream gave {total} bytes, {size} declared")
            if hashing is not None:
                await hashing
                hashing = None
            if pending or not segments:
                segment = bytes(pending)
                if len(segment) > INLINE_HASH_MAX_BYTES:
                    await asyncio.to_thread(_absorb, digests, segment, segments, hashes)
                else:
                    _absorb(digests, segment, segments, hashes)
        except BaseException:
            if hashing is not None and not hashing.done():
                # Let the worker finish with buffers nobody keeps; nothing is stored.
                hashing.add_done_callback(_discard_result)
            raise
        invariant(digests.size == total, "hashed bytes differ from received bytes")
        invariant(data_id not in self._blobs, f"data id {data_id.hex()} written twice")
        self._blobs[data_id] = _Blob(total, segments, hashes)
        return BlobRef(
            data_id=data_id, size=total, md5_hex=digests.md5_hex(),
            checksums=digests.checksums(), placement=PLACEMENT,
        )

    def read(self, ref: BlobRef, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) in pieces of at most SEGMENT_BYTES. BlobNotFound is
        raised here, at the call; BlobCorrupt while iterating, before bad bytes."""
        blob = self._blobs.get(ref.data_id)
        if blob is None:
            raise BlobNotFound(ref.data_id.hex())
        invariant(blob.size == ref.size, f"BlobRef size {ref.size} differs from stored {blob.size}")
        if not 0 <= start <= end <= blob.size:
            raise ValueError(f"range [{start}, {end}) outside a blob of {blob.size} bytes")
        return self._pieces(ref.data_id, blob, start, end)

    @staticmethod
    async def _pieces(data_id: bytes, blob: _Blob, start: int, end: int) -> AsyncIterator[bytes]:
        position = start
        while position < end:
            index, offset = divmod(position, SEGMENT_BYTES)
            segment = blob.segments[index]
            if xxhash.xxh3_128_digest(segment) != blob.hashes[index]:
                raise BlobCorrupt(f"{data_id.hex()} segment {index}")
            stop = min(len(segment), offset + end - position)
            piece = segment if offset == 0 and stop == len(segment) else segment[offset:stop]
            position += stop - offset
            yield piece

    async def delete(self, ref: BlobRef) -> None:
        self._blobs.pop(ref.data_id, None)

    async def close(self) -> None:
        self._blobs.clear()

    # ------------------------------------------------------------ for tests

    def corrupt_for_test(self, data_id: bytes, offset: int) -> None:
        """Flip one stored byte (its recorded xxh3 stays): the next read of it fails."""
        blob = self._blobs[data_id]
        index, within = divmod(offset, SEGMENT_BYTES)
        segment = bytearray(blob.segments[index])
        segment[within] ^= 0xFF
        blob.segments[index] = bytes(segment)

    def __contains__(self, data_id: bytes) -> bool:
        return data_id in self._blobs

    def data_ids(self) -> frozenset[bytes]:
        return frozenset(self._blobs)

    def stored_bytes(self) -> int:
        return sum(blob.size for blob in self._blobs.values())


def _discard_result(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()

"""The in-memory BlobStore (DESIGN §10, §11): bytes in a dict, checked on read.

Write:
1. Consume the stream, keeping each `bytes` chunk as it came (no copy; other
   buffer types are copied, as their owner may reuse them). Chunks under
   COALESCE_BYTES are joined until they reach it; chunks over PIECE_MAX_BYTES are
   cut into PIECE_MAX_BYTES views. The result is a list of pieces.
2. Hash pieces in batches of about BATCH_BYTES — MD5 and the requested
   x-amz-checksum-* through one `Digests`, and an xxh3-128 per piece — on a
   worker thread, one batch in flight at a time so MD5 stays sequential, while
   the loop receives the next batch. A last batch under INLINE_HASH_MAX_BYTES is
   hashed on the loop: a thread hop costs more.
3. On a size mismatch (ValueError, raised as soon as the stream overruns) or a
   stream error, keep nothing and raise; otherwise store the pieces, their start
   offsets and xxh3-128s, and return the BlobRef.

Read yields `[start, end)` in pieces of at most PIECE_MAX_BYTES, each a stored
piece or a slice of one (never a copy of the whole blob), verifying every piece
it touches against its xxh3-128 first: corrupt bytes raise BlobCorrupt and are
never served. A read works on the blob as it was when `read()` was called, so a
concurrent delete does not cut a GET short. Delete is idempotent.

Invariants: a data id is written once (InvariantViolation otherwise); stored
pieces are non-empty, at most PIECE_MAX_BYTES, and add up to the blob's size.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from typing import AsyncIterable, AsyncIterator, Union

import xxhash

from common.checksums import Digests
from common.errors import BlobCorrupt, BlobNotFound, invariant
from common.seams import CHECKSUM_ALGORITHMS, BlobRef

PIECE_MAX_BYTES = 1024 * 1024
"""The largest stored piece and the largest piece a read yields."""

COALESCE_BYTES = 64 * 1024
"""Smaller stream chunks are joined up to this size before they are stored."""

BATCH_BYTES = 1024 * 1024
"""Bytes hashed per worker-thread hop."""

INLINE_HASH_MAX_BYTES = 64 * 1024

PLACEMENT = b"memory"

Piece = Union[bytes, memoryview]


class _Blob:
    __slots__ = ("size", "pieces", "starts", "hashes")

    def __init__(self, size: int, pieces: list[Piece], hashes: list[bytes]) -> None:
        self.size = size
        self.pieces = pieces
        self.hashes = hashes
        self.starts: list[int] = []
        offset = 0
        for piece in pieces:
            invariant(0 < len(piece) <= PIECE_MAX_BYTES, "stored piece of a bad size")
            self.starts.append(offset)
            offset += len(piece)
        invariant(offset == size and len(hashes) == len(pieces), "pieces do not add up")


def _absorb(digests: Digests, batch: list[Piece]) -> list[bytes]:
    """Step 2 for one batch; runs on a worker thread unless the batch is small."""
    hashes = []
    for piece in batch:
        digests.update(piece)
        hashes.append(xxhash.xxh3_128_digest(piece))
    return hashes


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
        pieces: list[Piece] = []
        hashes: list[bytes] = []
        batch: list[Piece] = []
        batch_bytes = 0
        small = bytearray()
        hashing: asyncio.Future[list[bytes]] | None = None
        total = 0

        def add(piece: bytes) -> None:  # step 1
            nonlocal batch_bytes
            if len(piece) <= PIECE_MAX_BYTES:
                batch.append(piece)
            else:
                view = memoryview(piece)
                batch.extend(view[at:at + PIECE_MAX_BYTES] for at in range(0, len(piece), PIECE_MAX_BYTES))
            batch_bytes += len(piece)

        try:
            async for chunk in stream:
                length = len(chunk)
                if not length:
                    continue
                total += length
                if size is not None and total > size:
                    raise ValueError(f"stream is longer than the declared {size} bytes")
                if length < COALESCE_BYTES:
                    small += chunk
                    if len(small) >= COALESCE_BYTES:
                        add(bytes(small))
                        small = bytearray()
                else:
                    if small:
                        add(bytes(small))
                        small = bytearray()
                    add(chunk if type(chunk) is bytes else bytes(chunk))
                if batch_bytes >= BATCH_BYTES:  # step 2
                    if hashing is not None:
                        hashes += await hashing
                    pieces += batch
                    hashing = asyncio.ensure_future(asyncio.to_thread(_absorb, digests, batch))
                    batch, batch_bytes = [], 0
            if size is not None and total != size:
                raise ValueError(f"stream gave {total} bytes, {size} declared")
            if small:
                add(bytes(small))
            if hashing is not None:
                hashes += await hashing
                hashing = None
            pieces += batch
            if batch_bytes > INLINE_HASH_MAX_BYTES:
                hashes += await asyncio.to_thread(_absorb, digests, batch)
            else:
                hashes += _absorb(digests, batch)
        except BaseException:
            if hashing is not None and not hashing.done():
                # Let the worker finish with buffers nobody keeps; nothing is stored.
                hashing.add_done_callback(_discard_result)
            raise
        invariant(digests.size == total, "hashed bytes differ from received bytes")
        invariant(data_id not in self._blobs, f"data id {data_id.hex()} written twice")
        self._blobs[data_id] = _Blob(total, pieces, hashes)  # step 3
        return BlobRef(
            data_id=data_id, size=total, md5_hex=digests.md5_hex(),
            checksums=digests.checksums(), placement=PLACEMENT,
        )

    def read(self, ref: BlobRef, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) in pieces of at most PIECE_MAX_BYTES. BlobNotFound is
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
        if start == end:
            return
        index = bisect_right(blob.starts, start) - 1
        position = start
        while position < end:
            piece = blob.pieces[index]
            if xxhash.xxh3_128_digest(piece) != blob.hashes[index]:
                raise BlobCorrupt(f"{data_id.hex()} piece {index}")
            offset = position - blob.starts[index]
            stop = min(len(piece), offset + end - position)
            if offset == 0 and stop == len(piece) and type(piece) is bytes:
                yield piece
            else:
                yield bytes(piece[offset:stop])
            position += stop - offset
            index += 1

    async def delete(self, ref: BlobRef) -> None:
        self._blobs.pop(ref.data_id, None)

    async def close(self) -> None:
        self._blobs.clear()

    # ------------------------------------------------------------ for tests

    def corrupt_for_test(self, data_id: bytes, offset: int) -> None:
        """Flip one stored byte (its recorded xxh3 stays): the next read of it fails."""
        blob = self._blobs[data_id]
        index = bisect_right(blob.starts, offset) - 1
        piece = bytearray(blob.pieces[index])
        piece[offset - blob.starts[index]] ^= 0xFF
        blob.pieces[index] = bytes(piece)

    def __contains__(self, data_id: bytes) -> bool:
        return data_id in self._blobs

    def data_ids(self) -> frozenset[bytes]:
        return frozenset(self._blobs)

    def stored_bytes(self) -> int:
        return sum(blob.size for blob in self._blobs.values())


def _discard_result(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()

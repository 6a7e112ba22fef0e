"""Stored formats of the shardstore (DESIGN §9): extent records, index keys and values.

Pure code: bytes in, values out. Every stored thing starts with FORMAT_VERSION.

An extent file `extent-NNNNNNNNNN` is a sequence of self-describing records:

    header   HEADER (magic, version, kind, flags, shard id, put time, length,
             block size, copy source, xxh3-64 of the header)
    data     `length` bytes (none for a tombstone)
    trailer  one xxh3-128 per block of `block_size` bytes, the record's seq (u64),
             END_MAGIC, then xxh3-128 over header + block checksums + seq + END_MAGIC

Invariants:
- A record is complete iff its header and trailer checksums verify; a torn or
  aborted record never verifies (its trailer is missing or its check fails).
- `seq` is the node's order of effects: records apply in seq order, live and in
  recovery, through the one pure rule `apply_rule`, so both paths agree.
- Block checksums cover the data exactly: block i is data[i*block_size:(i+1)*block_size].
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

import xxhash

from common.errors import invariant

FORMAT_VERSION = 1
MAGIC = b"CRNs"
END_MAGIC = b"CRNe"
DATA_ID_BYTES = 16

KIND_PUT = 1
KIND_TOMBSTONE = 2
KIND_COPY = 3

_HEADER = struct.Struct(">4sBBH16sIQQIIQ")
_HEADER_CHECK = struct.Struct(">Q")
HEADER_BYTES = _HEADER.size + _HEADER_CHECK.size
CHECKSUM_BYTES = 16
_TRAILER_TAIL = struct.Struct(">Q4s")
TRAILER_FIXED_BYTES = _TRAILER_TAIL.size + CHECKSUM_BYTES

INDEX_PREFIX = b"S"
CHECKPOINT_KEY = b"M:checkpoint"


class ShardId(NamedTuple):
    data_id: bytes
    shard_index: int


class Location(NamedTuple):
    extent: int
    offset: int          # start of the record's header


def extent_name(extent: int) -> str:
    return f"extent-{extent:010d}"


def extent_number(name: str) -> int | None:
    if name.startswith("extent-") and name[7:].isdigit():
        return int(name[7:])
    return None


def block_count(length: int, block_size: int) -> int:
    return (length + block_size - 1) // block_size


def block_checksums(data: bytes | memoryview, block_size: int) -> list[bytes]:
    view = memoryview(data)
    return [xxhash.xxh3_128_digest(view[start:start + block_size])
            for start in range(0, len(view), block_size)]


class BlockChecksummer:
    """The per-block xxh3-128 of a byte stream fed in pieces of any size: `finish()`
    returns what `block_checksums` gives for the whole, however the stream was cut
    (checksums follow the record's data, never the cuts of the writes)."""

    def __init__(self, block_size: int) -> None:
        invariant(block_size > 0, "block size must be positive")
        self.block_size = block_size
        self.checksums: list[bytes] = []        # of every complete block fed so far
        self._partial = bytearray()             # the bytes of the block not yet complete

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        block = self.block_size
        if self._partial:
            take = min(block - len(self._partial), len(view))
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) < block:
                return
            self.checksums.append(xxhash.xxh3_128_digest(self._partial))
            self._partial.clear()
        whole = len(view) - len(view) % block
        self.checksums += [xxhash.xxh3_128_digest(view[start:start + block]) for start in range(0, whole, block)]
        self._partial += view[whole:]

    def finish(self) -> list[bytes]:
        if self._partial:
            self.checksums.append(xxhash.xxh3_128_digest(self._partial))
            self._partial.clear()
        return self.checksums


def record_bytes(length: int, block_size: int) -> int:
    """Total size of a record holding `length` data bytes."""
    return HEADER_BYTES + length + block_count(length, block_size) * CHECKSUM_BYTES + TRAILER_FIXED_BYTES


@dataclass(frozen=True)
class Header:
    kind: int
    flags: int
    shard: ShardId
    put_time_us: int
    length: int
    block_size: int
    source: Location | None = None      # KIND_COPY: where the shard was copied from


def encode_header(header: Header) -> bytes:
    invariant(len(header.shard.data_id) == DATA_ID_BYTES, "data id must be 16 bytes")
    source = header.source or Location(0, 0)
    body = _HEADER.pack(MAGIC, FORMAT_VERSION, header.kind, header.flags, header.shard.data_id,
                        header.shard.shard_index, header.put_time_us, header.length,
                        header.block_size, source.extent, source.offset)
    return body + _HEADER_CHECK.pack(xxhash.xxh3_64_intdigest(body))


def decode_header(raw: bytes) -> Header | None:
    """The header, or None when it is torn, rotten or of an unknown version."""
    if len(raw) < HEADER_BYTES:
        return None
    body = raw[:_HEADER.size]
    (check,) = _HEADER_CHECK.unpack_from(raw, _HEADER.size)
    if xxhash.xxh3_64_intdigest(body) != check:
        return None
    (magic, version, kind, flags, data_id, shard_index, put_time_us, length, block_size,
     source_extent, source_offset) = _HEADER.unpack(body)
    if magic != MAGIC or version != FORMAT_VERSION or kind not in (KIND_PUT, KIND_TOMBSTONE, KIND_COPY):
        return None
    if block_size <= 0:
        return None
    source = Location(source_extent, source_offset) if kind == KIND_COPY else None
    return Header(kind, flags, ShardId(data_id, shard_index), put_time_us, length, block_size, source)


def encode_trailer(header_raw: bytes, checksums: list[bytes], seq: int) -> bytes:
    middle = b"".join(checksums) + _TRAILER_TAIL.pack(seq, END_MAGIC)
    return middle + xxhash.xxh3_128_digest(header_raw + middle)


def decode_trailer(header_raw: bytes, header: Header, raw: bytes) -> tuple[list[bytes], int] | None:
    """(block checksums, seq), or None when the trailer is torn or rotten."""
    count = block_count(header.length, header.block_size)
    expected = count * CHECKSUM_BYTES + TRAILER_FIXED_BYTES
    if len(raw) != expected:
        return None
    middle, check = raw[:-CHECKSUM_BYTES], raw[-CHECKSUM_BYTES:]
    if xxhash.xxh3_128_digest(header_raw + middle) != check:
        return None
    seq, end_magic = _TRAILER_TAIL.unpack_from(middle, count * CHECKSUM_BYTES)
    if end_magic != END_MAGIC:
        return None
    checksums = [middle[i * CHECKSUM_BYTES:(i + 1) * CHECKSUM_BYTES] for i in range(count)]
    return checksums, seq


# ---------------------------------------------------------------- index


@dataclass(frozen=True)
class Entry:
    """An index value: where a shard's record is and how to check its bytes."""

    location: Location
    length: int
    put_time_us: int
    block_size: int
    checksums: tuple[bytes, ...]

    @property
    def data_offset(self) -> int:
        return self.location.offset + HEADER_BYTES

    @property
    def stored_bytes(self) -> int:
        return record_bytes(self.length, self.block_size)


_ENTRY = struct.Struct(">BIQQQI")


def encode_entry(entry: Entry) -> bytes:
    return _ENTRY.pack(FORMAT_VERSION, entry.location.extent, entry.location.offset, entry.length,
                       entry.put_time_us, entry.block_size) + b"".join(entry.checksums)


def decode_entry(raw: bytes) -> Entry:
    version, extent, offset, length, put_time_us, block_size = _ENTRY.unpack_from(raw)
    invariant(version == FORMAT_VERSION, f"unknown index value version {version}")
    rest = raw[_ENTRY.size:]
    checksums = tuple(rest[i:i + CHECKSUM_BYTES] for i in range(0, len(rest), CHECKSUM_BYTES))
    invariant(len(checksums) == block_count(length, block_size), "index value checksum count")
    return Entry(Location(extent, offset), length, put_time_us, block_size, checksums)


def index_key(shard: ShardId) -> bytes:
    return INDEX_PREFIX + shard.data_id + struct.pack(">I", shard.shard_index)


def shard_of_key(key: bytes) -> ShardId:
    invariant(key[:1] == INDEX_PREFIX and len(key) == 1 + DATA_ID_BYTES + 4, "not an index key")
    return ShardId(key[1:1 + DATA_ID_BYTES], struct.unpack(">I", key[1 + DATA_ID_BYTES:])[0])


@dataclass(frozen=True)
class Checkpoint:
    """What the synced index covers: each extent's records below `covered[extent]`
    have been applied, every applied seq is <= `seq`, and extent numbers below
    `next_extent` were used."""

    seq: int
    next_extent: int
    covered: dict[int, int]


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    parts = [struct.pack(">BQII", FORMAT_VERSION, checkpoint.seq, checkpoint.next_extent,
                         len(checkpoint.covered))]
    parts += [struct.pack(">IQ", extent, offset) for extent, offset in sorted(checkpoint.covered.items())]
    return b"".join(parts)


def decode_checkpoint(raw: bytes) -> Checkpoint:
    version, seq, next_extent, count = struct.unpack_from(">BQII", raw)
    invariant(version == FORMAT_VERSION, f"unknown checkpoint version {version}")
    covered = {}
    for i in range(count):
        extent, offset = struct.unpack_from(">IQ", raw, 17 + 12 * i)
        covered[extent] = offset
    return Checkpoint(seq, next_extent, covered)


# ---------------------------------------------------------------- the apply rule

OUTCOME_OK = "ok"
OUTCOME_EXISTS = "exists"        # a put of other bytes under a taken id
OUTCOME_STALE = "stale"          # a compaction copy whose source is no longer current


def apply_rule(existing: Entry | None, header: Header, new: Entry | None) -> tuple[str, Entry | None, bool]:
    """Decide one record's effect: (outcome, entry to store, whether to store it).

    The same rule runs when a record is committed and when recovery replays it.
    """
    if header.kind == KIND_TOMBSTONE:
        return OUTCOME_OK, None, existing is not None
    invariant(new is not None, "put and copy records carry an entry")
    if header.kind == KIND_COPY:
        if existing is not None and existing.location == header.source:
            return OUTCOME_OK, new, True
        return OUTCOME_STALE, None, False
    if existing is None:
        return OUTCOME_OK, new, True
    same = (existing.length, existing.block_size, existing.checksums) == (new.length, new.block_size, new.checksums)
    if not same:
        return OUTCOME_EXISTS, None, False
    return OUTCOME_OK, new, True        # the same bytes again: the newer copy serves (repairs rot)

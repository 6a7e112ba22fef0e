"""The placement record of an erasure-coded or copied blob (common/blob_placement.proto).

Written by the shard BlobStore, kept opaque by handlers, read by the index (to keep
its `R` keyspace: which disks hold a data id, and which placements are below full
redundancy), by repair and by `cairn status`. Pure and deterministic: apply calls
`index_facts`, so it must give every replica the same answer for the same bytes.

Wire form: PREFIX, then the BlobPlacement message. Placements of other BlobStores
(the file store's b"file:v1", the in-memory model's) lack the prefix and have no
disks.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from common import blob_placement_pb2 as pb

PREFIX = b"\xcaP"
RS = "rs"
COPIES = "copies"

BlobPlacement = pb.BlobPlacement


def encode_placement(placement: pb.BlobPlacement) -> bytes:
    return PREFIX + placement.SerializeToString(deterministic=True)


def decode_placement(raw: bytes) -> pb.BlobPlacement | None:
    """The placement, or None for bytes that are not a shard placement."""
    if not raw.startswith(PREFIX):
        return None
    placement = pb.BlobPlacement()
    try:
        placement.ParseFromString(raw[len(PREFIX):])
    except DecodeError:
        return None
    return placement


def needed(placement: pb.BlobPlacement) -> int:
    """Shards that rebuild the blob: k for RS, one for copies."""
    return placement.k if placement.scheme == RS else 1


def full_durability(placement: pb.BlobPlacement) -> bool:
    """Every slot written, and any `redundancy` domains may be lost."""
    redundancy = len(placement.disks) - needed(placement)
    return not placement.missing and placement.survives_domain_losses >= redundancy


def disks_of(raw: bytes) -> set[str]:
    placement = decode_placement(raw)
    return set(placement.disks) if placement is not None else set()


def index_facts(raw: bytes) -> tuple[tuple[str, ...], bool]:
    """For the index's R keyspace: the disks the placement names (missing slots
    included — repair writes them there or moves them), and whether it is below
    full redundancy."""
    placement = decode_placement(raw)
    if placement is None:
        return (), False
    return tuple(placement.disks), not full_durability(placement)


# ---------------------------------------------------------------------- layout
#
# Which bytes each shard holds (DESIGN §7), for the writer, the reader and repair.
# RS k+m with chunk size c:
# - Stripe t holds blob bytes [t·k·c, (t+1)·k·c). Its data chunk i is stripe bytes
#   [i·c, (i+1)·c), short or empty in a partial last stripe; its parity chunks are as
#   long as its chunk 0 (the zero padding of a partial stripe encodes to zero parity
#   past that, so it is never stored).
# - Segments: a shardstore shard is at most SHARD_MAX_BYTES and its length is declared
#   when it is opened, so stripes are grouped into segments of `segment_stripes` (the
#   last may hold fewer). Shard index s·slots + i holds chunk i of every stripe of
#   segment s, in order, on `disks[i]` (every segment uses the same slots' disks).
# Copies: one segment, shard index j ∈ [0, m] is a whole copy on `disks[j]`.


def slots(placement: pb.BlobPlacement) -> int:
    """Shards per segment: k+m for RS, m+1 copies."""
    return placement.k + placement.m if placement.scheme == RS else placement.m + 1


class Layout:
    """The byte arithmetic of one placement (see above). Pure; immutable by convention."""

    __slots__ = ("k", "m", "slots", "chunk_bytes", "length", "segment_stripes", "stripe_bytes",
                 "stripe_count", "segment_count", "copies")

    def __init__(self, placement: pb.BlobPlacement) -> None:
        self.copies = placement.scheme == COPIES
        self.k, self.m = placement.k, placement.m
        self.slots = slots(placement)
        self.length = placement.length
        self.chunk_bytes = placement.chunk_bytes
        self.segment_stripes = max(1, placement.segment_stripes)
        if self.copies:
            self.stripe_bytes = self.length
            self.stripe_count = self.segment_count = 1
        else:
            self.stripe_bytes = self.k * self.chunk_bytes
            self.stripe_count = -(-self.length // self.stripe_bytes) if self.length else 0
            self.segment_count = -(-self.stripe_count // self.segment_stripes)

    def stripe_length(self, stripe: int) -> int:
        """Blob bytes in stripe `stripe`."""
        return max(0, min(self.stripe_bytes, self.length - stripe * self.stripe_bytes))

    def chunk_length(self, stripe: int, slot: int) -> int:
        """Stored bytes of chunk `slot` (0..k+m-1) of stripe `stripe`."""
        stripe_length = self.stripe_length(stripe)
        if slot >= self.k:
            return min(self.chunk_bytes, stripe_length)
        return max(0, min(self.chunk_bytes, stripe_length - slot * self.chunk_bytes))

    def shard_index(self, stripe: int, slot: int) -> int:
        """The shard index holding chunk `slot` of stripe `stripe`."""
        return (stripe // self.segment_stripes) * self.slots + slot

    def chunk_offset(self, stripe: int) -> int:
        """Where stripe `stripe`'s chunks start within their shards (earlier stripes of
        a segment are full)."""
        return (stripe % self.segment_stripes) * self.chunk_bytes

    def segment_stripes_of(self, segment: int) -> range:
        first = segment * self.segment_stripes
        return range(first, min(first + self.segment_stripes, self.stripe_count))

    def shard_length(self, shard_index: int) -> int:
        if self.copies:
            return self.length
        segment, slot = divmod(shard_index, self.slots)
        return sum(self.chunk_length(stripe, slot) for stripe in self.segment_stripes_of(segment))

    def shard_indexes(self, slot: int) -> range:
        """Every shard index of slot `slot` (one per segment)."""
        return range(slot, self.segment_count * self.slots, self.slots)


def segment_shard_lengths(k: int, m: int, chunk_bytes: int, segment_bytes: int) -> list[int]:
    """The k+m shard lengths of a segment of `segment_bytes` blob bytes (every stripe
    full but the last)."""
    full, rest = divmod(segment_bytes, k * chunk_bytes)
    lengths = [full * chunk_bytes] * (k + m)
    if rest:
        for slot in range(k + m):
            lengths[slot] += min(chunk_bytes, rest) if slot >= k else max(0, min(chunk_bytes, rest - slot * chunk_bytes))
    return lengths

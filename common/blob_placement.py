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

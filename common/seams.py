"""The two storage seams of DESIGN §11: `MetadataStore` and `BlobStore`.

The S3 handlers (frontend/s3/handlers/) are written once over these protocols.
`spec/metadata_model.py` and `spec/blob_model.py` implement them in memory; the
cluster (journal + index + witness + cache, erasure coding over shardstores)
implements them later with no handler change.

Contract, for both implementations:
1. Every method is async; every value crossing the seam is immutable.
2. `commit()` is called once per request with the request id computed once by
   `common.ids.request_id`. Its checks run in apply order — dedup, deadline,
   bucket (closed / other incarnation → NoSuchBucket), condition
   (PreconditionFailed), upload/parts (NoSuchUpload, InvalidPart), then the
   mutation — with no await between check and write, so a conditional commit is
   atomic: of two concurrent `If-None-Match: *` creates, exactly one wins.
3. The store assigns seq, a time strictly increasing in seq (µs since the epoch),
   and ids from `(partition, seq)` (`common.ids.encode_seq_id`). Handlers and tests
   never predict them.
4. A request id seen before returns the original outcome (or raises the original
   refusal, when that refusal was a condition or mutation outcome) without
   applying twice.
5. Displaced bytes (an overwritten or deleted object's blobs, replaced or unlisted
   parts, an aborted upload's parts) are deleted by the store after
   REAP_DELAY through the injected `BlobStore.delete`; handlers delete only bytes
   that were never committed.
6. Reads are linearizable: a read that starts after a commit returned sees it.
7. Listing is in raw UTF-8 byte order of keys. With a delimiter, keys sharing the
   prefix up to the first delimiter after `prefix` roll up into one common prefix,
   which counts toward `max_keys`. Listing resumes strictly after `start_after`;
   when `start_after` is itself such a common prefix, every key under it is skipped
   (so a page that ended on a common prefix resumes after all of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Protocol, Union

Pairs = tuple[tuple[str, str], ...]
"""An ordered, immutable list of (name, value) pairs (headers, metadata, checksums)."""

AsOf = tuple[int, int, int]
"""`(partition, partition_generation, seq)`: the state a read was served from."""

CHECKSUM_ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")
"""x-amz-checksum-* algorithms, lower case; values are base64 of the big-endian digest."""


# ---------------------------------------------------------------- bodies

@dataclass(frozen=True)
class BlobRef:
    """Bytes written through a BlobStore. `placement` is opaque to handlers."""

    data_id: bytes
    size: int
    md5_hex: str
    checksums: Pairs = ()
    placement: bytes = b""


@dataclass(frozen=True)
class Inline:
    """A body of at most INLINE_MAX bytes kept in the record itself."""

    data: bytes


@dataclass(frozen=True)
class PartBody:
    """One part of a completed multipart object, at byte `offset` of the object."""

    part_number: int
    size: int
    offset: int
    etag: str
    checksums: Pairs
    blob: BlobRef


@dataclass(frozen=True)
class Multipart:
    upload_id: str
    parts: tuple[PartBody, ...]


Body = Union[Inline, BlobRef, Multipart]


# ---------------------------------------------------------------- records

@dataclass(frozen=True)
class ObjectDraft:
    """What a handler hands the store for a new version; the store adds ids and time.

    `etag` is unquoted ("<hex md5>" or "<hex md5 of part md5s>-N").
    `content_headers` are lower-case standard headers (content-type, content-encoding,
    content-disposition, content-language, cache-control, expires).
    `user_metadata` names are lower case without the `x-amz-meta-` prefix.
    `checksums` are the stored x-amz-checksum-* values; `checksum_type` is
    "FULL_OBJECT" or "COMPOSITE" (multipart), or "" when there are none.
    """

    size: int
    etag: str
    body: Body
    content_headers: Pairs = ()
    user_metadata: Pairs = ()
    checksums: Pairs = ()
    checksum_type: str = ""
    storage_class: str = "STANDARD"


@dataclass(frozen=True)
class ObjectRecord:
    """The current version of a key."""

    key: str
    version_id: str
    seq: int
    last_modified_us: int
    size: int
    etag: str
    body: Body
    content_headers: Pairs = ()
    user_metadata: Pairs = ()
    checksums: Pairs = ()
    checksum_type: str = ""
    storage_class: str = "STANDARD"


@dataclass(frozen=True)
class ObjectSummary:
    """What LIST returns for one key."""

    key: str
    size: int
    etag: str
    last_modified_us: int
    storage_class: str = "STANDARD"
    checksum_algorithms: tuple[str, ...] = ()
    checksum_type: str = ""


@dataclass(frozen=True)
class BucketRecord:
    name: str
    owner: str
    incarnation: str
    region: str
    created_us: int


@dataclass(frozen=True)
class UploadDraft:
    owner: str
    content_headers: Pairs = ()
    user_metadata: Pairs = ()
    checksum_algorithm: str = ""
    checksum_type: str = ""
    storage_class: str = "STANDARD"


@dataclass(frozen=True)
class UploadRecord:
    key: str
    upload_id: str
    initiated_us: int
    owner: str
    content_headers: Pairs = ()
    user_metadata: Pairs = ()
    checksum_algorithm: str = ""
    checksum_type: str = ""
    storage_class: str = "STANDARD"


@dataclass(frozen=True)
class PartDraft:
    size: int
    etag: str
    blob: BlobRef
    checksums: Pairs = ()


@dataclass(frozen=True)
class PartRecord:
    part_number: int
    size: int
    etag: str
    blob: BlobRef
    last_modified_us: int
    checksums: Pairs = ()


# ---------------------------------------------------------------- mutations

@dataclass(frozen=True)
class CreateBucket:
    bucket: str
    owner: str
    region: str


@dataclass(frozen=True)
class DeleteBucket:
    bucket: str
    bucket_incarnation: str


@dataclass(frozen=True)
class PutObject:
    bucket: str
    bucket_incarnation: str
    key: str
    draft: ObjectDraft


@dataclass(frozen=True)
class DeleteObject:
    bucket: str
    bucket_incarnation: str
    key: str


@dataclass(frozen=True)
class CreateUpload:
    bucket: str
    bucket_incarnation: str
    key: str
    upload: UploadDraft


@dataclass(frozen=True)
class PutPart:
    bucket: str
    bucket_incarnation: str
    key: str
    upload_id: str
    part_number: int
    part: PartDraft


@dataclass(frozen=True)
class CompletedPart:
    """One entry of a Complete: apply checks it against the upload's part record."""

    part_number: int
    data_id: bytes
    etag: str


@dataclass(frozen=True)
class CompleteUpload:
    bucket: str
    bucket_incarnation: str
    key: str
    upload_id: str
    parts: tuple[CompletedPart, ...]
    draft: ObjectDraft


@dataclass(frozen=True)
class AbortUpload:
    bucket: str
    bucket_incarnation: str
    key: str
    upload_id: str


@dataclass(frozen=True)
class Reaped:
    """Maintenance (DESIGN §14), committed by the reaper, never by a handler: the
    reap queue up to `up_to_seq` has been deleted from the shardstores."""

    up_to_seq: int


@dataclass(frozen=True)
class ReplacePlacement:
    """Maintenance (DESIGN §14), committed by repair: a compare-and-set of a data
    id's placement, applied only while it is still exactly `expected`; refused as
    WriteExpired when repair began writing (`began_us`) more than MAX_WRITE_AGE ago."""

    data_id: bytes
    expected: bytes
    placement: bytes
    began_us: int


Mutation = Union[
    CreateBucket, DeleteBucket, PutObject, DeleteObject,
    CreateUpload, PutPart, CompleteUpload, AbortUpload,
    Reaped, ReplacePlacement,
]
MAINTENANCE = (Reaped, ReplacePlacement)


@dataclass(frozen=True)
class IfNoneMatchStar:
    """Apply only if the key has no current version."""


@dataclass(frozen=True)
class IfMatch:
    """Apply only if the current version's ETag (unquoted) equals `etag`."""

    etag: str


Condition = Union[None, IfNoneMatchStar, IfMatch]


@dataclass(frozen=True)
class Outcome:
    seq: int
    time_us: int
    version_id: str | None = None
    upload_id: str | None = None
    bucket_incarnation: str | None = None


# ---------------------------------------------------------------- reads

@dataclass(frozen=True)
class ReadResult:
    record: ObjectRecord | None
    read_seq: AsOf
    bucket: BucketRecord


@dataclass(frozen=True)
class ListPage:
    summaries: tuple[ObjectSummary, ...]
    common_prefixes: tuple[str, ...]
    truncated: bool
    next_start_key: str | None
    read_seq: AsOf


@dataclass(frozen=True)
class UploadsPage:
    uploads: tuple[UploadRecord, ...]
    common_prefixes: tuple[str, ...]
    truncated: bool
    next_key_marker: str | None
    next_upload_id_marker: str | None


@dataclass(frozen=True)
class PartsPage:
    upload: UploadRecord
    parts: tuple[PartRecord, ...]
    truncated: bool
    next_part_number_marker: int | None


# ---------------------------------------------------------------- protocols

class MetadataStore(Protocol):
    async def commit(
        self, mutation: Mutation, condition: Condition, request_id: bytes, not_after_us: int
    ) -> Outcome: ...

    async def get(self, bucket: str, bucket_incarnation: str, key: str, *, fresh: bool = False) -> ReadResult:
        """The current version of `key` (None if absent). NoSuchBucket when the bucket
        is absent or of another incarnation. `fresh` skips any cached answer: a read
        whose bytes were not where the placement said reads again (repair moves
        shards without a witness raise, DESIGN §4 step 5)."""

    async def get_bucket(self, bucket: str) -> BucketRecord | None: ...

    async def list_buckets(self, owner: str) -> tuple[BucketRecord, ...]:
        """The owner's buckets, by name."""

    async def list_objects(
        self, bucket: str, bucket_incarnation: str, *, prefix: str, delimiter: str,
        start_after: str, max_keys: int, min_seq: AsOf | None,
    ) -> ListPage: ...

    async def list_uploads(
        self, bucket: str, bucket_incarnation: str, *, prefix: str, delimiter: str,
        key_marker: str, upload_id_marker: str, max_uploads: int,
    ) -> UploadsPage:
        """In-progress uploads by (key, initiation order)."""

    async def list_parts(
        self, bucket: str, bucket_incarnation: str, key: str, upload_id: str, *,
        part_number_marker: int, max_parts: int,
    ) -> PartsPage:
        """NoSuchUpload when the upload is not in progress."""

    async def close(self) -> None: ...


class BlobStore(Protocol):
    async def write(
        self, data_id: bytes, stream: AsyncIterable[bytes], size: int | None,
        algorithms: tuple[str, ...],
    ) -> BlobRef:
        """Store the stream's bytes. Returns the MD5 and the requested checksums of
        exactly the bytes stored, computed in one pass. If `size` is given and the
        stream yields another number of bytes, raises ValueError and keeps nothing."""

    def read(self, ref: BlobRef, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes `[start, end)` of the blob, streamed; checked against checksums. A
        piece is `bytes` or a `bytearray` that nobody writes to again (a large piece
        arrives from the network as one; copying it to bytes would cost CPU per MiB)."""

    async def delete(self, ref: BlobRef) -> None:
        """Idempotent."""

    async def close(self) -> None: ...

"""What several handlers share: authorisation, ids, headers, storing a body.

Authorisation (step 1 of DESIGN §3): every bucket has one owner; a request of
another user on it is AccessDenied. Bucket records are read from the metadata
store, which is linearizable; a bucket's absence is never cached.
"""

from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable

from common.checksums import Digests
from common.errors import BlobCorrupt, BlobNotFound, ServiceUnavailable
from common.ids import new_data_id, request_id
from common.seams import BlobRef, BucketRecord, Inline, Multipart, ObjectRecord, Pairs
from frontend.dataplane.body import Integrity, Payload
from frontend.s3 import errors
from frontend.s3.request import Request, Services
from frontend.s3.xml import http_time

CONTENT_HEADERS = (
    "content-type", "content-encoding", "content-disposition",
    "content-language", "cache-control", "expires",
)
DEFAULT_CONTENT_TYPE = "binary/octet-stream"


BUCKET_CACHE_MAX = 10_000


async def owned_bucket(services: Services, request: Request, name: str | None = None, *,
                       fresh: bool = False) -> BucketRecord:
    """The bucket, authorised for the request's user. Object operations may use the
    worker's cached record (`fresh=False`): its incarnation goes into every object read
    and commit, so a bucket deleted or re-created since is refused as NoSuchBucket,
    and the app (no body read yet) or `refresh_bucket` (bytes already stored) re-reads
    the authority. Bucket operations read the authority (`fresh=True`)."""
    bucket = name if name is not None else request.bucket
    record = None if fresh else services.buckets.get(bucket)
    if record is not None and record.owner == request.user.name:
        request.cached_buckets.add(bucket)
        return record
    record = await services.meta.get_bucket(bucket)
    if record is None:
        services.buckets.pop(bucket, None)
        raise errors.NoSuchBucket(BucketName=bucket)
    if len(services.buckets) >= BUCKET_CACHE_MAX:
        services.buckets.clear()
    services.buckets[bucket] = record
    if record.owner != request.user.name:
        raise errors.AccessDenied()
    return record


async def refresh_bucket(services: Services, request: Request, name: str) -> BucketRecord:
    """After a store said NoSuchBucket for a cached record: the authority's record."""
    services.buckets.pop(name, None)
    request.cached_buckets.discard(name)
    return await owned_bucket(services, request, name, fresh=True)


def check_key(services: Services, key: str) -> None:
    if len(key.encode("utf-8")) > services.limits.MAX_KEY_BYTES:
        raise errors.KeyTooLongError(MaxSizeAllowed=str(services.limits.MAX_KEY_BYTES))


# Write headers asking for what Cairn does not do: refused, never stored as if granted.
# Matched as name prefixes, except x-amz-tagging, matched whole: x-amz-tagging-directive
# COPY (copy the source's tags: none) asks for nothing.
_UNSUPPORTED_WRITE_HEADERS = (
    ("x-amz-server-side-encryption", "Server-side encryption is not supported: Cairn stores the bytes as sent. "
     "Encrypt on the client, or leave out x-amz-server-side-encryption* (Terraform's S3 backend: encrypt = false)."),
    ("x-amz-copy-source-server-side-encryption", "Server-side encryption is not supported: no object here is encrypted."),
    ("x-amz-tagging", "Object tags are not supported."),
    ("x-amz-object-lock-", "Object lock is not supported: nothing would keep this object from being overwritten or deleted."),
    ("x-amz-website-redirect-location", "Website redirects are not supported."),
    ("x-amz-grant-", "Grants to other users are not supported: a bucket and its objects belong to its owner."),
)
OWNER_ONLY_ACLS = ("private", "bucket-owner-full-control")


def refuse_unsupported_writes(request: Request) -> None:
    """NotImplemented, before anything is stored, for a write that asks for what Cairn
    would not do: encryption at rest, tags, object lock, a website redirect, or an ACL
    other than the owner's. Storing it anyway would let the client believe its data is
    encrypted, locked or shared."""
    for name, value in request.headers.items():
        if name.startswith("x-amz-"):
            if name == "x-amz-tagging-directive":
                if value.strip().upper() == "REPLACE" and (request.headers.get("x-amz-tagging") or "").strip():
                    raise errors.NotImplemented_("Object tags are not supported.")
                continue
            for prefix, message in _UNSUPPORTED_WRITE_HEADERS:
                if name.startswith(prefix):
                    raise errors.NotImplemented_(message)
    acl = request.headers.get("x-amz-acl")
    if acl is not None and acl not in OWNER_ONLY_ACLS:
        raise errors.NotImplemented_("Only the private canned ACL is supported: a bucket and its objects belong to its owner.")


def not_after_us(services: Services) -> int:
    return services.clock_us() + services.limits.COMMIT_DEADLINE_MS * 1000


def commit_request_id(request: Request, *, upload_id: str = "", part_number: int = 0, body_md5: str = "") -> bytes:
    return request_id(
        request.headers.get("amz-sdk-invocation-id"),
        access_key=request.user.access_key, method=request.method,
        bucket=request.bucket, key=request.key, upload_id=upload_id,
        part_number=part_number, body_md5=body_md5,
    )


def is_sdk_retry(request: Request) -> bool:
    """botocore says `amz-sdk-request: attempt=N; max=M`; N > 1 is a retry."""
    value = request.headers.get("amz-sdk-request", "") or ""
    for item in value.split(";"):
        name, _, number = item.strip().partition("=")
        if name == "attempt" and number.isdigit():
            return int(number) > 1
    return False


def content_headers(request: Request) -> Pairs:
    pairs = []
    for name in CONTENT_HEADERS:
        value = request.headers.get(name)
        if value is None:
            continue
        if name == "content-encoding":
            codings = [coding.strip() for coding in value.split(",") if coding.strip().lower() != "aws-chunked"]
            if not codings:
                continue
            value = ", ".join(codings)
        pairs.append((name, value))
    return tuple(pairs)


def user_metadata(services: Services, request: Request) -> Pairs:
    pairs = []
    total = 0
    for name, value in request.headers.items():
        if name.startswith("x-amz-meta-"):
            short = name[len("x-amz-meta-"):]
            pairs.append((short, value))
            total += len(short.encode()) + len(value.encode("latin-1", "replace"))
    if total > services.limits.MAX_USER_METADATA_BYTES:
        raise errors.MetadataTooLarge(MaxSizeAllowed=str(services.limits.MAX_USER_METADATA_BYTES))
    return tuple(pairs)


def etag_header(etag: str) -> str:
    return f'"{etag}"'


def strip_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


def object_headers(record: ObjectRecord) -> list[tuple[str, str]]:
    headers = [
        ("etag", etag_header(record.etag)),
        ("last-modified", http_time(record.last_modified_us)),
        ("accept-ranges", "bytes"),
    ]
    stored = dict(record.content_headers)
    headers.append(("content-type", stored.pop("content-type", DEFAULT_CONTENT_TYPE)))
    headers.extend(stored.items())
    headers.extend((f"x-amz-meta-{name}", value) for name, value in record.user_metadata)
    if record.storage_class != "STANDARD":
        headers.append(("x-amz-storage-class", record.storage_class))
    if isinstance(record.body, Multipart):
        headers.append(("x-amz-mp-parts-count", str(len(record.body.parts))))
    return headers


def checksum_headers(checksums: Pairs, checksum_type: str) -> list[tuple[str, str]]:
    headers = [(f"x-amz-checksum-{algorithm}", value) for algorithm, value in checksums]
    if checksums and checksum_type:
        headers.append(("x-amz-checksum-type", checksum_type))
    return headers


async def _prefixed(prefix: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if prefix:
        yield prefix
    async for chunk in rest:
        yield chunk


async def store_payload(
    services: Services, payload: Payload, integrity: Integrity, *, allow_inline: bool
) -> tuple[Inline | BlobRef, int, str, Pairs]:
    """Store a verified payload: inline when small (and allowed), else as a blob.

    Returns (body, size, md5 hex, checksums to store). On any failure the bytes
    written are deleted: they were never committed (DESIGN §3 step 2).
    """
    algorithms = integrity.algorithms()
    limit = services.limits.INLINE_MAX
    head = bytearray()
    stream = payload.stream
    if allow_inline and (payload.size is None or payload.size <= limit):
        ended = True
        async for chunk in stream:
            head += chunk
            if len(head) > limit:
                ended = False
                break
        if ended:
            digests = Digests(algorithms)
            digests.update(head)
            stored = integrity.verify(digests.md5_hex(), digests.checksums(), payload.trailers())
            return Inline(bytes(head)), len(head), digests.md5_hex(), stored
    ref = await services.blobs.write(new_data_id(), _prefixed(bytes(head), stream), payload.size, algorithms)
    try:
        stored = integrity.verify(ref.md5_hex, ref.checksums, payload.trailers())
    except BaseException:
        await services.blobs.delete(ref)
        raise
    return ref, ref.size, ref.md5_hex, stored


_MOVED = (BlobNotFound, BlobCorrupt, ServiceUnavailable)


async def read_body(services: Services, record_body, size: int, start: int, end: int,
                    refresh: Callable[[], Awaitable[object]] | None = None) -> AsyncIterator[bytes]:
    """Stream bytes `[start, end)` of an object's body.

    A blob read that fails (shards not found, corrupt beyond decoding, too few disks)
    may have used a stale placement: repair moves shards and deletes the old ones
    without raising the witness, so a cached record can name them (DESIGN §4 step 5).
    With `refresh` (the record read again, uncached), such a failure re-reads once and,
    if the placement changed, goes on from the byte reached; otherwise it propagates."""
    if isinstance(record_body, Inline):
        if end > start:
            yield record_body.data[start:end]
        return
    blobs = ([(0, record_body)] if isinstance(record_body, BlobRef)
             else [(part.offset, part.blob) for part in record_body.parts])
    position = start
    for index, (blob_start, blob) in enumerate(blobs):
        blob_end = blob_start + blob.size
        if blob_end <= position or blob_start >= end or blob.size == 0:
            continue
        while True:
            try:
                async for chunk in services.blobs.read(blob, position - blob_start, min(end, blob_end) - blob_start):
                    position += len(chunk)
                    yield chunk
                break
            except _MOVED:
                moved = await _moved_blob(refresh, index, blob) if refresh is not None else None
                refresh = None                      # one re-read per request
                if moved is None:
                    raise
                blob = moved


async def _moved_blob(refresh, index: int, blob: BlobRef) -> BlobRef | None:
    """The same blob with another placement in the re-read record, else None."""
    record = await refresh()
    body = getattr(record, "body", None)
    if isinstance(body, BlobRef):
        candidates = [body]
    elif isinstance(body, Multipart):
        candidates = [part.blob for part in body.parts]
    else:
        return None
    if index >= len(candidates):
        return None
    candidate = candidates[index]
    if candidate.data_id != blob.data_id or candidate.placement == blob.placement:
        return None
    return candidate


async def read_all(services: Services, record_body, size: int, start: int, end: int) -> bytes:
    pieces = [chunk async for chunk in read_body(services, record_body, size, start, end)]
    return b"".join(pieces)


async def read_small_body(services: Services, request: Request) -> tuple[bytes, str]:
    """A request document (XML), decoded and bounded; also its MD5 hex.

    Checks Content-MD5 / x-amz-checksum-* claims (BadDigest); the bound is
    MAX_REQUEST_XML_BYTES."""
    from frontend.dataplane.body import open_payload  # here to keep imports one-way

    payload = open_payload(request, max_size=services.limits.MAX_REQUEST_XML_BYTES,
                           max_chunk_bytes=services.limits.MAX_AWS_CHUNK_BYTES)
    integrity = Integrity.from_request(request)
    data = bytearray()
    try:
        async for chunk in payload.stream:
            data += chunk
    except errors.EntityTooLarge:
        raise errors.MalformedXML("The XML you provided was larger than the maximum allowed size.") from None
    digests = Digests(integrity.algorithms())
    digests.update(data)
    integrity.verify(digests.md5_hex(), digests.checksums(), payload.trailers())
    return bytes(data), digests.md5_hex()

"""Object operations: PutObject, GetObject, HeadObject, DeleteObject, CopyObject.

PutObject (DESIGN §3): authorise against the bucket, pre-check a condition by
reading the key (412 before `100 Continue`, except on an SDK retry, which may
find its own earlier attempt), store the verified bytes (inline up to
INLINE_MAX), then commit once with the condition; the store decides atomically.
Bytes of a refused commit are deleted here — the only bytes a frontend deletes.

GetObject/HeadObject: conditions as RFC 9110 and S3 order them (If-Match, then
If-Unmodified-Since only without If-Match → 412; If-None-Match, then
If-Modified-Since only without If-None-Match → 304), dates compared at whole
seconds; Range → 206 or 416; response-content-* overrides; checksums returned
with `x-amz-checksum-mode: ENABLED` for whole-object reads.
"""

from __future__ import annotations

import dataclasses
import email.utils
from urllib.parse import unquote

from common.errors import PreconditionFailed as StorePreconditionFailed
from common.errors import NoSuchBucket as StoreNoSuchBucket
from common.errors import StoreError
from common.seams import (
    BlobRef, Condition, DeleteObject, IfMatch, IfNoneMatchStar, Inline, ObjectDraft,
    ObjectRecord, PutObject,
)
from frontend.dataplane.body import Integrity, open_payload
from frontend.dataplane.ranges import parse_range
from frontend.s3 import errors
from frontend.s3.handlers.copying import copy_bytes
from frontend.s3.handlers.support import (
    checksum_headers, check_key, commit_request_id, content_headers, etag_header,
    is_sdk_retry, not_after_us, object_headers, owned_bucket, read_body, refresh_bucket, refuse_unsupported_writes,
    store_payload, strip_etag, user_metadata,
)
from frontend.s3.request import Request, Response, Services
from frontend.s3.xml import document, element, iso_time

_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}
InvalidPartNumber = type("InvalidPartNumber", (errors.S3Error,), {
    "status": 416, "message": "The requested partnumber is not satisfiable"})
_STORAGE_CLASSES = {"STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA",
                    "INTELLIGENT_TIERING", "GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "OUTPOSTS", "EXPRESS_ONEZONE"}


def write_condition(request: Request) -> Condition:
    """`If-None-Match: *` or `If-Match: <etag>` on a write (PutObject, Complete)."""
    none_match = request.headers.get("if-none-match")
    match = request.headers.get("if-match")
    if none_match is not None and match is not None:
        raise errors.NotImplemented_("If-Match and If-None-Match together are not supported on writes.")
    if none_match is not None:
        if none_match.strip() != "*":
            raise errors.NotImplemented_("If-None-Match on a write supports only '*'.")
        return IfNoneMatchStar()
    if match is not None:
        if match.strip() == "*":
            raise errors.NotImplemented_("If-Match on a write needs an ETag.")
        return IfMatch(strip_etag(match))
    return None


def condition_holds(condition: Condition, record: ObjectRecord | None) -> bool:
    if isinstance(condition, IfNoneMatchStar):
        return record is None
    if isinstance(condition, IfMatch):
        return record is not None and record.etag == condition.etag
    return True


def refused_condition(condition: Condition, record: ObjectRecord | None, key: str) -> errors.S3Error:
    """S3's answer to a write condition that does not hold: If-Match on an absent key is
    NoSuchKey (404), as AWS answers; every other refusal is PreconditionFailed (412)."""
    if isinstance(condition, IfMatch) and record is None:
        return errors.NoSuchKey(Key=key)
    return errors.PreconditionFailed(Condition="If-None-Match" if isinstance(condition, IfNoneMatchStar) else "If-Match")


def storage_class(request: Request) -> str:
    value = request.headers.get("x-amz-storage-class", "STANDARD") or "STANDARD"
    if value not in _STORAGE_CLASSES:
        raise errors.InvalidStorageClass(StorageClassRequested=value)
    return value


async def put_object(services: Services, request: Request) -> Response:
    check_key(services, request.key)
    refuse_unsupported_writes(request)
    bucket = await owned_bucket(services, request)
    condition = write_condition(request)
    headers = content_headers(request)
    metadata = user_metadata(services, request)
    klass = storage_class(request)
    integrity = Integrity.from_request(request)
    if request.headers.get("content-length") is None and request.headers.get("x-amz-decoded-content-length") is None \
            and "transfer-encoding" not in request.headers:
        raise errors.MissingContentLength()
    if condition is not None and not is_sdk_retry(request):
        current = await services.meta.get(bucket.name, bucket.incarnation, request.key)
        if not condition_holds(condition, current.record):
            raise refused_condition(condition, current.record, request.key)
    payload = open_payload(request, max_size=services.limits.MAX_PUT_SIZE,
                           max_chunk_bytes=services.limits.MAX_AWS_CHUNK_BYTES)
    body, size, md5_hex, checksums = await store_payload(services, payload, integrity, allow_inline=True)
    draft = ObjectDraft(
        size=size, etag=md5_hex, body=body, content_headers=headers, user_metadata=metadata,
        checksums=checksums, checksum_type="FULL_OBJECT" if checksums else "", storage_class=klass,
    )
    mutation = PutObject(bucket=bucket.name, bucket_incarnation=bucket.incarnation, key=request.key, draft=draft)
    await commit_or_discard(services, request, mutation, condition, body, body_md5=md5_hex)
    response_headers = [("etag", etag_header(md5_hex))]
    response_headers += checksum_headers(checksums, draft.checksum_type)
    return Response(headers=response_headers)


async def commit_or_discard(services: Services, request: Request, mutation, condition: Condition, body, *, body_md5: str = "",
                            upload_id: str = "", part_number: int = 0):
    """Commit; on a refusal, delete the bytes this request wrote (never committed).

    A NoSuchBucket for a bucket authorised from the worker's cache re-reads the
    authority once: the bucket re-created by the same owner gets the commit with its
    new incarnation (same request id: a NoSuchBucket refusal is not recorded)."""
    rid = commit_request_id(request, upload_id=upload_id, part_number=part_number, body_md5=body_md5)
    try:
        try:
            return await services.meta.commit(mutation, condition, rid, not_after_us(services))
        except StoreNoSuchBucket:
            if mutation.bucket not in request.cached_buckets:
                raise
            fresh = await refresh_bucket(services, request, mutation.bucket)
            mutation = dataclasses.replace(mutation, bucket_incarnation=fresh.incarnation)
            return await services.meta.commit(mutation, condition, rid, not_after_us(services))
    except (StoreError, errors.S3Error) as error:
        if isinstance(body, BlobRef) and error.code != "OutcomeUnknown":
            await services.blobs.delete(body)
        if isinstance(error, StorePreconditionFailed):
            record = None
            if isinstance(condition, IfMatch):  # absent (404) or another ETag (412)? The store's refusal does not say.
                record = (await services.meta.get(mutation.bucket, mutation.bucket_incarnation, mutation.key)).record
            raise refused_condition(condition, record, mutation.key) from None
        raise


def _parse_http_date(value: str | None) -> int | None:
    """Seconds since the epoch, or None when absent or unparseable (then ignored)."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return int(parsed.timestamp())


def _etag_list_matches(header: str, etag: str) -> bool:
    for item in header.split(","):
        item = item.strip()
        if item == "*" or strip_etag(item) == etag:
            return True
    return False


def check_read_conditions(headers, record: ObjectRecord, *, prefix: str = "if-") -> None:
    """Evaluate If-Match / If-Unmodified-Since (412) and If-None-Match /
    If-Modified-Since (304 for reads); `prefix` "x-amz-copy-source-if-" for copies,
    where every failed condition is 412."""
    modified_s = record.last_modified_us // 1_000_000
    match = headers.get(prefix + "match")
    none_match = headers.get(prefix + "none-match")
    unmodified_since = _parse_http_date(headers.get(prefix + "unmodified-since"))
    modified_since = _parse_http_date(headers.get(prefix + "modified-since"))
    copy = prefix != "if-"
    if match is not None:
        if not _etag_list_matches(match, record.etag):
            raise errors.PreconditionFailed(Condition=prefix.rstrip("-").title() + "-Match" if not copy else "x-amz-copy-source-If-Match")
    elif unmodified_since is not None and modified_s > unmodified_since:
        raise errors.PreconditionFailed(Condition="If-Unmodified-Since")
    if none_match is not None:
        if _etag_list_matches(none_match, record.etag):
            if copy:
                raise errors.PreconditionFailed(Condition="x-amz-copy-source-If-None-Match")
            raise _not_modified(record)
    elif modified_since is not None and modified_s <= modified_since:
        if copy:
            raise errors.PreconditionFailed(Condition="x-amz-copy-source-If-Modified-Since")
        raise _not_modified(record)


def _not_modified(record: ObjectRecord) -> errors.S3Error:
    error = errors.NotModified()
    error.headers["etag"] = etag_header(record.etag)
    error.headers["last-modified"] = object_headers(record)[1][1]
    return error


async def _read(services: Services, request: Request, *, head: bool) -> Response:
    check_key(services, request.key)
    bucket = await owned_bucket(services, request)
    result = await services.meta.get(bucket.name, bucket.incarnation, request.key)
    record = result.record
    if record is None:
        raise errors.NoSuchKey(Key=request.key)
    if "partNumber" in request.query:
        if request.headers.get("range"):
            raise errors.InvalidRequest("Cannot specify both Range header and partNumber query parameter.")
        return await _read_part(services, request, record, head=head,
                                 refresh=_refresher(services, bucket, request.key, record))
    check_read_conditions(request.headers, record)
    headers = object_headers(record)
    byte_range = parse_range(request.headers.get("range"), record.size)
    status = 200
    start, end = 0, record.size
    if byte_range is not None:
        start, end = byte_range
        status = 206
        headers.append(("content-range", f"bytes {start}-{end - 1}/{record.size}"))
    elif (request.headers.get("x-amz-checksum-mode", "") or "").upper() == "ENABLED":
        headers += checksum_headers(record.checksums, record.checksum_type)
    _apply_overrides(request, headers)
    body = b"" if head else read_body(services, record.body, record.size, start, end,
                                      refresh=_refresher(services, bucket, request.key, record))
    if not head and isinstance(record.body, Inline):
        body = record.body.data[start:end]
    return Response(status=status, headers=headers, body=body, content_length=end - start)


def _refresher(services: Services, bucket, key: str, record: ObjectRecord):
    """The record read again, uncached, if it is still this version (else None)."""
    async def refresh():
        result = await services.meta.get(bucket.name, bucket.incarnation, key, fresh=True)
        fresh = result.record
        return fresh if fresh is not None and fresh.version_id == record.version_id else None
    return refresh


async def _read_part(services: Services, request: Request, record: ObjectRecord, *, head: bool,
                     refresh=None) -> Response:
    """GetObject/HeadObject with `partNumber`: one part of a multipart object;
    part 1 of a single-part object is the whole object."""
    text = request.query["partNumber"]
    if not text.isdigit() or not 1 <= int(text) <= services.limits.MAX_PART_NUMBER:
        raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive", ArgumentName="partNumber", ArgumentValue=text)
    number = int(text)
    check_read_conditions(request.headers, record)
    headers = object_headers(record)
    parts = getattr(record.body, "parts", None)
    if parts is None:
        if number != 1:
            raise InvalidPartNumber()
        start, end = 0, record.size
    else:
        if number > len(parts):
            raise InvalidPartNumber()
        part = parts[number - 1]
        start, end = part.offset, part.offset + part.size
    if parts is not None:
        headers.append(("content-range", f"bytes {start}-{end - 1}/{record.size}" if end > start else f"bytes */{record.size}"))
    _apply_overrides(request, headers)
    body = b"" if head else read_body(services, record.body, record.size, start, end, refresh)
    return Response(status=206 if parts is not None else 200, headers=headers, body=body, content_length=end - start)


def _apply_overrides(request: Request, headers: list[tuple[str, str]]) -> None:
    for parameter, header in _OVERRIDES.items():
        value = request.query.get(parameter)
        if value is not None:
            headers[:] = [(name, existing) for name, existing in headers if name != header]
            headers.append((header, value))


async def get_object(services: Services, request: Request) -> Response:
    return await _read(services, request, head=False)


async def head_object(services: Services, request: Request) -> Response:
    return await _read(services, request, head=True)


async def delete_object(services: Services, request: Request) -> Response:
    check_key(services, request.key)
    bucket = await owned_bucket(services, request)
    condition: Condition = None
    match = request.headers.get("if-match")
    if match is not None:
        condition = IfMatch(strip_etag(match))
    mutation = DeleteObject(bucket=bucket.name, bucket_incarnation=bucket.incarnation, key=request.key)
    await commit_or_discard(services, request, mutation, condition, None)
    return Response(status=204)


def parse_copy_source(services: Services, value: str) -> tuple[str, str]:
    """`x-amz-copy-source`: `[/]bucket/key[?versionId=...]`, URL-encoded."""
    source, _, version = value.partition("?")
    if version and not version.startswith("versionId="):
        raise errors.InvalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey", ArgumentName="x-amz-copy-source")
    try:
        source = unquote(source, errors="strict")
    except UnicodeDecodeError:
        raise errors.InvalidArgument("Copy Source is not valid UTF-8", ArgumentName="x-amz-copy-source") from None
    source = source.lstrip("/") if source.startswith("/") else source
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise errors.InvalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey", ArgumentName="x-amz-copy-source")
    if version and version != "versionId=null":
        raise errors.NotImplemented_("Copying a specific version is not supported: this bucket is not versioned.")
    check_key(services, key)
    return bucket, key


async def read_copy_source(services: Services, request: Request) -> ObjectRecord:
    bucket_name, key = parse_copy_source(services, request.headers.get("x-amz-copy-source", ""))
    bucket = await owned_bucket(services, request, bucket_name)
    result = await services.meta.get(bucket.name, bucket.incarnation, key)
    if result.record is None:
        raise errors.NoSuchKey(Key=key)
    check_read_conditions(request.headers, result.record, prefix="x-amz-copy-source-if-")
    return result.record


async def copy_object(services: Services, request: Request) -> Response:
    check_key(services, request.key)
    refuse_unsupported_writes(request)
    bucket = await owned_bucket(services, request)
    source = await read_copy_source(services, request)
    directive = (request.headers.get("x-amz-metadata-directive") or "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise errors.InvalidArgument("Unknown metadata directive.", ArgumentName="x-amz-metadata-directive", ArgumentValue=directive)
    klass = storage_class(request) if "x-amz-storage-class" in request.headers else "STANDARD"
    if directive == "REPLACE":
        headers, metadata = content_headers(request), user_metadata(services, request)
    else:
        headers, metadata = source.content_headers, source.user_metadata
    source_bucket, source_key = parse_copy_source(services, request.headers.get("x-amz-copy-source", ""))
    if (source_bucket, source_key) == (request.bucket, request.key) and directive == "COPY" \
            and "x-amz-storage-class" not in request.headers and "x-amz-checksum-algorithm" not in request.headers:
        raise errors.InvalidRequest("This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.")
    requested = request.headers.get("x-amz-checksum-algorithm")
    algorithms = tuple(algorithm for algorithm, _ in source.checksums) if not requested else (requested.lower(),)
    body, size, md5_hex, checksums = await copy_bytes(services, source, 0, source.size, algorithms)
    draft = ObjectDraft(
        size=size, etag=md5_hex, body=body, content_headers=headers, user_metadata=metadata,
        checksums=checksums, checksum_type="FULL_OBJECT" if checksums else "", storage_class=klass,
    )
    condition = write_condition(request)
    mutation = PutObject(bucket=bucket.name, bucket_incarnation=bucket.incarnation, key=request.key, draft=draft)
    outcome = await commit_or_discard(services, request, mutation, condition, body, body_md5=md5_hex)
    fields = element("ETag", etag_header(md5_hex)) + element("LastModified", iso_time(outcome.time_us))
    fields += "".join(element(f"Checksum{algorithm.upper()}", value) for algorithm, value in checksums)
    if checksums:
        fields += element("ChecksumType", "FULL_OBJECT")
    return Response(headers=[("content-type", "application/xml")], body=document("CopyObjectResult", fields))

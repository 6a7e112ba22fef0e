"""Multipart uploads: Create, UploadPart, UploadPartCopy, Complete, Abort,
ListParts (ListMultipartUploads is in listing.py).

Each UploadPart commits its own part record, so concurrent parts never conflict
(DESIGN §3). Complete reads the upload's parts, checks the client's list
(ascending: InvalidPartOrder; present with that ETag: InvalidPart; every part
but the last at least MIN_PART_SIZE: EntityTooSmall), builds the object — ETag
is the MD5 of the part MD5s plus `-N`, checksums COMPOSITE (checksum of the part
checksums, `-N`) or FULL_OBJECT (CRCs combined) — and commits it naming each
part's data id, so apply refuses (InvalidPart) if a part changed in between.
"""

from __future__ import annotations

import hashlib

from common.checksums import combine, composite
from common.seams import (
    AbortUpload, CompletedPart, CompleteUpload, CreateUpload, Multipart, ObjectDraft,
    PartBody, PartDraft, PutPart, UploadDraft,
)
from frontend.dataplane.body import Integrity, open_payload
from frontend.dataplane.ranges import parse_copy_range
from frontend.s3 import errors
from frontend.s3.handlers.bucket import owner_xml
from frontend.s3.handlers.copying import copy_bytes
from frontend.s3.handlers.objects import commit_or_discard, read_copy_source, storage_class, write_condition
from frontend.s3.handlers.support import (
    check_key, checksum_headers, content_headers, etag_header, owned_bucket, read_small_body,
    refuse_unsupported_writes, store_payload, strip_etag, user_metadata,
)
from frontend.s3.request import Request, Response, Services
from frontend.s3.xml import child_text, document, element, iso_time, parse

XML = ("content-type", "application/xml")
_FULL_OBJECT_CAPABLE = ("crc32", "crc32c", "crc64nvme")


async def create_multipart_upload(services: Services, request: Request) -> Response:
    check_key(services, request.key)
    refuse_unsupported_writes(request)
    bucket = await owned_bucket(services, request)
    algorithm = (request.headers.get("x-amz-checksum-algorithm") or "").strip().lower()
    if algorithm and algorithm not in ("crc32", "crc32c", "crc64nvme", "sha1", "sha256"):
        raise errors.InvalidRequest("Checksum algorithm provided is unsupported.")
    checksum_type = (request.headers.get("x-amz-checksum-type") or "").strip().upper()
    if checksum_type and checksum_type not in ("COMPOSITE", "FULL_OBJECT"):
        raise errors.InvalidRequest("The x-amz-checksum-type header must be COMPOSITE or FULL_OBJECT.")
    if algorithm and not checksum_type:
        checksum_type = "FULL_OBJECT" if algorithm == "crc64nvme" else "COMPOSITE"
    if checksum_type and not algorithm:
        raise errors.InvalidRequest("The x-amz-checksum-type header requires x-amz-checksum-algorithm.")
    if checksum_type == "FULL_OBJECT" and algorithm not in _FULL_OBJECT_CAPABLE:
        raise errors.InvalidRequest(f"The FULL_OBJECT checksum type cannot be used with the {algorithm} checksum algorithm.")
    if checksum_type == "COMPOSITE" and algorithm == "crc64nvme":
        raise errors.InvalidRequest("The COMPOSITE checksum type cannot be used with the crc64nvme checksum algorithm.")
    draft = UploadDraft(
        owner=request.user.name, content_headers=content_headers(request),
        user_metadata=user_metadata(services, request), checksum_algorithm=algorithm,
        checksum_type=checksum_type, storage_class=storage_class(request),
    )
    mutation = CreateUpload(bucket=bucket.name, bucket_incarnation=bucket.incarnation, key=request.key, upload=draft)
    outcome = await commit_or_discard(services, request, mutation, None, None)
    body = document("InitiateMultipartUploadResult", element("Bucket", bucket.name) + element("Key", request.key) + element("UploadId", outcome.upload_id))
    headers = [XML]
    if algorithm:
        headers += [("x-amz-checksum-algorithm", algorithm.upper()), ("x-amz-checksum-type", checksum_type)]
    return Response(headers=headers, body=body)


def _part_number(services: Services, request: Request) -> int:
    text = request.query.get("partNumber", "")
    if not text.isdigit() or not 1 <= int(text) <= services.limits.MAX_PART_NUMBER:
        raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive", ArgumentName="partNumber", ArgumentValue=text)
    return int(text)


async def _upload(services: Services, request: Request, bucket):
    upload_id = request.query.get("uploadId", "")
    page = await services.meta.list_parts(bucket.name, bucket.incarnation, request.key, upload_id,
                                          part_number_marker=0, max_parts=0)
    return upload_id, page.upload


async def upload_part(services: Services, request: Request) -> Response:
    check_key(services, request.key)
    refuse_unsupported_writes(request)
    bucket = await owned_bucket(services, request)
    number = _part_number(services, request)
    if request.headers.get("content-length") is None and request.headers.get("x-amz-decoded-content-length") is None \
            and "transfer-encoding" not in request.headers:
        raise errors.MissingContentLength()
    upload_id, upload = await _upload(services, request, bucket)
    integrity = Integrity.from_request(request)
    if upload.checksum_algorithm and upload.checksum_algorithm not in integrity.algorithms():
        integrity.requested = integrity.requested + (upload.checksum_algorithm,)
    payload = open_payload(request, max_size=services.limits.MAX_PART_SIZE, max_chunk_bytes=services.limits.MAX_AWS_CHUNK_BYTES)
    blob, size, md5_hex, checksums = await store_payload(services, payload, integrity, allow_inline=False)
    part = PartDraft(size=size, etag=md5_hex, blob=blob, checksums=checksums)
    mutation = PutPart(bucket=bucket.name, bucket_incarnation=bucket.incarnation, key=request.key,
                       upload_id=upload_id, part_number=number, part=part)
    await commit_or_discard(services, request, mutation, None, blob, body_md5=md5_hex, upload_id=upload_id, part_number=number)
    return Response(headers=[("etag", etag_header(md5_hex))] + checksum_headers(checksums, ""))


async def upload_part_copy(services: Services, request: Request) -> Response:
    check_key(services, request.key)
    refuse_unsupported_writes(request)
    bucket = await owned_bucket(services, request)
    number = _part_number(services, request)
    upload_id, upload = await _upload(services, request, bucket)
    source = await read_copy_source(services, request)
    range_header = request.headers.get("x-amz-copy-source-range")
    start, end = parse_copy_range(range_header, source.size) if range_header else (0, source.size)
    if end - start > services.limits.MAX_PART_SIZE:
        raise errors.InvalidRequest("The specified copy source is larger than the maximum allowable size for a copy source: 5368709120")
    algorithms = (upload.checksum_algorithm,) if upload.checksum_algorithm else ()
    blob, size, md5_hex, checksums = await copy_bytes(services, source, start, end, algorithms, allow_inline=False)
    part = PartDraft(size=size, etag=md5_hex, blob=blob, checksums=checksums)
    mutation = PutPart(bucket=bucket.name, bucket_incarnation=bucket.incarnation, key=request.key,
                       upload_id=upload_id, part_number=number, part=part)
    outcome = await commit_or_discard(services, request, mutation, None, blob, body_md5=md5_hex, upload_id=upload_id, part_number=number)
    fields = element("ETag", etag_header(md5_hex)) + element("LastModified", iso_time(outcome.time_us))
    fields += "".join(element(f"Checksum{algorithm.upper()}", value) for algorithm, value in checksums)
    return Response(headers=[XML], body=document("CopyPartResult", fields))


def _parse_complete(body: bytes, services: Services) -> list[tuple[int, str, dict[str, str]]]:
    tree = parse(body, "CompleteMultipartUpload", max_bytes=services.limits.MAX_REQUEST_XML_BYTES)
    parts = []
    for node in tree.findall("Part"):
        number_text = (child_text(node, "PartNumber") or "").strip()
        etag = child_text(node, "ETag")
        if not number_text.isdigit() or etag is None:
            raise errors.MalformedXML()
        claims = {}
        for algorithm in ("crc32", "crc32c", "crc64nvme", "sha1", "sha256"):
            value = child_text(node, f"Checksum{algorithm.upper()}")
            if value:
                claims[algorithm] = value.strip()
        parts.append((int(number_text), strip_etag(etag), claims))
    if not parts:
        raise errors.MalformedXML("The XML you provided was not well-formed or did not validate against our published schema.")
    return parts


async def complete_multipart_upload(services: Services, request: Request) -> Response:
    check_key(services, request.key)
    # The authority, not the worker's cached record: this handler reads the store
    # (list_parts) after consuming its body, when a stale record could no longer be
    # retried (frontend/s3/app.py).
    bucket = await owned_bucket(services, request, fresh=True)
    upload_id = request.query.get("uploadId", "")
    condition = write_condition(request)
    body, _ = await read_small_body(services, request)
    listed = _parse_complete(body, services)
    for previous, current in zip(listed, listed[1:]):
        if current[0] <= previous[0]:
            raise errors.InvalidPartOrder()
    page = await services.meta.list_parts(bucket.name, bucket.incarnation, request.key, upload_id,
                                          part_number_marker=0, max_parts=services.limits.MAX_PART_NUMBER)
    upload = page.upload
    stored = {part.part_number: part for part in page.parts}
    chosen = []
    for number, etag, claims in listed:
        part = stored.get(number)
        if part is None or part.etag != etag:
            raise errors.InvalidPart(PartNumber=str(number), ETag=etag)
        part_checksums = dict(part.checksums)
        for algorithm, value in claims.items():
            if part_checksums.get(algorithm) not in (None, value):
                raise errors.InvalidPart(f"The {algorithm.upper()} checksum of part {number} does not match.", PartNumber=str(number))
        chosen.append(part)
    for part in chosen[:-1]:
        if part.size < services.limits.MIN_PART_SIZE:
            raise errors.EntityTooSmall(ProposedSize=str(part.size), MinSizeAllowed=str(services.limits.MIN_PART_SIZE), PartNumber=str(part.part_number), ETag=part.etag)
    offset = 0
    bodies = []
    for part in chosen:
        bodies.append(PartBody(part_number=part.part_number, size=part.size, offset=offset,
                               etag=part.etag, checksums=part.checksums, blob=part.blob))
        offset += part.size
    md5s = b"".join(bytes.fromhex(part.etag) for part in chosen)
    etag = f"{hashlib.md5(md5s).hexdigest()}-{len(chosen)}"
    checksums, checksum_type = _multipart_checksums(upload, chosen)
    draft = ObjectDraft(
        size=offset, etag=etag, body=Multipart(upload_id=upload_id, parts=tuple(bodies)),
        content_headers=upload.content_headers, user_metadata=upload.user_metadata,
        checksums=checksums, checksum_type=checksum_type, storage_class=upload.storage_class,
    )
    mutation = CompleteUpload(
        bucket=bucket.name, bucket_incarnation=bucket.incarnation, key=request.key, upload_id=upload_id,
        parts=tuple(CompletedPart(part.part_number, part.blob.data_id, part.etag) for part in chosen), draft=draft,
    )
    await commit_or_discard(services, request, mutation, condition, None, upload_id=upload_id)
    fields = (
        element("Location", f"/{bucket.name}/{request.key}") + element("Bucket", bucket.name)
        + element("Key", request.key) + element("ETag", etag_header(etag))
    )
    fields += "".join(element(f"Checksum{algorithm.upper()}", value) for algorithm, value in checksums)
    if checksums:
        fields += element("ChecksumType", checksum_type)
    return Response(headers=[XML], body=document("CompleteMultipartUploadResult", fields))


def _multipart_checksums(upload, parts) -> tuple[tuple[tuple[str, str], ...], str]:
    algorithm = upload.checksum_algorithm
    if not algorithm:
        return (), ""
    values = []
    for part in parts:
        value = dict(part.checksums).get(algorithm)
        if value is None:
            return (), ""
        values.append(value)
    if upload.checksum_type == "FULL_OBJECT":
        return ((algorithm, combine(algorithm, [(value, part.size) for value, part in zip(values, parts)])),), "FULL_OBJECT"
    return ((algorithm, composite(algorithm, values)),), "COMPOSITE"


async def abort_multipart_upload(services: Services, request: Request) -> Response:
    check_key(services, request.key)
    bucket = await owned_bucket(services, request)
    upload_id = request.query.get("uploadId", "")
    mutation = AbortUpload(bucket=bucket.name, bucket_incarnation=bucket.incarnation, key=request.key, upload_id=upload_id)
    await commit_or_discard(services, request, mutation, None, None, upload_id=upload_id)
    return Response(status=204)


async def list_parts(services: Services, request: Request) -> Response:
    check_key(services, request.key)
    bucket = await owned_bucket(services, request)
    upload_id = request.query.get("uploadId", "")
    marker_text = request.query.get("part-number-marker", "0") or "0"
    max_text = request.query.get("max-parts", "1000") or "1000"
    if not marker_text.isdigit():
        raise errors.InvalidArgument("Invalid part-number-marker", ArgumentName="part-number-marker", ArgumentValue=marker_text)
    if not max_text.isdigit():
        raise errors.InvalidArgument("Invalid max-parts", ArgumentName="max-parts", ArgumentValue=max_text)
    max_parts = min(int(max_text), 1000)
    page = await services.meta.list_parts(bucket.name, bucket.incarnation, request.key, upload_id,
                                          part_number_marker=int(marker_text), max_parts=max_parts)
    owner = owner_xml(page.upload.owner)
    fields = [
        element("Bucket", bucket.name), element("Key", request.key), element("UploadId", upload_id),
        owner.replace("<Owner>", "<Initiator>").replace("</Owner>", "</Initiator>"), owner,
        element("StorageClass", page.upload.storage_class), element("PartNumberMarker", int(marker_text)),
        element("MaxParts", max_parts), element("IsTruncated", "true" if page.truncated else "false"),
    ]
    if page.next_part_number_marker is not None:
        fields.append(element("NextPartNumberMarker", page.next_part_number_marker))
    if page.upload.checksum_algorithm:
        fields.append(element("ChecksumAlgorithm", page.upload.checksum_algorithm.upper()))
        fields.append(element("ChecksumType", page.upload.checksum_type))
    for part in page.parts:
        item = (element("PartNumber", part.part_number) + element("LastModified", iso_time(part.last_modified_us))
                + element("ETag", etag_header(part.etag)) + element("Size", part.size))
        item += "".join(element(f"Checksum{algorithm.upper()}", value) for algorithm, value in part.checksums)
        fields.append(f"<Part>{item}</Part>")
    return Response(headers=[XML], body=document("ListPartsResult", fields))

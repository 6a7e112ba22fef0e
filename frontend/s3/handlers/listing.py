"""ListObjects (v1), ListObjectsV2, ListObjectVersions and ListMultipartUploads.

The store rolls up delimiters and pages in raw UTF-8 order (common/seams.py,
rule 7); this module parses parameters and renders XML. A v2 continuation token
is opaque to clients: it carries where to resume and the state the previous page
was read at, so a later page never reads an older state (DESIGN §4 step 6).
With `encoding-type=url`, keys and prefixes are percent-encoded (botocore decodes
them with unquote_plus, so '+' and ' ' must both be escaped).
"""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import quote

from frontend.s3 import errors
from frontend.s3.handlers.bucket import owner_xml
from frontend.s3.handlers.support import etag_header, owned_bucket
from frontend.s3.request import Request, Response, Services
from frontend.s3.xml import document, element, iso_time

XML = ("content-type", "application/xml")


def _encoder(request: Request):
    encoding = request.query.get("encoding-type")
    if encoding is None:
        return lambda value: value, None
    if encoding.lower() != "url":
        raise errors.InvalidArgument("Invalid Encoding Method specified in Request", ArgumentName="encoding-type", ArgumentValue=encoding)
    return lambda value: quote(value, safe="/"), "url"


def _max_keys(services: Services, request: Request, name: str) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return services.limits.MAX_KEYS
    try:
        value = int(text)
    except ValueError:
        raise errors.InvalidArgument("Provided max-keys not an integer or within integer range", ArgumentName=name, ArgumentValue=text) from None
    if value < 0:
        raise errors.InvalidArgument("Argument max-keys must be an integer between 0 and 2147483647", ArgumentName=name, ArgumentValue=text)
    return min(value, services.limits.MAX_KEYS)


def encode_token(next_key: str, read_seq) -> str:
    raw = json.dumps({"k": next_key, "s": list(read_seq)}, ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_token(token: str) -> tuple[str, tuple[int, int, int]]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        key, seq = raw["k"], tuple(int(value) for value in raw["s"])
        if not isinstance(key, str) or len(seq) != 3:
            raise ValueError
        return key, seq  # type: ignore[return-value]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError):
        raise errors.InvalidArgument("The continuation token provided is incorrect", ArgumentName="continuation-token") from None


def _contents(page, encode, owner: str | None, *, version_tag: str | None = None) -> str:
    """A page's objects as `<Contents>`, or as `<{version_tag}>` naming each one's `null`
    version (ListObjectVersions); then its common prefixes."""
    parts = []
    for summary in page.summaries:
        item = (
            element("Key", encode(summary.key))
            + (element("VersionId", "null") + element("IsLatest", "true") if version_tag else "")
            + element("LastModified", iso_time(summary.last_modified_us))
            + element("ETag", etag_header(summary.etag))
            + element("Size", summary.size)
            + element("StorageClass", summary.storage_class)
        )
        for algorithm in summary.checksum_algorithms:
            item += element("ChecksumAlgorithm", algorithm.upper())
        if summary.checksum_type:
            item += element("ChecksumType", summary.checksum_type)
        if owner is not None:
            item += owner
        tag = version_tag or "Contents"
        parts.append(f"<{tag}>{item}</{tag}>")
    for prefix in page.common_prefixes:
        parts.append(f"<CommonPrefixes>{element('Prefix', encode(prefix))}</CommonPrefixes>")
    return "".join(parts)


async def list_objects_v2(services: Services, request: Request) -> Response:
    bucket = await owned_bucket(services, request)
    encode, encoding = _encoder(request)
    query = request.query
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    max_keys = _max_keys(services, request, "max-keys")
    start_after = query.get("start-after", "")
    token = query.get("continuation-token")
    min_seq = None
    resume = start_after
    if token is not None:
        if token == "":
            raise errors.InvalidArgument("The continuation token provided is incorrect", ArgumentName="continuation-token")
        resume, min_seq = decode_token(token)
    page = await _page(services, bucket, prefix, delimiter, resume, max_keys, min_seq)
    fetch_owner = query.get("fetch-owner", "").lower() == "true"
    fields = [
        element("Name", bucket.name), element("Prefix", encode(prefix)),
        element("MaxKeys", max_keys), element("KeyCount", len(page.summaries) + len(page.common_prefixes)),
        element("IsTruncated", "true" if page.truncated else "false"),
    ]
    if delimiter:
        fields.append(element("Delimiter", encode(delimiter)))
    if encoding:
        fields.append(element("EncodingType", encoding))
    if start_after:
        fields.append(element("StartAfter", encode(start_after)))
    if token is not None:
        fields.append(element("ContinuationToken", token))
    if page.truncated and page.next_start_key is not None:
        fields.append(element("NextContinuationToken", encode_token(page.next_start_key, page.read_seq)))
    fields.append(_contents(page, encode, owner_xml(bucket.owner) if fetch_owner else None))
    return Response(headers=[XML], body=document("ListBucketResult", fields))


async def list_objects(services: Services, request: Request) -> Response:
    bucket = await owned_bucket(services, request)
    encode, encoding = _encoder(request)
    query = request.query
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    marker = query.get("marker", "")
    max_keys = _max_keys(services, request, "max-keys")
    page = await _page(services, bucket, prefix, delimiter, marker, max_keys, None)
    fields = [
        element("Name", bucket.name), element("Prefix", encode(prefix)), element("Marker", encode(marker)),
        element("MaxKeys", max_keys), element("IsTruncated", "true" if page.truncated else "false"),
    ]
    if delimiter:
        fields.append(element("Delimiter", encode(delimiter)))
        if page.truncated and page.next_start_key is not None:
            fields.append(element("NextMarker", encode(page.next_start_key)))
    if encoding:
        fields.append(element("EncodingType", encoding))
    fields.append(_contents(page, encode, owner_xml(bucket.owner)))
    return Response(headers=[XML], body=document("ListBucketResult", fields))


async def list_object_versions(services: Services, request: Request) -> Response:
    """Buckets are unversioned (frontend/s3/router.py rule 5): each object is its one
    version, `null` and latest, with no delete markers, as S3 lists a bucket that
    never had versioning. Tools empty buckets this way (boto3's `object_versions`,
    Terraform's force_destroy). Both markers resume after `key-marker`: a key has
    no version after `null`."""
    bucket = await owned_bucket(services, request)
    encode, encoding = _encoder(request)
    query = request.query
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    key_marker, version_marker = query.get("key-marker", ""), query.get("version-id-marker", "")
    if version_marker and not key_marker:
        raise errors.InvalidArgument("A version-id marker cannot be specified without a key marker.",
                                     ArgumentName="version-id-marker", ArgumentValue=version_marker)
    if version_marker not in ("", "null"):
        raise errors.InvalidArgument("Invalid version id specified", ArgumentName="version-id-marker",
                                     ArgumentValue=version_marker)
    max_keys = _max_keys(services, request, "max-keys")
    page = await _page(services, bucket, prefix, delimiter, key_marker, max_keys, None)
    fields = [
        element("Name", bucket.name), element("Prefix", encode(prefix)), element("KeyMarker", encode(key_marker)),
        element("VersionIdMarker", version_marker), element("MaxKeys", max_keys),
        element("IsTruncated", "true" if page.truncated else "false"),
    ]
    if page.truncated and page.next_start_key is not None:
        fields.append(element("NextKeyMarker", encode(page.next_start_key)))
        fields.append(element("NextVersionIdMarker", "null"))
    if delimiter:
        fields.append(element("Delimiter", encode(delimiter)))
    if encoding:
        fields.append(element("EncodingType", encoding))
    versions = _contents(page, encode, owner_xml(bucket.owner), version_tag="Version")
    return Response(headers=[XML], body=document("ListVersionsResult", fields + [versions]))


async def _page(services, bucket, prefix, delimiter, start_after, max_keys, min_seq):
    if max_keys == 0:
        from common.seams import ListPage
        return ListPage((), (), False, None, min_seq or (0, 0, 0))
    return await services.meta.list_objects(
        bucket.name, bucket.incarnation, prefix=prefix, delimiter=delimiter,
        start_after=start_after, max_keys=max_keys, min_seq=min_seq,
    )


async def list_multipart_uploads(services: Services, request: Request) -> Response:
    bucket = await owned_bucket(services, request)
    encode, encoding = _encoder(request)
    query = request.query
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    key_marker, upload_id_marker = query.get("key-marker", ""), query.get("upload-id-marker", "")
    max_uploads = _max_keys(services, request, "max-uploads")
    if max_uploads == 0:
        from common.seams import UploadsPage
        page = UploadsPage((), (), False, None, None)
    else:
        page = await services.meta.list_uploads(
            bucket.name, bucket.incarnation, prefix=prefix, delimiter=delimiter,
            key_marker=key_marker, upload_id_marker=upload_id_marker if key_marker else "",
            max_uploads=max_uploads,
        )
    fields = [
        element("Bucket", bucket.name), element("KeyMarker", encode(key_marker)),
        element("UploadIdMarker", upload_id_marker), element("Prefix", encode(prefix)),
        element("MaxUploads", max_uploads), element("IsTruncated", "true" if page.truncated else "false"),
    ]
    if delimiter:
        fields.append(element("Delimiter", encode(delimiter)))
    if encoding:
        fields.append(element("EncodingType", encoding))
    if page.truncated:
        fields.append(element("NextKeyMarker", encode(page.next_key_marker or "")))
        fields.append(element("NextUploadIdMarker", page.next_upload_id_marker or ""))
    owner = owner_xml(bucket.owner)
    for upload in page.uploads:
        item = (
            element("Key", encode(upload.key)) + element("UploadId", upload.upload_id)
            + owner.replace("<Owner>", "<Initiator>").replace("</Owner>", "</Initiator>") + owner
            + element("StorageClass", upload.storage_class) + element("Initiated", iso_time(upload.initiated_us))
        )
        if upload.checksum_algorithm:
            item += element("ChecksumAlgorithm", upload.checksum_algorithm.upper())
        if upload.checksum_type:
            item += element("ChecksumType", upload.checksum_type)
        fields.append(f"<Upload>{item}</Upload>")
    for common in page.common_prefixes:
        fields.append(f"<CommonPrefixes>{element('Prefix', encode(common))}</CommonPrefixes>")
    return Response(headers=[XML], body=document("ListMultipartUploadsResult", fields))

"""The S3 router: a pure function from (method, path, query, host) to an endpoint.

Like Garage's router, every request is parsed into a typed endpoint first and
dispatched from one table (frontend/s3/app.py). The router does no I/O, so it is
tested against a table of the AWS documentation's own request examples, in path
style and virtual-host style (tests/unit/test_router.py).

Rules:
1. Virtual-host style: a Host of `<bucket>.<domain>` for a configured domain names
   the bucket; the whole path is then the key. Otherwise path style: the first path
   segment is the bucket, the rest (after one '/') the key, which may itself begin
   with or contain '/'.
2. The subresource in the query picks the operation; a subresource we do not
   implement routes to `Unsupported` (answered NotImplemented), never to a 500.
3. `x-amz-copy-source` turns PutObject into CopyObject and UploadPart into
   UploadPartCopy.
4. Reading a bucket configuration Cairn has no feature for (CORS, policy, lifecycle,
   tagging, website, encryption, replication, object lock, public access block,
   ownership controls, accelerate, request payment, logging, notification) routes to
   `GetBucketConfiguration`, answered as S3 answers for a bucket with none set
   (frontend/s3/handlers/configuration.py); setting one stays `Unsupported`. ACLs
   route to their own endpoints: Cairn's one ACL is the owner's FULL_CONTROL.
5. Buckets are unversioned: every object has one version, `null` (as in an S3 bucket
   that never had versioning). An object request naming any other `versionId` is
   InvalidArgument, never served or deleted as if it named the current object;
   `?versions` lists each object as its `null` version (ListObjectVersions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from frontend.s3 import errors


@dataclass(frozen=True)
class Endpoint:
    bucket: str = ""
    key: str = ""


# Service
@dataclass(frozen=True)
class ListBuckets(Endpoint): pass

# Bucket
@dataclass(frozen=True)
class CreateBucket(Endpoint): pass
@dataclass(frozen=True)
class HeadBucket(Endpoint): pass
@dataclass(frozen=True)
class DeleteBucket(Endpoint): pass
@dataclass(frozen=True)
class GetBucketLocation(Endpoint): pass
@dataclass(frozen=True)
class GetBucketVersioning(Endpoint): pass
@dataclass(frozen=True)
class ListObjects(Endpoint): pass
@dataclass(frozen=True)
class ListObjectsV2(Endpoint): pass
@dataclass(frozen=True)
class ListMultipartUploads(Endpoint): pass
@dataclass(frozen=True)
class ListObjectVersions(Endpoint): pass
@dataclass(frozen=True)
class DeleteObjects(Endpoint): pass
@dataclass(frozen=True)
class GetBucketAcl(Endpoint): pass
@dataclass(frozen=True)
class PutBucketAcl(Endpoint): pass


@dataclass(frozen=True)
class GetBucketConfiguration(Endpoint):
    """GET ?<subresource> of a bucket configuration Cairn has none of (rule 4)."""

    subresource: str = ""

# Object
@dataclass(frozen=True)
class PutObject(Endpoint): pass
@dataclass(frozen=True)
class CopyObject(Endpoint): pass
@dataclass(frozen=True)
class GetObject(Endpoint): pass
@dataclass(frozen=True)
class HeadObject(Endpoint): pass
@dataclass(frozen=True)
class DeleteObject(Endpoint): pass
@dataclass(frozen=True)
class CreateMultipartUpload(Endpoint): pass
@dataclass(frozen=True)
class UploadPart(Endpoint): pass
@dataclass(frozen=True)
class UploadPartCopy(Endpoint): pass
@dataclass(frozen=True)
class CompleteMultipartUpload(Endpoint): pass
@dataclass(frozen=True)
class AbortMultipartUpload(Endpoint): pass
@dataclass(frozen=True)
class ListParts(Endpoint): pass
@dataclass(frozen=True)
class GetObjectAcl(Endpoint): pass
@dataclass(frozen=True)
class PutObjectAcl(Endpoint): pass
@dataclass(frozen=True)
class GetObjectTagging(Endpoint): pass
@dataclass(frozen=True)
class DeleteObjectTagging(Endpoint): pass


@dataclass(frozen=True)
class Unsupported(Endpoint):
    """A real S3 operation Cairn does not implement yet: answered NotImplemented."""

    operation: str = ""


# Bucket configurations Cairn has no feature for: reading one answers "none set" (rule 4).
UNCONFIGURED_BUCKET_SUBRESOURCES = (
    "accelerate", "cors", "encryption", "lifecycle", "logging", "notification", "object-lock",
    "ownershipControls", "policy", "policyStatus", "publicAccessBlock", "replication", "requestPayment",
    "tagging", "website",
)

# Query parameters that name a bucket subresource / operation S3 has and we do not.
_BUCKET_SUBRESOURCES_UNSUPPORTED = {
    "accelerate": "BucketAccelerate", "acl": "BucketAcl", "analytics": "BucketAnalytics",
    "cors": "BucketCors", "encryption": "BucketEncryption",
    "intelligent-tiering": "BucketIntelligentTiering", "inventory": "BucketInventory",
    "lifecycle": "BucketLifecycle", "logging": "BucketLogging", "metrics": "BucketMetrics",
    "notification": "BucketNotification", "object-lock": "ObjectLockConfiguration",
    "ownershipControls": "BucketOwnershipControls", "policy": "BucketPolicy",
    "policyStatus": "BucketPolicyStatus", "publicAccessBlock": "PublicAccessBlock",
    "replication": "BucketReplication", "requestPayment": "BucketRequestPayment",
    "tagging": "BucketTagging", "website": "BucketWebsite",
    "metadataTable": "BucketMetadataTable", "session": "CreateSession",
}
_OBJECT_SUBRESOURCES_UNSUPPORTED = {
    "acl": "ObjectAcl", "tagging": "ObjectTagging", "retention": "ObjectRetention",
    "legal-hold": "ObjectLegalHold", "torrent": "ObjectTorrent", "restore": "RestoreObject",
    "select": "SelectObjectContent", "attributes": "ObjectAttributes",
    "renameObject": "RenameObject",
}


def split_host(host: str, domains: Sequence[str]) -> str:
    """The bucket named by a virtual-host-style Host header, or "" for path style."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.lower().rstrip(".")
    for domain in domains:
        suffix = "." + domain.lower()
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return ""


def route(
    method: str,
    path: str,
    query: Mapping[str, str],
    host: str = "",
    *,
    copy_source: bool = False,
    domains: Sequence[str] = (),
) -> Endpoint:
    """Map one request to its endpoint. `path` is percent-decoded; raises S3Error."""
    if not path.startswith("/"):
        raise errors.InvalidURI()
    bucket = split_host(host, domains)
    if bucket:
        key = path[1:]
    else:
        bucket, _, key = path[1:].partition("/")
    if not bucket:
        if method in ("GET", "HEAD") and not key:
            return ListBuckets()
        raise errors.MethodNotAllowed()
    if not key:
        return _bucket_endpoint(method, bucket, query)
    return _object_endpoint(method, bucket, key, query, copy_source)


def _bucket_endpoint(method: str, bucket: str, query: Mapping[str, str]) -> Endpoint:
    if "acl" in query and method in ("GET", "HEAD", "PUT"):
        return PutBucketAcl(bucket) if method == "PUT" else GetBucketAcl(bucket)
    if method in ("GET", "HEAD"):
        for name in UNCONFIGURED_BUCKET_SUBRESOURCES:
            if name in query:
                return GetBucketConfiguration(bucket, "", name)
    for name, operation in _BUCKET_SUBRESOURCES_UNSUPPORTED.items():
        if name in query:
            return Unsupported(bucket, "", f"{_verb(method)}{operation}")
    if method == "GET":
        if "location" in query:
            return GetBucketLocation(bucket)
        if "versioning" in query:
            return GetBucketVersioning(bucket)
        if "uploads" in query:
            return ListMultipartUploads(bucket)
        if "versions" in query:
            return ListObjectVersions(bucket)
        if query.get("list-type") == "2":
            return ListObjectsV2(bucket)
        if "list-type" in query:
            raise errors.InvalidArgument("Invalid list-type: must be 2 or absent.")
        return ListObjects(bucket)
    if method == "HEAD":
        return HeadBucket(bucket)
    if method == "PUT":
        if "versioning" in query:
            return Unsupported(bucket, "", "PutBucketVersioning")
        return CreateBucket(bucket)
    if method == "DELETE":
        return DeleteBucket(bucket)
    if method == "POST":
        if "delete" in query:
            return DeleteObjects(bucket)
        raise errors.MethodNotAllowed()
    raise errors.MethodNotAllowed()


def _object_endpoint(
    method: str, bucket: str, key: str, query: Mapping[str, str], copy_source: bool
) -> Endpoint:
    if query.get("versionId", "null") != "null":
        raise errors.InvalidArgument("Invalid version id specified: this bucket is not versioned, so every object's "
                                     "one version is null.", ArgumentName="versionId", ArgumentValue=query["versionId"])
    if "acl" in query and method in ("GET", "HEAD", "PUT"):
        return PutObjectAcl(bucket, key) if method == "PUT" else GetObjectAcl(bucket, key)
    if "tagging" in query and method in ("GET", "HEAD", "DELETE"):
        return DeleteObjectTagging(bucket, key) if method == "DELETE" else GetObjectTagging(bucket, key)
    for name, operation in _OBJECT_SUBRESOURCES_UNSUPPORTED.items():
        if name in query:
            return Unsupported(bucket, key, f"{_verb(method)}{operation}")
    upload = "uploadId" in query
    if method == "GET":
        return ListParts(bucket, key) if upload else GetObject(bucket, key)
    if method == "HEAD":
        return HeadObject(bucket, key)
    if method == "PUT":
        if upload or "partNumber" in query:
            return UploadPartCopy(bucket, key) if copy_source else UploadPart(bucket, key)
        return CopyObject(bucket, key) if copy_source else PutObject(bucket, key)
    if method == "DELETE":
        return AbortMultipartUpload(bucket, key) if upload else DeleteObject(bucket, key)
    if method == "POST":
        if "uploads" in query:
            return CreateMultipartUpload(bucket, key)
        if upload:
            return CompleteMultipartUpload(bucket, key)
        raise errors.MethodNotAllowed()
    raise errors.MethodNotAllowed()


def _verb(method: str) -> str:
    return {"GET": "Get", "HEAD": "Get", "PUT": "Put", "DELETE": "Delete", "POST": "Post"}.get(method, method.title())

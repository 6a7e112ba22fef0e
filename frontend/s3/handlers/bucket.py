"""Service and bucket operations: ListBuckets, CreateBucket, HeadBucket,
DeleteBucket, GetBucketLocation, GetBucketVersioning.

Bucket names follow AWS's general-purpose bucket rules (InvalidBucketName).
CreateBucket records the LocationConstraint as the bucket's region (absent means
the server's region); a second create by the owner is BucketAlreadyOwnedByYou,
by anyone else BucketAlreadyExists — both decided atomically by the store.
"""

from __future__ import annotations

import ipaddress
import re

from common.seams import CreateBucket, DeleteBucket
from frontend.s3 import errors
from frontend.s3.handlers.support import commit_request_id, not_after_us, owned_bucket, refuse_unsupported_writes
from frontend.s3.request import Request, Response, Services
from frontend.s3.xml import child_text, document, element, iso_time, parse

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z0-9-]{1,64}$")
XML = ("content-type", "application/xml")


def validate_bucket_name(name: str) -> None:
    problem = None
    if not _BUCKET_NAME.match(name):
        problem = "Bucket names must be 3 to 63 lower-case letters, digits, dots and hyphens, beginning and ending with a letter or digit."
    elif ".." in name or ".-" in name or "-." in name:
        problem = "Bucket names must not contain two adjacent periods or a period next to a hyphen."
    elif name.startswith(("xn--", "sthree-", "amzn-s3-demo-")) or name.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")):
        problem = "Bucket names must not use a reserved prefix or suffix."
    else:
        try:
            ipaddress.IPv4Address(name)
            problem = "Bucket names must not be formatted as an IP address."
        except ValueError:
            pass
    if problem:
        raise errors.InvalidBucketName(problem, BucketName=name)


async def list_buckets(services: Services, request: Request) -> Response:
    buckets = await services.meta.list_buckets(request.user.name)
    owner = _owner(request.user.name)
    items = "".join(
        f"<Bucket>{element('Name', bucket.name)}{element('CreationDate', iso_time(bucket.created_us))}"
        f"{element('BucketRegion', bucket.region)}</Bucket>"
        for bucket in buckets
    )
    body = document("ListAllMyBucketsResult", f"{owner}<Buckets>{items}</Buckets>")
    return Response(headers=[XML], body=body)


async def create_bucket(services: Services, request: Request) -> Response:
    validate_bucket_name(request.bucket)
    body = b"".join([chunk async for chunk in request.body])
    region = services.region
    if body.strip():
        tree = parse(body, "CreateBucketConfiguration", max_bytes=services.limits.MAX_REQUEST_XML_BYTES)
        constraint = child_text(tree, "LocationConstraint")
        if constraint is not None:
            constraint = constraint.strip()
            if constraint and not _REGION.match(constraint):
                raise errors.InvalidLocationConstraint(LocationConstraint=constraint)
            region = constraint or "us-east-1"
    refuse_unsupported_writes(request)          # grants, and any ACL but the owner's
    if (request.headers.get("x-amz-bucket-object-lock-enabled") or "").strip().lower() == "true":
        raise errors.NotImplemented_("Object lock is not supported: nothing would keep objects from being overwritten or deleted.")
    mutation = CreateBucket(bucket=request.bucket, owner=request.user.name, region=region)
    await services.meta.commit(mutation, None, commit_request_id(request), not_after_us(services))
    return Response(headers=[("location", f"/{request.bucket}")])


async def head_bucket(services: Services, request: Request) -> Response:
    bucket = await owned_bucket(services, request, fresh=True)
    return Response(headers=[("x-amz-bucket-region", bucket.region)])


async def delete_bucket(services: Services, request: Request) -> Response:
    bucket = await owned_bucket(services, request, fresh=True)
    mutation = DeleteBucket(bucket=bucket.name, bucket_incarnation=bucket.incarnation)
    try:
        await services.meta.commit(mutation, None, commit_request_id(request), not_after_us(services))
    finally:
        services.buckets.pop(bucket.name, None)
    return Response(status=204)


async def get_bucket_location(services: Services, request: Request) -> Response:
    bucket = await owned_bucket(services, request, fresh=True)
    region = "" if bucket.region == "us-east-1" else bucket.region
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{region}</LocationConstraint>'
    return Response(headers=[XML], body=body.encode())


async def get_bucket_versioning(services: Services, request: Request) -> Response:
    await owned_bucket(services, request, fresh=True)
    return Response(headers=[XML], body=document("VersioningConfiguration", ""))


def _owner(name: str) -> str:
    return f"<Owner>{element('ID', name)}{element('DisplayName', name)}</Owner>"


owner_xml = _owner

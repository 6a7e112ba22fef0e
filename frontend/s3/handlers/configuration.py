"""Bucket configurations Cairn has none of, ACLs and object tags, answered as S3 does.

Tools read these to learn what is set: s3cmd's `info`, Terraform's bucket resource,
Cyberduck and backup tools. Some of them fail a whole operation on a 501.

**Bucket configurations.** Cairn has no CORS, policy, lifecycle, tagging, website,
encryption at rest, replication, object lock, public access block or ownership
controls. So reading one answers what S3 answers for a bucket where it was never
set: that configuration's own "no such configuration" error (404). Four of them
have an empty document for "unset" instead, and answer it: accelerate, request
payment (the owner pays), logging and notification. Setting any of them stays
NotImplemented (frontend/s3/router.py rule 4): Cairn never accepts a configuration
it would not enforce.

**ACLs.** A bucket and its objects belong to the bucket's owner. Other users get
AccessDenied. That is the one ACL there is:
- GetBucketAcl and GetObjectAcl answer the owner with FULL_CONTROL.
- PutBucketAcl and PutObjectAcl accept only what leaves it so, and change nothing:
  - the canned `private`, or `bucket-owner-full-control` on an object (the same
    thing here);
  - a document that grants the owner FULL_CONTROL and nothing else.
- Any other grant is NotImplemented.

**Object tags.** Objects carry no tags. GetObjectTagging answers an empty TagSet,
and DeleteObjectTagging succeeds with nothing to remove; both only for an object
that exists. PutObjectTagging stays NotImplemented.
"""

from __future__ import annotations

from common.seams import BucketRecord
from frontend.s3 import errors
from frontend.s3.handlers.bucket import owner_xml
from frontend.s3.handlers.support import (
    OWNER_ONLY_ACLS, check_key, owned_bucket, read_small_body, refuse_unsupported_writes,
)
from frontend.s3.request import Request, Response, Services
from frontend.s3.xml import child_text, document, element, parse

XML = ("content-type", "application/xml")
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"

_NONE_SET = {
    "cors": errors.NoSuchCORSConfiguration,
    "encryption": errors.ServerSideEncryptionConfigurationNotFoundError,
    "lifecycle": errors.NoSuchLifecycleConfiguration,
    "object-lock": errors.ObjectLockConfigurationNotFoundError,
    "ownershipControls": errors.OwnershipControlsNotFoundError,
    "policy": errors.NoSuchBucketPolicy,
    "policyStatus": errors.NoSuchBucketPolicy,
    "publicAccessBlock": errors.NoSuchPublicAccessBlockConfiguration,
    "replication": errors.ReplicationConfigurationNotFoundError,
    "tagging": errors.NoSuchTagSet,
    "website": errors.NoSuchWebsiteConfiguration,
}
_EMPTY_DOCUMENT = {
    "accelerate": ("AccelerateConfiguration", ""),
    "logging": ("BucketLoggingStatus", ""),
    "notification": ("NotificationConfiguration", ""),
    "requestPayment": ("RequestPaymentConfiguration", element("Payer", "BucketOwner")),
}


async def get_bucket_configuration(services: Services, request: Request) -> Response:
    bucket = await owned_bucket(services, request, fresh=True)
    subresource = request.endpoint.subresource
    if subresource in _EMPTY_DOCUMENT:
        root, inner = _EMPTY_DOCUMENT[subresource]
        return Response(headers=[XML], body=document(root, inner))
    raise _NONE_SET[subresource](BucketName=bucket.name)


# ---------------------------------------------------------------- ACLs

def _acl_document(owner: str) -> bytes:
    grantee = (f'<Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser">'
               f"{element('ID', owner)}{element('DisplayName', owner)}</Grantee>")
    grant = f"<Grant>{grantee}{element('Permission', 'FULL_CONTROL')}</Grant>"
    return document("AccessControlPolicy", f"{owner_xml(owner)}<AccessControlList>{grant}</AccessControlList>")


async def _existing_object(services: Services, request: Request) -> BucketRecord:
    check_key(services, request.key)
    bucket = await owned_bucket(services, request)
    if (await services.meta.get(bucket.name, bucket.incarnation, request.key)).record is None:
        raise errors.NoSuchKey(Key=request.key)
    return bucket


async def get_bucket_acl(services: Services, request: Request) -> Response:
    bucket = await owned_bucket(services, request, fresh=True)
    return Response(headers=[XML], body=_acl_document(bucket.owner))


async def get_object_acl(services: Services, request: Request) -> Response:
    bucket = await _existing_object(services, request)
    return Response(headers=[XML], body=_acl_document(bucket.owner))


async def put_bucket_acl(services: Services, request: Request) -> Response:
    bucket = await owned_bucket(services, request, fresh=True)
    await _check_owner_only(services, request, bucket.owner, ("private",))
    return Response()


async def put_object_acl(services: Services, request: Request) -> Response:
    bucket = await _existing_object(services, request)
    await _check_owner_only(services, request, bucket.owner, OWNER_ONLY_ACLS)
    return Response()


async def _check_owner_only(services: Services, request: Request, owner: str, canned: tuple[str, ...]) -> None:
    """Refuse an ACL that would be anything but the owner's FULL_CONTROL."""
    refuse_unsupported_writes(request)          # grants, and any ACL but the owner's
    acl = request.headers.get("x-amz-acl")
    body, _ = await read_small_body(services, request)
    if acl is not None and body.strip():
        raise errors.UnexpectedContent("Give an ACL either as x-amz-acl or as a document, not both.")
    if acl is not None:
        if acl not in canned:
            raise errors.NotImplemented_(f"Only the {' or '.join(canned)} canned ACL is supported.")
        return
    if not body.strip():
        raise errors.MissingSecurityHeader("Give an ACL as x-amz-acl or as an AccessControlPolicy document.")
    tree = parse(body, "AccessControlPolicy", max_bytes=services.limits.MAX_REQUEST_XML_BYTES)
    owner_node = tree.find("Owner")
    if owner_node is not None and child_text(owner_node, "ID") not in (None, owner):
        raise errors.NotImplemented_("A bucket and its objects belong to the bucket's owner; the owner cannot change.")
    acl_node = tree.find("AccessControlList")
    grants = acl_node.findall("Grant") if acl_node is not None else []
    if not grants:
        raise errors.MalformedACLError()
    for grant in grants:
        grantee = grant.find("Grantee")
        if grantee is None or child_text(grant, "Permission") is None:
            raise errors.MalformedACLError()
        if grantee.get(_XSI_TYPE) != "CanonicalUser" or child_text(grantee, "ID") != owner \
                or child_text(grant, "Permission") != "FULL_CONTROL":
            raise errors.NotImplemented_("Only the owner's FULL_CONTROL is supported: "
                                         "a bucket and its objects belong to its owner.")


# ---------------------------------------------------------------- object tags

async def get_object_tagging(services: Services, request: Request) -> Response:
    await _existing_object(services, request)
    return Response(headers=[XML], body=document("Tagging", "<TagSet></TagSet>"))


async def delete_object_tagging(services: Services, request: Request) -> Response:
    await _existing_object(services, request)
    return Response(status=204)

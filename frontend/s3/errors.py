"""S3 errors: one class per AWS error code; the class name is the code.

Each carries its HTTP status and default message; `S3Error.to_xml` renders the
error document. The frontend's one boundary (frontend/s3/app.py) turns store
refusals (common/errors.py, named like these) and these into responses, and logs
anything unexpected with its request id as InternalError.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

import common.errors as domain


class S3Error(Exception):
    status = 500
    message = "We encountered an internal error. Please try again."

    def __init__(self, message: str | None = None, **fields: str) -> None:
        super().__init__(message or self.message)
        self.text = message or self.message
        self.fields = fields
        self.headers: dict[str, str] = {}

    @property
    def code(self) -> str:
        return type(self).__name__

    def to_xml(self, resource: str, request_id: str) -> bytes:
        extra = "".join(f"<{name}>{escape(str(value))}</{name}>" for name, value in self.fields.items())
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{escape(self.text)}</Message>{extra}"
            f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
        ).encode("utf-8")


def _error(name: str, status: int, message: str) -> type[S3Error]:
    return type(name, (S3Error,), {"status": status, "message": message})


InternalError = _error("InternalError", 500, S3Error.message)
AccessDenied = _error("AccessDenied", 403, "Access Denied")
AuthorizationHeaderMalformed = _error("AuthorizationHeaderMalformed", 400, "The authorization header is malformed.")
AuthorizationQueryParametersError = _error("AuthorizationQueryParametersError", 400, "Error parsing the X-Amz-Credential parameter.")
BadRequest = _error("BadRequest", 400, "An error occurred when parsing the HTTP request.")
BadDigest = _error("BadDigest", 400, "The Content-MD5 or checksum you specified did not match what we received.")
BucketAlreadyExists = _error("BucketAlreadyExists", 409, "The requested bucket name is not available.")
BucketAlreadyOwnedByYou = _error("BucketAlreadyOwnedByYou", 409, "Your previous request to create the named bucket succeeded and you already own it.")
BucketNotEmpty = _error("BucketNotEmpty", 409, "The bucket you tried to delete is not empty.")
EntityTooLarge = _error("EntityTooLarge", 400, "Your proposed upload exceeds the maximum allowed object size.")
EntityTooSmall = _error("EntityTooSmall", 400, "Your proposed upload is smaller than the minimum allowed object size.")
ExpiredToken = _error("ExpiredToken", 400, "The provided token has expired.")
IncompleteBody = _error("IncompleteBody", 400, "You did not provide the number of bytes specified by the Content-Length HTTP header.")
InvalidAccessKeyId = _error("InvalidAccessKeyId", 403, "The AWS Access Key Id you provided does not exist in our records.")
InvalidArgument = _error("InvalidArgument", 400, "Invalid Argument")
InvalidBucketName = _error("InvalidBucketName", 400, "The specified bucket is not valid.")
InvalidDigest = _error("InvalidDigest", 400, "The Content-MD5 you specified is not valid.")
InvalidLocationConstraint = _error("InvalidLocationConstraint", 400, "The specified location-constraint is not valid.")
IllegalLocationConstraintException = _error("IllegalLocationConstraintException", 400, "The unspecified location constraint is incompatible for the region specific endpoint this request was sent to.")
InvalidPart = _error("InvalidPart", 400, "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.")
InvalidPartOrder = _error("InvalidPartOrder", 400, "The list of parts was not in ascending order. Parts must be ordered by part number.")
InvalidRange = _error("InvalidRange", 416, "The requested range is not satisfiable")
InvalidRequest = _error("InvalidRequest", 400, "Invalid Request")
InvalidStorageClass = _error("InvalidStorageClass", 400, "The storage class you specified is not valid.")
InvalidURI = _error("InvalidURI", 400, "Couldn't parse the specified URI.")
KeyTooLongError = _error("KeyTooLongError", 400, "Your key is too long.")
MalformedXML = _error("MalformedXML", 400, "The XML you provided was not well-formed or did not validate against our published schema.")
MetadataTooLarge = _error("MetadataTooLarge", 400, "Your metadata headers exceed the maximum allowed metadata size.")
MethodNotAllowed = _error("MethodNotAllowed", 405, "The specified method is not allowed against this resource.")
MissingContentLength = _error("MissingContentLength", 411, "You must provide the Content-Length HTTP header.")
MissingSecurityHeader = _error("MissingSecurityHeader", 400, "Your request was missing a required header.")
NoSuchBucket = _error("NoSuchBucket", 404, "The specified bucket does not exist.")
NoSuchKey = _error("NoSuchKey", 404, "The specified key does not exist.")
NoSuchUpload = _error("NoSuchUpload", 404, "The specified multipart upload does not exist. The upload ID might be invalid, or the multipart upload might have been aborted or completed.")
NotImplemented_ = _error("NotImplemented", 501, "A header or query you provided implies functionality that is not implemented.")
PreconditionFailed = _error("PreconditionFailed", 412, "At least one of the pre-conditions you specified did not hold.")
RequestTimeTooSkewed = _error("RequestTimeTooSkewed", 403, "The difference between the request time and the current time is too large.")
ServiceUnavailable = _error("ServiceUnavailable", 503, "Please reduce your request rate.")
SignatureDoesNotMatch = _error("SignatureDoesNotMatch", 403, "The request signature we calculated does not match the signature you provided. Check your key and signing method.")
XAmzContentSHA256Mismatch = _error("XAmzContentSHA256Mismatch", 400, "The provided 'x-amz-content-sha256' header does not match what was computed.")
InvalidObjectState = _error("InvalidObjectState", 403, "The operation is not valid for the object's storage class.")
ConditionalRequestConflict = _error("ConditionalRequestConflict", 409, "A conflicting conditional operation is currently in progress against this resource.")
SlowDown = _error("SlowDown", 503, "Please reduce your request rate.")
InsufficientStorage = _error("InsufficientStorage", 507, "The disks have no room for this object: each keeps a reserve "
                             "for compaction. Delete objects (their space returns after the reap delay and "
                             "compaction) or add disks (cairn disk add).")
UnexpectedContent = _error("UnexpectedContent", 400, "This request does not support content.")
MalformedACLError = _error("MalformedACLError", 400, "The XML you provided was not well-formed or did not validate against our published schema.")
# "None set": what S3 answers for a bucket configuration that was never set (frontend/s3/handlers/configuration.py).
NoSuchBucketPolicy = _error("NoSuchBucketPolicy", 404, "The bucket policy does not exist")
NoSuchCORSConfiguration = _error("NoSuchCORSConfiguration", 404, "The CORS configuration does not exist")
NoSuchLifecycleConfiguration = _error("NoSuchLifecycleConfiguration", 404, "The lifecycle configuration does not exist")
NoSuchPublicAccessBlockConfiguration = _error("NoSuchPublicAccessBlockConfiguration", 404, "The public access block configuration was not found")
NoSuchTagSet = _error("NoSuchTagSet", 404, "The TagSet does not exist")
NoSuchWebsiteConfiguration = _error("NoSuchWebsiteConfiguration", 404, "The specified bucket does not have a website configuration")
ObjectLockConfigurationNotFoundError = _error("ObjectLockConfigurationNotFoundError", 404, "Object Lock configuration does not exist for this bucket")
OwnershipControlsNotFoundError = _error("OwnershipControlsNotFoundError", 404, "The bucket ownership controls were not found")
ReplicationConfigurationNotFoundError = _error("ReplicationConfigurationNotFoundError", 404, "The replication configuration was not found")
ServerSideEncryptionConfigurationNotFoundError = _error("ServerSideEncryptionConfigurationNotFoundError", 404, "The server side encryption configuration was not found")

# Not an error: a 304 has no body and is raised only to leave the handler.
NotModified = _error("NotModified", 304, "Not Modified")

_DOMAIN_TO_S3: dict[type[domain.StoreError], type[S3Error]] = {
    domain.NoSuchBucket: NoSuchBucket,
    domain.NoSuchKey: NoSuchKey,
    domain.PreconditionFailed: PreconditionFailed,
    domain.NoSuchUpload: NoSuchUpload,
    domain.InvalidPart: InvalidPart,
    domain.InvalidPartOrder: InvalidPartOrder,
    domain.EntityTooSmall: EntityTooSmall,
    domain.BucketNotEmpty: BucketNotEmpty,
    domain.BucketAlreadyExists: BucketAlreadyExists,
    domain.BucketAlreadyOwnedByYou: BucketAlreadyOwnedByYou,
    domain.Expired: ServiceUnavailable,
    domain.WriteExpired: ServiceUnavailable,
    domain.OutcomeUnknown: ServiceUnavailable,
    domain.ServiceUnavailable: ServiceUnavailable,
    domain.InsufficientStorage: InsufficientStorage,
    domain.BlobNotFound: InternalError,
    domain.BlobCorrupt: InternalError,
}


# A store refusal's text is the name it refused (a bucket, an upload id) or an
# internal detail, never a message for clients: the S3 message is the class's,
# and the name travels as the field S3 puts it in.
_NAME_FIELD: dict[type[domain.StoreError], str] = {
    domain.NoSuchBucket: "BucketName", domain.BucketNotEmpty: "BucketName",
    domain.BucketAlreadyExists: "BucketName", domain.BucketAlreadyOwnedByYou: "BucketName",
    domain.NoSuchUpload: "UploadId",
}


def from_store_error(error: domain.StoreError) -> S3Error:
    """The S3 error a client sees for a store refusal."""
    kind = next((cls for cls in type(error).__mro__ if cls in _DOMAIN_TO_S3), None)
    if kind is None:                       # a refusal this table does not know yet: never a crash
        return InternalError()
    field = _NAME_FIELD.get(kind)
    if field is not None and error.args and isinstance(error.args[0], str):
        return _DOMAIN_TO_S3[kind](**{field: error.args[0]})
    return _DOMAIN_TO_S3[kind]()

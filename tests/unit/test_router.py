"""The router maps each request to the operation AWS documents for it.

Method: a table of request lines taken from the examples in the Amazon S3 API
Reference (each operation's "Request Syntax"/"Examples" section), checked in
path style and in virtual-host style; plus the fail-closed rules: unknown
subresources are NotImplemented, impossible method/path pairs MethodNotAllowed.
"""

from __future__ import annotations

import pytest

from frontend.s3 import errors, router

DOMAINS = ("s3.amazonaws.com", "localhost")

# (method, path-style path, query, copy-source header present, endpoint type, bucket, key)
TABLE = [
    ("GET", "/", "", False, router.ListBuckets, "", ""),
    ("PUT", "/amzn-s3-demo-bucket", "", False, router.CreateBucket, "amzn-s3-demo-bucket", ""),
    ("HEAD", "/amzn-s3-demo-bucket", "", False, router.HeadBucket, "amzn-s3-demo-bucket", ""),
    ("DELETE", "/examplebucket", "", False, router.DeleteBucket, "examplebucket", ""),
    ("GET", "/examplebucket", "location", False, router.GetBucketLocation, "examplebucket", ""),
    ("GET", "/examplebucket", "versioning", False, router.GetBucketVersioning, "examplebucket", ""),
    ("GET", "/quotes", "list-type=2&prefix=N&start-after=Ned&max-keys=40", False, router.ListObjectsV2, "quotes", ""),
    ("GET", "/quotes", "prefix=N&marker=Ned&max-keys=40", False, router.ListObjects, "quotes", ""),
    ("GET", "/example-bucket", "uploads&max-uploads=3", False, router.ListMultipartUploads, "example-bucket", ""),
    ("POST", "/examplebucket", "delete", False, router.DeleteObjects, "examplebucket", ""),
    ("PUT", "/examplebucket/my-image.jpg", "", False, router.PutObject, "examplebucket", "my-image.jpg"),
    ("PUT", "/examplebucket/my-second-image.jpg", "", True, router.CopyObject, "examplebucket", "my-second-image.jpg"),
    ("GET", "/examplebucket/my-image.jpg", "", False, router.GetObject, "examplebucket", "my-image.jpg"),
    ("GET", "/examplebucket/my-image.jpg", "response-content-type=text/plain", False, router.GetObject, "examplebucket", "my-image.jpg"),
    ("GET", "/examplebucket/my-image.jpg", "partNumber=2", False, router.GetObject, "examplebucket", "my-image.jpg"),
    ("HEAD", "/examplebucket/my-image.jpg", "", False, router.HeadObject, "examplebucket", "my-image.jpg"),
    ("DELETE", "/examplebucket/my-second-image.jpg", "", False, router.DeleteObject, "examplebucket", "my-second-image.jpg"),
    ("POST", "/example-bucket/example-object", "uploads", False, router.CreateMultipartUpload, "example-bucket", "example-object"),
    ("PUT", "/example-bucket/my-movie.m2ts", "partNumber=1&uploadId=VCVsb2FkIElEIGZvciBlbZZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZR",
     False, router.UploadPart, "example-bucket", "my-movie.m2ts"),
    ("PUT", "/example-bucket/newobject", "partNumber=2&uploadId=VXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA",
     True, router.UploadPartCopy, "example-bucket", "newobject"),
    ("POST", "/example-bucket/example-object", "uploadId=AAAsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA",
     False, router.CompleteMultipartUpload, "example-bucket", "example-object"),
    ("DELETE", "/example-bucket/example-object", "uploadId=VXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZ",
     False, router.AbortMultipartUpload, "example-bucket", "example-object"),
    ("GET", "/example-bucket/example-object", "uploadId=XXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA&max-parts=2&part-number-marker=1",
     False, router.ListParts, "example-bucket", "example-object"),
    # Keys keep every slash, including leading and doubled ones.
    ("GET", "/bucket//a//b/", "", False, router.GetObject, "bucket", "/a//b/"),
    ("PUT", "/bucket/photos/2006/February/sample.jpg", "", False, router.PutObject, "bucket", "photos/2006/February/sample.jpg"),
]


def _query(text: str) -> dict[str, str]:
    pairs = {}
    for part in filter(None, text.split("&")):
        name, _, value = part.partition("=")
        pairs[name] = value
    return pairs


@pytest.mark.parametrize("method,path,query,copy,expected,bucket,key", TABLE)
def test_path_style(method, path, query, copy, expected, bucket, key):
    endpoint = router.route(method, path, _query(query), "s3.amazonaws.com", copy_source=copy, domains=DOMAINS)
    assert type(endpoint) is expected
    assert (endpoint.bucket, endpoint.key) == (bucket, key)


@pytest.mark.parametrize("method,path,query,copy,expected,bucket,key", [row for row in TABLE if row[5]])
def test_virtual_host_style(method, path, query, copy, expected, bucket, key):
    virtual_path = "/" + key
    host = f"{bucket}.s3.amazonaws.com"
    endpoint = router.route(method, virtual_path, _query(query), host, copy_source=copy, domains=DOMAINS)
    assert type(endpoint) is expected
    assert (endpoint.bucket, endpoint.key) == (bucket, key)


def test_virtual_host_with_port_and_local_domain():
    endpoint = router.route("GET", "/photo.jpg", {}, "photos.localhost:9000", domains=DOMAINS)
    assert (type(endpoint), endpoint.bucket, endpoint.key) == (router.GetObject, "photos", "photo.jpg")


def test_ip_host_is_path_style():
    endpoint = router.route("GET", "/photos/photo.jpg", {}, "127.0.0.1:9000", domains=DOMAINS)
    assert (endpoint.bucket, endpoint.key) == ("photos", "photo.jpg")


@pytest.mark.parametrize("method,path,query,operation", [
    ("DELETE", "/bucket", "acl", "DeleteBucketAcl"),
    ("PUT", "/bucket", "tagging", "PutBucketTagging"),
    ("PUT", "/bucket", "cors", "PutBucketCors"),
    ("DELETE", "/bucket", "policy", "DeleteBucketPolicy"),
    ("GET", "/bucket", "analytics&id=a", "GetBucketAnalytics"),
    ("PUT", "/bucket", "versioning", "PutBucketVersioning"),
    ("PUT", "/bucket/key", "tagging", "PutObjectTagging"),
    ("GET", "/bucket/key", "retention", "GetObjectRetention"),
    ("POST", "/bucket/key", "select&select-type=2", "PostSelectObjectContent"),
])
def test_unknown_subresources_are_unsupported(method, path, query, operation):
    endpoint = router.route(method, path, _query(query), "", domains=DOMAINS)
    assert isinstance(endpoint, router.Unsupported)
    assert endpoint.operation == operation


@pytest.mark.parametrize("method,path,query", [
    ("POST", "/bucket", ""),
    ("POST", "/bucket/key", ""),
    ("PATCH", "/bucket/key", ""),
    ("PUT", "/", ""),
    ("DELETE", "/", ""),
])
def test_impossible_requests_are_method_not_allowed(method, path, query):
    with pytest.raises(errors.MethodNotAllowed):
        router.route(method, path, _query(query), "", domains=DOMAINS)


def test_bad_list_type_is_invalid_argument():
    with pytest.raises(errors.InvalidArgument):
        router.route("GET", "/bucket", {"list-type": "3"}, "", domains=DOMAINS)


@pytest.mark.parametrize("subresource", router.UNCONFIGURED_BUCKET_SUBRESOURCES)
def test_reading_a_configuration_cairn_has_none_of(subresource):
    endpoint = router.route("GET", "/bucket", _query(subresource), "", domains=DOMAINS)
    assert endpoint == router.GetBucketConfiguration("bucket", "", subresource)
    assert isinstance(router.route("PUT", "/bucket", _query(subresource), "", domains=DOMAINS), router.Unsupported)


@pytest.mark.parametrize("method,path,query,expected", [
    ("GET", "/bucket", "acl", router.GetBucketAcl("bucket")),
    ("PUT", "/bucket", "acl", router.PutBucketAcl("bucket")),
    ("GET", "/bucket/a/key", "acl", router.GetObjectAcl("bucket", "a/key")),
    ("PUT", "/bucket/a/key", "acl", router.PutObjectAcl("bucket", "a/key")),
    ("GET", "/bucket/key", "tagging", router.GetObjectTagging("bucket", "key")),
    ("DELETE", "/bucket/key", "tagging", router.DeleteObjectTagging("bucket", "key")),
])
def test_acl_and_object_tag_endpoints(method, path, query, expected):
    assert router.route(method, path, _query(query), "", domains=DOMAINS) == expected


def test_versions_and_version_ids():
    assert router.route("GET", "/bucket", _query("versions&prefix=a"), "", domains=DOMAINS) == router.ListObjectVersions("bucket")
    for method in ("GET", "HEAD", "DELETE"):
        assert type(router.route(method, "/bucket/key", _query("versionId=null"), "", domains=DOMAINS)) is not router.Unsupported
        with pytest.raises(errors.InvalidArgument):
            router.route(method, "/bucket/key", _query("versionId=3HL4kqtJlcpXroDTDmJ"), "", domains=DOMAINS)
    with pytest.raises(errors.InvalidArgument):
        router.route("GET", "/bucket/key", _query("acl&versionId=abc"), "", domains=DOMAINS)

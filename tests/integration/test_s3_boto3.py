"""End to end with the current boto3 (default checksums on) against a real `cairn dev`.

Property: every S3 operation Cairn supports answers a stock boto3 client exactly
as AWS S3 documents it — results, error codes and statuses, and that a refused
request changes nothing. Method: one server per scheme (the `two_users` fixture,
users alice and bob), every test parametrised over HTTP and HTTPS. Over HTTPS
boto3 sends uploads as `aws-chunked` with an unsigned CRC32 trailer and no
Content-Length; over HTTP it sends the checksum as a header on a signed payload,
so both integrity paths run for every upload here.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import hashlib
import itertools
import os
import threading
import time
import zlib

import pytest
import urllib3
from botocore import UNSIGNED
from botocore.exceptions import ClientError


pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
_names = itertools.count()
_lock = threading.Lock()


def unique(prefix: str = "b") -> str:
    with _lock:
        return f"{prefix}-{os.getpid()}-{next(_names)}"


def code_of(info: pytest.ExceptionInfo) -> str:
    return info.value.response["Error"]["Code"]


def status_of(info: pytest.ExceptionInfo) -> int:
    return info.value.response["ResponseMetadata"]["HTTPStatusCode"]


def request_id_of(response: dict) -> str:
    return response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-request-id", "")


@pytest.fixture(scope="module")
def s3_client(client_factory):
    return client_factory


@pytest.fixture(scope="module")
def alice(two_users, s3_client):
    return s3_client(two_users, "alice")


@pytest.fixture(scope="module")
def bob(two_users, s3_client):
    return s3_client(two_users, "bob")


@pytest.fixture
def bucket(alice):
    name = unique()
    alice.create_bucket(Bucket=name)
    return name


def _pool(server) -> urllib3.PoolManager:
    if server.ca_file:
        return urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=server.ca_file)
    return urllib3.PoolManager()


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


# -- buckets -------------------------------------------------------------------------


def test_list_buckets_shows_only_the_owners_buckets(alice, bob):
    mine, theirs = unique(), unique()
    alice.create_bucket(Bucket=mine)
    bob.create_bucket(Bucket=theirs)
    names = {bucket["Name"] for bucket in alice.list_buckets()["Buckets"]}
    assert mine in names and theirs not in names
    names = {bucket["Name"] for bucket in bob.list_buckets()["Buckets"]}
    assert theirs in names and mine not in names
    listing = alice.list_buckets()
    assert listing["Owner"]["ID"] == "alice"
    assert request_id_of(listing)


def test_create_bucket_location_constraint(alice):
    name = unique()
    alice.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert alice.get_bucket_location(Bucket=name)["LocationConstraint"] == "eu-west-1"
    assert alice.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "eu-west-1"
    plain = unique()
    alice.create_bucket(Bucket=plain)
    assert alice.get_bucket_location(Bucket=plain).get("LocationConstraint") in (None, "")


@pytest.mark.parametrize("name", ["ab", "UpperCase", "a..b", "192.168.1.1", "-abc", "abc-", "a" * 64, "a.-b", "xn--abc"])
def test_create_bucket_invalid_name(alice, name):
    with pytest.raises(ClientError) as info:
        alice.create_bucket(Bucket=name)
    assert code_of(info) == "InvalidBucketName"
    assert status_of(info) == 400
    assert request_id_of(info.value.response)


def test_create_bucket_twice_and_by_another_user(alice, bob, bucket):
    with pytest.raises(ClientError) as info:
        alice.create_bucket(Bucket=bucket)
    assert code_of(info) == "BucketAlreadyOwnedByYou" and status_of(info) == 409
    with pytest.raises(ClientError) as info:
        bob.create_bucket(Bucket=bucket)
    assert code_of(info) == "BucketAlreadyExists" and status_of(info) == 409


def test_head_bucket(alice, bob, bucket):
    assert alice.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(ClientError) as info:
        alice.head_bucket(Bucket=unique("absent"))
    assert status_of(info) == 404
    with pytest.raises(ClientError) as info:
        bob.head_bucket(Bucket=bucket)
    assert status_of(info) == 403


def test_delete_bucket_not_empty_objects_and_uploads(alice, bucket):
    alice.put_object(Bucket=bucket, Key="k", Body=b"x")
    with pytest.raises(ClientError) as info:
        alice.delete_bucket(Bucket=bucket)
    assert code_of(info) == "BucketNotEmpty" and status_of(info) == 409
    alice.delete_object(Bucket=bucket, Key="k")
    upload = alice.create_multipart_upload(Bucket=bucket, Key="pending")["UploadId"]
    with pytest.raises(ClientError) as info:
        alice.delete_bucket(Bucket=bucket)
    assert code_of(info) == "BucketNotEmpty"
    alice.abort_multipart_upload(Bucket=bucket, Key="pending", UploadId=upload)
    assert alice.delete_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as info:
        alice.head_bucket(Bucket=bucket)
    assert status_of(info) == 404
    with pytest.raises(ClientError) as info:
        alice.delete_bucket(Bucket=bucket)
    assert code_of(info) == "NoSuchBucket"
    # The message is S3's, not the store's internal text; the name is a field.
    assert info.value.response["Error"]["Message"] == "The specified bucket does not exist."
    assert info.value.response["Error"]["BucketName"] == bucket


def test_get_bucket_versioning(alice, bucket):
    response = alice.get_bucket_versioning(Bucket=bucket)
    assert "Status" not in response and response["ResponseMetadata"]["HTTPStatusCode"] == 200


# -- objects -------------------------------------------------------------------------


def test_put_get_head_delete_with_metadata_and_content_headers(alice, bucket):
    body = os.urandom(10_000)
    expires = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    put = alice.put_object(
        Bucket=bucket, Key="dir/obj.bin", Body=body, ContentType="application/x-test",
        ContentDisposition='attachment; filename="x.bin"', ContentLanguage="de", CacheControl="max-age=60",
        ContentEncoding="identity", Expires=expires, Metadata={"color": "blue", "Mixed-Case": "Value 1"},
    )
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    for response in (alice.get_object(Bucket=bucket, Key="dir/obj.bin"), alice.head_object(Bucket=bucket, Key="dir/obj.bin")):
        assert response["ETag"] == put["ETag"]
        assert response["ContentLength"] == len(body)
        assert response["ContentType"] == "application/x-test"
        assert response["ContentDisposition"] == 'attachment; filename="x.bin"'
        assert response["ContentLanguage"] == "de"
        assert response["CacheControl"] == "max-age=60"
        assert response["ContentEncoding"] == "identity"
        assert response["ExpiresString"] == "Wed, 02 Jan 2030 03:04:05 GMT"
        assert response["Metadata"] == {"color": "blue", "mixed-case": "Value 1"}
        assert response["AcceptRanges"] == "bytes"
        assert isinstance(response["LastModified"], dt.datetime)
    assert alice.get_object(Bucket=bucket, Key="dir/obj.bin")["Body"].read() == body
    assert alice.delete_object(Bucket=bucket, Key="dir/obj.bin")["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as info:
        alice.get_object(Bucket=bucket, Key="dir/obj.bin")
    assert code_of(info) == "NoSuchKey" and status_of(info) == 404
    assert request_id_of(info.value.response)
    with pytest.raises(ClientError) as info:
        alice.head_object(Bucket=bucket, Key="dir/obj.bin")
    assert status_of(info) == 404
    # Deleting an absent key succeeds, as in S3.
    assert alice.delete_object(Bucket=bucket, Key="dir/obj.bin")["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_default_content_type_and_empty_object(alice, bucket):
    alice.put_object(Bucket=bucket, Key="empty", Body=b"")
    response = alice.get_object(Bucket=bucket, Key="empty")
    assert response["ContentLength"] == 0 and response["Body"].read() == b""
    assert response["ETag"] == f'"{hashlib.md5(b"").hexdigest()}"'
    assert response["ContentType"] == "binary/octet-stream"


def test_large_object_round_trip(alice, bucket):
    body = os.urandom(3 * MiB + 17)
    alice.put_object(Bucket=bucket, Key="large", Body=body)
    assert alice.get_object(Bucket=bucket, Key="large")["Body"].read() == body


@pytest.mark.parametrize("header, status, expected_range", [
    ("bytes=0-9", 206, (0, 10)),
    ("bytes=10-19", 206, (10, 20)),
    ("bytes=90-", 206, (90, 100)),
    ("bytes=-5", 206, (95, 100)),
    ("bytes=-500", 206, (0, 100)),
    ("bytes=95-1000", 206, (95, 100)),
    ("bytes=99-99", 206, (99, 100)),
])
def test_range(alice, bucket, header, status, expected_range):
    body = bytes(range(100))
    alice.put_object(Bucket=bucket, Key="r", Body=body)
    response = alice.get_object(Bucket=bucket, Key="r", Range=header)
    start, end = expected_range
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert response["ContentRange"] == f"bytes {start}-{end - 1}/100"
    assert response["ContentLength"] == end - start
    assert response["Body"].read() == body[start:end]


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_range_not_satisfiable(alice, bucket, header):
    alice.put_object(Bucket=bucket, Key="r", Body=bytes(100))
    with pytest.raises(ClientError) as info:
        alice.get_object(Bucket=bucket, Key="r", Range=header)
    assert status_of(info) == 416 and code_of(info) == "InvalidRange"
    assert info.value.response["ResponseMetadata"]["HTTPHeaders"]["content-range"] == "bytes */100"


@pytest.mark.parametrize("header", ["bytes=0-", "bytes=0-0"])
def test_range_on_empty_object_is_not_satisfiable(alice, bucket, header):
    # AWS answers 416 InvalidRange for any first-byte range on a zero-length object.
    alice.put_object(Bucket=bucket, Key="empty", Body=b"")
    with pytest.raises(ClientError) as info:
        alice.get_object(Bucket=bucket, Key="empty", Range=header)
    assert status_of(info) == 416 and code_of(info) == "InvalidRange"


def test_read_conditions(alice, bucket):
    put = alice.put_object(Bucket=bucket, Key="c", Body=b"conditional")
    etag = put["ETag"]
    modified = alice.head_object(Bucket=bucket, Key="c")["LastModified"]
    before = modified - dt.timedelta(hours=1)
    after = modified + dt.timedelta(hours=1)
    for operation in (alice.get_object, alice.head_object):
        assert operation(Bucket=bucket, Key="c", IfMatch=etag)["ETag"] == etag
        assert operation(Bucket=bucket, Key="c", IfNoneMatch='"0123"')["ETag"] == etag
        assert operation(Bucket=bucket, Key="c", IfModifiedSince=before)["ETag"] == etag
        assert operation(Bucket=bucket, Key="c", IfUnmodifiedSince=after)["ETag"] == etag
        assert operation(Bucket=bucket, Key="c", IfUnmodifiedSince=modified)["ETag"] == etag
        for kwargs, status in [
            ({"IfMatch": '"0123"'}, 412),
            ({"IfUnmodifiedSince": before}, 412),
            ({"IfNoneMatch": etag}, 304),
            ({"IfNoneMatch": "*"}, 304),
            ({"IfModifiedSince": after}, 304),
            ({"IfModifiedSince": modified}, 304),
            # If-Match wins over a failing If-Unmodified-Since; If-None-Match over If-Modified-Since.
            ({"IfMatch": etag, "IfUnmodifiedSince": before, "IfNoneMatch": etag}, 304),
            ({"IfNoneMatch": '"0123"', "IfModifiedSince": after, "IfMatch": '"0123"'}, 412),
        ]:
            with pytest.raises(ClientError) as info:
                operation(Bucket=bucket, Key="c", **kwargs)
            assert status_of(info) == status, kwargs
        assert operation(Bucket=bucket, Key="c", IfMatch=etag, IfUnmodifiedSince=before)["ETag"] == etag
        assert operation(Bucket=bucket, Key="c", IfNoneMatch='"0123"', IfModifiedSince=after)["ETag"] == etag
    with pytest.raises(ClientError) as info:
        alice.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert info.value.response["ResponseMetadata"]["HTTPHeaders"]["etag"] == etag


_OVERRIDES = {
    "ResponseContentType": ("content-type", "text/x-override"),
    "ResponseContentLanguage": ("content-language", "fr"),
    "ResponseExpires": ("expires", "Thu, 01 Jan 2037 00:00:00 GMT"),
    "ResponseCacheControl": ("cache-control", "no-cache"),
    "ResponseContentDisposition": ("content-disposition", 'attachment; filename="ü b+c.txt"'.encode("utf-8").decode("latin-1")),
    "ResponseContentEncoding": ("content-encoding", "identity"),
}


def test_response_overrides_signed_and_presigned(two_users, alice, bucket):
    alice.put_object(Bucket=bucket, Key="o", Body=b"override", ContentType="text/plain", CacheControl="max-age=1")
    params = {name: value for name, (_, value) in _OVERRIDES.items()}
    params["ResponseContentDisposition"] = 'attachment; filename="b c+d.txt"'
    params["ResponseExpires"] = dt.datetime(2037, 1, 1, tzinfo=dt.timezone.utc)
    response = alice.get_object(Bucket=bucket, Key="o", **params)
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["content-type"] == "text/x-override"
    assert headers["content-language"] == "fr"
    assert headers["cache-control"] == "no-cache"
    assert headers["content-disposition"] == 'attachment; filename="b c+d.txt"'
    assert headers["content-encoding"] == "identity"
    assert headers["expires"] == "Thu, 01 Jan 2037 00:00:00 GMT"
    assert response["Body"].read() == b"override"
    params["ResponseExpires"] = "Thu, 01 Jan 2037 00:00:00 GMT"
    url = alice.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "o", **params}, ExpiresIn=300)
    answer = _pool(two_users).request("GET", url)
    assert answer.status == 200, answer.data
    assert answer.data == b"override"
    assert answer.headers["content-type"] == "text/x-override"
    assert answer.headers["content-disposition"] == 'attachment; filename="b c+d.txt"'
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["expires"] == "Thu, 01 Jan 2037 00:00:00 GMT"
    assert answer.headers["x-amz-request-id"]


def test_delete_objects_quiet_and_verbose(alice, bucket):
    keys = [f"d/{index} é+&<{index}" for index in range(12)]
    for key in keys:
        alice.put_object(Bucket=bucket, Key=key, Body=key.encode())
    response = alice.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys[:6]] + [{"Key": "absent"}]})
    assert sorted(item["Key"] for item in response["Deleted"]) == sorted(keys[:6] + ["absent"])
    assert not response.get("Errors")
    response = alice.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys[6:]], "Quiet": True})
    assert not response.get("Deleted") and not response.get("Errors")
    assert alice.list_objects_v2(Bucket=bucket, Prefix="d/")["KeyCount"] == 0


def test_delete_objects_of_another_users_bucket_is_denied(alice, bob, bucket):
    alice.put_object(Bucket=bucket, Key="keep", Body=b"x")
    with pytest.raises(ClientError) as info:
        bob.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "keep"}]})
    assert code_of(info) == "AccessDenied"
    assert alice.head_object(Bucket=bucket, Key="keep")["ContentLength"] == 1


# -- copy ----------------------------------------------------------------------------

AWKWARD_KEYS = ["plain", "with space", "plus+sign", "ünïcødé/ключ", "a&b=c?d#e", "100%/x", "emoji \U0001F600"]


@pytest.mark.parametrize("source_key, target_key", [(key, AWKWARD_KEYS[-1 - index]) for index, key in enumerate(AWKWARD_KEYS)])
def test_copy_object_awkward_keys(alice, bucket, source_key, target_key):
    body = os.urandom(5000)
    alice.put_object(Bucket=bucket, Key=source_key, Body=body, Metadata={"origin": "source"}, ContentType="text/source")
    target = target_key + "-copy"
    result = alice.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source_key})
    assert result["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    copied = alice.get_object(Bucket=bucket, Key=target)
    assert copied["Body"].read() == body
    assert copied["Metadata"] == {"origin": "source"} and copied["ContentType"] == "text/source"


def test_copy_object_directives_and_across_buckets(alice, bucket):
    other = unique()
    alice.create_bucket(Bucket=other)
    alice.put_object(Bucket=bucket, Key="src", Body=b"copy me", Metadata={"a": "1"}, ContentType="text/a")
    alice.copy_object(Bucket=other, Key="replaced", CopySource=f"{bucket}/src", MetadataDirective="REPLACE",
                      Metadata={"b": "2"}, ContentType="text/b")
    replaced = alice.head_object(Bucket=other, Key="replaced")
    assert replaced["Metadata"] == {"b": "2"} and replaced["ContentType"] == "text/b"
    alice.copy_object(Bucket=other, Key="kept", CopySource=f"{bucket}/src", MetadataDirective="COPY",
                      Metadata={"ignored": "x"})
    kept = alice.head_object(Bucket=other, Key="kept")
    assert kept["Metadata"] == {"a": "1"} and kept["ContentType"] == "text/a"
    assert alice.get_object(Bucket=other, Key="kept")["Body"].read() == b"copy me"
    with pytest.raises(ClientError) as info:
        alice.copy_object(Bucket=bucket, Key="x", CopySource=f"{bucket}/absent")
    assert code_of(info) == "NoSuchKey"


def test_copy_object_to_itself(alice, bucket):
    alice.put_object(Bucket=bucket, Key="self", Body=b"same", Metadata={"v": "1"})
    with pytest.raises(ClientError) as info:
        alice.copy_object(Bucket=bucket, Key="self", CopySource=f"{bucket}/self")
    assert code_of(info) == "InvalidRequest" and status_of(info) == 400
    assert alice.head_object(Bucket=bucket, Key="self")["Metadata"] == {"v": "1"}
    alice.copy_object(Bucket=bucket, Key="self", CopySource=f"{bucket}/self", MetadataDirective="REPLACE", Metadata={"v": "2"})
    head = alice.head_object(Bucket=bucket, Key="self")
    assert head["Metadata"] == {"v": "2"} and head["ContentLength"] == 4
    assert alice.get_object(Bucket=bucket, Key="self")["Body"].read() == b"same"


def test_copy_source_conditions(alice, bucket):
    etag = alice.put_object(Bucket=bucket, Key="cs", Body=b"conditional copy")["ETag"]
    modified = alice.head_object(Bucket=bucket, Key="cs")["LastModified"]
    before, after = modified - dt.timedelta(hours=1), modified + dt.timedelta(hours=1)
    source = f"{bucket}/cs"
    for kwargs in ({"CopySourceIfMatch": etag}, {"CopySourceIfNoneMatch": '"0123"'},
                   {"CopySourceIfModifiedSince": before}, {"CopySourceIfUnmodifiedSince": after}):
        alice.copy_object(Bucket=bucket, Key="ok", CopySource=source, **kwargs)
    for kwargs in ({"CopySourceIfMatch": '"0123"'}, {"CopySourceIfNoneMatch": etag},
                   {"CopySourceIfModifiedSince": after}, {"CopySourceIfUnmodifiedSince": before}):
        with pytest.raises(ClientError) as info:
            alice.copy_object(Bucket=bucket, Key="refused", CopySource=source, **kwargs)
        assert status_of(info) == 412 and code_of(info) == "PreconditionFailed", kwargs
    with pytest.raises(ClientError):
        alice.head_object(Bucket=bucket, Key="refused")


def test_copy_from_another_users_bucket_is_denied(alice, bob, bucket):
    alice.put_object(Bucket=bucket, Key="secret", Body=b"s")
    theirs = unique()
    bob.create_bucket(Bucket=theirs)
    with pytest.raises(ClientError) as info:
        bob.copy_object(Bucket=theirs, Key="stolen", CopySource=f"{bucket}/secret")
    assert code_of(info) == "AccessDenied"


# -- conditional writes ----------------------------------------------------------------


def test_conditional_put(alice, bucket):
    first = alice.put_object(Bucket=bucket, Key="lock", Body=b"one", IfNoneMatch="*")
    with pytest.raises(ClientError) as info:
        alice.put_object(Bucket=bucket, Key="lock", Body=b"two", IfNoneMatch="*")
    assert status_of(info) == 412 and code_of(info) == "PreconditionFailed"
    with pytest.raises(ClientError) as info:
        alice.put_object(Bucket=bucket, Key="lock", Body=b"two", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert status_of(info) == 412
    with pytest.raises(ClientError) as info:
        alice.put_object(Bucket=bucket, Key="absent", Body=b"two", IfMatch=first["ETag"])
    assert status_of(info) in (404, 412)
    assert alice.get_object(Bucket=bucket, Key="lock")["Body"].read() == b"one"
    alice.put_object(Bucket=bucket, Key="lock", Body=b"three", IfMatch=first["ETag"])
    assert alice.get_object(Bucket=bucket, Key="lock")["Body"].read() == b"three"
    with pytest.raises(ClientError):
        alice.head_object(Bucket=bucket, Key="absent")


def test_concurrent_if_none_match_creates_have_one_winner(two_users, s3_client, bucket):
    client = s3_client(two_users, "alice", max_pool_connections=32)
    barrier = threading.Barrier(32)

    def attempt(index: int):
        barrier.wait(timeout=30)
        try:
            client.put_object(Bucket=bucket, Key="terraform.tflock", Body=f"writer {index}".encode(), IfNoneMatch="*")
            return index, 200
        except ClientError as error:
            return index, error.response["ResponseMetadata"]["HTTPStatusCode"]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(attempt, range(32)))
    winners = [index for index, status in results if status == 200]
    assert len(winners) == 1, results
    assert all(status in (409, 412) for _, status in results if status != 200), results
    body = client.get_object(Bucket=bucket, Key="terraform.tflock")["Body"].read()
    assert body == f"writer {winners[0]}".encode()


def _two_part_upload(client, bucket, key, **create):
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    first, second = os.urandom(5 * MiB), os.urandom(1000)
    parts = []
    for number, data in ((1, first), (2, second)):
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    return upload, parts, first + second


def test_conditional_complete_multipart_upload(alice, bucket):
    existing = alice.put_object(Bucket=bucket, Key="mp", Body=b"already here")["ETag"]
    upload, parts, data = _two_part_upload(alice, bucket, "mp")
    with pytest.raises(ClientError) as info:
        alice.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": parts}, IfNoneMatch="*")
    assert status_of(info) == 412
    with pytest.raises(ClientError) as info:
        alice.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": parts},
                                        IfMatch='"0123456789abcdef0123456789abcdef"')
    assert status_of(info) == 412
    assert alice.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"already here"
    alice.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": parts}, IfMatch=existing)
    assert alice.get_object(Bucket=bucket, Key="mp")["Body"].read() == data
    upload, parts, data = _two_part_upload(alice, bucket, "fresh")
    alice.complete_multipart_upload(Bucket=bucket, Key="fresh", UploadId=upload, MultipartUpload={"Parts": parts}, IfNoneMatch="*")
    assert alice.head_object(Bucket=bucket, Key="fresh")["ContentLength"] == len(data)


# -- listing -------------------------------------------------------------------------

ORDER_KEYS = ["a", "a/b", "a%", "é", "\U0001F600", "Z", "\uff21", "a b", "a+b", "a&b<c>", "ctl\x01char", "tab\tkey", "~end"]


def _all_keys_v2(client, bucket, **kwargs):
    keys, token, pages = [], None, 0
    while True:
        extra = {"ContinuationToken": token} if token else {}
        page = client.list_objects_v2(Bucket=bucket, **kwargs, **extra)
        pages += 1
        keys += [item["Key"] for item in page.get("Contents", [])]
        keys += [item["Prefix"] for item in page.get("CommonPrefixes", [])]
        assert page["KeyCount"] == len(page.get("Contents", [])) + len(page.get("CommonPrefixes", []))
        if not page["IsTruncated"]:
            return keys, pages
        token = page["NextContinuationToken"]


def test_list_order_is_raw_utf8_bytes_and_encoding_round_trips(alice, bucket):
    for key in ORDER_KEYS:
        alice.put_object(Bucket=bucket, Key=key, Body=b"")
    expected = sorted(ORDER_KEYS, key=lambda key: key.encode("utf-8"))
    assert expected.index("\uff21") < expected.index("\U0001F600")  # differs from UTF-16 order
    listed = [item["Key"] for item in alice.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == expected
    listed_v1 = [item["Key"] for item in alice.list_objects(Bucket=bucket)["Contents"]]
    assert listed_v1 == expected
    keys, pages = _all_keys_v2(alice, bucket, MaxKeys=2)
    assert keys == expected and pages == (len(expected) + 1) // 2


def test_list_objects_v2_prefix_delimiter_start_after_fetch_owner(alice, bucket):
    keys = ["photos/2024/a.jpg", "photos/2024/b.jpg", "photos/2025/c.jpg", "photos/top.jpg", "docs/x", "readme"]
    for key in keys:
        alice.put_object(Bucket=bucket, Key=key, Body=b"x")
    page = alice.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [item["Key"] for item in page["Contents"]] == ["readme"]
    assert [item["Prefix"] for item in page["CommonPrefixes"]] == ["docs/", "photos/"]
    page = alice.list_objects_v2(Bucket=bucket, Prefix="photos/", Delimiter="/")
    assert [item["Key"] for item in page["Contents"]] == ["photos/top.jpg"]
    assert [item["Prefix"] for item in page["CommonPrefixes"]] == ["photos/2024/", "photos/2025/"]
    assert page["Prefix"] == "photos/" and page["Delimiter"] == "/"
    page = alice.list_objects_v2(Bucket=bucket, Prefix="photos/2024/")
    assert [item["Key"] for item in page["Contents"]] == ["photos/2024/a.jpg", "photos/2024/b.jpg"]
    page = alice.list_objects_v2(Bucket=bucket, StartAfter="photos/2024/a.jpg")
    assert [item["Key"] for item in page["Contents"]] == ["photos/2024/b.jpg", "photos/2025/c.jpg", "photos/top.jpg", "readme"]
    assert page["StartAfter"] == "photos/2024/a.jpg"
    collected, pages = _all_keys_v2(alice, bucket, Delimiter="/", Prefix="photos/", MaxKeys=1)
    assert collected == ["photos/2024/", "photos/2025/", "photos/top.jpg"] and pages == 3
    page = alice.list_objects_v2(Bucket=bucket, MaxKeys=2)
    assert page["IsTruncated"] and page["MaxKeys"] == 2 and page["KeyCount"] == 2
    assert all("Owner" not in item for item in page["Contents"])
    page = alice.list_objects_v2(Bucket=bucket, FetchOwner=True)
    assert all(item["Owner"]["ID"] == "alice" for item in page["Contents"])
    page = alice.list_objects_v2(Bucket=bucket, Prefix="nothing/")
    assert page["KeyCount"] == 0 and "Contents" not in page and not page["IsTruncated"]
    with pytest.raises(ClientError) as info:
        alice.list_objects_v2(Bucket=bucket, ContinuationToken="not-a-token")
    assert code_of(info) == "InvalidArgument"


def test_list_objects_v1_marker_paging(alice, bucket):
    keys = [f"k{index:03d}" for index in range(25)] + ["p/1", "p/2", "q/1"]
    for key in keys:
        alice.put_object(Bucket=bucket, Key=key, Body=b"")
    collected, marker = [], ""
    while True:
        page = alice.list_objects(Bucket=bucket, Marker=marker, MaxKeys=7)
        contents = [item["Key"] for item in page.get("Contents", [])]
        collected += contents
        assert page["MaxKeys"] == 7 and len(contents) <= 7
        assert all(item["Owner"]["ID"] == "alice" for item in page.get("Contents", []))
        if not page["IsTruncated"]:
            break
        marker = contents[-1]
    assert collected == sorted(keys)
    collected, marker = [], ""
    while True:
        page = alice.list_objects(Bucket=bucket, Marker=marker, MaxKeys=10, Delimiter="/")
        items = [item["Key"] for item in page.get("Contents", [])] + [item["Prefix"] for item in page.get("CommonPrefixes", [])]
        collected += items
        if not page["IsTruncated"]:
            break
        marker = page["NextMarker"]
    assert sorted(collected) == sorted([f"k{index:03d}" for index in range(25)] + ["p/", "q/"])
    assert len(collected) == len(set(collected))


def test_list_awkward_keys_with_and_without_url_encoding(two_users, alice, bucket):
    keys = ["sp ace", "plus+", "per%cent", "amp&lt;", "line\nfeed", "ctl\x01", "quote\"'", "ü/ß"]
    for key in keys:
        alice.put_object(Bucket=bucket, Key=key, Body=b"")
    # boto3 always asks for encoding-type=url and decodes the answer.
    listed = [item["Key"] for item in alice.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == sorted(keys, key=lambda key: key.encode())
    # The raw answer with encoding-type=url carries each key percent-encoded.
    url = alice.generate_presigned_url("list_objects_v2", Params={"Bucket": bucket, "EncodingType": "url"})
    answer = _pool(two_users).request("GET", url)
    assert answer.status == 200
    text = answer.data.decode()
    assert "<EncodingType>url</EncodingType>" in text
    assert "<Key>sp%20ace</Key>" in text and "<Key>plus%2B</Key>" in text and "<Key>ctl%01</Key>" in text
    assert "<Key>line%0Afeed</Key>" in text and "<Key>%C3%BC/%C3%9F</Key>" in text
    page = alice.list_objects_v2(Bucket=bucket, Delimiter="/", Prefix="ü/")
    assert [item["Key"] for item in page["Contents"]] == ["ü/ß"] and page["Prefix"] == "ü/"


# -- multipart -----------------------------------------------------------------------


def test_multipart_upload_lifecycle(alice, bucket):
    key = "multi part+ü"
    upload = alice.create_multipart_upload(Bucket=bucket, Key=key, ContentType="video/x", Metadata={"m": "1"})["UploadId"]
    uploads = alice.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(item["Key"], item["UploadId"]) for item in uploads] == [(key, upload)]
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(123)]
    etags = []
    for number, data in enumerate(parts_data, start=1):
        etags.append(alice.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data)["ETag"])
        assert etags[-1] == f'"{hashlib.md5(data).hexdigest()}"'
    listed = alice.list_parts(Bucket=bucket, Key=key, UploadId=upload)
    assert [(part["PartNumber"], part["ETag"], part["Size"]) for part in listed["Parts"]] == \
        [(number, etag, len(data)) for number, (etag, data) in enumerate(zip(etags, parts_data), start=1)]
    page = alice.list_parts(Bucket=bucket, Key=key, UploadId=upload, MaxParts=2)
    assert page["IsTruncated"] and [part["PartNumber"] for part in page["Parts"]] == [1, 2]
    page = alice.list_parts(Bucket=bucket, Key=key, UploadId=upload, PartNumberMarker=page["NextPartNumberMarker"])
    assert [part["PartNumber"] for part in page["Parts"]] == [3] and not page["IsTruncated"]
    result = alice.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(etags, start=1)]})
    expected_etag = hashlib.md5(b"".join(hashlib.md5(data).digest() for data in parts_data)).hexdigest() + "-3"
    assert result["ETag"] == f'"{expected_etag}"'
    obj = alice.get_object(Bucket=bucket, Key=key)
    assert obj["ETag"] == f'"{expected_etag}"' and obj["ContentType"] == "video/x" and obj["Metadata"] == {"m": "1"}
    assert obj["Body"].read() == b"".join(parts_data)
    ranged = alice.get_object(Bucket=bucket, Key=key, Range=f"bytes={5 * MiB - 10}-{5 * MiB + 9}")["Body"].read()
    assert ranged == b"".join(parts_data)[5 * MiB - 10: 5 * MiB + 10]
    part = alice.get_object(Bucket=bucket, Key=key, PartNumber=2)
    assert part["Body"].read() == parts_data[1] and part["PartsCount"] == 3
    assert part["ContentRange"] == f"bytes {5 * MiB}-{10 * MiB - 1}/{len(b''.join(parts_data))}"
    with pytest.raises(ClientError) as info:
        alice.get_object(Bucket=bucket, Key=key, PartNumber=2, Range="bytes=0-1")
    assert code_of(info) == "InvalidRequest" and status_of(info) == 400
    assert alice.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClientError) as info:
        alice.list_parts(Bucket=bucket, Key=key, UploadId=upload)
    assert code_of(info) == "NoSuchUpload"


def test_multipart_complete_refusals(alice, bucket):
    upload = alice.create_multipart_upload(Bucket=bucket, Key="bad")["UploadId"]
    small = [alice.upload_part(Bucket=bucket, Key="bad", UploadId=upload, PartNumber=number, Body=b"x" * 1000)["ETag"]
             for number in (1, 2)]
    parts = [{"PartNumber": 1, "ETag": small[0]}, {"PartNumber": 2, "ETag": small[1]}]
    with pytest.raises(ClientError) as info:
        alice.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=upload, MultipartUpload={"Parts": parts})
    assert code_of(info) == "EntityTooSmall" and status_of(info) == 400
    with pytest.raises(ClientError) as info:
        alice.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=upload,
                                        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"0123456789abcdef0123456789abcdef"'}]})
    assert code_of(info) == "InvalidPart"
    with pytest.raises(ClientError) as info:
        alice.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=upload,
                                        MultipartUpload={"Parts": [{"PartNumber": 3, "ETag": small[0]}]})
    assert code_of(info) == "InvalidPart"
    with pytest.raises(ClientError) as info:
        alice.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=upload, MultipartUpload={"Parts": parts[::-1]})
    assert code_of(info) == "InvalidPartOrder"
    with pytest.raises(ClientError):
        alice.head_object(Bucket=bucket, Key="bad")
    # A single small part is a valid (last) part.
    alice.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=upload, MultipartUpload={"Parts": parts[:1]})
    assert alice.get_object(Bucket=bucket, Key="bad")["Body"].read() == b"x" * 1000
    with pytest.raises(ClientError) as info:
        alice.upload_part(Bucket=bucket, Key="bad", UploadId="no-such-upload", PartNumber=1, Body=b"x")
    assert code_of(info) == "NoSuchUpload"


def test_abort_multipart_upload(alice, bucket):
    upload = alice.create_multipart_upload(Bucket=bucket, Key="aborted")["UploadId"]
    alice.upload_part(Bucket=bucket, Key="aborted", UploadId=upload, PartNumber=1, Body=b"data")
    assert alice.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=upload)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as info:
        alice.list_parts(Bucket=bucket, Key="aborted", UploadId=upload)
    assert code_of(info) == "NoSuchUpload" and status_of(info) == 404
    assert info.value.response["Error"]["Message"].startswith("The specified multipart upload does not exist.")
    assert info.value.response["Error"]["UploadId"] == upload
    with pytest.raises(ClientError) as info:
        alice.complete_multipart_upload(Bucket=bucket, Key="aborted", UploadId=upload,
                                        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]})
    assert code_of(info) == "NoSuchUpload"


def test_list_multipart_uploads_prefix_delimiter_paging(alice, bucket):
    created = []
    for key in ["u/1", "u/2", "u/2", "v/1", "w"]:
        created.append((key, alice.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]))
    listed = alice.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert sorted((item["Key"], item["UploadId"]) for item in listed) == sorted(created)
    page = alice.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert [item["Prefix"] for item in page["CommonPrefixes"]] == ["u/", "v/"]
    assert [item["Key"] for item in page["Uploads"]] == ["w"]
    page = alice.list_multipart_uploads(Bucket=bucket, Prefix="u/")
    assert len(page["Uploads"]) == 3
    collected, key_marker, upload_marker = [], "", ""
    while True:
        page = alice.list_multipart_uploads(Bucket=bucket, MaxUploads=2, KeyMarker=key_marker, UploadIdMarker=upload_marker)
        collected += [(item["Key"], item["UploadId"]) for item in page.get("Uploads", [])]
        if not page["IsTruncated"]:
            break
        key_marker, upload_marker = page["NextKeyMarker"], page["NextUploadIdMarker"]
    assert sorted(collected) == sorted(created) and len(collected) == len(created)
    for key, upload in created:
        alice.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)


def test_upload_part_copy_with_range(alice, bucket):
    source = os.urandom(6 * MiB)
    alice.put_object(Bucket=bucket, Key="copy source", Body=source)
    upload = alice.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    first = alice.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=1,
                                   CopySource={"Bucket": bucket, "Key": "copy source"},
                                   CopySourceRange=f"bytes=0-{5 * MiB - 1}")["CopyPartResult"]["ETag"]
    assert first == f'"{hashlib.md5(source[:5 * MiB]).hexdigest()}"'
    second = alice.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=2,
                                    CopySource=f"{bucket}/copy source", CopySourceRange=f"bytes={MiB}-{6 * MiB - 1}")["CopyPartResult"]["ETag"]
    third = alice.upload_part(Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=3, Body=b"tail")["ETag"]
    with pytest.raises(ClientError) as info:
        alice.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=4,
                               CopySource=f"{bucket}/copy source", CopySourceRange=f"bytes=0-{6 * MiB}")
    assert code_of(info) == "InvalidRange"
    alice.complete_multipart_upload(Bucket=bucket, Key="assembled", UploadId=upload, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": second}, {"PartNumber": 3, "ETag": third}]})
    assert alice.get_object(Bucket=bucket, Key="assembled")["Body"].read() == source[:5 * MiB] + source[MiB:] + b"tail"


# -- checksums -----------------------------------------------------------------------

ALGORITHMS = ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"]


def _checksum(algorithm: str, data: bytes) -> str:
    from common.checksums import checksum_of

    return checksum_of(algorithm.lower(), data)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checksum_computed_by_sdk_is_verified_stored_and_returned(alice, bucket, algorithm):
    # Over HTTP boto3 sends it as a header, over HTTPS as an aws-chunked trailer.
    data = os.urandom(70_000)
    put = alice.put_object(Bucket=bucket, Key="sum", Body=data, ChecksumAlgorithm=algorithm)
    assert put[f"Checksum{algorithm}"] == _checksum(algorithm, data)
    for operation in (alice.get_object, alice.head_object):
        response = operation(Bucket=bucket, Key="sum", ChecksumMode="ENABLED")
        assert response[f"Checksum{algorithm}"] == _checksum(algorithm, data)
    assert alice.get_object(Bucket=bucket, Key="sum", ChecksumMode="ENABLED")["Body"].read() == data


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checksum_header_given_by_caller(alice, bucket, algorithm):
    data = b"explicit checksum header"
    alice.put_object(Bucket=bucket, Key="given", Body=data, **{f"Checksum{algorithm}": _checksum(algorithm, data)})
    assert alice.head_object(Bucket=bucket, Key="given", ChecksumMode="ENABLED")[f"Checksum{algorithm}"] == _checksum(algorithm, data)
    with pytest.raises(ClientError) as info:
        alice.put_object(Bucket=bucket, Key="wrong", Body=data, **{f"Checksum{algorithm}": _checksum(algorithm, b"other")})
    assert code_of(info) == "BadDigest" and status_of(info) == 400
    with pytest.raises(ClientError) as info:
        alice.head_object(Bucket=bucket, Key="wrong")
    assert status_of(info) == 404


def test_content_md5(alice, bucket):
    data = os.urandom(10_000)
    alice.put_object(Bucket=bucket, Key="md5", Body=data, ContentMD5=_b64(hashlib.md5(data).digest()))
    with pytest.raises(ClientError) as info:
        alice.put_object(Bucket=bucket, Key="md5-bad", Body=data, ContentMD5=_b64(hashlib.md5(b"other").digest()))
    assert code_of(info) == "BadDigest"
    with pytest.raises(ClientError):
        alice.head_object(Bucket=bucket, Key="md5-bad")
    with pytest.raises(ClientError) as info:
        alice.put_object(Bucket=bucket, Key="md5-bad", Body=data, ContentMD5="not base64!")
    assert code_of(info) == "InvalidDigest"
    with pytest.raises(ClientError):
        alice.head_object(Bucket=bucket, Key="md5-bad")


@pytest.mark.parametrize("algorithm, checksum_type", [("SHA256", "COMPOSITE"), ("CRC32", "FULL_OBJECT"),
                                                      ("CRC32C", "COMPOSITE"), ("CRC64NVME", "FULL_OBJECT")])
def test_multipart_checksums_per_part(alice, bucket, algorithm, checksum_type):
    upload = alice.create_multipart_upload(Bucket=bucket, Key="mp-sum", ChecksumAlgorithm=algorithm,
                                           ChecksumType=checksum_type)["UploadId"]
    datas = [os.urandom(5 * MiB), os.urandom(4321)]
    parts = []
    for number, data in enumerate(datas, start=1):
        response = alice.upload_part(Bucket=bucket, Key="mp-sum", UploadId=upload, PartNumber=number, Body=data,
                                     ChecksumAlgorithm=algorithm)
        assert response[f"Checksum{algorithm}"] == _checksum(algorithm, data)
        parts.append({"PartNumber": number, "ETag": response["ETag"], f"Checksum{algorithm}": response[f"Checksum{algorithm}"]})
    listed = alice.list_parts(Bucket=bucket, Key="mp-sum", UploadId=upload)["Parts"]
    assert [part[f"Checksum{algorithm}"] for part in listed] == [_checksum(algorithm, data) for data in datas]
    result = alice.complete_multipart_upload(Bucket=bucket, Key="mp-sum", UploadId=upload, MultipartUpload={"Parts": parts})
    if checksum_type == "COMPOSITE":
        joined = b"".join(base64.b64decode(_checksum(algorithm, data)) for data in datas)
        expected = f"{_checksum(algorithm, joined)}-2"
    else:
        expected = _checksum(algorithm, b"".join(datas))
    assert result[f"Checksum{algorithm}"] == expected
    head = alice.head_object(Bucket=bucket, Key="mp-sum", ChecksumMode="ENABLED")
    assert head[f"Checksum{algorithm}"] == expected and head["ChecksumType"] == checksum_type
    part = alice.head_object(Bucket=bucket, Key="mp-sum", PartNumber=2)
    assert part["ContentLength"] == len(datas[1])


def test_upload_part_with_wrong_checksum_is_refused(alice, bucket):
    upload = alice.create_multipart_upload(Bucket=bucket, Key="mp-bad", ChecksumAlgorithm="SHA256")["UploadId"]
    with pytest.raises(ClientError) as info:
        alice.upload_part(Bucket=bucket, Key="mp-bad", UploadId=upload, PartNumber=1, Body=b"part",
                          ChecksumSHA256=_checksum("SHA256", b"not the part"))
    assert code_of(info) == "BadDigest"
    assert alice.list_parts(Bucket=bucket, Key="mp-bad", UploadId=upload).get("Parts", []) == []
    alice.abort_multipart_upload(Bucket=bucket, Key="mp-bad", UploadId=upload)


# -- presigned URLs and auth ---------------------------------------------------------------


def test_presigned_get_and_put(two_users, alice, bucket):
    pool = _pool(two_users)
    put_url = alice.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "pre signed+ü"}, ExpiresIn=300)
    answer = pool.request("PUT", put_url, body=b"presigned body")
    assert answer.status == 200, answer.data
    assert answer.headers["etag"] == f'"{hashlib.md5(b"presigned body").hexdigest()}"'
    get_url = alice.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre signed+ü"}, ExpiresIn=300)
    answer = pool.request("GET", get_url)
    assert answer.status == 200 and answer.data == b"presigned body"
    tampered = get_url.replace("pre%20signed", "pre%20signeD")
    answer = pool.request("GET", tampered)
    assert answer.status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in answer.data


def test_presigned_url_expires(two_users, alice, bucket):
    alice.put_object(Bucket=bucket, Key="soon", Body=b"x")
    pool = _pool(two_users)
    get_url = alice.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "soon"}, ExpiresIn=1)
    put_url = alice.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "late"}, ExpiresIn=1)
    time.sleep(2.2)
    answer = pool.request("GET", get_url)
    assert answer.status == 403 and b"<Code>AccessDenied</Code>" in answer.data
    assert answer.headers["x-amz-request-id"]
    answer = pool.request("PUT", put_url, body=b"too late")
    assert answer.status == 403 and b"<Code>AccessDenied</Code>" in answer.data
    with pytest.raises(ClientError):
        alice.head_object(Bucket=bucket, Key="late")


def test_wrong_secret_unknown_key_and_anonymous(two_users, s3_client, alice, bucket):
    alice.put_object(Bucket=bucket, Key="guarded", Body=b"x")
    wrong = s3_client(two_users, "alice", secret_key="not-alices-secret-at-all-000000000000000")
    for call in (lambda: wrong.get_object(Bucket=bucket, Key="guarded"),
                 lambda: wrong.put_object(Bucket=bucket, Key="intruder", Body=b"x"),
                 lambda: wrong.list_buckets()):
        with pytest.raises(ClientError) as info:
            call()
        assert code_of(info) == "SignatureDoesNotMatch" and status_of(info) == 403
        assert request_id_of(info.value.response)
    unknown = s3_client(two_users, access_key="NOSUCHACCESSKEY00000", secret_key="whatever-secret-000000000000000000000")
    with pytest.raises(ClientError) as info:
        unknown.list_objects_v2(Bucket=bucket)
    assert code_of(info) == "InvalidAccessKeyId" and status_of(info) == 403
    anonymous = s3_client(two_users, "alice", signature_version=UNSIGNED)
    for call in (lambda: anonymous.get_object(Bucket=bucket, Key="guarded"),
                 lambda: anonymous.put_object(Bucket=bucket, Key="intruder", Body=b"x"),
                 lambda: anonymous.list_objects_v2(Bucket=bucket)):
        with pytest.raises(ClientError) as info:
            call()
        assert code_of(info) == "AccessDenied" and status_of(info) == 403
    with pytest.raises(ClientError):
        alice.head_object(Bucket=bucket, Key="intruder")


def test_another_users_bucket_is_denied(alice, bob, bucket):
    alice.put_object(Bucket=bucket, Key="mine", Body=b"x")
    calls = [
        lambda: bob.get_object(Bucket=bucket, Key="mine"),
        lambda: bob.put_object(Bucket=bucket, Key="theirs", Body=b"y"),
        lambda: bob.delete_object(Bucket=bucket, Key="mine"),
        lambda: bob.list_objects_v2(Bucket=bucket),
        lambda: bob.list_objects(Bucket=bucket),
        lambda: bob.delete_bucket(Bucket=bucket),
        lambda: bob.get_bucket_location(Bucket=bucket),
        lambda: bob.create_multipart_upload(Bucket=bucket, Key="theirs"),
        lambda: bob.list_multipart_uploads(Bucket=bucket),
    ]
    for call in calls:
        with pytest.raises(ClientError) as info:
            call()
        assert code_of(info) == "AccessDenied" and status_of(info) == 403
    assert [item["Key"] for item in alice.list_objects_v2(Bucket=bucket)["Contents"]] == ["mine"]


# -- addressing ----------------------------------------------------------------------


def test_virtual_host_addressing(two_users, s3_client, alice):
    virtual = s3_client(two_users, "alice", addressing="virtual")
    name = unique("vhost")
    virtual.create_bucket(Bucket=name)
    assert virtual.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    virtual.put_object(Bucket=name, Key="dir/key with space+ü", Body=b"virtual")
    assert virtual.get_object(Bucket=name, Key="dir/key with space+ü")["Body"].read() == b"virtual"
    assert alice.get_object(Bucket=name, Key="dir/key with space+ü")["Body"].read() == b"virtual"
    assert [item["Key"] for item in virtual.list_objects_v2(Bucket=name)["Contents"]] == ["dir/key with space+ü"]
    virtual.delete_objects(Bucket=name, Delete={"Objects": [{"Key": "dir/key with space+ü"}]})
    virtual.delete_bucket(Bucket=name)
    with pytest.raises(ClientError):
        alice.head_bucket(Bucket=name)


def test_request_id_on_every_response(alice, bucket):
    responses = [alice.list_buckets(), alice.put_object(Bucket=bucket, Key="id", Body=b"x"),
                 alice.head_object(Bucket=bucket, Key="id"), alice.delete_object(Bucket=bucket, Key="id")]
    ids = [request_id_of(response) for response in responses]
    for call in (lambda: alice.head_object(Bucket=bucket, Key="id"), lambda: alice.get_object(Bucket=bucket, Key="id"),
                 lambda: alice.head_bucket(Bucket=unique("none"))):
        with pytest.raises(ClientError) as info:
            call()
        ids.append(request_id_of(info.value.response))
    assert all(ids) and len(set(ids)) == len(ids)


def test_crc32_of_whole_object_matches_zlib(alice, bucket):
    data = os.urandom(1 * MiB + 3)
    alice.put_object(Bucket=bucket, Key="crc", Body=data)
    head = alice.head_object(Bucket=bucket, Key="crc", ChecksumMode="ENABLED")
    assert base64.b64decode(head["ChecksumCRC32"]) == zlib.crc32(data).to_bytes(4, "big")


def test_boto3_sends_trailers_over_https_and_headers_over_http(two_users, s3_client, bucket):
    """Guards the premise of this module: both integrity paths are really exercised."""
    client = s3_client(two_users, "alice")
    seen = []
    client.meta.events.register("before-send.s3.PutObject", lambda request, **_: seen.append(dict(request.headers)))
    client.put_object(Bucket=bucket, Key="path", Body=b"which path")
    headers = {name.lower(): value.decode() if isinstance(value, bytes) else value for name, value in seen[0].items()}
    if two_users.scheme == "https":
        assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        assert headers["x-amz-trailer"] == "x-amz-checksum-crc32"
        assert "aws-chunked" in headers["content-encoding"]
    else:
        assert "x-amz-checksum-crc32" in headers and "x-amz-trailer" not in headers
    assert client.get_object(Bucket=bucket, Key="path")["Body"].read() == b"which path"


def test_transfer_manager_multipart_round_trip(alice, bucket):
    """boto3's transfer manager: concurrent parts with per-part CRC32, the checksums
    repeated in Complete, then a concurrent ranged download."""
    import io

    from boto3.s3.transfer import TransferConfig

    data = os.urandom(17 * MiB + 5)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
    alice.upload_fileobj(io.BytesIO(data), bucket, "transfer/big ü+.bin", Config=config)
    head = alice.head_object(Bucket=bucket, Key="transfer/big ü+.bin", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-4"')
    # No checksum type asked for: CRC32 is COMPOSITE, the CRC32 of the part CRC32s, "-N" (as AWS).
    parts = [data[start:start + 5 * MiB] for start in range(0, len(data), 5 * MiB)]
    joined = b"".join(base64.b64decode(_checksum("CRC32", part)) for part in parts)
    assert head["ChecksumType"] == "COMPOSITE" and head["ChecksumCRC32"] == f"{_checksum('CRC32', joined)}-4"
    out = io.BytesIO()
    alice.download_fileobj(bucket, "transfer/big ü+.bin", out, Config=config)
    assert out.getvalue() == data


def test_zz_server_logged_no_tracebacks(two_users):
    """Runs last for each server: no request in this module made it log a traceback or a 500."""
    assert two_users.tracebacks() == [], two_users.stderr()[-5000:]

"""Bucket configurations Cairn has none of, ACLs and object tags, through boto3 against `cairn dev`.

Property (frontend/s3/handlers/configuration.py):
- Reading a bucket configuration Cairn has no feature for answers what S3 answers
  for a bucket where it was never set: its own 404 error code, or the empty
  document for accelerate, request payment, logging and notification.
  Setting one is NotImplemented and changes nothing.
- The one ACL is the owner's FULL_CONTROL. Get*Acl answer it. Put*Acl accept the
  canned private ACL, or that very document, and refuse any other grant
  (NotImplemented), after which the ACL read back is still the owner's alone.
- Object tags: an existing object has an empty TagSet, and deleting its tags
  succeeds. Setting tags is NotImplemented. A missing object is NoSuchKey.
- Buckets are unversioned: ListObjectVersions lists every object once, as its
  `null` version and the latest one, with no delete markers. It pages with the
  paginator, rolls up prefixes, and matches ListObjectsV2. boto3's
  `object_versions.delete()` empties a bucket. `VersionId=null` names the object;
  any other version id is InvalidArgument, and a DELETE naming one removes nothing.
- A write that asks for what Cairn does not do is NotImplemented, and stores
  nothing. That covers server-side encryption (SSE-S3, SSE-KMS, SSE-C), tags,
  object lock, a website redirect, and an ACL or grant other than the owner's. It
  holds for PutObject, CopyObject, CreateMultipartUpload and CreateBucket.
- Another user gets AccessDenied and a missing bucket NoSuchBucket, for reads and
  writes alike.
Method: one `cairn dev` with two users (alice owns the bucket, bob does not);
each call checks the error code and HTTP status boto3 reports.
"""

from __future__ import annotations

import boto3
import botocore.exceptions
import pytest
from conftest import TWO_USERS, write_config

pytestmark = pytest.mark.timeout(120)

NONE_SET = [
    ("get_bucket_cors", "NoSuchCORSConfiguration"),
    ("get_bucket_policy", "NoSuchBucketPolicy"),
    ("get_bucket_policy_status", "NoSuchBucketPolicy"),
    ("get_bucket_lifecycle_configuration", "NoSuchLifecycleConfiguration"),
    ("get_bucket_tagging", "NoSuchTagSet"),
    ("get_bucket_website", "NoSuchWebsiteConfiguration"),
    ("get_bucket_encryption", "ServerSideEncryptionConfigurationNotFoundError"),
    ("get_bucket_replication", "ReplicationConfigurationNotFoundError"),
    ("get_object_lock_configuration", "ObjectLockConfigurationNotFoundError"),
    ("get_public_access_block", "NoSuchPublicAccessBlockConfiguration"),
    ("get_bucket_ownership_controls", "OwnershipControlsNotFoundError"),
]
BUCKET = "configured-bucket"


@pytest.fixture(scope="module")
def users(tmp_path_factory, server_starter):
    directory = tmp_path_factory.mktemp("configuration")
    config = write_config(directory / "users.toml", TWO_USERS)
    with server_starter(directory, config=config, users=TWO_USERS) as running:
        yield running


@pytest.fixture(scope="module")
def alice(users, client_factory):
    client = client_factory(users, "alice")
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="dir/object ü", Body=b"payload")
    return client


@pytest.fixture(scope="module")
def bob(users, client_factory, alice):
    return client_factory(users, "bob")


def _error(call, **arguments) -> tuple[str, int]:
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        call(**arguments)
    return raised.value.response["Error"]["Code"], raised.value.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.mark.parametrize("method, code", NONE_SET)
def test_unset_configuration_reads_as_never_set(alice, method, code):
    assert _error(getattr(alice, method), Bucket=BUCKET) == (code, 404)


def test_configurations_whose_unset_is_a_document(alice):
    assert "Status" not in alice.get_bucket_accelerate_configuration(Bucket=BUCKET)
    assert alice.get_bucket_request_payment(Bucket=BUCKET)["Payer"] == "BucketOwner"
    assert "LoggingEnabled" not in alice.get_bucket_logging(Bucket=BUCKET)
    notification = alice.get_bucket_notification_configuration(Bucket=BUCKET)
    assert not any(notification.get(name) for name in
                   ("TopicConfigurations", "QueueConfigurations", "LambdaFunctionConfigurations"))


def test_setting_a_configuration_is_not_implemented_and_changes_nothing(alice):
    rules = {"CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}]}
    assert _error(alice.put_bucket_cors, Bucket=BUCKET, CORSConfiguration=rules) == ("NotImplemented", 501)
    assert _error(alice.put_bucket_tagging, Bucket=BUCKET, Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}) \
        == ("NotImplemented", 501)
    assert _error(alice.get_bucket_cors, Bucket=BUCKET) == ("NoSuchCORSConfiguration", 404)
    assert _error(alice.get_bucket_tagging, Bucket=BUCKET) == ("NoSuchTagSet", 404)


def _only_owner(acl: dict, owner: str) -> None:
    assert acl["Owner"]["ID"] == owner
    assert [(grant["Grantee"]["Type"], grant["Grantee"]["ID"], grant["Permission"]) for grant in acl["Grants"]] \
        == [("CanonicalUser", owner, "FULL_CONTROL")]


def test_the_one_acl_is_the_owners(alice):
    bucket_acl = alice.get_bucket_acl(Bucket=BUCKET)
    _only_owner(bucket_acl, "alice")
    _only_owner(alice.get_object_acl(Bucket=BUCKET, Key="dir/object ü"), "alice")

    alice.put_bucket_acl(Bucket=BUCKET, ACL="private")
    policy = {"Owner": bucket_acl["Owner"], "Grants": bucket_acl["Grants"]}
    alice.put_bucket_acl(Bucket=BUCKET, AccessControlPolicy=policy)
    alice.put_object_acl(Bucket=BUCKET, Key="dir/object ü", ACL="bucket-owner-full-control")
    alice.put_object_acl(Bucket=BUCKET, Key="dir/object ü", AccessControlPolicy=policy)

    assert _error(alice.put_bucket_acl, Bucket=BUCKET, ACL="public-read") == ("NotImplemented", 501)
    assert _error(alice.put_object_acl, Bucket=BUCKET, Key="dir/object ü", ACL="public-read") == ("NotImplemented", 501)
    assert _error(alice.put_bucket_acl, Bucket=BUCKET, GrantRead="id=bob") == ("NotImplemented", 501)
    everyone = {"Grantee": {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"}, "Permission": "READ"}
    assert _error(alice.put_bucket_acl, Bucket=BUCKET,
                  AccessControlPolicy={"Owner": bucket_acl["Owner"], "Grants": bucket_acl["Grants"] + [everyone]}) \
        == ("NotImplemented", 501)
    to_bob = {"Grantee": {"Type": "CanonicalUser", "ID": "bob"}, "Permission": "FULL_CONTROL"}
    assert _error(alice.put_object_acl, Bucket=BUCKET, Key="dir/object ü",
                  AccessControlPolicy={"Owner": bucket_acl["Owner"], "Grants": [to_bob]}) == ("NotImplemented", 501)

    _only_owner(alice.get_bucket_acl(Bucket=BUCKET), "alice")
    _only_owner(alice.get_object_acl(Bucket=BUCKET, Key="dir/object ü"), "alice")
    assert _error(alice.get_object_acl, Bucket=BUCKET, Key="missing") == ("NoSuchKey", 404)
    assert _error(alice.put_object_acl, Bucket=BUCKET, Key="missing", ACL="private") == ("NoSuchKey", 404)


def test_objects_have_no_tags(alice):
    assert alice.get_object_tagging(Bucket=BUCKET, Key="dir/object ü")["TagSet"] == []
    alice.delete_object_tagging(Bucket=BUCKET, Key="dir/object ü")
    assert _error(alice.put_object_tagging, Bucket=BUCKET, Key="dir/object ü",
                  Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}) == ("NotImplemented", 501)
    assert alice.get_object_tagging(Bucket=BUCKET, Key="dir/object ü")["TagSet"] == []
    assert _error(alice.get_object_tagging, Bucket=BUCKET, Key="missing") == ("NoSuchKey", 404)
    assert alice.get_object(Bucket=BUCKET, Key="dir/object ü")["Body"].read() == b"payload"


def test_unversioned_buckets_list_null_versions(users, alice):
    bucket = "versions-bucket"
    alice.create_bucket(Bucket=bucket)
    keys = ["a", "b/1", "b/2 ü+", "c", "d/x/y", "e"]
    for index, key in enumerate(keys):
        alice.put_object(Bucket=bucket, Key=key, Body=b"v" * (index * 1000))
    listed = alice.list_objects_v2(Bucket=bucket)["Contents"]
    pages = list(alice.get_paginator("list_object_versions").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3 and all(not page.get("DeleteMarkers") for page in pages)
    versions = [version for page in pages for version in page["Versions"]]
    assert [(v["Key"], v["VersionId"], v["IsLatest"], v["Size"], v["ETag"], v["LastModified"]) for v in versions] \
        == [(o["Key"], "null", True, o["Size"], o["ETag"], o["LastModified"]) for o in listed]
    assert all(version["Owner"]["ID"] == "alice" for version in versions)
    rolled = alice.list_object_versions(Bucket=bucket, Delimiter="/", Prefix="")
    assert [v["Key"] for v in rolled["Versions"]] == ["a", "c", "e"]
    assert [p["Prefix"] for p in rolled["CommonPrefixes"]] == ["b/", "d/"]
    after = alice.list_object_versions(Bucket=bucket, KeyMarker="b/1", VersionIdMarker="null")
    assert [v["Key"] for v in after["Versions"]] == keys[2:]
    assert _error(alice.list_object_versions, Bucket=bucket, VersionIdMarker="null") == ("InvalidArgument", 400)

    assert alice.get_object(Bucket=bucket, Key="c", VersionId="null")["Body"].read() == b"v" * 3000
    assert _error(alice.get_object, Bucket=bucket, Key="c", VersionId="3HL4kqtJlcpXroDTDmJ") == ("InvalidArgument", 400)
    assert _error(alice.delete_object, Bucket=bucket, Key="c", VersionId="3HL4kqtJlcpXroDTDmJ") == ("InvalidArgument", 400)
    assert alice.head_object(Bucket=bucket, Key="c")["ContentLength"] == 3000

    resource = boto3.resource("s3", endpoint_url=users.endpoint, region_name="us-east-1",
                              aws_access_key_id=users.users["alice"].access_key,
                              aws_secret_access_key=users.users["alice"].secret_key)
    resource.Bucket(bucket).object_versions.delete()
    assert alice.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    alice.delete_bucket(Bucket=bucket)


def test_writes_asking_for_what_cairn_does_not_do(alice):
    alice.put_object(Bucket=BUCKET, Key="kept", Body=b"before")
    refused = [
        {"ServerSideEncryption": "AES256"},
        {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "key"},
        {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k" * 32},
        {"Tagging": "team=storage"},
        {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": "2030-01-01T00:00:00Z"},
        {"ObjectLockLegalHoldStatus": "ON"},
        {"WebsiteRedirectLocation": "/elsewhere"},
        {"ACL": "public-read"},
        {"GrantRead": 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'},
    ]
    for extra in refused:
        for key in ("kept", "never-written"):
            assert _error(alice.put_object, Bucket=BUCKET, Key=key, Body=b"after", **extra) == ("NotImplemented", 501), extra
        assert _error(alice.copy_object, Bucket=BUCKET, Key="never-written", CopySource=f"{BUCKET}/kept",
                      MetadataDirective="REPLACE", **extra) == ("NotImplemented", 501), extra
        assert _error(alice.create_multipart_upload, Bucket=BUCKET, Key="never-written", **extra) \
            == ("NotImplemented", 501), extra
    assert alice.get_object(Bucket=BUCKET, Key="kept")["Body"].read() == b"before"
    assert _error(alice.head_object, Bucket=BUCKET, Key="never-written") == ("404", 404)
    assert not alice.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    alice.put_object(Bucket=BUCKET, Key="kept", Body=b"private", ACL="private")
    assert alice.get_object(Bucket=BUCKET, Key="kept")["Body"].read() == b"private"
    alice.copy_object(Bucket=BUCKET, Key="copied", CopySource=f"{BUCKET}/kept", TaggingDirective="COPY")
    alice.copy_object(Bucket=BUCKET, Key="copied", CopySource=f"{BUCKET}/kept", TaggingDirective="REPLACE")
    assert alice.get_object(Bucket=BUCKET, Key="copied")["Body"].read() == b"private"
    assert _error(alice.copy_object, Bucket=BUCKET, Key="never-written", CopySource=f"{BUCKET}/kept",
                  TaggingDirective="REPLACE", Tagging="a=b") == ("NotImplemented", 501)

    assert _error(alice.create_bucket, Bucket="locked-bucket", ObjectLockEnabledForBucket=True) == ("NotImplemented", 501)
    assert _error(alice.create_bucket, Bucket="public-bucket", ACL="public-read") == ("NotImplemented", 501)
    names = [bucket["Name"] for bucket in alice.list_buckets()["Buckets"]]
    assert "locked-bucket" not in names and "public-bucket" not in names


def test_others_and_missing_buckets(alice, bob):
    calls = [
        (bob.get_bucket_acl, {"Bucket": BUCKET}), (bob.get_bucket_cors, {"Bucket": BUCKET}),
        (bob.get_bucket_request_payment, {"Bucket": BUCKET}), (bob.put_bucket_acl, {"Bucket": BUCKET, "ACL": "private"}),
        (bob.get_object_acl, {"Bucket": BUCKET, "Key": "dir/object ü"}),
        (bob.get_object_tagging, {"Bucket": BUCKET, "Key": "dir/object ü"}),
        (bob.delete_object_tagging, {"Bucket": BUCKET, "Key": "dir/object ü"}),
        (bob.list_object_versions, {"Bucket": BUCKET}),
    ]
    for call, arguments in calls:
        assert _error(call, **arguments) == ("AccessDenied", 403), call
    assert _error(alice.get_bucket_acl, Bucket="no-such-bucket") == ("NoSuchBucket", 404)
    assert _error(alice.get_bucket_policy, Bucket="no-such-bucket") == ("NoSuchBucket", 404)
    assert _error(alice.get_object_tagging, Bucket="no-such-bucket", Key="k") == ("NoSuchBucket", 404)


def test_zz_server_logged_no_traceback(users):
    assert users.tracebacks() == [], users.stderr()[-5000:]

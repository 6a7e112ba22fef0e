"""A live `cairn dev` server answers every S3 request as spec/s3_model.py does (DESIGN §10).

Property: for any sequence of bucket, object, copy, listing and multipart
operations sent through the current boto3 (default CRC32 checksums on), the
server's answer equals the model's answer: error code and HTTP status; bodies,
ETags, sizes, Content-Range, user metadata, content types and CRC32 checksums;
every ListObjectsV2 page (keys, ETags, sizes, common prefixes, KeyCount,
truncation, continuation through the server's own tokens); every ListParts page.

Method: a hypothesis RuleBasedStateMachine (synchronous rules: boto3 is
synchronous) runs each sequence against ONE server process, started once for the
module with MIN_PART_SIZE = 1 KiB from a config file and stopped at the end, and
against a fresh model. Each run owns a random bucket-name prefix and deletes
what it created in teardown, so runs are independent. Keys come from a small
alphabet with '/', ' ', '+', '%', 'é' and an emoji so prefixes and delimiters
collide; bodies are 0-3 KiB, sometimes 5-20 KiB (above INLINE_MAX). Ids and
times are compared structurally: upload ids are mapped, never predicted;
Last-Modified is a UTC time inside the run, equal (to the second) wherever one
write is seen again, and never decreasing across successive writes of a key.

CAIRN_DEEP=1 runs a much longer profile.
"""

from __future__ import annotations

import datetime
import os
import random
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from spec.s3_model import S3Model

MIN_PART_SIZE = 1024
DEEP = os.environ.get("CAIRN_DEEP") == "1"
REPOSITORY = Path(__file__).resolve().parents[2]

STATUS = {
    "NoSuchBucket": 404, "NoSuchKey": 404, "NoSuchUpload": 404, "PreconditionFailed": 412,
    "NotModified": 304, "InvalidRange": 416, "BucketNotEmpty": 409, "BucketAlreadyOwnedByYou": 409,
    "InvalidBucketName": 400, "InvalidPart": 400, "InvalidPartOrder": 400, "EntityTooSmall": 400,
    "InvalidRequest": 400,
}

# ---- the server, once per module --------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("conformance")
    config = directory / "cairn.toml"
    access_key, secret_key = "CONFORMANCE" + secrets.token_hex(4).upper(), secrets.token_hex(16)
    config.write_text(
        '[server]\nregion = "us-east-1"\n\n[[users]]\nname = "conformance"\n'
        f'access_key = "{access_key}"\nsecret_key = "{secret_key}"\n\n[limits]\nMIN_PART_SIZE = {MIN_PART_SIZE}\n'
    )
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("cairn")), "dev", "--port", "0", "--data-dir", str(directory / "data"),
         "--config", str(config)],
        stdout=subprocess.PIPE, stderr=open(directory / "server.log", "wb"), text=True, cwd=REPOSITORY,
    )
    try:
        endpoint, deadline = None, time.monotonic() + 60
        while endpoint is None:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"cairn dev exited ({process.wait()}); see {directory / 'server.log'}")
            if line.startswith("endpoint: "):
                endpoint = line.split(": ", 1)[1].strip()
            if time.monotonic() > deadline:
                raise RuntimeError("cairn dev did not print its endpoint within 60 s")
        threading.Thread(target=process.stdout.read, daemon=True).start()  # keep its stdout pipe from filling
        client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                          connect_timeout=10, read_timeout=30),
        )
        yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---- strategies ---------------------------------------------------------------

KEY_ALPHABET = ["a", "b", "/", " ", "+", "%", "é", "\U0001F600"]
keys = st.text(alphabet=KEY_ALPHABET, min_size=1, max_size=5)
prefixes = st.text(alphabet=KEY_ALPHABET, max_size=2)
delimiters = st.sampled_from([None, "/", "/", "b", "é", "a/"])
small_bodies = st.binary(max_size=3 * 1024)
large_bodies = st.tuples(st.integers(5 * 1024, 20 * 1024), st.integers(0, 2**32)).map(
    lambda size_seed: random.Random(size_seed[1]).randbytes(size_seed[0]))
bodies = st.one_of(small_bodies, small_bodies, small_bodies, large_bodies)
large_parts = st.binary(min_size=MIN_PART_SIZE, max_size=2 * MIN_PART_SIZE)
part_bodies = st.one_of(large_parts, large_parts, st.binary(max_size=MIN_PART_SIZE))
metadata = st.dictionaries(st.sampled_from(["color", "x-trace", "n"]), st.sampled_from(["red", "Blue Sky", "1-2", "a=b"]),
                           max_size=2)
content_types = st.sampled_from([None, "text/plain", "application/x-thing; charset=utf-8"])
ranges = st.one_of(
    st.tuples(st.integers(0, 3500), st.integers(0, 3500)).map(lambda r: f"bytes={min(r)}-{max(r)}"),
    st.integers(0, 3500).map(lambda first: f"bytes={first}-"),
    st.integers(0, 3500).map(lambda length: f"bytes=-{length}"),
)
BUCKET_SUFFIXES = ["b0", "b1", "b2"]
INVALID_BUCKET_NAMES = ["ab", "Bad-Name", "bad_name", "-abc", "192.168.1.1", "a..b"]


def well_formed_etag(etag: str) -> bool:
    return re.fullmatch(r'"[0-9a-f]{32}(-\d+)?"', etag) is not None


class S3Conformance(RuleBasedStateMachine):
    client = None  # set by the test before the run

    def __init__(self):
        super().__init__()
        self.model = S3Model(min_part_size=MIN_PART_SIZE)
        self.namespace = f"cf{secrets.token_hex(4)}-"
        self.started = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=2)
        self.upload_ids: dict[str, str] = {"bogus": "bogus"}  # model upload id -> server upload id
        self.part_checksums: dict[tuple[str, int], str] = {}  # (model upload id, part) -> ChecksumCRC32
        self.modified: dict[int, datetime.datetime] = {}  # model generation -> Last-Modified (seconds)
        self.latest: dict[tuple[str, str], tuple[int, datetime.datetime]] = {}

    # ---- helpers --------------------------------------------------------------

    def bucket(self, suffix: str) -> str:
        return self.namespace + suffix

    def call(self, operation: str, **arguments):
        """("ok", response) or ("error", code, status)."""
        try:
            response = getattr(self.client, operation)(**arguments)
            event(f"{operation}: ok")
            return "ok", response
        except ClientError as error:
            event(f"{operation}: {error.response['Error']['Code']}")
            return "error", error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]

    def expect(self, expected, answer, what: str):
        """Compare an answer with the model's: an error code, or success (returns the response)."""
        if isinstance(expected, str):
            assert answer[0] == "error", f"{what}: model says {expected}, server succeeded: {answer[1]!r:.600}"
            _, code, status = answer
            assert status == STATUS[expected], f"{what}: model says {expected} ({STATUS[expected]}), server {code} {status}"
            assert code == expected or code == str(status), f"{what}: model says {expected}, server {code} {status}"
            return None
        assert answer[0] == "ok", f"{what}: model says success ({expected!r:.300}), server {answer[1:]}"
        return answer[1]

    def check_time(self, generation: int, bucket: str, key: str, last_modified: datetime.datetime, what: str):
        """Last-Modified is a UTC time in this run, one value per write, never decreasing per key."""
        assert last_modified.tzinfo is not None, f"{what}: Last-Modified without a time zone"
        seconds = last_modified.replace(microsecond=0)
        now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
        assert self.started <= seconds <= now, f"{what}: Last-Modified {last_modified} outside the run"
        if generation in self.modified:
            assert self.modified[generation] == seconds, f"{what}: one write, two Last-Modified values"
            return
        self.modified[generation] = seconds
        previous = self.latest.get((bucket, key))
        if previous is not None and previous[0] < generation:
            assert previous[1] <= seconds, f"{what}: Last-Modified went back from {previous[1]} to {seconds}"
        if previous is None or previous[0] < generation:
            self.latest[(bucket, key)] = (generation, seconds)

    def check_object_headers(self, expected, response, bucket, key, what, checksums=True):
        assert response["ETag"] == expected.etag, f"{what}: ETag {response['ETag']} != {expected.etag}"
        assert response["Metadata"] == expected.metadata, f"{what}: metadata {response['Metadata']} != {expected.metadata}"
        assert response["ContentType"] == expected.content_type, f"{what}: content type {response['ContentType']!r}"
        if checksums:
            assert response.get("ChecksumCRC32") == expected.checksums.get("CRC32"), (
                f"{what}: ChecksumCRC32 {response.get('ChecksumCRC32')} != {expected.checksums.get('CRC32')}")
        self.check_time(expected.generation, bucket, key, response["LastModified"], what)

    def existing_or_new_key(self, data, suffix):
        existing = sorted(self.model.buckets.get(self.bucket(suffix), {}))
        if existing and data.draw(st.integers(0, 3), label="existing key") > 0:
            return data.draw(st.sampled_from(existing), label="key")
        return data.draw(keys, label="key")

    def etag_condition(self, data, suffix, key):
        current = self.model.buckets.get(self.bucket(suffix), {}).get(key)
        choices = [None, "*", '"0123456789abcdef0123456789abcdef"'] + ([current.etag] * 2 if current else [])
        return data.draw(st.sampled_from(choices), label="condition")

    # ---- buckets ----------------------------------------------------------------

    @initialize()
    def create_first_buckets(self):
        self.create_bucket("b0")
        self.create_bucket("b1")

    @rule(suffix=st.sampled_from(BUCKET_SUFFIXES))
    def create_bucket(self, suffix):
        name = self.bucket(suffix)
        self.expect(self.model.create_bucket(name), self.call("create_bucket", Bucket=name), f"CreateBucket {name}")

    @rule(name=st.sampled_from(INVALID_BUCKET_NAMES))
    def create_invalid_bucket(self, name):
        self.expect(self.model.create_bucket(name), self.call("create_bucket", Bucket=name), f"CreateBucket {name!r}")

    @rule(suffix=st.sampled_from(BUCKET_SUFFIXES + ["b2"] * 3))  # mostly absent: a deleted bucket ends a run's object work
    def delete_bucket(self, suffix):
        name = self.bucket(suffix)
        self.expect(self.model.delete_bucket(name), self.call("delete_bucket", Bucket=name), f"DeleteBucket {name}")

    @rule(suffix=st.sampled_from(BUCKET_SUFFIXES))
    def head_bucket(self, suffix):
        name = self.bucket(suffix)
        self.expect(self.model.head_bucket(name), self.call("head_bucket", Bucket=name), f"HeadBucket {name}")

    @rule()
    def list_buckets(self):
        response = self.expect(None, self.call("list_buckets"), "ListBuckets")
        names = [entry["Name"] for entry in response["Buckets"] if entry["Name"].startswith(self.namespace)]
        assert names == self.model.list_buckets(), f"ListBuckets {names} != {self.model.list_buckets()}"
        for entry in response["Buckets"]:
            assert isinstance(entry["CreationDate"], datetime.datetime)

    # ---- objects ----------------------------------------------------------------

    @rule(data=st.data(), suffix=st.sampled_from(BUCKET_SUFFIXES[:2]), body=bodies, metadata=metadata,
          content_type=content_types)
    def put_object(self, data, suffix, body, metadata, content_type):
        bucket = self.bucket(suffix)
        key = self.existing_or_new_key(data, suffix)
        condition = self.etag_condition(data, suffix, key)
        arguments = dict(Bucket=bucket, Key=key, Body=body, Metadata=metadata)
        if content_type:
            arguments["ContentType"] = content_type
        if condition == "*":
            arguments["IfNoneMatch"] = "*"
        elif condition is not None:
            arguments["IfMatch"] = condition
        expected = self.model.put_object(bucket, key, body, metadata, content_type,
                                         if_none_match=arguments.get("IfNoneMatch"), if_match=arguments.get("IfMatch"))
        response = self.expect(expected, self.call("put_object", **arguments), f"PutObject {key!r} if={condition}")
        if response is not None:
            assert response["ETag"] == expected.etag, f"PutObject {key!r}: ETag {response['ETag']} != {expected.etag}"
            assert response.get("ChecksumCRC32") == expected.checksums["CRC32"], f"PutObject {key!r}: checksum"

    @rule(data=st.data(), suffix=st.sampled_from(BUCKET_SUFFIXES[:2]))
    def get_object(self, data, suffix):
        bucket = self.bucket(suffix)
        key = self.existing_or_new_key(data, suffix)
        byte_range = data.draw(st.one_of(st.none(), ranges), label="range")
        if_match = self.etag_condition(data, suffix, key) if data.draw(st.integers(0, 2), label="if-match") == 0 else None
        if_none_match = self.etag_condition(data, suffix, key) if data.draw(st.integers(0, 2), label="if-none") == 0 else None
        arguments = dict(Bucket=bucket, Key=key)
        for name, value in (("Range", byte_range), ("IfMatch", if_match), ("IfNoneMatch", if_none_match)):
            if value is not None:
                arguments[name] = value
        what = f"GetObject {key!r} range={byte_range} if-match={if_match} if-none-match={if_none_match}"
        expected = self.model.get_object(bucket, key, byte_range, if_match, if_none_match)
        response = self.expect(expected, self.call("get_object", **arguments), what)
        if response is None:
            return
        current, body, returned_range = expected
        assert response["Body"].read() == body, f"{what}: body differs"
        assert response["ContentLength"] == len(body), f"{what}: Content-Length {response['ContentLength']}"
        status = response["ResponseMetadata"]["HTTPStatusCode"]
        if returned_range is None:
            assert status == 200 and "ContentRange" not in response, f"{what}: {status} {response.get('ContentRange')}"
        else:
            assert status == 206, f"{what}: status {status}"
            content_range = f"bytes {returned_range[0]}-{returned_range[1]}/{len(current.body)}"
            assert response["ContentRange"] == content_range, f"{what}: {response['ContentRange']} != {content_range}"
        self.check_object_headers(current, response, bucket, key, what, checksums=returned_range is None)

    @rule(data=st.data(), suffix=st.sampled_from(BUCKET_SUFFIXES[:2]))
    def head_object(self, data, suffix):
        bucket = self.bucket(suffix)
        key = self.existing_or_new_key(data, suffix)
        if_match = self.etag_condition(data, suffix, key) if data.draw(st.integers(0, 2), label="if-match") == 0 else None
        if_none_match = self.etag_condition(data, suffix, key) if data.draw(st.integers(0, 2), label="if-none") == 0 else None
        arguments = dict(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        if if_match is not None:
            arguments["IfMatch"] = if_match
        if if_none_match is not None:
            arguments["IfNoneMatch"] = if_none_match
        what = f"HeadObject {key!r} if-match={if_match} if-none-match={if_none_match}"
        expected = self.model.head_object(bucket, key, if_match, if_none_match)
        response = self.expect(expected, self.call("head_object", **arguments), what)
        if response is not None:
            assert response["ContentLength"] == len(expected.body), f"{what}: Content-Length"
            self.check_object_headers(expected, response, bucket, key, what)

    @rule(data=st.data(), suffix=st.sampled_from(BUCKET_SUFFIXES[:2]))
    def delete_object(self, data, suffix):
        bucket = self.bucket(suffix)
        key = self.existing_or_new_key(data, suffix)
        response = self.expect(self.model.delete_object(bucket, key), self.call("delete_object", Bucket=bucket, Key=key),
                               f"DeleteObject {key!r}")
        if response is not None:
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 204

    @rule(data=st.data(), suffix=st.sampled_from(BUCKET_SUFFIXES[:2]), quiet=st.booleans())
    def delete_objects(self, data, suffix, quiet):
        bucket = self.bucket(suffix)
        chosen = list(dict.fromkeys(self.existing_or_new_key(data, suffix) for _ in range(data.draw(st.integers(1, 4)))))
        expected = self.model.delete_objects(bucket, chosen, quiet)
        answer = self.call("delete_objects", Bucket=bucket,
                           Delete={"Objects": [{"Key": key} for key in chosen], "Quiet": quiet})
        response = self.expect(expected, answer, f"DeleteObjects {chosen!r} quiet={quiet}")
        if response is not None:
            deleted = sorted(entry["Key"] for entry in response.get("Deleted", []))
            assert deleted == sorted(expected), f"DeleteObjects: Deleted {deleted} != {sorted(expected)}"
            assert not response.get("Errors"), f"DeleteObjects: Errors {response['Errors']}"

    @rule(data=st.data(), source_suffix=st.sampled_from(BUCKET_SUFFIXES[:2]), suffix=st.sampled_from(BUCKET_SUFFIXES[:2]),
          directive=st.sampled_from(["COPY", "REPLACE"]), metadata=metadata, content_type=content_types)
    def copy_object(self, data, source_suffix, suffix, directive, metadata, content_type):
        source_bucket, bucket = self.bucket(source_suffix), self.bucket(suffix)
        source_key = self.existing_or_new_key(data, source_suffix)
        key = source_key if data.draw(st.booleans(), label="same key") else self.existing_or_new_key(data, suffix)
        arguments = dict(CopySource={"Bucket": source_bucket, "Key": source_key}, Bucket=bucket, Key=key,
                         MetadataDirective=directive, Metadata=metadata)
        if content_type:
            arguments["ContentType"] = content_type
        what = f"CopyObject {source_bucket}/{source_key!r} -> {bucket}/{key!r} {directive}"
        expected = self.model.copy_object(source_bucket, source_key, bucket, key, directive, metadata, content_type)
        response = self.expect(expected, self.call("copy_object", **arguments), what)
        if response is not None:
            result = response["CopyObjectResult"]
            assert result["ETag"] == expected.etag, f"{what}: ETag {result['ETag']} != {expected.etag}"
            self.check_time(expected.generation, bucket, key, result["LastModified"], what)

    @rule(suffix=st.sampled_from(BUCKET_SUFFIXES[:2]), prefix=prefixes, delimiter=delimiters,
          max_keys=st.sampled_from([None, 1, 2, 3, 1000]), start_after=st.one_of(st.just(""), keys))
    def list_objects_v2(self, suffix, prefix, delimiter, max_keys, start_after):
        bucket = self.bucket(suffix)
        arguments = dict(Bucket=bucket, Prefix=prefix)
        if delimiter:
            arguments["Delimiter"] = delimiter
        if max_keys is not None:
            arguments["MaxKeys"] = max_keys
        if start_after:
            arguments["StartAfter"] = start_after
        what = f"ListObjectsV2 prefix={prefix!r} delimiter={delimiter!r} max-keys={max_keys} start-after={start_after!r}"
        boundary = None
        for page_number in range(200):
            expected = self.model.list_objects_v2(bucket, prefix, delimiter, max_keys or 1000, start_after, boundary)
            response = self.expect(expected, self.call("list_objects_v2", **arguments), f"{what} page {page_number}")
            if response is None:
                return
            expected_keys, expected_prefixes, truncated, boundary = expected
            got_keys = [entry["Key"] for entry in response.get("Contents", [])]
            got_prefixes = [entry["Prefix"] for entry in response.get("CommonPrefixes", [])]
            assert (got_keys, got_prefixes, response["IsTruncated"]) == (expected_keys, expected_prefixes, truncated), (
                f"{what} page {page_number}: server {got_keys} {got_prefixes} truncated={response['IsTruncated']}, "
                f"model {expected_keys} {expected_prefixes} truncated={truncated}")
            assert response["KeyCount"] == len(got_keys) + len(got_prefixes), f"{what}: KeyCount {response['KeyCount']}"
            assert response["MaxKeys"] == (max_keys or 1000) and response.get("Prefix", "") == prefix, f"{what}: echo"
            assert response.get("Delimiter") == delimiter, f"{what}: Delimiter echo {response.get('Delimiter')!r}"
            for entry in response.get("Contents", []):
                current = self.model.buckets[bucket][entry["Key"]]
                assert (entry["ETag"], entry["Size"]) == (current.etag, len(current.body)), f"{what}: {entry}"
                self.check_time(current.generation, bucket, entry["Key"], entry["LastModified"], f"{what} {entry['Key']!r}")
            assert ("NextContinuationToken" in response) == truncated, f"{what}: NextContinuationToken iff truncated"
            if not truncated:
                return
            arguments.pop("StartAfter", None)
            arguments["ContinuationToken"] = response["NextContinuationToken"]
        raise AssertionError(f"{what}: more than 200 pages")

    # ---- multipart ----------------------------------------------------------------

    @rule(data=st.data(), suffix=st.sampled_from(BUCKET_SUFFIXES[:2]), metadata=metadata, content_type=content_types)
    def create_multipart_upload(self, data, suffix, metadata, content_type):
        self.start_upload(self.bucket(suffix), self.existing_or_new_key(data, suffix), metadata, content_type)

    @rule(data=st.data(), suffix=st.sampled_from(BUCKET_SUFFIXES[:2]), metadata=metadata, content_type=content_types,
          bodies=st.lists(large_parts, max_size=2), last=part_bodies)
    def multipart_upload_whole(self, data, suffix, metadata, content_type, bodies, last):
        """Create, upload 1-3 parts, complete with all of them: multipart objects in most runs."""
        bucket, key = self.bucket(suffix), self.existing_or_new_key(data, suffix)
        upload_id = self.start_upload(bucket, key, metadata, content_type)
        if upload_id is not None:
            for number, body in enumerate(bodies + [last], start=1):
                self.send_part(upload_id, bucket, key, number, body)
            self.complete(upload_id, bucket, key, [(n, p.etag) for n, p in sorted(self.model.uploads[upload_id].parts.items())])

    def start_upload(self, bucket, key, metadata, content_type) -> str | None:
        arguments = dict(Bucket=bucket, Key=key, Metadata=metadata, ChecksumAlgorithm="CRC32")
        if content_type:
            arguments["ContentType"] = content_type
        expected = self.model.create_multipart_upload(bucket, key, metadata, content_type, "CRC32")
        response = self.expect(expected, self.call("create_multipart_upload", **arguments), f"CreateMultipartUpload {key!r}")
        if response is not None:
            assert response["UploadId"] and response["UploadId"] not in self.upload_ids.values(), "upload id reused"
            assert (response["Bucket"], response["Key"]) == (bucket, key)
            self.upload_ids[expected.upload_id] = response["UploadId"]
            return expected.upload_id
        return None

    def draw_upload(self, data):
        """(model upload id, bucket, key): an upload that exists, ended, or never did; sometimes the wrong key."""
        live = sorted(self.model.uploads)
        if live and data.draw(st.integers(0, 3), label="live upload") > 0:
            upload_id = data.draw(st.sampled_from(live), label="upload")
        else:
            upload_id = data.draw(st.sampled_from(sorted(self.upload_ids)), label="upload")
        upload = self.model.uploads.get(upload_id)
        if upload is None or data.draw(st.integers(0, 9), label="wrong key") == 0:
            return upload_id, self.bucket(data.draw(st.sampled_from(BUCKET_SUFFIXES[:2]))), data.draw(keys)
        return upload_id, upload.bucket, upload.key

    @rule(data=st.data(), part_number=st.integers(1, 4), body=part_bodies)
    def upload_part(self, data, part_number, body):
        self.send_part(*self.draw_upload(data), part_number, body)

    def send_part(self, upload_id, bucket, key, part_number, body):
        expected = self.model.upload_part(bucket, key, upload_id, part_number, body)
        answer = self.call("upload_part", Bucket=bucket, Key=key, UploadId=self.upload_ids[upload_id],
                           PartNumber=part_number, Body=body)
        response = self.expect(expected, answer, f"UploadPart {key!r} {upload_id} #{part_number}")
        if response is not None:
            assert response["ETag"] == expected.etag, f"UploadPart: ETag {response['ETag']} != {expected.etag}"
            self.part_checksums[(upload_id, part_number)] = response["ChecksumCRC32"]

    @rule(data=st.data())
    def complete_multipart_upload(self, data):
        upload_id, bucket, key = self.draw_upload(data)
        upload = self.model.uploads.get(upload_id)
        uploaded = sorted(upload.parts.items()) if upload else []
        listed = [(number, part.etag) for number, part in uploaded if data.draw(st.integers(0, 4), label="keep") > 0]
        mistake = data.draw(st.sampled_from([None] * 6 + ["order", "etag", "missing"]), label="mistake")
        if mistake == "order" and len(listed) > 1:
            listed[0], listed[1] = listed[1], listed[0]
        elif mistake == "etag" and listed:
            listed[-1] = (listed[-1][0], '"ffffffffffffffffffffffffffffffff"')
        elif mistake == "missing" or not listed:
            listed.append((max([number for number, _ in listed] + [0]) + 1 + data.draw(st.integers(0, 2)), '"00"'))
        condition = None
        if data.draw(st.integers(0, 2), label="conditional") == 0:
            condition = self.etag_condition(data, bucket[len(self.namespace):], key)
        self.complete(upload_id, bucket, key, listed, condition)

    def complete(self, upload_id, bucket, key, listed, condition=None):
        upload = self.model.uploads.get(upload_id)
        parts = []
        for number, etag in listed:
            part = {"PartNumber": number, "ETag": etag}
            if (upload_id, number) in self.part_checksums and upload and number in upload.parts:
                part["ChecksumCRC32"] = self.part_checksums[(upload_id, number)]
            parts.append(part)
        arguments = dict(Bucket=bucket, Key=key, UploadId=self.upload_ids[upload_id], MultipartUpload={"Parts": parts})
        if condition == "*":
            arguments["IfNoneMatch"] = "*"
        elif condition is not None:
            arguments["IfMatch"] = condition
        what = f"CompleteMultipartUpload {key!r} {upload_id} parts={listed} if={condition}"
        expected = self.model.complete_multipart_upload(bucket, key, upload_id, listed, arguments.get("IfNoneMatch"),
                                                        arguments.get("IfMatch"))
        response = self.expect(expected, self.call("complete_multipart_upload", **arguments), what)
        if response is not None:
            assert response["ETag"] == expected.etag, f"{what}: ETag {response['ETag']} != {expected.etag}"
            assert (response["Bucket"], response["Key"]) == (bucket, key), f"{what}: {response['Bucket']} {response['Key']}"
            assert response.get("ChecksumCRC32") == expected.checksums["CRC32"], (
                f"{what}: ChecksumCRC32 {response.get('ChecksumCRC32')} != {expected.checksums['CRC32']}")

    @rule(data=st.data())
    def abort_multipart_upload(self, data):
        upload_id, bucket, key = self.draw_upload(data)
        expected = self.model.abort_multipart_upload(bucket, key, upload_id)
        answer = self.call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=self.upload_ids[upload_id])
        response = self.expect(expected, answer, f"AbortMultipartUpload {key!r} {upload_id}")
        if response is not None:
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 204

    @rule(data=st.data(), max_parts=st.sampled_from([None, 1, 2]))
    def list_parts(self, data, max_parts):
        upload_id, bucket, key = self.draw_upload(data)
        expected = self.model.list_parts(bucket, key, upload_id)
        arguments = dict(Bucket=bucket, Key=key, UploadId=self.upload_ids[upload_id])
        if max_parts:
            arguments["MaxParts"] = max_parts
        what = f"ListParts {key!r} {upload_id} max-parts={max_parts}"
        seen = []
        for page_number in range(20):
            response = self.expect(expected, self.call("list_parts", **arguments), f"{what} page {page_number}")
            if response is None:
                return
            page = response.get("Parts", [])
            assert len(page) <= (max_parts or 1000), f"{what}: {len(page)} parts on a page"
            seen += page
            expected_truncated = len(seen) < len(expected)
            assert response["IsTruncated"] == expected_truncated, f"{what}: IsTruncated {response['IsTruncated']}"
            if not expected_truncated:
                break
            arguments["PartNumberMarker"] = response["NextPartNumberMarker"]
        got = [(entry["PartNumber"], entry["ETag"], entry["Size"], entry.get("ChecksumCRC32")) for entry in seen]
        want = [(number, part.etag, len(part.body), self.part_checksums.get((upload_id, number))) for number, part in expected]
        assert got == want, f"{what}: server {got}, model {want}"
        for entry in seen:
            assert isinstance(entry["LastModified"], datetime.datetime)

    # ---- cleanup --------------------------------------------------------------------

    def teardown(self):
        """Delete everything this run created, from the server's own listings."""
        client = self.client
        for entry in client.list_buckets().get("Buckets", []):
            name = entry["Name"]
            if not name.startswith(self.namespace):
                continue
            for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
                client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                for item in page.get("Contents", []):
                    client.delete_object(Bucket=name, Key=item["Key"])
            client.delete_bucket(Bucket=name)


@pytest.fixture(scope="module", autouse=True)
def machine_client(server):
    S3Conformance.client = server
    yield
    S3Conformance.client = None


TestServerAgreesWithTheModel = S3Conformance.TestCase
if DEEP:  # the deep profile outlives the default per-test timeout
    TestServerAgreesWithTheModel = pytest.mark.timeout(4 * 3600)(TestServerAgreesWithTheModel)
TestServerAgreesWithTheModel.settings = settings(
    max_examples=2000 if DEEP else 400,
    stateful_step_count=100 if DEEP else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

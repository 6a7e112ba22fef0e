"""The frontend's error boundary and its rule on uncommitted bytes, without sockets.

Properties (DESIGN §3 step 2, §11):
- a commit the store refuses leaves no bytes behind: the handler deletes the blob
  it wrote (PreconditionFailed, NoSuchBucket);
- a commit whose outcome is unknown (OutcomeUnknown) answers 503 and deletes
  nothing — the entry may still commit, and the client's retry finds it;
- an unexpected exception answers InternalError XML with a request id and is
  logged; every answer carries x-amz-request-id.
Method: the ASGI app driven directly with requests signed by botocore, over the
in-memory stores, with a fault hook wrapping the metadata store's commit.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import common.errors as domain
from common.config import Config, UserConfig
from frontend.server import build_app
from spec.blob_model import InMemoryBlobStore
from spec.metadata_model import InMemoryMetadataStore

USER = UserConfig(name="ann", access_key="AKIDTESTANN", secret_key="secret-ann-123")


class FaultyStore:
    """Delegates to the reference store; `fault` (an exception) is raised by the next commit."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.fault: BaseException | None = None

    async def commit(self, *args):
        if self.fault is not None:
            fault, self.fault = self.fault, None
            raise fault
        return await self.inner.commit(*args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def call(app, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    url = f"http://127.0.0.1:9000{path}"
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    request.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    S3SigV4Auth(Credentials(USER.access_key, USER.secret_key), "s3", "us-east-1").add_auth(request)
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http", "method": method, "path": raw_path, "raw_path": raw_path.encode(),
        "query_string": query.encode(), "http_version": "1.1",
        "headers": [(name.lower().encode(), str(value).encode()) for name, value in request.headers.items()]
        + [(b"host", b"127.0.0.1:9000"), (b"content-length", str(len(body)).encode())],
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"]
    response_headers = {name.decode(): value.decode() for name, value in sent[0]["headers"]}
    return status, response_headers, b"".join(message.get("body", b"") for message in sent[1:])


@pytest.fixture
def world():
    blobs = InMemoryBlobStore()
    meta = FaultyStore(InMemoryMetadataStore(blobs_delete=blobs.delete, reap_delay_s=3600))
    app = build_app(Config(users=(USER,)), meta, blobs, lambda: __import__("time").time_ns() // 1000)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(call(app, "PUT", "/bucket"))
    yield app, meta, blobs, loop
    loop.run_until_complete(meta.inner.close())
    loop.close()


@pytest.mark.parametrize("fault", [domain.PreconditionFailed("x"), domain.NoSuchBucket("x")])
def test_refused_commit_leaves_no_bytes(world, fault):
    app, meta, blobs, loop = world
    meta.fault = fault
    status, headers, body = loop.run_until_complete(call(app, "PUT", "/bucket/big", os.urandom(100_000)))
    assert status in (412, 404) and b"<Code>" in body and headers["x-amz-request-id"]
    assert blobs.stored_bytes() == 0


def test_unknown_outcome_is_503_and_keeps_the_bytes(world):
    app, meta, blobs, loop = world
    meta.fault = domain.OutcomeUnknown("deadline passed")
    status, headers, body = loop.run_until_complete(call(app, "PUT", "/bucket/big", os.urandom(100_000)))
    assert status == 503 and b"<Code>ServiceUnavailable</Code>" in body
    assert blobs.stored_bytes() == 100_000


def test_full_disks_are_507_insufficient_storage(world):
    app, meta, blobs, loop = world

    async def full(*arguments, **keywords):
        raise domain.InsufficientStorage("2 of 6 shards written, need 5", need=5, got=2)
    blobs.write = full
    status, headers, body = loop.run_until_complete(call(app, "PUT", "/bucket/big", os.urandom(100_000)))
    assert status == 507 and b"<Code>InsufficientStorage</Code>" in body and b"reserve" in body
    assert blobs.stored_bytes() == 0


def test_unexpected_exception_is_internal_error_with_request_id(world, caplog):
    app, meta, blobs, loop = world
    meta.fault = RuntimeError("a bug")
    status, headers, body = loop.run_until_complete(call(app, "PUT", "/bucket/small", b"x"))
    assert status == 500 and b"<Code>InternalError</Code>" in body
    assert headers["x-amz-request-id"] in body.decode()
    assert any("InternalError" in record.getMessage() for record in caplog.records)


def test_successful_put_then_get(world):
    app, meta, blobs, loop = world
    data = os.urandom(10_000)
    status, headers, _ = loop.run_until_complete(call(app, "PUT", "/bucket/k", data))
    assert status == 200
    status, headers, body = loop.run_until_complete(call(app, "GET", "/bucket/k"))
    assert status == 200 and body == data and headers["content-length"] == str(len(data))


def _recreate(loop, meta, owner: str) -> None:
    """Delete and re-create "bucket" behind the worker's back (another worker did it)."""
    from common.seams import CreateBucket, DeleteBucket

    async def run():
        record = await meta.get_bucket("bucket")
        await meta.commit(DeleteBucket("bucket", record.incarnation), None, os.urandom(8), 2**62)
        await meta.commit(CreateBucket("bucket", owner, "us-east-1"), None, os.urandom(8), 2**62)
    loop.run_until_complete(run())


@pytest.mark.parametrize("method,body", [("PUT", b"x" * 10), ("PUT", os.urandom(100_000)), ("GET", b"")])
def test_a_stale_cached_bucket_is_caught_and_refreshed(world, method, body):
    """The worker authorised with a cached bucket record; the bucket was re-created
    since (new incarnation): the request still succeeds against the new bucket."""
    app, meta, blobs, loop = world
    status, _, _ = loop.run_until_complete(call(app, "GET", "/bucket/warm"))
    assert status == 404                              # NoSuchKey; the worker now caches "bucket"
    _recreate(loop, meta, "ann")
    if method == "PUT":
        status, _, _ = loop.run_until_complete(call(app, "PUT", "/bucket/k", body))
        assert status == 200
        status, _, got = loop.run_until_complete(call(app, "GET", "/bucket/k"))
        assert status == 200 and got == body
    else:
        status, _, got = loop.run_until_complete(call(app, "GET", "/bucket/warm"))
        assert status == 404 and b"<Code>NoSuchKey</Code>" in got   # not NoSuchBucket: the bucket exists


def test_a_bucket_recreated_by_another_owner_is_access_denied(world):
    app, meta, blobs, loop = world
    loop.run_until_complete(call(app, "GET", "/bucket/warm"))
    _recreate(loop, meta, "bob")
    status, _, got = loop.run_until_complete(call(app, "PUT", "/bucket/k", os.urandom(100_000)))
    assert status == 403 and b"<Code>AccessDenied</Code>" in got
    assert blobs.stored_bytes() == 0                  # the bytes written before the refusal are gone


def test_complete_after_the_bucket_was_recreated_is_no_such_upload(world):
    """A handler that reads the store after its body must not trust a cached bucket:
    the upload belonged to the old bucket, so the answer is NoSuchUpload (found by the
    conformance state machine on the cluster: it answered NoSuchBucket)."""
    app, meta, blobs, loop = world
    status, _, body = loop.run_until_complete(call(app, "POST", "/bucket/k?uploads"))
    assert status == 200
    upload_id = body.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()
    loop.run_until_complete(call(app, "DELETE", f"/bucket/k?uploadId={upload_id}"))
    loop.run_until_complete(call(app, "GET", "/bucket/warm"))            # cache "bucket"
    _recreate(loop, meta, "ann")
    document = (b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"00\"</ETag></Part>"
                b"</CompleteMultipartUpload>")
    status, _, got = loop.run_until_complete(call(app, "POST", f"/bucket/k?uploadId={upload_id}", document))
    assert status == 404 and b"<Code>NoSuchUpload</Code>" in got


def test_copy_into_a_deleted_bucket_is_no_such_bucket_not_no_such_key(world):
    """With the destination bucket deleted since the worker cached it, a copy from a
    missing source answers as if the worker had read the authority: NoSuchBucket
    (found by the conformance state machine: it answered NoSuchKey)."""
    app, meta, blobs, loop = world
    loop.run_until_complete(call(app, "PUT", "/source"))
    loop.run_until_complete(call(app, "GET", "/bucket/warm"))            # cache "bucket"

    async def delete_bucket():
        record = await meta.get_bucket("bucket")
        from common.seams import DeleteBucket
        await meta.commit(DeleteBucket("bucket", record.incarnation), None, os.urandom(8), 2**62)
    loop.run_until_complete(delete_bucket())
    status, _, got = loop.run_until_complete(call(app, "PUT", "/bucket/copy", headers={"x-amz-copy-source": "/source/missing"}))
    assert status == 404 and b"<Code>NoSuchBucket</Code>" in got

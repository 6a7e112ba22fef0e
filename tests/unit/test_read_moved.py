"""A GET whose cached placement is stale re-reads the record once (DESIGN §4 step 5).

Repair moves shards and deletes the old ones without a witness raise, so a worker's
cached record may name shards that are gone. `read_body` with a `refresh` re-reads the
record uncached after such a failure and, when the placement moved, resumes from the
byte reached — across a multipart object's parts too; anything else propagates.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from common.errors import BlobNotFound
from common.seams import BlobRef, Multipart, PartBody
from frontend.s3.handlers.support import read_body

DATA = bytes(range(256)) * 40


class Blobs:
    """Serves each blob's bytes in 100-byte chunks; placements in `gone` fail after
    `fail_after` bytes of a read."""

    def __init__(self, contents: dict[bytes, bytes], gone: set[bytes], fail_after: int = 0) -> None:
        self.contents, self.gone, self.fail_after = contents, gone, fail_after

    async def read(self, ref: BlobRef, start: int, end: int):
        served = 0
        for offset in range(start, end, 100):
            if ref.placement in self.gone and served >= self.fail_after:
                raise BlobNotFound("shards not where the placement says")
            chunk = self.contents[ref.data_id][offset:min(end, offset + 100)]
            served += len(chunk)
            yield chunk


def _collect(iterator) -> bytes:
    async def run():
        return b"".join([chunk async for chunk in iterator])
    return asyncio.run(run())


def test_a_moved_blob_is_read_from_its_new_placement_from_the_byte_reached():
    old = BlobRef(b"a" * 16, len(DATA), "0" * 32, placement=b"old")
    new = BlobRef(b"a" * 16, len(DATA), "0" * 32, placement=b"new")
    services = SimpleNamespace(blobs=Blobs({old.data_id: DATA}, {b"old"}, fail_after=300))
    calls = []

    async def refresh():
        calls.append(1)
        return SimpleNamespace(body=new)
    assert _collect(read_body(services, old, len(DATA), 5, 4000, refresh)) == DATA[5:4000]
    assert calls == [1]


def test_multipart_parts_resume_in_the_right_part():
    parts = [PartBody(1, 2000, 0, "e", (), BlobRef(b"p" * 16, 2000, "0" * 32, placement=b"p-old")),
             PartBody(2, 3000, 2000, "e", (), BlobRef(b"q" * 16, 3000, "0" * 32, placement=b"q-old"))]
    moved = [parts[0], PartBody(2, 3000, 2000, "e", (), BlobRef(b"q" * 16, 3000, "0" * 32, placement=b"q-new"))]
    body = DATA[:5000]
    services = SimpleNamespace(blobs=Blobs({b"p" * 16: body[:2000], b"q" * 16: body[2000:]}, {b"q-old"}, 1000))

    async def refresh():
        return SimpleNamespace(body=Multipart("u", tuple(moved)))
    assert _collect(read_body(services, Multipart("u", tuple(parts)), 5000, 1500, 4500, refresh)) == body[1500:4500]


def test_without_a_move_the_failure_propagates_and_only_one_reread_happens():
    ref = BlobRef(b"a" * 16, len(DATA), "0" * 32, placement=b"old")
    services = SimpleNamespace(blobs=Blobs({ref.data_id: DATA}, {b"old", b"also-gone"}))
    calls = []

    async def same():
        calls.append(1)
        return SimpleNamespace(body=ref)
    with pytest.raises(BlobNotFound):
        _collect(read_body(services, ref, len(DATA), 0, len(DATA), same))

    async def moved_but_gone_too():
        calls.append(2)
        return SimpleNamespace(body=BlobRef(ref.data_id, ref.size, ref.md5_hex, placement=b"also-gone"))
    with pytest.raises(BlobNotFound):
        _collect(read_body(services, ref, len(DATA), 0, len(DATA), moved_but_gone_too))
    assert calls == [1, 2]


def test_every_store_refusal_maps_to_an_s3_error():
    """The error boundary turns each StoreError into an S3 answer; a blob the disks
    cannot serve or take right now is 503 ServiceUnavailable, so SDKs retry."""
    import inspect

    from common import errors as domain
    from frontend.s3 import errors

    for name, cls in inspect.getmembers(domain, inspect.isclass):
        if issubclass(cls, domain.StoreError) and cls is not domain.StoreError:
            assert isinstance(errors.from_store_error(cls("x")), errors.S3Error), name
    answer = errors.from_store_error(domain.ServiceUnavailable("2 of 6 shards written, need 5"))
    assert answer.status == 503 and answer.code == "ServiceUnavailable"

"""InMemoryMetadataStore honours the MetadataStore seam (common/seams.py, DESIGN §3, §11, §14).

Properties, by example and by hypothesis against brute-force listers, no sockets:
- commit checks run in apply order and raise the typed refusal of each step;
  seq is dense from 1, time strictly increasing in seq, ids are encode_seq_id(0, seq);
- a request id seen before returns the original outcome (or its recorded
  refusal) and never applies twice; unrecorded refusals (Expired) do not stick;
- conditional commits are atomic: of 32 concurrent If-None-Match: * PUTs of one
  key exactly one wins;
- listing (objects and uploads) equals a brute-force model: UTF-8 byte order,
  prefix, delimiter rollup counting toward max_keys, start_after skipping a
  whole common prefix; paging to the end returns every entry exactly once;
- the reaper deletes exactly the displaced blobs, only after the delay, and
  never a referenced one; close() leaves no task pending.
"""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import (
    BucketAlreadyExists,
    BucketAlreadyOwnedByYou,
    BucketNotEmpty,
    Expired,
    InvalidPart,
    InvariantViolation,
    NoSuchBucket,
    NoSuchUpload,
    PreconditionFailed,
)
from common.ids import encode_seq_id, new_data_id
from common.limits import DEFAULT_LIMITS
from common.seams import (
    AbortUpload,
    BlobRef,
    CompletedPart,
    CompleteUpload,
    CreateBucket,
    CreateUpload,
    DeleteBucket,
    DeleteObject,
    IfMatch,
    IfNoneMatchStar,
    Inline,
    Multipart,
    ObjectDraft,
    Outcome,
    PartBody,
    PartDraft,
    PutObject,
    PutPart,
    UploadDraft,
)
from spec.metadata_model import InMemoryMetadataStore

FAR = 1 << 62
"""A not_after no test reaches."""


class Clock:
    """A counter clock (µs) the test advances by hand."""

    def __init__(self, now_us: int = 1_000_000) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


class Deleted:
    """blobs_delete that records what the reaper deleted."""

    def __init__(self) -> None:
        self.data_ids: list[bytes] = []

    async def __call__(self, ref: BlobRef) -> None:
        self.data_ids.append(ref.data_id)


def rid() -> bytes:
    return os.urandom(16)


def blob(size: int = 10) -> BlobRef:
    return BlobRef(data_id=new_data_id(), size=size, md5_hex="0" * 32)


def inline(data: bytes = b"x", etag: str = "e") -> ObjectDraft:
    return ObjectDraft(size=len(data), etag=etag, body=Inline(data))


def blob_draft(ref: BlobRef, etag: str = "b") -> ObjectDraft:
    return ObjectDraft(size=ref.size, etag=etag, body=ref)


def run(coroutine):
    return asyncio.run(coroutine)


async def new_store(**kwargs):
    clock = kwargs.pop("clock", None) or Clock()
    deleted = Deleted()
    store = InMemoryMetadataStore(blobs_delete=deleted, clock_us=clock, **kwargs)
    outcome = await store.commit(CreateBucket("bkt", "alice", "r1"), None, rid(), FAR)
    return store, outcome.bucket_incarnation, clock, deleted


# ---------------------------------------------------------------- buckets, seq, time


def test_seq_dense_time_monotone_ids_from_seq():
    async def scenario():
        clock = Clock(5)  # a stuck clock: time still strictly increases
        store, inc, _, _ = await new_store(clock=clock)
        assert inc == encode_seq_id(0, 1)
        outcomes = [await store.commit(PutObject("bkt", inc, f"k{i}", inline()), None, rid(), FAR)
                    for i in range(5)]
        assert [o.seq for o in outcomes] == [2, 3, 4, 5, 6]
        assert [o.version_id for o in outcomes] == [encode_seq_id(0, s) for s in range(2, 7)]
        times = [o.time_us for o in outcomes]
        assert times == sorted(set(times)) and times[0] > 5
        clock.now_us = 10**9
        later = await store.commit(DeleteObject("bkt", inc, "k0"), None, rid(), FAR)
        assert later.time_us == 10**9 and later.seq == 7 and later.version_id is None
        result = await store.get("bkt", inc, "k1")
        assert result.read_seq == (0, 0, 7)
        assert result.record.last_modified_us == times[1] and result.record.seq == 3
        up = await store.commit(CreateUpload("bkt", inc, "m", UploadDraft("alice")), None, rid(), FAR)
        assert up.upload_id == encode_seq_id(0, 8)
        await store.close()

    run(scenario())


def test_bucket_lifecycle_and_refusals():
    async def scenario():
        store, inc, _, _ = await new_store()
        with pytest.raises(BucketAlreadyOwnedByYou):
            await store.commit(CreateBucket("bkt", "alice", "r1"), None, rid(), FAR)
        with pytest.raises(BucketAlreadyExists):
            await store.commit(CreateBucket("bkt", "bob", "r1"), None, rid(), FAR)
        await store.commit(CreateBucket("a-first", "alice", "r2"), None, rid(), FAR)
        await store.commit(CreateBucket("bobs", "bob", "r1"), None, rid(), FAR)
        assert [b.name for b in await store.list_buckets("alice")] == ["a-first", "bkt"]
        assert [b.name for b in await store.list_buckets("bob")] == ["bobs"]
        record = await store.get_bucket("bkt")
        assert (record.owner, record.incarnation, record.region) == ("alice", inc, "r1")
        assert await store.get_bucket("nope") is None

        with pytest.raises(NoSuchBucket):
            await store.get("nope", inc, "k")
        with pytest.raises(NoSuchBucket):
            await store.commit(PutObject("bkt", "other", "k", inline()), None, rid(), FAR)

        # Not empty while an object or an in-progress upload remains.
        await store.commit(PutObject("bkt", inc, "k", inline()), None, rid(), FAR)
        with pytest.raises(BucketNotEmpty):
            await store.commit(DeleteBucket("bkt", inc), None, rid(), FAR)
        await store.commit(DeleteObject("bkt", inc, "k"), None, rid(), FAR)
        up = await store.commit(CreateUpload("bkt", inc, "m", UploadDraft("alice")), None, rid(), FAR)
        with pytest.raises(BucketNotEmpty):
            await store.commit(DeleteBucket("bkt", inc), None, rid(), FAR)
        await store.commit(AbortUpload("bkt", inc, "m", up.upload_id), None, rid(), FAR)
        await store.commit(DeleteBucket("bkt", inc), None, rid(), FAR)
        assert await store.get_bucket("bkt") is None
        with pytest.raises(NoSuchBucket):
            await store.commit(DeleteBucket("bkt", inc), None, rid(), FAR)

        # A new incarnation: the old one is refused everywhere.
        again = await store.commit(CreateBucket("bkt", "bob", "r1"), None, rid(), FAR)
        assert again.bucket_incarnation != inc
        with pytest.raises(NoSuchBucket):
            await store.get("bkt", inc, "k")
        with pytest.raises(NoSuchBucket):
            await store.list_objects("bkt", inc, prefix="", delimiter="", start_after="",
                                     max_keys=10, min_seq=None)
        await store.close()

    run(scenario())


# ---------------------------------------------------------------- deadline and dedup


def test_expired_is_not_recorded():
    async def scenario():
        store, inc, clock, _ = await new_store()
        request_id = rid()
        with pytest.raises(Expired):
            await store.commit(PutObject("bkt", inc, "k", inline()), None, request_id, clock.now_us - 1)
        assert (await store.get("bkt", inc, "k")).record is None
        # The SDK's retry (same request id, new not_after) applies.
        outcome = await store.commit(PutObject("bkt", inc, "k", inline()), None, request_id, FAR)
        assert (await store.get("bkt", inc, "k")).record.version_id == outcome.version_id
        await store.close()

    run(scenario())


def test_dedup_returns_original_outcome_and_never_applies_twice():
    async def scenario():
        store, inc, clock, _ = await new_store()
        request_id = rid()
        first = await store.commit(PutObject("bkt", inc, "k", inline(b"1", "one")), None, request_id, FAR)
        await store.commit(PutObject("bkt", inc, "k", inline(b"2", "two")), None, rid(), FAR)
        clock.now_us += 60_000_000
        again = await store.commit(PutObject("bkt", inc, "k", inline(b"1", "one")), None, request_id, FAR)
        assert again == first
        assert (await store.get("bkt", inc, "k")).record.etag == "two"
        # A duplicate is answered even past its own not_after and takes no seq.
        assert await store.commit(PutObject("bkt", inc, "k", inline()), None, request_id, 0) == first
        nxt = await store.commit(DeleteObject("bkt", inc, "other"), None, rid(), FAR)
        assert nxt.seq == first.seq + 2

        # A recorded refusal is raised again, even once the condition would pass.
        lock_id = rid()
        with pytest.raises(PreconditionFailed):
            await store.commit(PutObject("bkt", inc, "k", inline()), IfNoneMatchStar(), lock_id, FAR)
        await store.commit(DeleteObject("bkt", inc, "k"), None, rid(), FAR)
        with pytest.raises(PreconditionFailed):
            await store.commit(PutObject("bkt", inc, "k", inline()), IfNoneMatchStar(), lock_id, FAR)
        assert (await store.get("bkt", inc, "k")).record is None

        # Outside DEDUP_WINDOW the id is forgotten and the commit applies.
        clock.now_us += DEFAULT_LIMITS.DEDUP_WINDOW_MS * 1000 + 1000
        fresh = await store.commit(PutObject("bkt", inc, "k", inline()), IfNoneMatchStar(), lock_id, FAR)
        assert fresh.seq > nxt.seq
        await store.close()

    run(scenario())


def test_dedup_table_stays_bounded():
    async def scenario():
        store, inc, clock, _ = await new_store()
        for i in range(50):
            await store.commit(PutObject("bkt", inc, f"k{i}", inline()), None, rid(), FAR)
        clock.now_us += DEFAULT_LIMITS.DEDUP_WINDOW_MS * 1000 + 1000
        for i in range(50):
            await store.commit(DeleteObject("bkt", inc, f"k{i}"), None, rid(), FAR)
        # Each commit expires up to a fixed number (> 1) of old rows: the 51 old
        # ones (with CreateBucket) are gone, only the 50 new ones remain.
        assert len(store._dedup) == 50
        await store.close()

    run(scenario())


def test_recorded_refusals_of_each_kind_are_replayed():
    async def scenario():
        store, inc, _, _ = await new_store()
        cases = [
            (CreateBucket("bkt", "alice", "r"), BucketAlreadyOwnedByYou),
            (CreateBucket("bkt", "mallory", "r"), BucketAlreadyExists),
            (AbortUpload("bkt", inc, "k", encode_seq_id(0, 999)), NoSuchUpload),
        ]
        await store.commit(PutObject("bkt", inc, "k", inline()), None, rid(), FAR)
        cases.append((DeleteBucket("bkt", inc), BucketNotEmpty))
        for mutation, error in cases:
            request_id = rid()
            with pytest.raises(error):
                await store.commit(mutation, None, request_id, FAR)
            with pytest.raises(error):
                await store.commit(mutation, None, request_id, FAR)
        await store.close()

    run(scenario())


# ---------------------------------------------------------------- conditions


def test_conditions_on_put_delete_complete():
    async def scenario():
        store, inc, _, _ = await new_store()
        with pytest.raises(PreconditionFailed):
            await store.commit(PutObject("bkt", inc, "k", inline()), IfMatch("e"), rid(), FAR)
        with pytest.raises(PreconditionFailed):
            await store.commit(DeleteObject("bkt", inc, "k"), IfMatch("*"), rid(), FAR)
        await store.commit(PutObject("bkt", inc, "k", inline(etag="v1")), IfNoneMatchStar(), rid(), FAR)
        with pytest.raises(PreconditionFailed):
            await store.commit(PutObject("bkt", inc, "k", inline()), IfNoneMatchStar(), rid(), FAR)
        with pytest.raises(PreconditionFailed):
            await store.commit(PutObject("bkt", inc, "k", inline()), IfMatch("v0"), rid(), FAR)
        await store.commit(PutObject("bkt", inc, "k", inline(etag="v2")), IfMatch("v1"), rid(), FAR)
        await store.commit(PutObject("bkt", inc, "k", inline(etag="v3")), IfMatch('"v2"'), rid(), FAR)
        with pytest.raises(PreconditionFailed):
            await store.commit(DeleteObject("bkt", inc, "k"), IfMatch("v2"), rid(), FAR)
        await store.commit(DeleteObject("bkt", inc, "k"), IfMatch("v3"), rid(), FAR)
        assert (await store.get("bkt", inc, "k")).record is None
        # Delete of an absent key succeeds.
        await store.commit(DeleteObject("bkt", inc, "k"), None, rid(), FAR)

        # CompleteUpload: the condition is checked before the upload.
        with pytest.raises(PreconditionFailed):
            await store.commit(CompleteUpload("bkt", inc, "k", encode_seq_id(0, 999), (),
                                              inline()), IfMatch("zz"), rid(), FAR)
        await store.commit(PutObject("bkt", inc, "k", inline(etag="v4")), None, rid(), FAR)
        up = await store.commit(CreateUpload("bkt", inc, "k", UploadDraft("alice")), None, rid(), FAR)
        ref = blob(7)
        await store.commit(PutPart("bkt", inc, "k", up.upload_id, 1, PartDraft(7, "p1", ref)), None, rid(), FAR)
        complete = CompleteUpload("bkt", inc, "k", up.upload_id, (CompletedPart(1, ref.data_id, "p1"),),
                                  multipart_draft(up.upload_id, [(1, "p1", ref)]))
        with pytest.raises(PreconditionFailed):
            await store.commit(complete, IfNoneMatchStar(), rid(), FAR)
        await store.commit(complete, IfMatch("v4"), rid(), FAR)
        assert (await store.get("bkt", inc, "k")).record.etag == "mp-1"
        with pytest.raises(InvariantViolation):  # conditions only on put, delete, complete
            await store.commit(CreateUpload("bkt", inc, "k", UploadDraft("alice")), IfNoneMatchStar(), rid(), FAR)
        await store.close()

    run(scenario())


def test_concurrent_if_none_match_has_exactly_one_winner():
    async def scenario():
        store, inc, _, _ = await new_store()
        refs = [blob() for _ in range(32)]

        async def attempt(ref):
            await asyncio.sleep(0)
            return await store.commit(PutObject("bkt", inc, "lock", blob_draft(ref)), IfNoneMatchStar(), rid(), FAR)
        results = await asyncio.gather(*(attempt(ref) for ref in refs), return_exceptions=True)
        winners = [r for r in results if isinstance(r, Outcome)]
        assert len(winners) == 1
        assert sum(isinstance(r, PreconditionFailed) for r in results) == 31
        record = (await store.get("bkt", inc, "lock")).record
        assert record.version_id == winners[0].version_id
        assert record.body == refs[results.index(winners[0])]
        await store.close()

    run(scenario())


# ---------------------------------------------------------------- invariants


def test_invariant_violations_write_nothing():
    async def scenario():
        store, inc, _, _ = await new_store()
        big = b"x" * (DEFAULT_LIMITS.INLINE_MAX + 1)
        with pytest.raises(InvariantViolation):
            await store.commit(PutObject("bkt", inc, "k", inline(big)), None, rid(), FAR)
        await store.commit(PutObject("bkt", inc, "k", inline(b"x" * DEFAULT_LIMITS.INLINE_MAX)), None, rid(), FAR)
        ref = blob()
        await store.commit(PutObject("bkt", inc, "a", blob_draft(ref)), None, rid(), FAR)
        up = await store.commit(CreateUpload("bkt", inc, "m", UploadDraft("alice")), None, rid(), FAR)
        before = await store.get("bkt", inc, "b")
        with pytest.raises(InvariantViolation):  # a data id referenced twice
            await store.commit(PutObject("bkt", inc, "b", blob_draft(ref)), None, rid(), FAR)
        with pytest.raises(InvariantViolation):
            await store.commit(PutPart("bkt", inc, "m", up.upload_id, 1, PartDraft(10, "p", ref)), None, rid(), FAR)
        after = await store.get("bkt", inc, "b")
        assert after.record is None and after.read_seq == before.read_seq
        await store.close()

    run(scenario())


# ---------------------------------------------------------------- multipart


def multipart_draft(upload_id: str, parts: list[tuple[int, str, BlobRef]]) -> ObjectDraft:
    bodies, offset = [], 0
    for number, etag, ref in parts:
        bodies.append(PartBody(number, ref.size, offset, etag, (), ref))
        offset += ref.size
    return ObjectDraft(size=offset, etag=f"mp-{len(parts)}", body=Multipart(upload_id, tuple(bodies)))


def test_multipart_complete_abort_and_part_checks():
    async def scenario():
        store, inc, _, deleted = await new_store(reap_delay_s=0)
        up = await store.commit(CreateUpload("bkt", inc, "m", UploadDraft("alice", storage_class="X")), None, rid(), FAR)
        uid = up.upload_id
        refs = {n: blob(5 + n) for n in (1, 2, 3)}
        for n, ref in refs.items():
            await store.commit(PutPart("bkt", inc, "m", uid, n, PartDraft(ref.size, f"p{n}", ref)), None, rid(), FAR)
        replaced = refs[2]
        refs[2] = blob(20)
        await store.commit(PutPart("bkt", inc, "m", uid, 2, PartDraft(20, "p2b", refs[2])), None, rid(), FAR)

        page = await store.list_parts("bkt", inc, "m", uid, part_number_marker=0, max_parts=2)
        assert [p.part_number for p in page.parts] == [1, 2] and page.truncated
        assert page.next_part_number_marker == 2 and page.upload.storage_class == "X"
        assert page.parts[1].etag == "p2b" and page.parts[1].blob == refs[2]
        page = await store.list_parts("bkt", inc, "m", uid, part_number_marker=2, max_parts=2)
        assert [p.part_number for p in page.parts] == [3] and not page.truncated
        assert page.next_part_number_marker is None
        with pytest.raises(NoSuchUpload):
            await store.list_parts("bkt", inc, "other-key", uid, part_number_marker=0, max_parts=2)
        orphan = blob(1)  # introduced by a recorded refusal: reaped too
        with pytest.raises(NoSuchUpload):
            await store.commit(PutPart("bkt", inc, "m", "garbage", 1, PartDraft(1, "p", orphan)), None, rid(), FAR)

        listed = [(1, "p1", refs[1]), (2, "p2b", refs[2])]
        draft = multipart_draft(uid, listed)
        bad_lists = [
            (CompletedPart(1, refs[1].data_id, "p1"), CompletedPart(2, refs[2].data_id, "p2")),  # stale etag
            (CompletedPart(1, refs[1].data_id, "p1"), CompletedPart(2, replaced.data_id, "p2b")),  # stale data id
            (CompletedPart(1, refs[1].data_id, "p1"), CompletedPart(4, refs[2].data_id, "p2b")),  # no such part
        ]
        for parts in bad_lists:
            with pytest.raises(InvalidPart):
                await store.commit(CompleteUpload("bkt", inc, "m", uid, parts, draft), None, rid(), FAR)
        good = tuple(CompletedPart(n, ref.data_id, etag) for n, etag, ref in listed)
        done = await store.commit(CompleteUpload("bkt", inc, "m", uid, good, draft), None, rid(), FAR)
        record = (await store.get("bkt", inc, "m")).record
        assert record.version_id == done.version_id and record.body == draft.body
        assert record.size == refs[1].size + 20
        with pytest.raises(NoSuchUpload):  # second of Complete/Abort
            await store.commit(AbortUpload("bkt", inc, "m", uid), None, rid(), FAR)
        with pytest.raises(NoSuchUpload):
            await store.commit(CompleteUpload("bkt", inc, "m", uid, good, draft), None, rid(), FAR)
        with pytest.raises(NoSuchUpload):
            await store.list_parts("bkt", inc, "m", uid, part_number_marker=0, max_parts=2)
        await store.reap_now()
        await asyncio.sleep(0)
        assert sorted(deleted.data_ids) == sorted([orphan.data_id, replaced.data_id, refs[3].data_id])

        # Abort first: then Complete gets NoSuchUpload, and every part is reaped.
        up2 = await store.commit(CreateUpload("bkt", inc, "m", UploadDraft("alice")), None, rid(), FAR)
        part = blob(3)
        await store.commit(PutPart("bkt", inc, "m", up2.upload_id, 1, PartDraft(3, "q", part)), None, rid(), FAR)
        await store.commit(AbortUpload("bkt", inc, "m", up2.upload_id), None, rid(), FAR)
        with pytest.raises(NoSuchUpload):
            await store.commit(CompleteUpload("bkt", inc, "m", up2.upload_id,
                                              (CompletedPart(1, part.data_id, "q"),),
                                              multipart_draft(up2.upload_id, [(1, "q", part)])), None, rid(), FAR)
        await store.reap_now()
        assert part.data_id in deleted.data_ids
        # Overwriting the multipart object displaces all its parts.
        await store.commit(PutObject("bkt", inc, "m", inline()), None, rid(), FAR)
        await store.reap_now()
        assert {refs[1].data_id, refs[2].data_id} <= set(deleted.data_ids)
        await store.close()

    run(scenario())


# ---------------------------------------------------------------- reaper


def test_reaper_deletes_displaced_after_delay_and_never_referenced():
    async def scenario():
        store, inc, _, deleted = await new_store(reap_delay_s=0.2)
        first, second, third = blob(), blob(), blob()
        await store.commit(PutObject("bkt", inc, "k", blob_draft(first)), None, rid(), FAR)
        await store.commit(PutObject("bkt", inc, "k", blob_draft(second)), None, rid(), FAR)
        await store.commit(PutObject("bkt", inc, "other", blob_draft(third)), None, rid(), FAR)
        await asyncio.sleep(0.05)
        assert deleted.data_ids == []  # not before the delay
        assert [ref.data_id for ref in store.pending_reaps()] == [first.data_id]
        await asyncio.sleep(0.3)
        assert deleted.data_ids == [first.data_id]
        await store.commit(DeleteObject("bkt", inc, "k"), None, rid(), FAR)
        # A displaced data id may not come back while it waits for the reaper.
        with pytest.raises(InvariantViolation):
            await store.commit(PutObject("bkt", inc, "z", blob_draft(second)), None, rid(), FAR)
        # A refused PutObject recorded in dedup: its introduced blob is reaped too.
        refused = blob()
        with pytest.raises(PreconditionFailed):
            await store.commit(PutObject("bkt", inc, "other", blob_draft(refused)), IfNoneMatchStar(), rid(), FAR)
        await asyncio.sleep(0.35)
        assert deleted.data_ids == [first.data_id, second.data_id, refused.data_id]
        assert third.data_id not in deleted.data_ids
        await store.close()

    run(scenario())


def test_duplicate_keeps_original_bytes_and_reaps_the_retry_bytes():
    async def scenario():
        store, inc, _, deleted = await new_store(reap_delay_s=0)
        request_id = rid()
        original, retried = blob(), blob()
        first = await store.commit(PutObject("bkt", inc, "k", blob_draft(original)), None, request_id, FAR)
        again = await store.commit(PutObject("bkt", inc, "k", blob_draft(retried)), None, request_id, FAR)
        assert again == first
        # The original request id again, with the original bytes: still live, not reaped.
        assert await store.commit(PutObject("bkt", inc, "k", blob_draft(original)), None, request_id, FAR) == first
        await store.reap_now()
        assert deleted.data_ids == [retried.data_id]
        assert (await store.get("bkt", inc, "k")).record.body == original
        await store.close()

    run(scenario())


def test_close_cancels_reaper_and_leaves_no_task():
    async def scenario():
        store, inc, _, deleted = await new_store(reap_delay_s=3600)
        await store.commit(PutObject("bkt", inc, "k", blob_draft(blob())), None, rid(), FAR)
        await store.commit(PutObject("bkt", inc, "k", blob_draft(blob())), None, rid(), FAR)
        assert len(store.pending_reaps()) == 1
        await store.close()
        assert deleted.data_ids == [] and store.pending_reaps() == ()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(scenario())


def test_no_blobs_delete_drops_displaced():
    async def scenario():
        store = InMemoryMetadataStore(blobs_delete=None)
        inc = (await store.commit(CreateBucket("b", "o", "r"), None, rid(), FAR)).bucket_incarnation
        await store.commit(PutObject("b", inc, "k", blob_draft(blob())), None, rid(), FAR)
        await store.commit(PutObject("b", inc, "k", blob_draft(blob())), None, rid(), FAR)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        await store.close()

    run(scenario())


# ---------------------------------------------------------------- listing

ALPHABET = ["a", "b", "/", "é", "\u00ff", "\u0100", "\uffff", "😀", "-", "\x7f"]
"""Small, with '/', code points whose UTF-8 bytes are above 0x7f, and an astral
code point (whose UTF-16 order differs from its UTF-8 order)."""

keys_strategy = st.sets(st.text(alphabet=ALPHABET, min_size=1, max_size=5), max_size=30)
prefix_strategy = st.text(alphabet=ALPHABET, max_size=2)
delimiter_strategy = st.sampled_from(["", "/", "é", "a/", "😀"])


def u8(text: str) -> bytes:
    return text.encode("utf-8")


def is_common_prefix(marker: str, prefix: str, delimiter: str) -> bool:
    """Whether marker is a common prefix a listing with (prefix, delimiter) rolls up."""
    if not delimiter or not marker.startswith(prefix):
        return False
    rest = marker[len(prefix):]
    return rest.find(delimiter) >= 0 and rest.find(delimiter) + len(delimiter) == len(rest)


def brute_entries(keys, prefix: str, delimiter: str) -> list[tuple[str, bool]]:
    """Every (key or common prefix, is_prefix) a full listing returns, in UTF-8 order."""
    entries: dict[str, bool] = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if delimiter and delimiter in rest:
            entries[prefix + rest[:rest.index(delimiter) + len(delimiter)]] = True
        else:
            entries[key] = False
    return sorted(entries.items(), key=lambda item: u8(item[0]))


async def fill(keys) -> tuple[InMemoryMetadataStore, str]:
    store = InMemoryMetadataStore(blobs_delete=None)
    inc = (await store.commit(CreateBucket("b", "o", "r"), None, rid(), FAR)).bucket_incarnation
    for key in keys:
        await store.commit(PutObject("b", inc, key, inline()), None, rid(), FAR)
    return store, inc


def brute_rollup_page(keys, prefix, delimiter, start_after, max_keys):
    """Brute force with rollup applied to the keys after start_after only."""
    is_rolled = is_common_prefix(start_after, prefix, delimiter)
    later = [k for k in keys if u8(k) > u8(start_after) and not (is_rolled and k.startswith(start_after))]
    entries = brute_entries(later, prefix, delimiter)
    return entries[:max_keys], len(entries) > max_keys


@settings(max_examples=250, deadline=None)
@given(keys_strategy, prefix_strategy, delimiter_strategy, st.integers(1, 7), st.text(alphabet=ALPHABET, max_size=4))
def test_list_objects_matches_brute_force(keys, prefix, delimiter, max_keys, start_after):
    async def scenario():
        store, inc = await fill(keys)
        # One page from an arbitrary start_after.
        page = await store.list_objects("b", inc, prefix=prefix, delimiter=delimiter,
                                        start_after=start_after, max_keys=max_keys, min_seq=None)
        expected, truncated = brute_rollup_page(keys, prefix, delimiter, start_after, max_keys)
        got = sorted([(s.key, False) for s in page.summaries] + [(p, True) for p in page.common_prefixes],
                     key=lambda item: u8(item[0]))
        assert got == expected
        assert page.truncated == truncated
        assert page.next_start_key == (expected[-1][0] if truncated else None)
        assert [u8(s.key) for s in page.summaries] == sorted(u8(s.key) for s in page.summaries)

        # Paging to the end returns every entry exactly once, in UTF-8 order.
        seen: list[tuple[str, bool]] = []
        marker = ""
        for _ in range(len(keys) + 2):
            page = await store.list_objects("b", inc, prefix=prefix, delimiter=delimiter,
                                            start_after=marker, max_keys=max_keys, min_seq=None)
            entries = sorted([(s.key, False) for s in page.summaries] + [(p, True) for p in page.common_prefixes],
                             key=lambda item: u8(item[0]))
            assert len(entries) <= max_keys
            seen += entries
            if not page.truncated:
                break
            assert page.next_start_key == entries[-1][0]
            marker = page.next_start_key
        assert not page.truncated
        assert seen == brute_entries(keys, prefix, delimiter)
        for summary in (await store.list_objects("b", inc, prefix="", delimiter="", start_after="",
                                                 max_keys=1000, min_seq=None)).summaries:
            assert summary.size == 1 and summary.etag == "e"

    run(scenario())


def test_list_objects_examples():
    async def scenario():
        keys = ["a/1", "a/2", "a/b/3", "b", "c/1", "c/2", "d"]
        store, inc = await fill(keys)

        async def page(**kwargs):
            args = dict(prefix="", delimiter="/", start_after="", max_keys=1000, min_seq=None) | kwargs
            p = await store.list_objects("b", inc, **args)
            return [s.key for s in p.summaries], list(p.common_prefixes), p.truncated, p.next_start_key

        assert await page() == (["b", "d"], ["a/", "c/"], False, None)
        assert await page(max_keys=2) == (["b"], ["a/"], True, "b")
        assert await page(start_after="a/") == (["b", "d"], ["c/"], False, None)
        assert await page(start_after="a/1") == (["b", "d"], ["a/", "c/"], False, None)
        assert await page(prefix="a/") == (["a/1", "a/2"], ["a/b/"], False, None)
        assert await page(prefix="a/", start_after="a/b/") == ([], [], False, None)
        assert await page(delimiter="") == (keys, [], False, None)
        assert await page(delimiter="", max_keys=3) == (keys[:3], [], True, "a/b/3")
        assert await page(max_keys=0) == ([], [], False, None)
        # A key under a rolled-up prefix counts once toward max_keys.
        assert await page(max_keys=1) == ([], ["a/"], True, "a/")
        assert (await store.list_objects("b", inc, prefix="", delimiter="", start_after="", max_keys=5,
                                         min_seq=(0, 0, 10**9))).read_seq == (0, 0, len(keys) + 1)

    run(scenario())


def test_list_objects_checksum_algorithms_in_summary():
    async def scenario():
        store, inc = await fill([])
        draft = ObjectDraft(size=1, etag="e", body=Inline(b"x"), checksums=(("crc32", "AAAAAA=="),),
                            checksum_type="FULL_OBJECT")
        await store.commit(PutObject("b", inc, "k", draft), None, rid(), FAR)
        summary = (await store.list_objects("b", inc, prefix="", delimiter="", start_after="",
                                            max_keys=10, min_seq=None)).summaries[0]
        assert summary.checksum_algorithms == ("crc32",) and summary.checksum_type == "FULL_OBJECT"

    run(scenario())


def brute_uploads(uploads, prefix, delimiter, key_marker, upload_id_marker, max_uploads):
    """uploads: [(key, seq, upload_id)] in initiation order. ListMultipartUploads by brute force."""
    ordered = sorted(uploads, key=lambda u: (u8(u[0]), u[1]))
    marker_seq = None
    if key_marker and upload_id_marker:
        marker_seq = next((seq for _, seq, uid in uploads if uid == upload_id_marker), None)
    is_rolled = is_common_prefix(key_marker, prefix, delimiter)
    later = []
    for key, seq, uid in ordered:
        if not key.startswith(prefix):
            continue
        if key_marker:
            if marker_seq is not None:
                if (u8(key), seq) <= (u8(key_marker), marker_seq):
                    continue
            elif u8(key) <= u8(key_marker) or (is_rolled and key.startswith(key_marker)):
                continue
        later.append((key, seq, uid))
    entries: list[tuple[str, str | None]] = []
    rolled: set[str] = set()
    for key, _, uid in later:
        rest = key[len(prefix):]
        if delimiter and delimiter in rest:
            common = prefix + rest[:rest.index(delimiter) + len(delimiter)]
            if common not in rolled:
                rolled.add(common)
                entries.append((common, None))
        else:
            entries.append((key, uid))
    return entries[:max_uploads], len(entries) > max_uploads


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=["a", "/", "é", "😀"], min_size=1, max_size=3), max_size=15),
       st.sampled_from(["", "a", "é"]), st.sampled_from(["", "/"]), st.integers(1, 5), st.data())
def test_list_uploads_matches_brute_force(upload_keys, prefix, delimiter, max_uploads, data):
    async def scenario():
        store, inc = await fill([])
        uploads = []
        for key in upload_keys:
            outcome = await store.commit(CreateUpload("b", inc, key, UploadDraft("o")), None, rid(), FAR)
            uploads.append((key, outcome.seq, outcome.upload_id))
        if uploads and data.draw(st.booleans()):
            key_marker, _, upload_id_marker = data.draw(st.sampled_from(uploads))
        else:
            key_marker = data.draw(st.text(alphabet=["a", "/", "é"], max_size=3))
            upload_id_marker = ""
        page = await store.list_uploads("b", inc, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
                                        upload_id_marker=upload_id_marker, max_uploads=max_uploads)
        expected, truncated = brute_uploads(uploads, prefix, delimiter, key_marker, upload_id_marker, max_uploads)
        assert [u.upload_id for u in page.uploads] == [uid for _, uid in expected if uid is not None]
        assert list(page.common_prefixes) == [key for key, uid in expected if uid is None]
        assert page.truncated == truncated
        if truncated:
            assert (page.next_key_marker, page.next_upload_id_marker) == expected[-1]

        # Paging to the end returns each upload (or rolled prefix) exactly once.
        seen = []
        key_marker = upload_id_marker = ""
        for _ in range(len(uploads) + 2):
            page = await store.list_uploads("b", inc, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
                                            upload_id_marker=upload_id_marker, max_uploads=max_uploads)
            seen += [u.upload_id for u in page.uploads] + list(page.common_prefixes)
            if not page.truncated:
                break
            key_marker, upload_id_marker = page.next_key_marker, page.next_upload_id_marker or ""
        full, _ = brute_uploads(uploads, prefix, delimiter, "", "", 10**6)
        assert sorted(seen) == sorted(uid if uid is not None else key for key, uid in full)

    run(scenario())

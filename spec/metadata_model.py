"""The in-memory MetadataStore (DESIGN §10, §11): the reference for the seam.

What `cairn dev` runs on until the metadata cluster lands, what the frontend's
unit tests use, and the oracle the cluster is compared against. One partition
(0, generation 0) holds buckets and objects; nothing survives a restart.

Commit, in apply order (DESIGN §3), with no await anywhere in it, so a check and
its write are one atomic step on the event loop:
1. dedup: a request id seen within DEDUP_WINDOW (by entry time) returns its
   recorded Outcome, or raises its recorded refusal again; nothing re-applies.
   Only condition and mutation refusals are recorded (`_RECORDED`). A blob the
   duplicate introduces that no record references (a retried PUT wrote new
   bytes) is reaped: the original's bytes are the ones kept.
2. stamp: the entry time is `max(clock_us(), previous entry time + 1)`; the dedup
   table is expired in entry-time order, at most `_DEDUP_EXPIRE_PER_COMMIT` rows.
3. deadline: entry time > not_after_us -> Expired; a data id the entry
   introduces (PutObject's blob, PutPart's) whose time prefix is older than
   entry time - MAX_WRITE_AGE -> WriteExpired (neither is recorded).
4. bucket: absent, or another incarnation -> NoSuchBucket (not for CreateBucket).
5. condition (PutObject, DeleteObject, CompleteUpload only): IfNoneMatchStar
   needs no current version, IfMatch(etag) a current version with that ETag
   (IfMatch("*") any current version) -> else PreconditionFailed; then the
   upload (NoSuchUpload) and, for Complete, every listed part (InvalidPart).
6. mutation: it takes the next seq (dense, from 1); ids are
   `encode_seq_id(0, seq)`; displaced blobs go to the reaper.

Invariants:
- A data id is referenced by at most one live record (an object version or an
  upload part) and is never reused once displaced; breaking that, or an Inline
  body over INLINE_MAX, raises InvariantViolation before anything is written.
- The reaper calls `blobs_delete(ref)` for each displaced BlobRef once
  `reap_delay_s` (monotonic, not the injected clock) has passed; the data ids a
  recorded refusal or a duplicate introduced (a refused PutObject's blob or
  PutPart's part) are reaped too, as in DESIGN §3, unless a record references them. An unrecorded refusal (Expired, NoSuchBucket)
  leaves its bytes alone: a retry with the same request id may still apply them.
  There is no orphan sweep in memory, so those bytes live until restart.
- `close()` cancels the reaper: deletions not yet due are dropped (the in-memory
  blobs vanish with the process anyway) and no task is left pending.
  `reap_now()` deletes every queued blob at once, for tests and shutdown paths
  that want it.
- Keys are ordered by their UTF-8 bytes (`surrogatepass`, so the encoding is
  injective) in a sorted list with a dict beside it: a LIST page costs
  O(log n + page), a new key O(log n) plus one memmove.
- Reads are served from the current state: read_seq is (0, 0, applied seq), and
  `min_seq` is always satisfied.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from bisect import bisect_left, bisect_right, insort
from typing import Awaitable, Callable, Iterator

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
    StoreError,
    WriteExpired,
    invariant,
)
from common.ids import data_id_time_ms, decode_seq_id, encode_seq_id
from common.limits import DEFAULT_LIMITS, Limits
from common.seams import (
    AbortUpload,
    AsOf,
    Body,
    BlobRef,
    BucketRecord,
    CompleteUpload,
    Condition,
    CreateBucket,
    CreateUpload,
    DeleteBucket,
    DeleteObject,
    IfMatch,
    MAINTENANCE,
    IfNoneMatchStar,
    Inline,
    ListPage,
    Multipart,
    Mutation,
    ObjectDraft,
    ObjectRecord,
    ObjectSummary,
    Outcome,
    PartRecord,
    PartsPage,
    PutObject,
    PutPart,
    ReadResult,
    UploadRecord,
    UploadsPage,
)

log = logging.getLogger(__name__)

PARTITION = 0
PARTITION_GENERATION = 0

_RECORDED = (
    PreconditionFailed, NoSuchUpload, InvalidPart,
    BucketNotEmpty, BucketAlreadyExists, BucketAlreadyOwnedByYou,
)
"""Refusals kept in the dedup table: condition and mutation outcomes (DESIGN §3)."""

_DEDUP_EXPIRE_PER_COMMIT = 8
_SEQ_AFTER_ALL = 1 << 64
"""Greater than any seq: `(key, _SEQ_AFTER_ALL)` sorts after every upload of key."""


def encode_key(key: str) -> bytes:
    """The bytes a key sorts by: UTF-8, lone surrogates kept (injective)."""
    return key.encode("utf-8", "surrogatepass")


def decode_key(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def prefix_end(prefix: bytes) -> bytes | None:
    """The least byte string above every string starting with `prefix` (None: none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def is_common_prefix(marker: bytes, prefix: bytes, delimiter: bytes) -> bool:
    """Whether `marker` is a rolled-up common prefix of a listing (seams docstring §7)."""
    if not delimiter or not marker.startswith(prefix):
        return False
    return marker.find(delimiter, len(prefix)) == len(marker) - len(delimiter) >= len(prefix)


def body_blobs(body: Body | None) -> Iterator[BlobRef]:
    """Every BlobRef a body references."""
    if isinstance(body, BlobRef):
        yield body
    elif isinstance(body, Multipart):
        for part in body.parts:
            yield part.blob


def summary_of(record: ObjectRecord) -> ObjectSummary:
    return ObjectSummary(
        key=record.key,
        size=record.size,
        etag=record.etag,
        last_modified_us=record.last_modified_us,
        storage_class=record.storage_class,
        checksum_algorithms=tuple(name for name, _ in record.checksums),
        checksum_type=record.checksum_type,
    )


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


class _Upload:
    __slots__ = ("record", "key_bytes", "seq", "parts")

    def __init__(self, record: UploadRecord, key_bytes: bytes, seq: int) -> None:
        self.record = record
        self.key_bytes = key_bytes
        self.seq = seq
        self.parts: dict[int, PartRecord] = {}


class _Bucket:
    __slots__ = ("record", "keys", "objects", "upload_order", "uploads")

    def __init__(self, record: BucketRecord) -> None:
        self.record = record
        self.keys: list[bytes] = []
        """Encoded keys with a current version, sorted."""
        self.objects: dict[bytes, tuple[ObjectRecord, ObjectSummary]] = {}
        self.upload_order: list[tuple[bytes, int]] = []
        """(encoded key, initiation seq) of in-progress uploads, sorted."""
        self.uploads: dict[int, _Upload] = {}
        """In-progress uploads by initiation seq."""


class InMemoryMetadataStore:
    """MetadataStore (common/seams.py) in one process's memory."""

    def __init__(
        self,
        *,
        blobs_delete: Callable[[BlobRef], Awaitable[None]] | None,
        limits: Limits = DEFAULT_LIMITS,
        clock_us: Callable[[], int] = _wall_clock_us,
        reap_delay_s: float | None = None,
    ) -> None:
        self._blobs_delete = blobs_delete
        self._limits = limits
        self._clock_us = clock_us
        self._reap_delay_s = limits.REAP_DELAY_MS / 1000 if reap_delay_s is None else reap_delay_s
        self._dedup_window_us = limits.DEDUP_WINDOW_MS * 1000
        self._max_write_age_us = limits.MAX_WRITE_AGE_MS * 1000
        self._seq = 0
        self._time_us = 0
        self._buckets: dict[str, _Bucket] = {}
        self._dedup: dict[bytes, tuple[int, Outcome | StoreError]] = {}
        self._dedup_order: collections.deque[tuple[int, bytes]] = collections.deque()
        self._referenced: set[bytes] = set()
        """Data ids of live records: current versions and upload parts."""
        self._reap_queue: collections.deque[tuple[float, BlobRef]] = collections.deque()
        self._queued: set[bytes] = set()
        """Data ids displaced and not yet deleted: never to be referenced again."""
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------ commit

    async def commit(
        self, mutation: Mutation, condition: Condition, request_id: bytes, not_after_us: int
    ) -> Outcome:
        # No await below: check and write are one step (docstring, step 1-6).
        invariant(not self._closed, "commit on a closed InMemoryMetadataStore")
        now_us = max(self._clock_us(), self._time_us + 1)
        recorded = self._dedup.get(request_id)
        if recorded is not None:  # step 1
            entry_us, result = recorded
            if now_us - entry_us <= self._dedup_window_us:
                self._reap_introduced(mutation)
                if isinstance(result, Outcome):
                    return result
                raise type(result)(*result.args)
            del self._dedup[request_id]
        self._time_us = now_us  # step 2
        self._expire_dedup(now_us)
        if now_us > not_after_us:  # step 3
            raise Expired(f"entry time {now_us} is after not_after {not_after_us}")
        if any(data_id_time_ms(ref.data_id) * 1000 < now_us - self._max_write_age_us
               for ref in _introduced(mutation)):
            raise WriteExpired("the object's bytes were written too long ago; send the request again")
        try:
            outcome = self._apply(mutation, condition, now_us)
        except _RECORDED as refusal:
            self._record(request_id, now_us, refusal)
            self._reap_introduced(mutation)
            raise
        self._record(request_id, now_us, outcome)
        return outcome

    def _record(self, request_id: bytes, entry_us: int, result: Outcome | StoreError) -> None:
        self._dedup[request_id] = (entry_us, result)
        self._dedup_order.append((entry_us, request_id))

    def _expire_dedup(self, now_us: int) -> None:
        order = self._dedup_order
        for _ in range(_DEDUP_EXPIRE_PER_COMMIT):
            if not order or now_us - order[0][0] <= self._dedup_window_us:
                return
            entry_us, request_id = order.popleft()
            recorded = self._dedup.get(request_id)
            if recorded is not None and recorded[0] == entry_us:
                del self._dedup[request_id]

    def _apply(self, mutation: Mutation, condition: Condition, now_us: int) -> Outcome:
        if isinstance(mutation, MAINTENANCE):
            raise InvariantViolation("maintenance entries (Reaped, ReplacePlacement) need the cluster index")
        if isinstance(mutation, CreateBucket):
            invariant(condition is None, "a condition on CreateBucket")
            return self._create_bucket(mutation, now_us)
        bucket = self._bucket(mutation.bucket, mutation.bucket_incarnation)  # step 4
        if isinstance(mutation, PutObject):
            return self._put_object(bucket, mutation, condition, now_us)
        if isinstance(mutation, DeleteObject):
            return self._delete_object(bucket, mutation, condition, now_us)
        if isinstance(mutation, CompleteUpload):
            return self._complete_upload(bucket, mutation, condition, now_us)
        invariant(condition is None, f"a condition on {type(mutation).__name__}")
        if isinstance(mutation, DeleteBucket):
            return self._delete_bucket(bucket, now_us)
        if isinstance(mutation, CreateUpload):
            return self._create_upload(bucket, mutation, now_us)
        if isinstance(mutation, PutPart):
            return self._put_part(bucket, mutation, now_us)
        if isinstance(mutation, AbortUpload):
            return self._abort_upload(bucket, mutation, now_us)
        raise AssertionError(f"unknown mutation {mutation!r}")  # pragma: no cover

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ------------------------------------------------------------ checks

    def _bucket(self, name: str, incarnation: str) -> _Bucket:
        bucket = self._buckets.get(name)
        if bucket is None or bucket.record.incarnation != incarnation:
            raise NoSuchBucket(name)
        return bucket

    @staticmethod
    def _check_condition(bucket: _Bucket, key_bytes: bytes, condition: Condition) -> None:
        if condition is None:
            return
        current = bucket.objects.get(key_bytes)
        if isinstance(condition, IfNoneMatchStar):
            if current is not None:
                raise PreconditionFailed("If-None-Match: * and the key exists")
        elif isinstance(condition, IfMatch):
            wanted = condition.etag.strip('"')
            if current is None:
                raise PreconditionFailed("If-Match and the key does not exist")
            if wanted != "*" and current[0].etag != wanted:
                raise PreconditionFailed("If-Match and the ETag differs")
        else:
            invariant(False, f"unknown condition {condition!r}")

    def _check_new_data_id(self, data_id: bytes) -> None:
        invariant(data_id not in self._referenced, f"data id {data_id.hex()} is already referenced")
        invariant(data_id not in self._queued, f"data id {data_id.hex()} was displaced and is being reaped")

    def _check_draft(self, draft: ObjectDraft) -> None:
        body = draft.body
        if isinstance(body, Inline):
            invariant(len(body.data) <= self._limits.INLINE_MAX, "inline body over INLINE_MAX")
            invariant(draft.size == len(body.data), "draft size differs from its inline body")
        elif isinstance(body, BlobRef):
            invariant(draft.size == body.size, "draft size differs from its blob")
            self._check_new_data_id(body.data_id)
        else:
            invariant(False, f"a PutObject body must be Inline or BlobRef, not {type(body).__name__}")

    # ------------------------------------------------------------ mutations

    def _create_bucket(self, mutation: CreateBucket, now_us: int) -> Outcome:
        existing = self._buckets.get(mutation.bucket)
        if existing is not None:
            if existing.record.owner == mutation.owner:
                raise BucketAlreadyOwnedByYou(mutation.bucket)
            raise BucketAlreadyExists(mutation.bucket)
        seq = self._next_seq()
        incarnation = encode_seq_id(PARTITION, seq)
        self._buckets[mutation.bucket] = _Bucket(BucketRecord(
            name=mutation.bucket, owner=mutation.owner, incarnation=incarnation,
            region=mutation.region, created_us=now_us,
        ))
        return Outcome(seq=seq, time_us=now_us, bucket_incarnation=incarnation)

    def _delete_bucket(self, bucket: _Bucket, now_us: int) -> Outcome:
        if bucket.objects or bucket.uploads:
            raise BucketNotEmpty(bucket.record.name)
        seq = self._next_seq()
        del self._buckets[bucket.record.name]
        return Outcome(seq=seq, time_us=now_us)

    def _put_object(self, bucket: _Bucket, mutation: PutObject, condition: Condition,
                    now_us: int) -> Outcome:
        key_bytes = encode_key(mutation.key)
        self._check_condition(bucket, key_bytes, condition)
        self._check_draft(mutation.draft)
        seq = self._next_seq()
        version_id = encode_seq_id(PARTITION, seq)
        self._install(bucket, key_bytes, mutation.key, mutation.draft, seq, version_id, now_us)
        return Outcome(seq=seq, time_us=now_us, version_id=version_id)

    def _install(self, bucket: _Bucket, key_bytes: bytes, key: str, draft: ObjectDraft,
                 seq: int, version_id: str, now_us: int) -> None:
        """Make `draft` the current version of key, displacing the previous one."""
        record = ObjectRecord(
            key=key, version_id=version_id, seq=seq, last_modified_us=now_us,
            size=draft.size, etag=draft.etag, body=draft.body,
            content_headers=draft.content_headers, user_metadata=draft.user_metadata,
            checksums=draft.checksums, checksum_type=draft.checksum_type,
            storage_class=draft.storage_class,
        )
        previous = bucket.objects.get(key_bytes)
        if previous is None:
            insort(bucket.keys, key_bytes)
        else:
            self._displace(body_blobs(previous[0].body))
        bucket.objects[key_bytes] = (record, summary_of(record))
        for ref in body_blobs(draft.body):
            self._referenced.add(ref.data_id)

    def _delete_object(self, bucket: _Bucket, mutation: DeleteObject, condition: Condition,
                       now_us: int) -> Outcome:
        key_bytes = encode_key(mutation.key)
        self._check_condition(bucket, key_bytes, condition)
        seq = self._next_seq()
        previous = bucket.objects.pop(key_bytes, None)
        if previous is not None:
            index = bisect_left(bucket.keys, key_bytes)
            invariant(bucket.keys[index] == key_bytes, "key index out of step with objects")
            del bucket.keys[index]
            self._displace(body_blobs(previous[0].body))
        return Outcome(seq=seq, time_us=now_us)

    def _create_upload(self, bucket: _Bucket, mutation: CreateUpload, now_us: int) -> Outcome:
        seq = self._next_seq()
        upload_id = encode_seq_id(PARTITION, seq)
        draft = mutation.upload
        record = UploadRecord(
            key=mutation.key, upload_id=upload_id, initiated_us=now_us, owner=draft.owner,
            content_headers=draft.content_headers, user_metadata=draft.user_metadata,
            checksum_algorithm=draft.checksum_algorithm, checksum_type=draft.checksum_type,
            storage_class=draft.storage_class,
        )
        key_bytes = encode_key(mutation.key)
        bucket.uploads[seq] = _Upload(record, key_bytes, seq)
        insort(bucket.upload_order, (key_bytes, seq))
        return Outcome(seq=seq, time_us=now_us, upload_id=upload_id)

    @staticmethod
    def _upload(bucket: _Bucket, key: str, upload_id: str) -> _Upload:
        decoded = decode_seq_id(upload_id)
        upload = None if decoded is None or decoded[0] != PARTITION else bucket.uploads.get(decoded[1])
        if upload is None or upload.record.key != key:
            raise NoSuchUpload(upload_id)
        return upload

    def _put_part(self, bucket: _Bucket, mutation: PutPart, now_us: int) -> Outcome:
        upload = self._upload(bucket, mutation.key, mutation.upload_id)
        invariant(1 <= mutation.part_number <= self._limits.MAX_PART_NUMBER,
                  f"part number {mutation.part_number} out of range")
        part = mutation.part
        invariant(part.size == part.blob.size, "part size differs from its blob")
        self._check_new_data_id(part.blob.data_id)
        seq = self._next_seq()
        previous = upload.parts.get(mutation.part_number)
        if previous is not None:
            self._displace((previous.blob,))
        upload.parts[mutation.part_number] = PartRecord(
            part_number=mutation.part_number, size=part.size, etag=part.etag,
            blob=part.blob, last_modified_us=now_us, checksums=part.checksums,
        )
        self._referenced.add(part.blob.data_id)
        return Outcome(seq=seq, time_us=now_us)

    def _complete_upload(self, bucket: _Bucket, mutation: CompleteUpload, condition: Condition,
                         now_us: int) -> Outcome:
        key_bytes = encode_key(mutation.key)
        self._check_condition(bucket, key_bytes, condition)
        upload = self._upload(bucket, mutation.key, mutation.upload_id)
        listed: set[int] = set()
        for completed in mutation.parts:
            stored = upload.parts.get(completed.part_number)
            if (stored is None or stored.blob.data_id != completed.data_id
                    or stored.etag != completed.etag.strip('"')):
                raise InvalidPart(f"part {completed.part_number}")
            listed.add(completed.part_number)
        draft = mutation.draft
        body = draft.body
        invariant(isinstance(body, Multipart) and body.upload_id == mutation.upload_id,
                  "a CompleteUpload draft must have this upload's Multipart body")
        invariant(len(listed) == len(mutation.parts), "a part listed twice")
        invariant(sorted(p.blob.data_id for p in body.parts)
                  == sorted(upload.parts[n].blob.data_id for n in listed),
                  "the draft's parts are not the listed parts")
        offset = 0
        for part in body.parts:
            invariant(part.offset == offset and part.size == part.blob.size, "part offsets do not add up")
            offset += part.size
        invariant(offset == draft.size, "draft size differs from the sum of its parts")
        seq = self._next_seq()
        version_id = encode_seq_id(PARTITION, seq)
        self._remove_upload(bucket, upload)
        self._displace(part.blob for number, part in upload.parts.items() if number not in listed)
        for number in listed:  # the listed parts pass to the new version
            self._referenced.discard(upload.parts[number].blob.data_id)
        self._install(bucket, key_bytes, mutation.key, draft, seq, version_id, now_us)
        return Outcome(seq=seq, time_us=now_us, version_id=version_id)

    def _abort_upload(self, bucket: _Bucket, mutation: AbortUpload, now_us: int) -> Outcome:
        upload = self._upload(bucket, mutation.key, mutation.upload_id)
        seq = self._next_seq()
        self._remove_upload(bucket, upload)
        self._displace(part.blob for part in upload.parts.values())
        return Outcome(seq=seq, time_us=now_us)

    @staticmethod
    def _remove_upload(bucket: _Bucket, upload: _Upload) -> None:
        del bucket.uploads[upload.seq]
        index = bisect_left(bucket.upload_order, (upload.key_bytes, upload.seq))
        invariant(bucket.upload_order[index] == (upload.key_bytes, upload.seq),
                  "upload index out of step with uploads")
        del bucket.upload_order[index]

    # ------------------------------------------------------------ reaper

    def _displace(self, refs) -> None:
        """Queue blobs no live record references any more for deletion after the delay."""
        for ref in refs:
            self._referenced.discard(ref.data_id)
            self._queue_reap(ref)

    def _reap_introduced(self, mutation: Mutation) -> None:
        """Data ids a recorded refusal or a duplicate introduced, unreferenced, are
        reaped too (DESIGN §3); a live one never is."""
        for ref in _introduced(mutation):
            if ref.data_id not in self._referenced and ref.data_id not in self._queued:
                self._queue_reap(ref)

    def _queue_reap(self, ref: BlobRef) -> None:
        if self._blobs_delete is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._queued.add(ref.data_id)
        self._reap_queue.append((loop.time() + self._reap_delay_s, ref))
        if self._reaper is None or self._reaper.done() or self._reaper.get_loop() is not loop:
            # (A store reused under a new event loop, as in tests, gets a new reaper.)
            self._reaper = loop.create_task(self._reap_loop(), name="metadata-model-reaper")

    async def _reap_loop(self) -> None:
        """Delete queued blobs as they fall due; exits when the queue is empty."""
        loop = asyncio.get_running_loop()
        queue = self._reap_queue
        while queue:
            due, ref = queue[0]
            wait_s = due - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            queue.popleft()
            await self._reap_one(ref)

    async def _reap_one(self, ref: BlobRef) -> None:
        assert self._blobs_delete is not None
        invariant(ref.data_id not in self._referenced, f"reaping referenced data id {ref.data_id.hex()}")
        try:
            await self._blobs_delete(ref)
        except Exception:  # the blob is gone with the process anyway; keep reaping
            log.exception("ReapFailed data_id=%s", ref.data_id.hex())
        self._queued.discard(ref.data_id)

    async def reap_now(self) -> int:
        """Delete every queued blob now, due or not (tests, shutdown). Returns how many."""
        count = 0
        while self._reap_queue:
            _, ref = self._reap_queue.popleft()
            await self._reap_one(ref)
            count += 1
        return count

    def pending_reaps(self) -> tuple[BlobRef, ...]:
        """Displaced blobs not yet deleted, in queue order (tests)."""
        return tuple(ref for _, ref in self._reap_queue)

    async def close(self) -> None:
        """Cancel the reaper, dropping deletions not yet made; leaves no task pending."""
        self._closed = True
        reaper, self._reaper = self._reaper, None
        if reaper is not None and not reaper.done():
            reaper.cancel()
            try:
                await reaper
            except asyncio.CancelledError:
                pass
        self._reap_queue.clear()

    # ------------------------------------------------------------ reads

    def _read_seq(self) -> AsOf:
        return (PARTITION, PARTITION_GENERATION, self._seq)

    async def get(self, bucket: str, bucket_incarnation: str, key: str, *, fresh: bool = False) -> ReadResult:
        state = self._bucket(bucket, bucket_incarnation)
        current = state.objects.get(encode_key(key))
        return ReadResult(
            record=None if current is None else current[0],
            read_seq=self._read_seq(),
            bucket=state.record,
        )

    async def get_bucket(self, bucket: str) -> BucketRecord | None:
        state = self._buckets.get(bucket)
        return None if state is None else state.record

    async def list_buckets(self, owner: str) -> tuple[BucketRecord, ...]:
        return tuple(sorted(
            (state.record for state in self._buckets.values() if state.record.owner == owner),
            key=lambda record: encode_key(record.name),
        ))

    async def list_objects(
        self, bucket: str, bucket_incarnation: str, *, prefix: str, delimiter: str,
        start_after: str, max_keys: int, min_seq: AsOf | None,
    ) -> ListPage:
        """One page of keys (seams docstring §7). max_keys <= 0 gives an empty,
        untruncated page. `min_seq` is always met: reads see the current state."""
        state = self._bucket(bucket, bucket_incarnation)
        keys = state.keys
        prefix_bytes, delimiter_bytes = encode_key(prefix), encode_key(delimiter)
        position, end = self._scan_range(keys, prefix_bytes)
        if start_after:
            marker = encode_key(start_after)
            if is_common_prefix(marker, prefix_bytes, delimiter_bytes):
                after = prefix_end(marker)
                position = max(position, len(keys) if after is None else bisect_left(keys, after))
            else:
                position = max(position, bisect_right(keys, marker))
        read_seq = self._read_seq()
        if max_keys <= 0 or position >= end:
            return ListPage((), (), False, None, read_seq)
        objects = state.objects
        if not delimiter_bytes:  # fast path: one slice
            stop = min(end, position + max_keys)
            summaries = tuple([objects[key][1] for key in keys[position:stop]])
            truncated = stop < end
            return ListPage(summaries, (), truncated,
                            summaries[-1].key if truncated else None, read_seq)
        summaries_list: list[ObjectSummary] = []
        common_prefixes: list[str] = []
        last = ""
        count = 0
        truncated = False
        prefix_length, delimiter_length = len(prefix_bytes), len(delimiter_bytes)
        while position < end:
            if count == max_keys:
                truncated = True
                break
            key = keys[position]
            found = key.find(delimiter_bytes, prefix_length)
            count += 1
            if found < 0:
                summary = objects[key][1]
                summaries_list.append(summary)
                last = summary.key
                position += 1
            else:
                rolled = key[:found + delimiter_length]
                last = decode_key(rolled)
                common_prefixes.append(last)
                after = prefix_end(rolled)
                position = end if after is None else bisect_left(keys, after, position + 1, end)
        return ListPage(tuple(summaries_list), tuple(common_prefixes), truncated,
                        last if truncated else None, read_seq)

    @staticmethod
    def _scan_range(keys: list, prefix_bytes: bytes) -> tuple[int, int]:
        """[start, end) of the sorted `keys` that start with prefix_bytes."""
        if not prefix_bytes:
            return 0, len(keys)
        start = bisect_left(keys, prefix_bytes)
        after = prefix_end(prefix_bytes)
        return start, len(keys) if after is None else bisect_left(keys, after, start)

    async def list_uploads(
        self, bucket: str, bucket_incarnation: str, *, prefix: str, delimiter: str,
        key_marker: str, upload_id_marker: str, max_uploads: int,
    ) -> UploadsPage:
        """In-progress uploads by (key bytes, initiation seq), as ListMultipartUploads:
        with key_marker and upload_id_marker, the marker key's uploads initiated after
        that upload, then later keys; with key_marker alone, keys strictly after it
        (after every key under it when it is a common prefix)."""
        state = self._bucket(bucket, bucket_incarnation)
        order = state.upload_order
        prefix_bytes, delimiter_bytes = encode_key(prefix), encode_key(delimiter)
        position = bisect_left(order, (prefix_bytes,))
        after_prefix = prefix_end(prefix_bytes) if prefix_bytes else None
        end = len(order) if after_prefix is None else bisect_left(order, (after_prefix,), position)
        if key_marker:
            marker = encode_key(key_marker)
            decoded = decode_seq_id(upload_id_marker) if upload_id_marker else None
            if decoded is not None and decoded[0] == PARTITION:
                start = bisect_right(order, (marker, decoded[1]))
            elif is_common_prefix(marker, prefix_bytes, delimiter_bytes):
                after = prefix_end(marker)
                start = len(order) if after is None else bisect_left(order, (after,))
            else:
                start = bisect_right(order, (marker, _SEQ_AFTER_ALL))
            position = max(position, start)
        uploads: list[UploadRecord] = []
        common_prefixes: list[str] = []
        next_key: str | None = None
        next_upload_id: str | None = None
        count = 0
        truncated = False
        prefix_length, delimiter_length = len(prefix_bytes), len(delimiter_bytes)
        while position < end and max_uploads > 0:
            if count == max_uploads:
                truncated = True
                break
            key, seq = order[position]
            found = key.find(delimiter_bytes, prefix_length) if delimiter_bytes else -1
            count += 1
            if found < 0:
                record = state.uploads[seq].record
                uploads.append(record)
                next_key, next_upload_id = record.key, record.upload_id
                position += 1
            else:
                rolled = key[:found + delimiter_length]
                next_key, next_upload_id = decode_key(rolled), None
                common_prefixes.append(next_key)
                after = prefix_end(rolled)
                position = end if after is None else bisect_left(order, (after,), position + 1, end)
        if not truncated:
            next_key = next_upload_id = None
        return UploadsPage(tuple(uploads), tuple(common_prefixes), truncated, next_key, next_upload_id)

    async def list_parts(
        self, bucket: str, bucket_incarnation: str, key: str, upload_id: str, *,
        part_number_marker: int, max_parts: int,
    ) -> PartsPage:
        state = self._bucket(bucket, bucket_incarnation)
        upload = self._upload(state, key, upload_id)
        numbers = sorted(number for number in upload.parts if number > part_number_marker)
        page = numbers[:max(max_parts, 0)]
        truncated = len(page) < len(numbers)
        return PartsPage(
            upload=upload.record,
            parts=tuple(upload.parts[number] for number in page),
            truncated=truncated,
            next_part_number_marker=page[-1] if truncated and page else None,
        )


def _introduced(mutation: Mutation) -> tuple[BlobRef, ...]:
    """The data ids an entry references first (DESIGN §3): Complete and Abort none."""
    if isinstance(mutation, PutObject) and isinstance(mutation.draft.body, BlobRef):
        return (mutation.draft.body,)
    if isinstance(mutation, PutPart):
        return (mutation.part.blob,)
    return ()

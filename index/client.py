"""The cluster MetadataStore: the seam of common/seams.py over a journal and index replicas.

A frontend worker holds one. It does no S3 logic: it encodes each commit as a
journal payload (index/codec.py) with the witness slots it touches
(index/witness.py), hands it to a `Transport` (the journal client: coalescing,
the head, the chain), and decodes the head's answer — apply's deterministic
outcome — into an Outcome or the seam's typed refusal (index/local.py
`raise_for`). Reads are one ReadRequest to one metadata node, answered from one
snapshot with its applied seq (DESIGN §4).

Retries (DESIGN §3): a commit is resent with the SAME request id until its
outcome is known; a transport that cannot learn it before `not_after` plus
MAX_CLOCK_SKEW makes the commit raise OutcomeUnknown (HTTP 503) — ambiguous, and
the client's own retry finds the original outcome in the dedup table.

Maintenance (DESIGN §14): displaced bytes are queued in the index's reap queue
(G) by apply; the reaper, the orphan sweep and repair read G, L and R through
`reap_queue`, `lookup_placements` and `placements_on` (not part of the seam),
fenced like a LIST, and commit `Reaped` and `ReplacePlacement` entries.

Cache (DESIGN §4, index/cache.py): object reads carry the as-of of the cached
answer; the node answers CURRENT when no newer write touched the key's witness
slot, and the cached answer is served. Bucket reads and listings are never cached.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Callable, Protocol

from common.errors import OutcomeUnknown
from common.limits import DEFAULT_LIMITS, Limits
from common.seams import (
    BlobRef, BucketRecord, Condition, ListPage, Mutation, Outcome, PartsPage, ReadResult, UploadsPage,
)
from index import codec, index_pb2, replica
from index.cache import RecordCache
from index.local import raise_for, refusal_detail
from index.witness import slot_of, slots_of


class TransportRetry(Exception):
    """The attempt did not reach a decision (no head, broken chain, lost connection):
    resend with the same request id."""


class Transport(Protocol):
    async def submit(self, request_id: bytes, slots: tuple[int, ...], payload: bytes) -> bytes:
        """The AppliedEntry bytes of the entry carrying `request_id`; TransportRetry if unknown."""

    async def read(self, slot: int, request: bytes, as_of: int | None, also_slots: tuple[int, ...] = ()) -> bytes | None:
        """ReadAnswer bytes for one encoded ReadRequest, or None for CURRENT: the node's
        witness for `slot` is at most `as_of`, so the caller's cached answer holds
        (DESIGN §4 step 2); the node's witness is the highest over `slot` and
        `also_slots`. TransportRetry if no node could answer."""

    async def close(self) -> None: ...


class ClusterMetadataStore:
    def __init__(self, transport: Transport, *, partition: int = 0, limits: Limits = DEFAULT_LIMITS,
                 clock_us: Callable[[], int] | None = None) -> None:
        self.transport = transport
        self.partition = partition
        self.limits = limits
        self.clock_us = clock_us or (lambda: time.time_ns() // 1000)
        self.cache = RecordCache(limits.CACHE_MAX_BYTES)

    async def commit(self, mutation: Mutation, condition: Condition, request_id: bytes, not_after_us: int) -> Outcome:
        payload = codec.encode_command(mutation, condition, request_id, not_after_us)
        slots = slots_of(mutation, self.limits.WITNESS_SLOTS)
        give_up_us = not_after_us + self.limits.MAX_CLOCK_SKEW_MS * 1000
        delay_s = 0.005
        while True:
            try:
                answer = await self.transport.submit(request_id, slots, payload)
                break
            except TransportRetry:
                if self.clock_us() > give_up_us:
                    raise OutcomeUnknown("the commit's outcome could not be learned before its deadline") from None
                await asyncio.sleep(delay_s * (0.5 + random.random()))
                delay_s = min(delay_s * 2, 0.5)
        status, outcome = replica.decode_applied(answer)
        raise_for(status, refusal_detail(status, mutation))
        assert outcome is not None
        return outcome

    async def _read(self, slot: int, request, as_of: int | None = None,
                    also_slots: tuple[int, ...] = ()) -> index_pb2.ReadAnswer | None:
        raw = codec.dump(request)
        delay_s = 0.005
        deadline_us = self.clock_us() + self.limits.COMMIT_DEADLINE_MS * 1000
        while True:
            try:
                answer = await self.transport.read(slot, raw, as_of, also_slots)
                return None if answer is None else codec.load(answer, index_pb2.ReadAnswer)
            except TransportRetry:
                if self.clock_us() > deadline_us:
                    raise OutcomeUnknown("no metadata node could answer the read") from None
                await asyncio.sleep(delay_s * (0.5 + random.random()))
                delay_s = min(delay_s * 2, 0.5)

    def _slot(self, bucket: str, key: str = "") -> int:
        return slot_of(bucket, key, self.limits.WITNESS_SLOTS)

    async def get(self, bucket: str, bucket_incarnation: str, key: str, *, fresh: bool = False) -> ReadResult:
        """Step 1–3 of DESIGN §4: send the cached entry's as-of; CURRENT serves the cache.
        `fresh` sends none, so the node answers from its replica."""
        cache_key = (bucket, bucket_incarnation, key)
        cached = None if fresh else self.cache.lookup(cache_key, (self.partition, 0))
        request = index_pb2.ReadRequest(get_object=index_pb2.GetObjectRead(
            bucket=bucket, bucket_incarnation=bucket_incarnation, key=key))
        # The answer also depends on the bucket (absent or re-created means NoSuchBucket),
        # whose operations raise only the bucket's slot: a cached answer holds only
        # while neither slot moved.
        answer = await self._read(self._slot(bucket, key), request, cached[0] if cached else None,
                                  (self._slot(bucket),))
        if answer is None:
            if cached is None:
                raise OutcomeUnknown("a node answered CURRENT to a read without an as-of")
            self.cache.record_hit(True)
            return cached[1]
        self.cache.record_hit(False)
        result = replica.read_result(answer, self.partition)
        self.cache.store(cache_key, result.read_seq, result)
        return result

    async def get_bucket(self, bucket: str) -> BucketRecord | None:
        request = index_pb2.ReadRequest(get_bucket=index_pb2.GetBucketRead(bucket=bucket))
        return replica.bucket_result(await self._read(self._slot(bucket), request))

    async def list_buckets(self, owner: str) -> tuple[BucketRecord, ...]:
        request = index_pb2.ReadRequest(list_buckets=index_pb2.ListBucketsRead(owner=owner))
        return replica.buckets_result(await self._read(-1, request))

    async def list_objects(self, bucket, bucket_incarnation, *, prefix, delimiter, start_after, max_keys, min_seq) -> ListPage:
        request = index_pb2.ReadRequest(list_objects=index_pb2.ListObjectsRead(
            bucket=bucket, bucket_incarnation=bucket_incarnation, prefix=prefix, delimiter=delimiter,
            start_after=start_after, max_keys=max_keys))
        return replica.list_result(await self._read(-1, request), self.partition)

    async def list_uploads(self, bucket, bucket_incarnation, *, prefix, delimiter, key_marker, upload_id_marker,
                           max_uploads) -> UploadsPage:
        request = index_pb2.ReadRequest(list_uploads=index_pb2.ListUploadsRead(
            bucket=bucket, bucket_incarnation=bucket_incarnation, prefix=prefix, delimiter=delimiter,
            key_marker=key_marker, upload_id_marker=upload_id_marker, max_uploads=max_uploads))
        return replica.uploads_result(await self._read(-1, request))

    async def list_parts(self, bucket, bucket_incarnation, key, upload_id, *, part_number_marker, max_parts) -> PartsPage:
        request = index_pb2.ReadRequest(list_parts=index_pb2.ListPartsRead(
            bucket=bucket, bucket_incarnation=bucket_incarnation, key=key, upload_id=upload_id,
            part_number_marker=part_number_marker, max_parts=max_parts))
        return replica.parts_result(await self._read(self._slot(bucket, key), request))

    # ---------------------------------------------------------------- maintenance reads (DESIGN §14)

    async def reap_queue(self, after_seq: int, limit: int) -> tuple[list[tuple[int, int, tuple[BlobRef, ...]]], int]:
        """([(seq, entry time µs, displaced blobs)] after `after_seq`, the reaped seq)."""
        request = index_pb2.ReadRequest(reap_queue=index_pb2.ReapQueueRead(after_seq=after_seq, limit=limit))
        answer = await self._read(-1, request)
        replica.raise_answer(answer)
        entries = [(entry.seq, entry.time_us, tuple(codec.from_message(blob) for blob in entry.blobs))
                   for entry in answer.reap]
        return entries, answer.reaped_seq

    async def placements_on(self, disk: str, start_after: bytes, limit: int) -> list[tuple[BlobRef, int]]:
        """[(blob with its current placement, displaced seq or 0)] of the data ids R
        lists on `disk` (or index/keys.DEGRADED_DISK), in data id order after `start_after`."""
        request = index_pb2.ReadRequest(placements=index_pb2.PlacementsRead(
            disk=disk, start_after=start_after, limit=limit))
        answer = await self._read(-1, request)
        replica.raise_answer(answer)
        return [(codec.from_message(record.blob), record.displaced_seq) for record in answer.placements]

    async def lookup_placements(self, data_ids: list[bytes]) -> tuple[dict[bytes, tuple[BlobRef, int]], int, int]:
        """({data id: (blob, displaced seq)} for those L knows, the applied entry's time µs,
        the partition's MAX_WRITE_AGE in µs — the one apply enforces)."""
        request = index_pb2.ReadRequest(lookup_placements=index_pb2.LookupPlacementsRead(data_ids=data_ids))
        answer = await self._read(-1, request)
        replica.raise_answer(answer)
        found = {record.blob.data_id: (codec.from_message(record.blob), record.displaced_seq)
                 for record in answer.placements}
        return found, answer.applied_time_us, answer.max_write_age_us

    async def close(self) -> None:
        await self.transport.close()

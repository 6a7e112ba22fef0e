"""A single-node MetadataStore over one replica's state: sequence, apply, read.

This is the index core without the journal: it stamps each commit the way the
head does (dense seq, time = max(clock, previous + 1 µs)), applies it with
index/apply.py into one write batch, and serves reads with index/reader.py. The
metadata node (journal + index + witness) wraps the same apply and reads; tests
use this store to hold apply and reads to the in-memory reference
(spec/metadata_model.py) on random operation sequences, and to replay one
journal into fresh replicas.
"""

from __future__ import annotations

import time
from typing import Callable

import common.errors as domain
from common.errors import StoreError
from common.limits import DEFAULT_LIMITS, Limits
from common.seams import AsOf, BucketRecord, Condition, ListPage, Mutation, Outcome, PartsPage, ReadResult, UploadsPage
from index import apply, codec, reader
from index.state import Overlay

_ERRORS = {
    name: getattr(domain, name)
    for name in ("NoSuchBucket", "PreconditionFailed", "NoSuchUpload", "InvalidPart", "BucketNotEmpty",
                 "BucketAlreadyExists", "BucketAlreadyOwnedByYou", "Expired", "WriteExpired")
}


def raise_for(status: str, detail: str = "") -> None:
    """Turn an apply status into the seam's typed refusal; `detail` names what was
    refused (the bucket or upload id), as the reference store's errors do."""
    if status == "OK":
        return
    if status == "InvariantViolation":
        raise domain.InvariantViolation("apply refused the entry as an invariant violation")
    raise _ERRORS[status](detail or status)


def refusal_detail(status: str, mutation) -> str:
    """What a refusal of `mutation` names: the upload for NoSuchUpload, else the bucket."""
    if status == "NoSuchUpload":
        return getattr(mutation, "upload_id", "")
    return getattr(mutation, "bucket", "")


class LocalIndex:
    def __init__(self, view, *, partition: int = 0, limits: Limits = DEFAULT_LIMITS,
                 clock_us: Callable[[], int] | None = None) -> None:
        self.view = view
        self.partition = partition
        self.clock_us = clock_us or (lambda: time.time_ns() // 1000)
        self.journal: list[apply.JournalEntry] = []
        state = apply.apply_state(view)
        if state.apply_version == 0:
            overlay = Overlay(view)
            apply.initial_state(overlay, partition=partition, dedup_window_us=limits.DEDUP_WINDOW_MS * 1000,
                                max_write_age_us=limits.MAX_WRITE_AGE_MS * 1000)
            view.write(overlay.ops())
            state = apply.apply_state(view)
        self.seq, self.time_us = state.seq, state.time_us

    async def commit(self, mutation: Mutation, condition: Condition, request_id: bytes, not_after_us: int) -> Outcome:
        self.seq += 1
        self.time_us = max(self.clock_us(), self.time_us + 1)
        entry = apply.JournalEntry(epoch=1, seq=self.seq, time_us=self.time_us,
                                   payload=codec.encode_command(mutation, condition, request_id, not_after_us))
        self.journal.append(entry)
        overlay = Overlay(self.view)
        result = apply.apply_entry(overlay, entry)
        self.view.write(overlay.ops())
        raise_for(result.status, refusal_detail(result.status, mutation))
        assert result.outcome is not None
        return result.outcome

    def _as_of(self) -> AsOf:
        return (self.partition, 0, self.seq)

    async def get(self, bucket: str, bucket_incarnation: str, key: str, *, fresh: bool = False) -> ReadResult:
        record, bucket_record = reader.get_object(self.view, bucket, bucket_incarnation, key)
        return ReadResult(record, self._as_of(), bucket_record)

    async def get_bucket(self, bucket: str) -> BucketRecord | None:
        return reader.get_bucket(self.view, bucket)

    async def list_buckets(self, owner: str) -> tuple[BucketRecord, ...]:
        return reader.list_buckets(self.view, owner)

    async def list_objects(self, bucket, bucket_incarnation, *, prefix, delimiter, start_after, max_keys, min_seq) -> ListPage:
        summaries, prefixes, truncated, next_key = reader.list_objects(
            self.view, bucket, bucket_incarnation, prefix=prefix, delimiter=delimiter,
            start_after=start_after, max_keys=max_keys)
        return ListPage(summaries, prefixes, truncated, next_key, self._as_of())

    async def list_uploads(self, bucket, bucket_incarnation, *, prefix, delimiter, key_marker,
                           upload_id_marker, max_uploads) -> UploadsPage:
        return reader.list_uploads(self.view, bucket, bucket_incarnation, prefix=prefix, delimiter=delimiter,
                                   key_marker=key_marker, upload_id_marker=upload_id_marker, max_uploads=max_uploads)

    async def list_parts(self, bucket, bucket_incarnation, key, upload_id, *, part_number_marker, max_parts) -> PartsPage:
        return reader.list_parts(self.view, bucket, bucket_incarnation, key, upload_id,
                                 part_number_marker=part_number_marker, max_parts=max_parts)

    async def close(self) -> None:
        return None


__all__ = ["LocalIndex", "raise_for", "StoreError"]

"""An index replica: applies committed journal entries into its RocksDB and answers reads.

Hosted by a metadata node beside journal node i (DESIGN §1); it applies from that
node's own log, in seq order, one unsynced RocksDB write batch per Apply effect
with the applied seq in the same batch (DESIGN §3 step 5); `sync()` makes the
applied state durable and returns the durable applied seq (for journal
truncation, DESIGN §6). Reads are answered from one RocksDB snapshot, with the
applied seq that snapshot reflects (DESIGN §4 step 2).

Wire forms (index/index.proto): an entry's result is an `AppliedEntry`; a read is
a `ReadRequest` answered by a `ReadAnswer`.
"""

from __future__ import annotations

from common.errors import StoreError, invariant
from common.limits import DEFAULT_LIMITS, Limits
from common.seams import (
    BucketRecord, ListPage, ObjectRecord, Outcome, PartsPage, ReadResult, UploadsPage,
)
from index import apply, codec, index_pb2, keys, reader
from index.rocks import RocksView
from index.state import Overlay


class IndexReplica:
    def __init__(self, path: str, *, partition: int = 0, limits: Limits = DEFAULT_LIMITS) -> None:
        self.view = RocksView(path)
        self.partition = partition
        state = apply.apply_state(self.view)
        if state.apply_version not in (0, apply.APPLY_VERSION):
            self.view.close()
            raise RuntimeError(
                f"{path} holds an index written by apply version {state.apply_version}; this build applies "
                f"version {apply.APPLY_VERSION} and cannot read it. Start with a fresh data directory.")
        if state.apply_version == 0:
            overlay = Overlay(self.view)
            apply.initial_state(overlay, partition=partition, dedup_window_us=limits.DEDUP_WINDOW_MS * 1000,
                                max_write_age_us=limits.MAX_WRITE_AGE_MS * 1000)
            self.view.write(overlay.ops(), sync=True)
            state = apply.apply_state(self.view)
        self.applied_seq = state.seq
        self.durable_applied_seq = state.seq

    def apply(self, entries) -> list[bytes]:
        """Apply committed entries (journal Entry: epoch, seq, time_us, payload) in
        order; returns each one's encoded AppliedEntry."""
        overlay = Overlay(self.view)
        results = []
        for entry in entries:
            invariant(entry.seq == self.applied_seq + 1, f"apply gap: {entry.seq} after {self.applied_seq}")
            applied = apply.apply_entry(overlay, apply.JournalEntry(entry.epoch, entry.seq, entry.time_us, entry.payload))
            self.applied_seq = entry.seq
            results.append(encode_applied(applied))
        self.view.write(overlay.ops())
        return results

    def sync(self) -> int:
        self.view.write([], sync=True)
        self.durable_applied_seq = self.applied_seq
        return self.durable_applied_seq

    def answer(self, request: bytes) -> bytes:
        """Answer one encoded ReadRequest from a snapshot; the answer names its applied seq."""
        message = codec.load(request, index_pb2.ReadRequest)
        applied = self.applied_seq
        snapshot = self.view.snapshot()
        return codec.dump(read(snapshot, message, applied))

    def close(self) -> None:
        self.view.close()


def encode_applied(applied: apply.Applied) -> bytes:
    message = index_pb2.AppliedEntry(seq=applied.seq, time_us=applied.time_us, status=applied.status)
    if applied.outcome is not None:
        message.outcome.CopyFrom(codec.outcome_message(applied.outcome))
    return codec.dump(message)


def decode_applied(raw: bytes) -> tuple[str, Outcome | None]:
    message = codec.load(raw, index_pb2.AppliedEntry)
    return message.status, (codec.from_message_outcome(message.outcome) if message.HasField("outcome") else None)


def read(view, request, applied_seq: int):
    """Answer a ReadRequest message over `view` (pure: tests call it directly)."""
    answer = index_pb2.ReadAnswer(applied_seq=applied_seq)
    kind = request.WhichOneof("kind")
    query = getattr(request, kind)
    try:
        if kind == "get_object":
            record, bucket = reader.get_object(view, query.bucket, query.bucket_incarnation, query.key)
            codec.to_message(bucket, answer.bucket)
            if record is not None:
                answer.found = True
                codec.to_message(record, answer.record)
        elif kind == "get_bucket":
            bucket = reader.get_bucket(view, query.bucket)
            if bucket is not None:
                answer.found = True
                codec.to_message(bucket, answer.bucket)
        elif kind == "list_buckets":
            for bucket in reader.list_buckets(view, query.owner):
                codec.to_message(bucket, answer.buckets.add())
        elif kind == "list_objects":
            summaries, prefixes, truncated, next_key = reader.list_objects(
                view, query.bucket, query.bucket_incarnation, prefix=query.prefix, delimiter=query.delimiter,
                start_after=query.start_after, max_keys=query.max_keys)
            for summary in summaries:
                codec.to_message(summary, answer.summaries.add())
            answer.common_prefixes.extend(prefixes)
            answer.truncated = truncated
            answer.next_marker = next_key or ""
        elif kind == "list_uploads":
            page = reader.list_uploads(view, query.bucket, query.bucket_incarnation, prefix=query.prefix,
                                       delimiter=query.delimiter, key_marker=query.key_marker,
                                       upload_id_marker=query.upload_id_marker, max_uploads=query.max_uploads)
            for upload in page.uploads:
                codec.to_message(upload, answer.uploads.add())
            answer.common_prefixes.extend(page.common_prefixes)
            answer.truncated = page.truncated
            answer.next_marker = page.next_key_marker or ""
            answer.next_upload_id_marker = page.next_upload_id_marker or ""
        elif kind == "reap_queue":
            for seq, record in reader.reap_queue(view, query.after_seq, query.limit or 1000):
                answer.reap.add(seq=seq, time_us=record.time_us, blobs=record.blobs)
            answer.reaped_seq = apply.apply_state(view).reaped_seq
        elif kind == "placements":
            answer.placements.extend(reader.placements_on(view, query.disk, query.start_after, query.limit or 1000))
        elif kind == "lookup_placements":
            for data_id in query.data_ids:
                raw = view.get(keys.placement_key(data_id))
                if raw is not None:
                    answer.placements.add().CopyFrom(codec.load(raw, index_pb2.PlacementRecord))
            state = apply.apply_state(view)
            answer.applied_time_us, answer.max_write_age_us = state.time_us, state.max_write_age_us
        elif kind == "list_parts":
            page = reader.list_parts(view, query.bucket, query.bucket_incarnation, query.key, query.upload_id,
                                     part_number_marker=query.part_number_marker, max_parts=query.max_parts)
            codec.to_message(page.upload, answer.upload)
            for part in page.parts:
                codec.to_message(part, answer.parts.add())
            answer.truncated = page.truncated
            answer.next_part_number_marker = page.next_part_number_marker or 0
        else:  # pragma: no cover - the oneof is closed
            invariant(False, f"unknown read {kind}")
    except StoreError as error:
        answer.error = error.code
        answer.error_detail = str(error.args[0]) if error.args else ""
    return answer


# ------------------------------------------------------------------ client side decoding

def read_result(answer, partition: int) -> ReadResult:
    _raise(answer)
    record = codec.from_message(answer.record) if answer.found else None
    return ReadResult(record, (partition, 0, answer.applied_seq), codec.from_message(answer.bucket))


def bucket_result(answer) -> BucketRecord | None:
    _raise(answer)
    return codec.from_message(answer.bucket) if answer.found else None


def buckets_result(answer) -> tuple[BucketRecord, ...]:
    _raise(answer)
    return tuple(codec.from_message(bucket) for bucket in answer.buckets)


def list_result(answer, partition: int) -> ListPage:
    _raise(answer)
    return ListPage(tuple(codec.from_message(summary) for summary in answer.summaries),
                    tuple(answer.common_prefixes), answer.truncated, answer.next_marker or None,
                    (partition, 0, answer.applied_seq))


def uploads_result(answer) -> UploadsPage:
    _raise(answer)
    return UploadsPage(tuple(codec.from_message(upload) for upload in answer.uploads), tuple(answer.common_prefixes),
                       answer.truncated, answer.next_marker or None, answer.next_upload_id_marker or None)


def parts_result(answer) -> PartsPage:
    _raise(answer)
    return PartsPage(codec.from_message(answer.upload), tuple(codec.from_message(part) for part in answer.parts),
                     answer.truncated, answer.next_part_number_marker or None)


def raise_answer(answer) -> None:
    """Raise the refusal a ReadAnswer carries, if any."""
    _raise(answer)


def _raise(answer) -> None:
    if answer.error:
        from index.local import raise_for

        raise_for(answer.error, answer.error_detail)


__all__ = ["IndexReplica", "read", "encode_applied", "decode_applied", "ObjectRecord"]

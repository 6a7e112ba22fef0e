"""Reads over one replica's state (DESIGN §4): records, buckets, and listings.

Pure functions of a `ReadView` (a RocksDB snapshot, or a test's in-memory view),
so a read sees one consistent state. Listing follows common/seams.py rule 7:
raw UTF-8 order (the key encoding preserves it), delimiters rolled up into
common prefixes that count toward max_keys, and a scan that seeks past each
common prefix instead of reading the keys under it.
"""

from __future__ import annotations

import dataclasses

from common.errors import NoSuchBucket, NoSuchUpload
from common.ids import decode_seq_id
from common.seams import (
    BlobRef, BucketRecord, Multipart, ObjectRecord, ObjectSummary, PartRecord, PartsPage, UploadRecord, UploadsPage,
)
from index import codec, index_pb2, keys
from index.state import ReadView


def get_bucket(view: ReadView, name: str) -> BucketRecord | None:
    raw = view.get(keys.bucket_key(name))
    return codec.load_record(raw, BucketRecord) if raw is not None else None


def list_buckets(view: ReadView, owner: str) -> tuple[BucketRecord, ...]:
    found = []
    for _, raw in view.scan(keys.BUCKET, keys.prefix_successor(keys.BUCKET)):
        record = codec.load_record(raw, BucketRecord)
        if record.owner == owner:
            found.append(record)
    return tuple(found)


def checked_bucket(view: ReadView, name: str, incarnation: str) -> BucketRecord:
    record = get_bucket(view, name)
    if record is None or record.incarnation != incarnation:
        raise NoSuchBucket(name)
    return record


def get_object(view: ReadView, bucket: str, incarnation: str, key: str) -> tuple[ObjectRecord | None, BucketRecord]:
    record = checked_bucket(view, bucket, incarnation)
    raw = view.get(keys.current_key(bucket, key))
    return (_with_placements(view, codec.load_record(raw, ObjectRecord)) if raw is not None else None), record


def _current_placement(view: ReadView, ref: BlobRef) -> BlobRef:
    """The blob with the placement L holds now: repair rewrites L, never the version."""
    raw = view.get(keys.placement_key(ref.data_id))
    if raw is None:
        return ref
    placement = codec.load(raw, index_pb2.PlacementRecord).blob.placement
    return ref if placement == ref.placement else dataclasses.replace(ref, placement=placement)


def _with_placements(view: ReadView, record: ObjectRecord) -> ObjectRecord:
    """DESIGN §4 step 7: each data id's L joined into the record."""
    body = record.body
    if isinstance(body, BlobRef):
        joined = _current_placement(view, body)
        return record if joined is body else dataclasses.replace(record, body=joined)
    if isinstance(body, Multipart):
        parts = tuple(dataclasses.replace(part, blob=_current_placement(view, part.blob)) for part in body.parts)
        if any(new.blob is not old.blob for new, old in zip(parts, body.parts)):
            return dataclasses.replace(record, body=dataclasses.replace(body, parts=parts))
    return record


def reap_queue(view: ReadView, after_seq: int, limit: int):
    """(seq, ReapRecord) of the reap queue after `after_seq`, at most `limit`."""
    found = []
    for raw_key, raw in view.scan(keys.reap_key(after_seq + 1), keys.prefix_successor(keys.REAP)):
        found.append((keys.read_u64(raw_key, 1), codec.load(raw, index_pb2.ReapRecord)))
        if len(found) >= limit:
            break
    return found


def placements_on(view: ReadView, disk: str, start_after: bytes, limit: int):
    """The PlacementRecords of data ids R lists under `disk`, after `start_after`."""
    prefix = keys.reverse_prefix(disk)
    start = prefix + start_after + b"\x00" if start_after else prefix
    found = []
    for raw_key, _ in view.scan(start, keys.prefix_successor(prefix)):
        raw = view.get(keys.placement_key(raw_key[len(prefix):]))
        if raw is not None:
            found.append(codec.load(raw, index_pb2.PlacementRecord))
        if len(found) >= limit:
            break
    return found


def summary_of(record: ObjectRecord) -> ObjectSummary:
    return ObjectSummary(
        key=record.key, size=record.size, etag=record.etag, last_modified_us=record.last_modified_us,
        storage_class=record.storage_class,
        checksum_algorithms=tuple(algorithm for algorithm, _ in record.checksums),
        checksum_type=record.checksum_type,
    )


def is_common_prefix(marker: str, prefix: str, delimiter: str) -> bool:
    """Whether `marker` is a common prefix a listing with (prefix, delimiter) rolls up."""
    if not delimiter or not marker.startswith(prefix):
        return False
    cut = marker.find(delimiter, len(prefix))
    return cut >= 0 and cut + len(delimiter) == len(marker)


def _start(base: bytes, prefix: str, delimiter: str, start_after: str) -> bytes:
    """Where a scan begins: at the prefix, or strictly after `start_after` — past
    all of it when `start_after` is itself a rolled-up common prefix."""
    start = base + keys.string_prefix(prefix)
    if start_after:
        after = base + keys.encode_string(start_after) + b"\x00"
        if is_common_prefix(start_after, prefix, delimiter):
            after = keys.prefix_successor(base + keys.string_prefix(start_after)) or after
        start = max(start, after)
    return start


def list_objects(view: ReadView, bucket: str, incarnation: str, *, prefix: str, delimiter: str,
                 start_after: str, max_keys: int):
    """(summaries, common prefixes, truncated, next start key)."""
    checked_bucket(view, bucket, incarnation)
    base = keys.current_prefix(bucket)
    end = keys.prefix_successor(base + keys.string_prefix(prefix)) if prefix else keys.prefix_successor(base)
    position = _start(base, prefix, delimiter, start_after)
    summaries: list[ObjectSummary] = []
    prefixes: list[str] = []
    last = None
    while True:
        scan = view.scan(position, end)
        restart = None
        for raw_key, raw_value in scan:
            key = keys.decode_string(raw_key, len(base))[0]
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    if len(summaries) + len(prefixes) == max_keys:
                        return tuple(summaries), tuple(prefixes), True, last
                    prefixes.append(common)
                    last = common
                    restart = keys.prefix_successor(base + keys.string_prefix(common))
                    break
            if len(summaries) + len(prefixes) == max_keys:
                return tuple(summaries), tuple(prefixes), True, last
            summaries.append(summary_of(codec.load_record(raw_value, ObjectRecord)))
            last = key
        if restart is None:
            return tuple(summaries), tuple(prefixes), False, None
        position = restart


def list_uploads(view: ReadView, bucket: str, incarnation: str, *, prefix: str, delimiter: str,
                 key_marker: str, upload_id_marker: str, max_uploads: int) -> UploadsPage:
    checked_bucket(view, bucket, incarnation)
    base = keys.upload_prefix(bucket)
    end = keys.prefix_successor(base + keys.string_prefix(prefix)) if prefix else keys.prefix_successor(base)
    position = base + keys.string_prefix(prefix)
    if key_marker:
        marker = decode_seq_id(upload_id_marker) if upload_id_marker else None
        if marker is not None:
            after = base + keys.encode_string(key_marker) + keys.u64(marker[1] + 1)
        else:
            after = base + keys.encode_string(key_marker) + b"\xff"
            if is_common_prefix(key_marker, prefix, delimiter):
                after = keys.prefix_successor(base + keys.string_prefix(key_marker)) or after
        position = max(position, after)
    uploads: list[UploadRecord] = []
    prefixes: list[str] = []
    while True:
        restart = None
        for raw_key, raw_value in view.scan(position, end):
            key, offset = keys.decode_string(raw_key, len(base))
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    if len(uploads) + len(prefixes) == max_uploads:
                        return _uploads_page(uploads, prefixes, True)
                    prefixes.append(common)
                    restart = keys.prefix_successor(base + keys.string_prefix(common))
                    break
            if len(uploads) + len(prefixes) == max_uploads:
                return _uploads_page(uploads, prefixes, True)
            uploads.append(codec.load_record(raw_value, UploadRecord))
        if restart is None:
            return _uploads_page(uploads, prefixes, False)
        position = restart


def _uploads_page(uploads, prefixes, truncated: bool) -> UploadsPage:
    next_key = next_id = None
    if truncated:
        if prefixes and (not uploads or prefixes[-1].encode() > uploads[-1].key.encode()):
            next_key = prefixes[-1]
        elif uploads:
            next_key, next_id = uploads[-1].key, uploads[-1].upload_id
    return UploadsPage(tuple(uploads), tuple(prefixes), truncated, next_key, next_id)


def list_parts(view: ReadView, bucket: str, incarnation: str, key: str, upload_id: str, *,
               part_number_marker: int, max_parts: int) -> PartsPage:
    checked_bucket(view, bucket, incarnation)
    decoded = decode_seq_id(upload_id)
    raw = view.get(keys.upload_key(bucket, key, decoded[1])) if decoded is not None else None
    if raw is None:
        raise NoSuchUpload(upload_id)
    upload = codec.load_record(raw, UploadRecord)
    prefix = keys.part_prefix(bucket, key, decoded[1])
    start = prefix + (part_number_marker + 1).to_bytes(2, "big") if part_number_marker < 0xFFFF else keys.prefix_successor(prefix)
    parts: list[PartRecord] = []
    for _, value in view.scan(start, keys.prefix_successor(prefix)):
        if len(parts) == max_parts:
            return PartsPage(upload, tuple(parts), True, parts[-1].part_number if parts else part_number_marker)
        parts.append(codec.load_record(value, PartRecord))
    return PartsPage(upload, tuple(parts), False, None)

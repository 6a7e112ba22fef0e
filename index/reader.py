"""Reads over one replica's state (DESIGN §4): records, buckets, and listings.

Pure functions of a `ReadView` (a RocksDB snapshot, or a test's in-memory view),
so a read sees one consistent state. Listing follows common/seams.py rule 7:
raw UTF-8 order (the key encoding preserves it), delimiters rolled up into
common prefixes that count toward max_keys, and a scan that seeks past each
common prefix instead of reading the keys under it.
"""

from __future__ import annotations

from common.errors import NoSuchBucket, NoSuchUpload
from common.ids import decode_seq_id
from common.seams import (
    BucketRecord, ObjectRecord, ObjectSummary, PartRecord, PartsPage, UploadRecord, UploadsPage,
)
from index import codec, keys
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
    return (codec.load_record(raw, ObjectRecord) if raw is not None else None), record


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

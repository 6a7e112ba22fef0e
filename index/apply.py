"""Apply: the deterministic authority over a partition's records (DESIGN §3).

Every index replica applies the committed journal entries of its own node's log
in seq order. Apply reads nothing but the entry and the replica's state — no
clock, no randomness, no local configuration (limits come from the partition's
`M` record) — so one log gives identical contents and outcomes on every replica
(invariant I6), which `tests/prop/test_index_apply.py` checks by replaying one
journal into two fresh replicas and comparing their key/value pairs.

Per entry, in order (the table of DESIGN §3):
1. dense: the entry's seq is the applied seq + 1 (I1);
2. expire at most DEDUP_EXPIRE_PER_ENTRY dedup rows older than the window (T order);
3. request id already in D → the recorded outcome, applying nothing; data ids the
   duplicate introduced and nothing references go to the reap queue G;
4. entry.time > not_after → Expired (not recorded: the SDK's retry carries a new
   not_after and may still apply);
5. bucket absent or another incarnation → NoSuchBucket (not recorded);
6. condition (PutObject, DeleteObject, CompleteUpload), upload, parts →
   PreconditionFailed, NoSuchUpload, InvalidPart (recorded);
7. the mutation; ids from (partition, seq), Last-Modified from entry.time; data
   ids it displaces go to G at this seq; D records the outcome.
A recorded refusal queues the data ids its entry introduced in G too, unless `L`
holds them. `L` maps every data id the index knows to its BlobRef (placement) —
referenced, or displaced and queued in G until the reaper's `Reaped` entry drops it —
so a data id referenced twice is caught deterministically and refused as
InvariantViolation (never a crash of every replica at once), and the orphan sweep
can ask L whether a shard is still wanted (DESIGN §14). `R` maps (disk, data id)
to nothing for every disk a placement names, and ("DEGRADED", data id) for a
placement below full redundancy, so repair finds what a lost disk held.
An introduced data id older than entry.time − MAX_WRITE_AGE (its time prefix,
common/ids.py) is refused as WriteExpired (retryable, unrecorded): from then on it
can never become referenced, which is what lets the sweep delete old orphans.

Maintenance entries (no bucket, no witness slot): `Reaped(up_to_seq)` raises the
reaped seq as a max and drops the G entries up to it with the L and R entries of the
displaced data ids they queued; `ReplacePlacement` is repair's compare-and-set on a
referenced data id's placement (PreconditionFailed unless it is still exactly
`expected`; WriteExpired when repair began writing more than MAX_WRITE_AGE ago).

Apply works on the protobuf messages of index/index.proto directly — the command
as decoded, records as stored — never converting to the seams' dataclasses: that
conversion was most of an entry's cost (~100 µs of ~105 per PutObject on one
replica, three replicas per write).
"""

from __future__ import annotations

from dataclasses import dataclass

from common import blob_placement
from common.errors import invariant
from common.ids import data_id_time_ms, decode_seq_id, encode_seq_id
from common.seams import Outcome
from index import codec, index_pb2, keys
from index.state import Overlay

pb = index_pb2

APPLY_VERSION = 2   # 2: L holds PlacementRecord (displaced data ids stay until reaped), R is kept
DEDUP_EXPIRE_PER_ENTRY = 4
INLINE_MAX_APPLY = 4096
RECORDED_REFUSALS = frozenset({
    "PreconditionFailed", "NoSuchUpload", "InvalidPart", "BucketNotEmpty",
    "BucketAlreadyExists", "BucketAlreadyOwnedByYou", "InvariantViolation",
})
_APPLY_STATE = keys.meta_key("apply")


@dataclass(frozen=True)
class JournalEntry:
    epoch: int
    seq: int
    time_us: int
    payload: bytes


@dataclass(frozen=True)
class Applied:
    """An entry's deterministic result: status "OK" with an outcome, or an error code."""

    seq: int
    time_us: int
    status: str
    outcome: Outcome | None = None
    request_id: bytes = b""


class Refusal(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def apply_state(view) -> index_pb2.ApplyState:
    raw = view.get(_APPLY_STATE)
    return codec.load(raw, index_pb2.ApplyState) if raw is not None else index_pb2.ApplyState()


def initial_state(view: Overlay, *, partition: int, dedup_window_us: int, max_write_age_us: int) -> None:
    """The `M` record a partition starts with (its first entry sets the same in the cluster)."""
    state = index_pb2.ApplyState(partition=partition, apply_version=APPLY_VERSION,
                                 dedup_window_us=dedup_window_us, max_write_age_us=max_write_age_us)
    view.put(_APPLY_STATE, codec.dump(state))


def apply_entry(view: Overlay, entry: JournalEntry) -> Applied:
    state = apply_state(view)
    invariant(entry.seq == state.seq + 1, f"journal gap: applying seq {entry.seq} after {state.seq}")
    invariant(entry.time_us > state.time_us, "entry time must increase with seq")
    command = codec.load(entry.payload, pb.Command)
    request_id = command.request_id
    kind = command.mutation.WhichOneof("kind")
    invariant(kind is not None, "an entry without a mutation")
    mutation = getattr(command.mutation, kind)
    condition = command.condition
    _expire_dedup(view, entry.time_us, state.dedup_window_us)
    state.seq, state.time_us, state.epoch = entry.seq, entry.time_us, entry.epoch
    view.put(_APPLY_STATE, codec.dump(state))
    recorded = view.get(keys.dedup_key(request_id))
    if recorded is not None:
        record = codec.load(recorded, pb.DedupRecord)
        _reap_unreferenced(view, entry, _introduced(kind, mutation))
        outcome = codec.from_message_outcome(record.outcome) if not record.refusal else None
        return Applied(entry.seq, entry.time_us, record.refusal or "OK", outcome, request_id)
    if entry.time_us > command.not_after_us:
        return Applied(entry.seq, entry.time_us, "Expired", None, request_id)
    horizon_us = entry.time_us - state.max_write_age_us
    if any(data_id_time_ms(ref.data_id) * 1000 < horizon_us for ref in _introduced(kind, mutation)) \
            or (kind == "replace_placement" and mutation.began_us < horizon_us):
        return Applied(entry.seq, entry.time_us, "WriteExpired", None, request_id)
    context = _Context(view, entry, state)
    try:
        outcome = context.apply(kind, mutation, condition)
    except Refusal as refusal:
        if refusal.code in RECORDED_REFUSALS:
            _record(view, request_id, entry.time_us, None, refusal.code)
            _reap_unreferenced(view, entry, _introduced(kind, mutation))
        return Applied(entry.seq, entry.time_us, refusal.code, None, request_id)
    _record(view, request_id, entry.time_us, outcome, "")
    return Applied(entry.seq, entry.time_us, "OK", outcome, request_id)


def _record(view: Overlay, request_id: bytes, time_us: int, outcome: Outcome | None, refusal: str) -> None:
    record = pb.DedupRecord(refusal=refusal, time_us=time_us)
    if outcome is not None:
        record.outcome.CopyFrom(codec.outcome_message(outcome))
    view.put(keys.dedup_key(request_id), codec.dump(record))
    view.put(keys.dedup_expiry_key(time_us, request_id), b"")


def _expire_dedup(view: Overlay, now_us: int, window_us: int) -> None:
    if window_us <= 0 or now_us <= window_us:
        return
    horizon = keys.DEDUP_EXPIRY + keys.u64(now_us - window_us)
    expired = []
    for key, _ in view.scan(keys.DEDUP_EXPIRY, horizon):
        expired.append(key)
        if len(expired) == DEDUP_EXPIRE_PER_ENTRY:
            break
    for key in expired:
        view.delete(key)
        view.delete(keys.DEDUP + key[1 + 8:])


def _introduced(kind: str, mutation) -> tuple:
    if kind == "put_object" and mutation.draft.body.WhichOneof("kind") == "blob_ref":
        return (mutation.draft.body.blob_ref,)
    if kind == "put_part":
        return (mutation.part.blob,)
    return ()


def _reap_unreferenced(view: Overlay, entry: JournalEntry, refs: tuple) -> None:
    loose = tuple(ref for ref in refs if view.get(keys.placement_key(ref.data_id)) is None)
    if loose:
        _queue_reap(view, entry, loose)


def _queue_reap(view: Overlay, entry: JournalEntry, refs) -> None:
    refs = tuple(refs)
    if not refs:
        return
    key = keys.reap_key(entry.seq)
    existing = view.get(key)
    record = codec.load(existing, pb.ReapRecord) if existing is not None else pb.ReapRecord(time_us=entry.time_us)
    for ref in refs:
        record.blobs.add().CopyFrom(ref)
    view.put(key, codec.dump(record))


def _load_bucket(raw: bytes):
    return codec.load(raw, pb.BucketRecord)


def _reverse_keys(blob) -> list[bytes]:
    """R entries for a blob's placement: one per disk it names, and DEGRADED when it
    is below full redundancy (common/blob_placement.py reads the placement)."""
    disks, degraded = blob_placement.index_facts(blob.placement)
    found = [keys.reverse_key(disk, blob.data_id) for disk in sorted(set(disks))]
    if degraded:
        found.append(keys.reverse_key(keys.DEGRADED_DISK, blob.data_id))
    return found


def body_blobs(body) -> tuple:
    """The BlobRef messages an object's Body references."""
    which = body.WhichOneof("kind")
    if which == "blob_ref":
        return (body.blob_ref,)
    if which == "multipart":
        return tuple(part.blob for part in body.multipart.parts)
    return ()


def _outcome(seq: int, time_us: int, **ids: str) -> Outcome:
    return Outcome(seq=seq, time_us=time_us, **ids)


class _Context:
    """One entry's application; raises Refusal before writing anything."""

    def __init__(self, view: Overlay, entry: JournalEntry, state) -> None:
        self.view = view
        self.entry = entry
        self.state = state
        self.partition = state.partition
        self.now_us = entry.time_us
        self.seq = entry.seq

    def apply(self, kind: str, mutation, condition) -> Outcome:
        if kind == "create_bucket":
            return self.create_bucket(mutation)
        if kind in ("reaped", "replace_placement"):
            if condition.WhichOneof("kind") is not None:
                raise Refusal("InvariantViolation")
            return getattr(self, kind)(mutation)
        bucket = self.bucket(mutation.bucket, mutation.bucket_incarnation)
        conditional = condition.WhichOneof("kind") is not None
        if conditional and kind not in ("put_object", "delete_object", "complete_upload"):
            raise Refusal("InvariantViolation")
        return getattr(self, kind)(bucket, mutation, condition)

    # ---------------------------------------------------------------- checks

    def bucket(self, name: str, incarnation: str):
        record = self.view.decoded(keys.bucket_key(name), _load_bucket)
        if record is None or record.incarnation != incarnation:
            raise Refusal("NoSuchBucket")
        return record

    def current(self, bucket: str, key: str):
        raw = self.view.get(keys.current_key(bucket, key))
        return codec.load(raw, pb.ObjectRecord) if raw is not None else None

    def check_condition(self, current, condition) -> None:
        which = condition.WhichOneof("kind")
        if which == "if_none_match_star" and current is not None:
            raise Refusal("PreconditionFailed")
        if which == "if_match":
            wanted = condition.if_match.etag.strip('"')
            if current is None or (wanted != "*" and current.etag != wanted):
                raise Refusal("PreconditionFailed")

    def check_new(self, refs) -> None:
        seen = set()
        for ref in refs:
            if ref.data_id in seen or self.view.get(keys.placement_key(ref.data_id)) is not None:
                raise Refusal("InvariantViolation")
            seen.add(ref.data_id)

    def check_draft(self, draft) -> None:
        which = draft.body.WhichOneof("kind")
        if which == "inline":
            if len(draft.body.inline.data) > INLINE_MAX_APPLY or draft.size != len(draft.body.inline.data):
                raise Refusal("InvariantViolation")
        elif which == "blob_ref":
            if draft.size != draft.body.blob_ref.size:
                raise Refusal("InvariantViolation")
            self.check_new((draft.body.blob_ref,))
        else:
            raise Refusal("InvariantViolation")

    def upload(self, bucket: str, key: str, upload_id: str):
        decoded = decode_seq_id(upload_id)
        if decoded is None or decoded[0] != self.partition:
            raise Refusal("NoSuchUpload")
        raw = self.view.get(keys.upload_key(bucket, key, decoded[1]))
        if raw is None:
            raise Refusal("NoSuchUpload")
        return decoded[1], codec.load(raw, pb.UploadRecord)

    def parts(self, bucket: str, key: str, upload_seq: int) -> dict:
        prefix = keys.part_prefix(bucket, key, upload_seq)
        found = {}
        for _, value in self.view.scan(prefix, keys.prefix_successor(prefix)):
            record = codec.load(value, pb.PartRecord)
            found[record.part_number] = record
        return found

    # ---------------------------------------------------------------- effects

    def reference(self, refs) -> None:
        for ref in refs:
            self.view.put(keys.placement_key(ref.data_id), codec.dump(pb.PlacementRecord(blob=ref)))
            for key in _reverse_keys(ref):
                self.view.put(key, b"")

    def displace(self, refs) -> None:
        """The data ids leave their record: queued in G at this seq, their L entry
        marked displaced (kept, with R, until the reaper's Reaped entry)."""
        refs = tuple(refs)
        for ref in refs:
            key = keys.placement_key(ref.data_id)
            raw = self.view.get(key)
            invariant(raw is not None, "a displaced data id has a placement")
            record = codec.load(raw, pb.PlacementRecord)
            record.displaced_seq = self.seq
            self.view.put(key, codec.dump(record))
        _queue_reap(self.view, self.entry, refs)

    def install(self, bucket: str, key: str, draft, previous) -> str:
        version_id = encode_seq_id(self.partition, self.seq)
        if previous is not None:
            self.displace(body_blobs(previous.body))
        record = pb.ObjectRecord(
            key=key, version_id=version_id, seq=self.seq, last_modified_us=self.now_us,
            size=draft.size, etag=draft.etag, checksum_type=draft.checksum_type,
            storage_class=draft.storage_class,
        )
        record.body.CopyFrom(draft.body)
        record.content_headers.extend(draft.content_headers)
        record.user_metadata.extend(draft.user_metadata)
        record.checksums.extend(draft.checksums)
        self.view.put(keys.current_key(bucket, key), codec.dump(record))
        self.reference(body_blobs(record.body))
        return version_id

    # ---------------------------------------------------------------- mutations

    def create_bucket(self, mutation) -> Outcome:
        raw = self.view.get(keys.bucket_key(mutation.bucket))
        if raw is not None:
            existing = _load_bucket(raw)
            raise Refusal("BucketAlreadyOwnedByYou" if existing.owner == mutation.owner else "BucketAlreadyExists")
        incarnation = encode_seq_id(self.partition, self.seq)
        record = pb.BucketRecord(name=mutation.bucket, owner=mutation.owner, incarnation=incarnation,
                                 region=mutation.region, created_us=self.now_us)
        self.view.put(keys.bucket_key(mutation.bucket), codec.dump(record))
        return _outcome(self.seq, self.now_us, bucket_incarnation=incarnation)

    def delete_bucket(self, bucket, mutation, condition) -> Outcome:
        for prefix in (keys.current_prefix(bucket.name), keys.upload_prefix(bucket.name)):
            if self.view.any_in(prefix, keys.prefix_successor(prefix)):
                raise Refusal("BucketNotEmpty")
        self.view.delete(keys.bucket_key(bucket.name))
        return _outcome(self.seq, self.now_us)

    def put_object(self, bucket, mutation, condition) -> Outcome:
        current = self.current(bucket.name, mutation.key)
        self.check_condition(current, condition)
        self.check_draft(mutation.draft)
        version_id = self.install(bucket.name, mutation.key, mutation.draft, current)
        return _outcome(self.seq, self.now_us, version_id=version_id)

    def delete_object(self, bucket, mutation, condition) -> Outcome:
        current = self.current(bucket.name, mutation.key)
        self.check_condition(current, condition)
        if current is not None:
            self.view.delete(keys.current_key(bucket.name, mutation.key))
            self.displace(body_blobs(current.body))
        return _outcome(self.seq, self.now_us)

    def create_upload(self, bucket, mutation, condition) -> Outcome:
        upload_id = encode_seq_id(self.partition, self.seq)
        draft = mutation.upload
        record = pb.UploadRecord(
            key=mutation.key, upload_id=upload_id, initiated_us=self.now_us, owner=draft.owner,
            checksum_algorithm=draft.checksum_algorithm, checksum_type=draft.checksum_type,
            storage_class=draft.storage_class,
        )
        record.content_headers.extend(draft.content_headers)
        record.user_metadata.extend(draft.user_metadata)
        self.view.put(keys.upload_key(bucket.name, mutation.key, self.seq), codec.dump(record))
        return _outcome(self.seq, self.now_us, upload_id=upload_id)

    def put_part(self, bucket, mutation, condition) -> Outcome:
        upload_seq, _ = self.upload(bucket.name, mutation.key, mutation.upload_id)
        part = mutation.part
        if not 1 <= mutation.part_number <= 10_000 or part.size != part.blob.size:
            raise Refusal("InvariantViolation")
        self.check_new((part.blob,))
        key = keys.part_key(bucket.name, mutation.key, upload_seq, mutation.part_number)
        previous = self.view.get(key)
        if previous is not None:
            self.displace((codec.load(previous, pb.PartRecord).blob,))
        record = pb.PartRecord(part_number=mutation.part_number, size=part.size, etag=part.etag,
                               last_modified_us=self.now_us)
        record.blob.CopyFrom(part.blob)
        record.checksums.extend(part.checksums)
        self.view.put(key, codec.dump(record))
        self.reference((part.blob,))
        return _outcome(self.seq, self.now_us)

    def complete_upload(self, bucket, mutation, condition) -> Outcome:
        current = self.current(bucket.name, mutation.key)
        self.check_condition(current, condition)
        upload_seq, _ = self.upload(bucket.name, mutation.key, mutation.upload_id)
        stored = self.parts(bucket.name, mutation.key, upload_seq)
        listed = set()
        for completed in mutation.parts:
            part = stored.get(completed.part_number)
            if part is None or part.blob.data_id != completed.data_id or part.etag != completed.etag.strip('"'):
                raise Refusal("InvalidPart")
            listed.add(completed.part_number)
        draft = mutation.draft
        if draft.body.WhichOneof("kind") != "multipart" or draft.body.multipart.upload_id != mutation.upload_id \
                or len(listed) != len(mutation.parts):
            raise Refusal("InvariantViolation")
        body_parts = draft.body.multipart.parts
        if sorted(p.blob.data_id for p in body_parts) != sorted(stored[n].blob.data_id for n in listed):
            raise Refusal("InvariantViolation")
        offset = 0
        for part in body_parts:
            if part.offset != offset or part.size != part.blob.size:
                raise Refusal("InvariantViolation")
            offset += part.size
        if offset != draft.size:
            raise Refusal("InvariantViolation")
        self.remove_upload(bucket.name, mutation.key, upload_seq, stored)
        self.displace(part.blob for number, part in sorted(stored.items()) if number not in listed)
        for number in listed:   # the listed parts pass to the new version, which references them anew
            self.unreference(stored[number].blob.data_id)
        version_id = self.install(bucket.name, mutation.key, draft, current)
        return _outcome(self.seq, self.now_us, version_id=version_id)

    def abort_upload(self, bucket, mutation, condition) -> Outcome:
        upload_seq, _ = self.upload(bucket.name, mutation.key, mutation.upload_id)
        stored = self.parts(bucket.name, mutation.key, upload_seq)
        self.remove_upload(bucket.name, mutation.key, upload_seq, stored)
        self.displace(part.blob for _, part in sorted(stored.items()))
        return _outcome(self.seq, self.now_us)

    def unreference(self, data_id: bytes) -> None:
        key = keys.placement_key(data_id)
        raw = self.view.get(key)
        if raw is not None:
            for reverse in _reverse_keys(codec.load(raw, pb.PlacementRecord).blob):
                self.view.delete(reverse)
            self.view.delete(key)

    def reaped(self, mutation) -> Outcome:
        """Drop the reap queue up to `up_to_seq` (never past this entry) and the L and
        R entries of the displaced data ids it queued; the reaped seq only rises."""
        up_to = min(mutation.up_to_seq, self.seq - 1)
        if up_to > self.state.reaped_seq:
            start, end = keys.reap_key(self.state.reaped_seq + 1), keys.reap_key(up_to + 1)
            done = []
            for key, raw in self.view.scan(start, end):
                done.append(key)
                for blob in codec.load(raw, pb.ReapRecord).blobs:
                    placed = self.view.get(keys.placement_key(blob.data_id))
                    if placed is not None and codec.load(placed, pb.PlacementRecord).displaced_seq:
                        self.unreference(blob.data_id)
            for key in done:
                self.view.delete(key)
            self.state.reaped_seq = up_to
            self.view.put(_APPLY_STATE, codec.dump(self.state))
        return _outcome(self.seq, self.now_us)

    def replace_placement(self, mutation) -> Outcome:
        key = keys.placement_key(mutation.data_id)
        raw = self.view.get(key)
        if raw is None:
            raise Refusal("PreconditionFailed")
        record = codec.load(raw, pb.PlacementRecord)
        if record.displaced_seq or record.blob.placement != mutation.expected:
            raise Refusal("PreconditionFailed")
        for reverse in _reverse_keys(record.blob):
            self.view.delete(reverse)
        record.blob.placement = mutation.placement
        self.view.put(key, codec.dump(record))
        for reverse in _reverse_keys(record.blob):
            self.view.put(reverse, b"")
        return _outcome(self.seq, self.now_us)

    def remove_upload(self, bucket: str, key: str, upload_seq: int, stored: dict) -> None:
        self.view.delete(keys.upload_key(bucket, key, upload_seq))
        for number in stored:
            self.view.delete(keys.part_key(bucket, key, upload_seq, number))

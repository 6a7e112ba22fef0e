"""The index's placement keyspaces and maintenance entries (DESIGN §2, §3, §14).

- L holds every known data id's placement: referenced, or displaced and queued in G
  until a `Reaped` entry drops it; R lists (disk, data id) for every disk a
  placement names and ("DEGRADED", data id) below full redundancy.
- `Reaped(up_to)` only raises the reaped seq, drops G up to it and the displaced
  data ids' L and R entries; it never touches a referenced data id.
- `ReplacePlacement` is a compare-and-set: it applies only while L still holds
  `expected`, moves R, and a GET then returns the new placement joined into the
  record (the version itself is not rewritten).
- An introduced data id older than MAX_WRITE_AGE is refused as WriteExpired, and so
  is a repair that began writing that long ago.
Driven through index/local.py (the real apply over an in-memory view) and answered
by index/replica.read, the function a metadata node answers reads with.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from common import blob_placement, errors
from common.seams import (
    BlobRef, CreateBucket, DeleteObject, ObjectDraft, PutObject, Reaped, ReplacePlacement,
)
from index import index_pb2, keys, replica
from index.local import LocalIndex
from index.state import MemoryView

START_MS = 1_700_000_000_000
FAR_FUTURE = 2**62


def _clock():
    now = [START_MS * 1000]

    def tick() -> int:
        now[0] += 1000
        return now[0]
    return tick


def placement(disks, missing=(), generation=0) -> bytes:
    return blob_placement.encode_placement(blob_placement.BlobPlacement(
        scheme=blob_placement.RS, k=4, m=2, chunk_bytes=1024, length=4096, disks=list(disks),
        missing=list(missing), survives_domain_losses=2, generation=generation))


DISKS = ["d0", "d1", "d2", "d3", "d4", "d5"]


class Harness:
    def __init__(self) -> None:
        self.view = MemoryView()
        self.index = LocalIndex(self.view, clock_us=_clock())
        self.counter = 0
        outcome = self.commit(CreateBucket("b", "ann", "us-east-1"))
        self.incarnation = outcome.bucket_incarnation

    def commit(self, mutation, request_id=None):
        return asyncio.run(self.index.commit(mutation, None, request_id or os.urandom(8), FAR_FUTURE))

    def blob(self, disks=DISKS, missing=(), age_ms=0) -> BlobRef:
        self.counter += 1
        data_id = (START_MS - age_ms).to_bytes(6, "big") + self.counter.to_bytes(10, "big")
        return BlobRef(data_id=data_id, size=4096, md5_hex="0" * 32, placement=placement(disks, missing))

    def put(self, key: str, ref: BlobRef):
        return self.commit(PutObject("b", self.incarnation, key, ObjectDraft(size=ref.size, etag="e", body=ref)))

    def read(self, **query):
        (kind, message), = query.items()
        request = index_pb2.ReadRequest(**{kind: message})
        return replica.read(self.view, request, self.index.seq)

    def on_disk(self, disk: str) -> set[bytes]:
        answer = self.read(placements=index_pb2.PlacementsRead(disk=disk, limit=100))
        return {record.blob.data_id for record in answer.placements}

    def get_placement(self, key: str) -> bytes:
        answer = self.read(get_object=index_pb2.GetObjectRead(bucket="b", bucket_incarnation=self.incarnation, key=key))
        return answer.record.body.blob_ref.placement


def test_reverse_index_lists_every_disk_and_degraded_placements():
    h = Harness()
    full, short = h.blob(), h.blob(missing=(5,))
    h.put("full", full)
    h.put("short", short)
    assert h.on_disk("d0") == {full.data_id, short.data_id}
    assert h.on_disk(keys.DEGRADED_DISK) == {short.data_id}
    assert h.on_disk("d9") == set()


def test_displaced_data_id_stays_known_until_reaped_then_is_dropped():
    h = Harness()
    first, second = h.blob(), h.blob()
    h.put("k", first)
    displacing = h.put("k", second)            # overwrite: first is displaced at this seq
    queue = h.read(reap_queue=index_pb2.ReapQueueRead(after_seq=0, limit=10))
    assert [(entry.seq, [b.data_id for b in entry.blobs]) for entry in queue.reap] == [(displacing.seq, [first.data_id])]
    # Still known: the sweep must not take it, and repair's R still lists it.
    lookup = h.read(lookup_placements=index_pb2.LookupPlacementsRead(data_ids=[first.data_id, b"\x00" * 16]))
    assert [record.blob.data_id for record in lookup.placements] == [first.data_id]
    assert lookup.placements[0].displaced_seq == displacing.seq
    assert first.data_id in h.on_disk("d1")

    h.commit(Reaped(displacing.seq))
    queue = h.read(reap_queue=index_pb2.ReapQueueRead(after_seq=0, limit=10))
    assert list(queue.reap) == [] and queue.reaped_seq == displacing.seq
    assert h.on_disk("d1") == {second.data_id}, "the reaped data id left R; the live one stayed"
    lookup = h.read(lookup_placements=index_pb2.LookupPlacementsRead(data_ids=[first.data_id, second.data_id]))
    assert [record.blob.data_id for record in lookup.placements] == [second.data_id]


def test_reaped_only_rises_and_never_passes_its_own_entry():
    h = Harness()
    refs = [h.blob() for _ in range(3)]
    for ref in refs:
        h.put("k", ref)
    h.commit(DeleteObject("b", h.incarnation, "k"))
    queue = h.read(reap_queue=index_pb2.ReapQueueRead(after_seq=0, limit=10))
    seqs = [entry.seq for entry in queue.reap]
    assert len(seqs) == 3
    h.commit(Reaped(seqs[1]))
    h.commit(Reaped(seqs[0]))                  # lower: a no-op, nothing comes back
    queue = h.read(reap_queue=index_pb2.ReapQueueRead(after_seq=0, limit=10))
    assert [entry.seq for entry in queue.reap] == seqs[2:] and queue.reaped_seq == seqs[1]
    h.commit(Reaped(10**12))                   # past the log: clamped to the entry before it
    queue = h.read(reap_queue=index_pb2.ReapQueueRead(after_seq=0, limit=10))
    assert list(queue.reap) == [] and queue.reaped_seq == h.index.seq - 1
    assert all(not h.on_disk(disk) for disk in DISKS)


def test_replace_placement_is_a_compare_and_set_and_reads_see_it():
    h = Harness()
    ref = h.blob(missing=(2,))
    h.put("k", ref)
    moved = placement(["d0", "d1", "d9", "d3", "d4", "d5"], generation=1)
    with pytest.raises(errors.PreconditionFailed):
        h.commit(ReplacePlacement(ref.data_id, placement(DISKS), moved, START_MS * 1000))
    h.commit(ReplacePlacement(ref.data_id, ref.placement, moved, START_MS * 1000))
    assert h.get_placement("k") == moved, "a GET joins L's placement into the record"
    assert ref.data_id in h.on_disk("d9") and ref.data_id not in h.on_disk("d2")
    assert h.on_disk(keys.DEGRADED_DISK) == set(), "full redundancy again"
    with pytest.raises(errors.PreconditionFailed):   # the old placement no longer matches
        h.commit(ReplacePlacement(ref.data_id, ref.placement, placement(DISKS), START_MS * 1000))


def test_replace_placement_refused_for_displaced_or_unknown_data_ids():
    h = Harness()
    ref = h.blob()
    h.put("k", ref)
    h.commit(DeleteObject("b", h.incarnation, "k"))
    with pytest.raises(errors.PreconditionFailed):
        h.commit(ReplacePlacement(ref.data_id, ref.placement, placement(DISKS, generation=1), START_MS * 1000))
    with pytest.raises(errors.PreconditionFailed):
        h.commit(ReplacePlacement(b"\x01" * 16, b"", placement(DISKS), START_MS * 1000))


def test_old_data_ids_and_old_repairs_are_write_expired():
    h = Harness()
    day_ms = 24 * 3600 * 1000
    with pytest.raises(errors.WriteExpired):
        h.put("k", h.blob(age_ms=day_ms + 60_000))
    fresh = h.blob(age_ms=day_ms - 60_000)
    h.put("k", fresh)
    with pytest.raises(errors.WriteExpired):
        h.commit(ReplacePlacement(fresh.data_id, fresh.placement, placement(DISKS, generation=1),
                                  (START_MS - day_ms - 60_000) * 1000))
    assert h.get_placement("k") == fresh.placement


def test_a_retried_reaped_entry_returns_its_original_outcome():
    h = Harness()
    h.put("k", h.blob())
    h.put("k", h.blob())
    request_id = os.urandom(8)
    first = h.commit(Reaped(h.index.seq), request_id)
    again = h.commit(Reaped(h.index.seq), request_id)
    assert again == first


def test_cluster_store_reads_and_commits_maintenance_through_a_real_replica(tmp_path):
    """The reaper's and repair's calls on the cluster MetadataStore, over a RocksDB replica."""
    from common.limits import DEFAULT_LIMITS
    from index.client import ClusterMetadataStore
    from index.inprocess import InProcessTransport
    from index.replica import IndexReplica

    async def scenario():
        clock = _clock()
        store = ClusterMetadataStore(InProcessTransport(IndexReplica(str(tmp_path / "r")), clock_us=clock),
                                     limits=DEFAULT_LIMITS, clock_us=clock)
        incarnation = (await store.commit(CreateBucket("b", "ann", "us-east-1"), None, b"c", FAR_FUTURE)).bucket_incarnation
        refs = [BlobRef(data_id=START_MS.to_bytes(6, "big") + i.to_bytes(10, "big"), size=1, md5_hex="0" * 32,
                        placement=placement(DISKS)) for i in (1, 2)]
        for number, ref in enumerate(refs):
            await store.commit(PutObject("b", incarnation, "k", ObjectDraft(size=1, etag="e", body=ref)), None,
                               bytes([number]), FAR_FUTURE)
        entries, reaped = await store.reap_queue(0, 10)
        assert reaped == 0 and [blobs for _, _, blobs in entries] == [(refs[0],)]
        on_d3 = await store.placements_on("d3", b"", 10)
        assert [(ref.data_id, displaced) for ref, displaced in on_d3] == [(refs[0].data_id, entries[0][0]),
                                                                          (refs[1].data_id, 0)]
        found, applied_time_us, age_us = await store.lookup_placements([refs[1].data_id, b"\x07" * 16])
        assert list(found) == [refs[1].data_id] and applied_time_us > START_MS * 1000
        assert age_us == DEFAULT_LIMITS.MAX_WRITE_AGE_MS * 1000
        await store.commit(Reaped(entries[0][0]), None, b"reaped", FAR_FUTURE)
        assert (await store.reap_queue(0, 10)) == ([], entries[0][0])
        moved = placement(["d9"] + DISKS[1:], generation=1)
        await store.commit(ReplacePlacement(refs[1].data_id, refs[1].placement, moved, START_MS * 1000), None,
                           b"repair", FAR_FUTURE)
        result = await store.get("b", incarnation, "k")
        assert result.record.body.placement == moved
        await store.close()

    asyncio.run(scenario())

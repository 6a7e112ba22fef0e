"""Garbage and repair (DESIGN §14) over the real index apply and real shardstores.

Properties:
- the reaper deletes a displaced data id's shards only once its entry's time +
  REAP_DELAY has passed, then commits `Reaped`; a referenced data id keeps its shards;
- the orphan sweep never deletes a referenced, queued or recently written shard,
  and does delete an old orphan (committing a no-op first on an idle partition) and
  an old shard a placement no longer names;
- repair rebuilds a slot recorded missing, a corrupt shard the scrubber found and
  the shards of a disk marked `out`, each checked by reading the object back with
  two other disks unreachable; a CAS lost to a concurrent overwrite deletes what
  repair wrote.

Method: one event loop (uvloop); seven real `Node`s on tmp dirs, each behind its own
real framed server on 127.0.0.1 (so one disk can be made unreachable), reached by
real `ShardClient`s through the real `ShardBlobStore`; the metadata is the cluster
`ClusterMetadataStore` over an in-process transport and a RocksDB `IndexReplica`
(the real apply). Every clock — index entry times, shard put times, data ids,
the workers — is one fake clock the test advances, with shrunk limits.
"""

from __future__ import annotations

import dataclasses
import os
import random

import uvloop

from common import blob_placement as bp
from common.ids import new_data_id
from common.layout import parse_layout
from common.limits import DEFAULT_LIMITS, KiB
from common.seams import BlobRef, CreateBucket, ObjectDraft, PutObject, ReplacePlacement
from shardstore.blobstore import DiskSpec, ShardBlobStore
from index.client import ClusterMetadataStore
from index.inprocess import InProcessTransport
from index.reaper import Reaper
from index.repair import Repair
from index.replica import IndexReplica
from index.sweep import Sweep
from shardstore import format as fmt
from shardstore.client import ShardClient
from shardstore.disk import RealDisk
from shardstore.framed import Disks, FramedServer
from shardstore.node import Node

LIMITS = dataclasses.replace(
    DEFAULT_LIMITS, CHECKSUM_BLOCK=16 * KiB, CHUNK_MAX=64 * KiB, SMALL_OBJECT_MAX=16 * KiB,
    SHARD_MAX_BYTES=256 * KiB, SHARD_CHUNK_MAX_BYTES=256 * KiB, PUT_HEDGE_MS=200, READ_HEDGE_MS=50,
    SHARD_CALL_TIMEOUT_MS=2000, DISK_STAT_INTERVAL_MS=200,
    MAX_WRITE_AGE_MS=60_000, REAP_DELAY_MS=10_000, MAX_CLOCK_SKEW_MS=1000, MAINTENANCE_PAGE=5,
    REPAIR_PROGRESS_EVERY=1)
K, M = LIMITS.EC_K, LIMITS.EC_M
STRIPE = K * LIMITS.CHUNK_MAX
SEGMENT = STRIPE * (LIMITS.SHARD_MAX_BYTES // LIMITS.CHUNK_MAX)
DISKS = [f"d{index}" for index in range(7)]
FAR_FUTURE = 2**62


class Clock:
    def __init__(self) -> None:
        self.now_us = 1_800_000_000_000_000

    def __call__(self) -> int:
        return self.now_us

    def advance_ms(self, ms: int) -> None:
        self.now_us += ms * 1000


class Cluster:
    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.nodes: dict[str, Node] = {}
        self.servers: dict[str, FramedServer] = {}
        self.counter = 0

    async def start(self) -> None:
        specs, stores = {}, []
        for disk in DISKS:
            self.nodes[disk] = await Node.open(RealDisk(str(self.tmp_path / disk / "extents")),
                                               str(self.tmp_path / disk / "index"), LIMITS, clock_us=self.clock)
            server = self.servers[disk] = await FramedServer(Disks({disk: self.nodes[disk]})).start("127.0.0.1", 0)
            address = f"127.0.0.1:{server.port}"
            specs[disk] = DiskSpec(ShardClient(address, limits=LIMITS, connect_timeout_s=0.5), f"host-{disk}")
            stores.append({"name": f"store-{disk}", "host": f"host-{disk}", "data_address": address,
                           "disks": [{"id": disk, "path": str(self.tmp_path / disk)}]})
        self.layout_table = {"data": {"ec_k": K, "ec_m": M}, "shardstores": stores}
        self.layout = parse_layout(self.layout_table)
        self.store = ShardBlobStore(specs, limits=LIMITS, rng=random.Random(7), clock_us=self.clock)
        await self.store.start()
        self.meta = ClusterMetadataStore(
            InProcessTransport(IndexReplica(str(self.tmp_path / "index"), limits=LIMITS), clock_us=self.clock),
            limits=LIMITS, clock_us=self.clock)
        self.incarnation = (await self.commit(CreateBucket("b", "ann", "us-east-1"))).bucket_incarnation

    async def close(self) -> None:
        await self.store.close()
        for server in self.servers.values():
            await server.close()
        for node in self.nodes.values():
            await node.close()
        await self.meta.close()

    async def commit(self, mutation):
        self.clock.advance_ms(1)
        return await self.meta.commit(mutation, None, os.urandom(16), FAR_FUTURE)

    async def write(self, size: int, data_id: bytes | None = None) -> tuple[BlobRef, bytes]:
        data = os.urandom(size)

        async def stream():
            yield data
        ref = await self.store.write(data_id or new_data_id(self.clock() // 1000), stream(), size, ())
        return ref, data

    async def put(self, key: str, ref: BlobRef):
        return await self.commit(PutObject("b", self.incarnation, key, ObjectDraft(size=ref.size, etag="e", body=ref)))

    async def current(self, key: str) -> BlobRef:
        return (await self.meta.get("b", self.incarnation, key)).record.body

    async def read(self, ref: BlobRef) -> bytes:
        return b"".join([piece async for piece in self.store.read(ref, 0, ref.size)])

    def shards_of(self, data_id: bytes) -> set[tuple[str, int]]:
        return {(disk, shard.shard_index) for disk, node in self.nodes.items()
                for shard, _ in node.list(limit=10_000) if shard.data_id == data_id}

    async def unreachable(self, *disks: str) -> None:
        for disk in disks:
            await self.servers[disk].close()
        await self.store.stat_round()

    def mark_out(self, disk_id: str) -> None:
        for store in self.layout_table["shardstores"]:
            for disk in store["disks"]:
                if disk["id"] == disk_id:
                    disk["state"] = "out"
        self.layout = parse_layout(self.layout_table)

    def repair(self) -> Repair:
        return Repair(self.meta, self.store, self.layout, limits=LIMITS, clock_us=self.clock, rng=random.Random(1))


def run(tmp_path, scenario) -> None:
    async def body():
        running = Cluster(tmp_path)
        try:
            await running.start()
            await scenario(running)
        finally:
            await running.close()
    uvloop.run(body())


def placed_shards(ref: BlobRef) -> set[tuple[str, int]]:
    placement = bp.decode_placement(ref.placement)
    layout = bp.Layout(placement)
    return {(disk, index) for slot, disk in enumerate(placement.disks) if slot not in placement.missing
            for index in layout.shard_indexes(slot)}


# ---------------------------------------------------------------------- reaper


def test_reaper_deletes_displaced_shards_only_after_reap_delay_and_commits_reaped(tmp_path):
    async def scenario(c: Cluster):
        first, _ = await c.write(STRIPE + 5)
        second, second_data = await c.write(100)           # copies
        await c.put("k", first)
        displacing = await c.put("k", second)
        assert c.shards_of(first.data_id) == placed_shards(first)
        reaper = Reaper(c.meta, c.store, limits=LIMITS, clock_us=c.clock)

        c.clock.advance_ms(LIMITS.REAP_DELAY_MS - 100)
        early = await reaper.run_once()
        assert early.entries == 0 and early.reaped_seq == 0
        assert c.shards_of(first.data_id) == placed_shards(first), "nothing deleted before REAP_DELAY"

        c.clock.advance_ms(200)
        done = await reaper.run_once()
        assert done.entries == 1 and done.blobs == 1 and done.reaped_seq == displacing.seq
        assert c.shards_of(first.data_id) == set()
        assert c.shards_of(second.data_id) == placed_shards(second), "the referenced data id keeps its shards"
        assert await c.meta.reap_queue(0, 10) == ([], displacing.seq)
        found, _, _ = await c.meta.lookup_placements([first.data_id])
        assert found == {}, "Reaped dropped the displaced L entry"
        assert await c.read(await c.current("k")) == second_data

        again = await reaper.run_once()                    # nothing left: no entry, no commit
        assert again.entries == 0 and again.reaped_seq == displacing.seq

    run(tmp_path, scenario)


# ---------------------------------------------------------------------- sweep


def test_sweep_deletes_old_orphans_and_unplaced_shards_never_referenced_or_recent_ones(tmp_path):
    async def scenario(c: Cluster):
        age = LIMITS.MAX_WRITE_AGE_MS
        referenced, referenced_data = await c.write(STRIPE + 5)
        await c.put("live", referenced)
        displaced, _ = await c.write(100)
        await c.put("gone", displaced)
        await c.put("gone", (await c.write(100))[0])       # displaced: queued in G, not yet reaped
        # A frontend that died mid-PUT, shortly after the last entry: only a no-op entry
        # moves the applied time past its data-id time + MAX_WRITE_AGE.
        c.clock.advance_ms(1000)
        orphan, _ = await c.write(STRIPE + 5)
        # A shard of the referenced data id on a disk its placement does not name for that
        # index (what a lost or moved repair leaves).
        stray_disk = next(disk for disk in DISKS if (disk, 0) not in placed_shards(referenced))
        stray = fmt.ShardId(referenced.data_id, 0)
        await c.nodes[stray_disk].put(stray, 10, b"x" * 10)

        c.clock.advance_ms(age + LIMITS.MAX_CLOCK_SKEW_MS + 2000)
        recent, _ = await c.write(STRIPE + 5)               # written now: never a candidate
        sweep = Sweep(c.meta, {disk: spec.client for disk, spec in c.store.disks.items()}, limits=LIMITS,
                      clock_us=c.clock)
        result = await sweep.run_once()
        assert result.no_ops == 1, "the idle partition got one no-op entry"
        assert c.shards_of(orphan.data_id) == set()
        assert result.orphans_deleted == len(placed_shards(orphan))
        assert (stray_disk, 0) not in c.shards_of(referenced.data_id) and result.unplaced_deleted == 1
        assert c.shards_of(referenced.data_id) == placed_shards(referenced)
        assert c.shards_of(displaced.data_id) == placed_shards(displaced), "queued for the reaper: kept"
        assert c.shards_of(recent.data_id) == placed_shards(recent)
        assert await c.read(await c.current("live")) == referenced_data
        assert (await sweep.run_once()).orphans_deleted == 0

    run(tmp_path, scenario)


def test_sweep_keeps_an_old_orphan_while_the_log_could_still_introduce_it(tmp_path):
    async def scenario(c: Cluster):
        orphan, _ = await c.write(100)
        c.clock.advance_ms(LIMITS.MAX_WRITE_AGE_MS // 2)
        sweep = Sweep(c.meta, {disk: spec.client for disk, spec in c.store.disks.items()}, limits=LIMITS,
                      clock_us=c.clock)
        result = await sweep.run_once()
        assert result.orphans_deleted == 0 and result.no_ops == 0
        assert c.shards_of(orphan.data_id) == placed_shards(orphan)
        await c.put("late", orphan)                         # still young enough to be committed
        c.clock.advance_ms(LIMITS.MAX_WRITE_AGE_MS)
        assert (await sweep.run_once()).orphans_deleted == 0
        assert c.shards_of(orphan.data_id) == placed_shards(orphan), "referenced now: never deleted"

    run(tmp_path, scenario)


# ---------------------------------------------------------------------- repair


async def _check_read_with_two_down(c: Cluster, key: str, data: bytes, also_down=()) -> None:
    ref = await c.current(key)
    placement = bp.decode_placement(ref.placement)
    assert not placement.missing and bp.full_durability(placement)
    down = [disk for disk in placement.disks if disk not in also_down][-2:]
    await c.unreachable(*also_down, *down)
    assert await c.read(ref) == data


def test_repair_rebuilds_a_slot_recorded_missing(tmp_path):
    async def scenario(c: Cluster):
        ref, data = await c.write(SEGMENT + STRIPE + 7)       # two segments, the second one stripe
        placement = bp.decode_placement(ref.placement)
        lost_slot = 1
        layout = bp.Layout(placement)
        for index in layout.shard_indexes(lost_slot):
            await c.nodes[placement.disks[lost_slot]].delete(fmt.ShardId(ref.data_id, index))
        placement.missing.append(lost_slot)                 # as a degraded write records it
        placement.survives_domain_losses = 1
        degraded = dataclasses.replace(ref, placement=bp.encode_placement(placement))
        await c.put("k", degraded)

        result = await c.repair().run_once()
        assert result.repaired == 1 and result.objects == 1
        repaired = await c.current("k")
        new = bp.decode_placement(repaired.placement)
        assert new.generation == 1 and list(new.missing) == [] and new.survives_domain_losses == M
        assert c.shards_of(ref.data_id) == placed_shards(repaired)
        assert await c.meta.placements_on("DEGRADED", b"", 10) == []
        assert (await c.repair().run_once()).objects == 0
        # The rebuilt slot must be among the k read: stop two other slots' disks.
        others = [disk for slot, disk in enumerate(new.disks) if slot != lost_slot]
        await c.unreachable(*others[:2])
        assert await c.read(repaired) == data

    run(tmp_path, scenario)


def test_repair_replaces_a_corrupt_shard_the_scrubber_found(tmp_path):
    async def scenario(c: Cluster):
        ref, data = await c.write(3 * STRIPE)
        await c.put("k", ref)
        placement = bp.decode_placement(ref.placement)
        bad_disk = placement.disks[0]
        node = c.nodes[bad_disk]
        entry = node.locate(fmt.ShardId(ref.data_id, 0))
        path = c.tmp_path / bad_disk / "extents" / fmt.extent_name(entry.location.extent)
        with open(path, "r+b") as extent:
            extent.seek(entry.data_offset + 100)
            byte = extent.read(1)
            extent.seek(entry.data_offset + 100)
            extent.write(bytes([byte[0] ^ 1]))
        assert await node.scrub() == [fmt.ShardId(ref.data_id, 0)]

        result = await c.repair().run_once()
        assert result.repaired == 1
        repaired = await c.current("k")
        new = bp.decode_placement(repaired.placement)
        assert new.disks[0] != bad_disk and new.disks[1:] == placement.disks[1:] and new.generation == 1
        assert fmt.ShardId(ref.data_id, 0) not in node.corrupt
        assert (bad_disk, 0) not in c.shards_of(ref.data_id), "the corrupt copy was deleted after the CAS"
        await c.unreachable(*new.disks[1:3])
        assert await c.read(repaired) == data

    run(tmp_path, scenario)


def test_repair_moves_every_shard_off_a_disk_marked_out(tmp_path):
    async def scenario(c: Cluster):
        coded, coded_data = await c.write(2 * STRIPE + 3)
        copies, copies_data = await c.write(1000)
        out = next(disk for disk in bp.decode_placement(coded.placement).disks
                   if disk in bp.decode_placement(copies.placement).disks)
        await c.put("coded", coded)
        await c.put("copies", copies)
        c.mark_out(out)
        result = await c.repair().run_once()
        assert result.repaired == 2 and result.objects == 2
        assert await c.meta.placements_on(out, b"", 10) == []
        for key, ref in (("coded", coded), ("copies", copies)):
            current = await c.current(key)
            assert out not in bp.decode_placement(current.placement).disks
            assert c.shards_of(ref.data_id) == placed_shards(current), "the out disk's shards were deleted"
        assert await c.read(await c.current("copies")) == copies_data
        await _check_read_with_two_down(c, "coded", coded_data, also_down=(out,))

    run(tmp_path, scenario)


def test_repair_of_copies_off_an_out_disk_reads_back_with_two_others_down(tmp_path):
    async def scenario(c: Cluster):
        copies, data = await c.write(1000)
        await c.put("copies", copies)
        out = bp.decode_placement(copies.placement).disks[0]
        c.mark_out(out)
        assert (await c.repair().run_once()).repaired == 1
        await _check_read_with_two_down(c, "copies", data, also_down=(out,))

    run(tmp_path, scenario)


class _OverwriteFirst:
    """A metadata store whose ReplacePlacement loses to an overwrite committed just before it."""

    def __init__(self, cluster: Cluster, replacement: BlobRef) -> None:
        self.cluster, self.replacement = cluster, replacement

    def __getattr__(self, name):
        return getattr(self.cluster.meta, name)

    async def commit(self, mutation, condition, request_id, not_after_us):
        if isinstance(mutation, ReplacePlacement):
            await self.cluster.put("k", self.replacement)
        return await self.cluster.meta.commit(mutation, condition, request_id, not_after_us)


def test_a_cas_lost_to_a_concurrent_overwrite_deletes_what_repair_wrote(tmp_path):
    async def scenario(c: Cluster):
        ref, _ = await c.write(STRIPE + 9)
        await c.put("k", ref)
        c.mark_out(bp.decode_placement(ref.placement).disks[2])
        before = c.shards_of(ref.data_id)
        replacement, data = await c.write(50)
        repair = c.repair()
        repair.meta = _OverwriteFirst(c, replacement)
        result = await repair.run_once()
        assert result.lost_cas == 1 and result.repaired == 0 and result.shards_written > 0
        assert c.shards_of(ref.data_id) == before, "every shard repair wrote was deleted, none it did not"
        assert await c.read(await c.current("k")) == data
        found, _, _ = await c.meta.lookup_placements([ref.data_id])
        assert found[ref.data_id][0].placement == ref.placement and found[ref.data_id][1] > 0, \
            "displaced, on its old placement: the reaper's now"

    run(tmp_path, scenario)


# ---------------------------------------------------------------------- the maintain process and cairn disk/status


def test_disk_remove_reaches_a_running_maintainer_and_status_reports_the_disks(tmp_path):
    """`cairn disk remove` edits the cluster TOML; the maintainer reloads it, repair
    moves the shards off the disk; `cairn status` shows the disk out and every disk up."""
    from common.layout import LayoutWatcher
    from deploy import admin
    from index.maintain import Maintainer

    async def scenario(c: Cluster):
        lines = ["[[nodes]]", "id = 0", 'host = "127.0.0.1"', "port = 1", 'data_dir = "/tmp/n0"',
                 "[[nodes]]", "id = 1", 'host = "127.0.0.1"', "port = 2", 'data_dir = "/tmp/n1"',
                 "[data]", f"ec_k = {K}", f"ec_m = {M}"]
        for store in c.layout_table["shardstores"]:
            lines += ["[[shardstores]]", f'name = "{store["name"]}"', f'host = "{store["host"]}"',
                      f'data_address = "{store["data_address"]}"']
            for disk in store["disks"]:
                lines += ["[[shardstores.disks]]", f'id = "{disk["id"]}"', f'path = "{disk["path"]}"']
        path = tmp_path / "cluster.toml"
        path.write_text("\n".join(lines) + "\n")
        ref, data = await c.write(STRIPE + 1)
        await c.put("k", ref)
        maintainer = Maintainer(c.meta, LayoutWatcher(str(path)), LIMITS, clock_us=c.clock)
        await maintainer.start()
        try:
            assert (await maintainer.one_pass("repair")).objects == 0
            out = bp.decode_placement(ref.placement).disks[0]
            os.utime(path, ns=(1, 1))                       # the edit below must change the mtime
            print(admin.remove_disk(str(path), out))
            await maintainer.poll_layout()
            result = await maintainer.one_pass("repair")
            assert result.repaired == 1
            assert out not in bp.decode_placement((await c.current("k")).placement).disks
            assert await c.read(await c.current("k")) == data
            status = await admin.status_report(str(path), 0.5)
            report = status.text
            row = next(line for line in report.splitlines() if line.strip().startswith(out + " "))
            assert " out " in row and " up " in row
            live = float(row.split()[6].rstrip("%"))                  # the LIVE column, after FILL
            assert 0 <= live <= 100 and "LIVE" in report
            assert "objects below full redundancy: unknown" in report   # no metadata node listens here
            assert not status.healthy and "not running" not in report   # the disks answer
        finally:
            await maintainer.close()

    run(tmp_path, scenario)

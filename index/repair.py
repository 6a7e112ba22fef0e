"""The repair worker (DESIGN §14): rebuilds lost, missing and corrupt shards and moves the placement by CAS.

One pass:
1. Find work, by data id (`L`'s current placement of each):
   a. `R` under DEGRADED (index/keys.DEGRADED_DISK): slots recorded missing at
      write, or placements co-located below full durability;
   b. `R` under every disk the layout marks `out` (lost for good);
   c. every reachable disk's scrubber findings (`ShardClient.corrupt`), looked up
      in `L` (`lookup_placements`).
   Displaced data ids are skipped: the reaper deletes them.
2. Per data id, the bad slots: missing ones, those on `out` (or unknown) disks, and
   those whose shard on their own disk is corrupt. With none but durability reduced
   (co-located slots), the slots to move to unused failure domains, if any are live.
   Fewer good slots than the code needs (k, or one copy) -> reported, not touched.
3. Targets: per bad slot a disk the spreader's map has up with room, never `out`,
   not holding another slot, in the least-used failure domain, the better of two
   random candidates under the spreader's heat-and-fill score. A missing slot keeps
   its own disk when that disk is usable (the late write may even be there; a
   re-put of the same bytes is OK). A corrupt slot goes back to its own disk only
   when no other disk can take it (every disk already holds a slot, as with k+m
   disks): the disk is sound, a block of it was not, and re-putting the same bytes
   over a corrupt shard replaces it.
4. Rebuild: read the blob through the BlobStore with the bad slots marked missing
   (so the reader decodes around them, checking every block), stripe by stripe;
   re-encode each stripe on a worker thread (common.erasure.Code; copies are the
   bytes themselves) and write the bad slots' chunks: whole shards with `put` for
   single-stripe segments, `open_put` streams for longer ones.
5. Commit `ReplacePlacement(data_id, expected=old placement, placement=new,
   began_us)`: the new disks, no missing slots, durability recomputed, generation
   + 1, written_us = began_us. A CAS: PreconditionFailed (overwritten, deleted or
   repaired meanwhile), WriteExpired or Expired -> delete every shard this repair
   wrote on a disk its slot did not already name (a shard re-put in place may be
   the one a concurrent repair's winning placement names: it is left). An
   unknown outcome leaves them: if the CAS did not apply they are unplaced and the
   sweep deletes them after MAX_WRITE_AGE.
6. After the commit, delete the shards the bad slots held on their old disks when
   those differ and are reachable (corrupt copies, shards on `out` disks, a late
   partial write).
7. Progress: a log line every REPAIR_PROGRESS_EVERY objects and a summary per pass.

Invariants: the index only ever names shards that were durably written before the
CAS (no referenced byte is missing because of repair); repair never deletes a
shard the committed placement names; a lost CAS leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from common import blob_placement as bp
from common.erasure import Code, stripe_chunks
from common.errors import Expired, OutcomeUnknown, PreconditionFailed, WriteExpired
from common.framing import ConnectionLost, DeadlineExceeded
from common.layout import OUT, DataLayout
from common.limits import DEFAULT_LIMITS, Limits
from common.placement import survivable_domain_losses
from common.seams import BlobRef, ReplacePlacement
from index.keys import DEGRADED_DISK
from index.reaper import fresh_request_id
from shardstore.format import ShardId, block_checksums

log = logging.getLogger("cairn.repair")

MISSING, LOST, CORRUPT, SPREAD = "missing", "out", "corrupt", "spread"


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class RepairPass:
    objects: int = 0          # data ids looked at
    repaired: int = 0         # placements switched by CAS
    lost_cas: int = 0         # CAS refused: what was written is deleted
    failed: int = 0           # could not read, place or write now; retried next pass
    unknown: int = 0          # CAS outcome unknown
    skipped: int = 0          # nothing to do (or nothing better possible)
    shards_written: int = 0
    bytes_written: int = 0
    unrepairable: list[bytes] = field(default_factory=list)   # fewer good slots than needed


class _Failed(Exception):
    pass


class Repair:
    def __init__(self, meta, store, layout: DataLayout, *, limits: Limits = DEFAULT_LIMITS,
                 clock_us: Callable[[], int] = _now_us, rng: random.Random | None = None) -> None:
        self.meta = meta              # ClusterMetadataStore: placements_on, lookup_placements, commit
        self.store = store            # shardstore.blobstore.ShardBlobStore over every disk, out ones too
        self.layout = layout          # replaced by the caller when the layout file changes
        self.limits = limits
        self.clock_us = clock_us
        self.rng = rng or random.Random()
        self.timeout_s = limits.SHARD_CALL_TIMEOUT_MS / 1000
        self._codes: dict[tuple[int, int], Code] = {}

    # ------------------------------------------------------------------ step 1

    def _out_disks(self) -> set[str]:
        return {disk.id for disk in self.layout.disks(include_out=True) if disk.state == OUT}

    async def find_work(self) -> dict[bytes, tuple[BlobRef, set[tuple[str, int]]]]:
        work: dict[bytes, tuple[BlobRef, set[tuple[str, int]]]] = {}
        for disk in [DEGRADED_DISK] + sorted(self._out_disks()):                  # 1a, 1b
            start = b""
            while True:
                page = await self.meta.placements_on(disk, start, self.limits.MAINTENANCE_PAGE)
                for ref, displaced_seq in page:
                    if not displaced_seq:
                        work.setdefault(ref.data_id, (ref, set()))
                if len(page) < self.limits.MAINTENANCE_PAGE:
                    break
                start = page[-1][0].data_id
        corrupt: dict[bytes, set[tuple[str, int]]] = collections.defaultdict(set)
        for disk in sorted(self.store.disks):                                      # 1c
            if disk in self._out_disks():
                continue
            try:
                found = await self.store.disks[disk].client.corrupt(disk, timeout_s=self.timeout_s)
            except Exception as error:
                log.warning("RepairCorruptListFailed disk=%s error=%r", disk, error)
                continue
            for shard in found:
                corrupt[shard.data_id].add((disk, shard.shard_index))
        unknown = [data_id for data_id in corrupt if data_id not in work]
        for start in range(0, len(unknown), self.limits.MAINTENANCE_PAGE):
            found, _, _ = await self.meta.lookup_placements(unknown[start:start + self.limits.MAINTENANCE_PAGE])
            for data_id, (ref, displaced_seq) in found.items():
                if not displaced_seq:
                    work[data_id] = (ref, set())
        for data_id, marks in corrupt.items():
            if data_id in work:
                work[data_id][1].update(marks)
        return work

    async def run_once(self) -> RepairPass:
        result = RepairPass()
        work = await self.find_work()
        every = self.limits.REPAIR_PROGRESS_EVERY
        for number, (data_id, (ref, corrupt)) in enumerate(sorted(work.items()), start=1):
            result.objects += 1
            try:
                outcome = await self.repair_one(ref, corrupt, result)
            except Exception as error:
                log.warning("RepairFailed data_id=%s error=%r", data_id.hex(), error)
                outcome = "failed"
            setattr(result, outcome, getattr(result, outcome) + 1)
            if number % every == 0:
                log.info("RepairProgress done=%d of=%d repaired=%d lost_cas=%d failed=%d", number, len(work),
                         result.repaired, result.lost_cas, result.failed)
        if work:
            log.info("RepairPass objects=%d repaired=%d lost_cas=%d failed=%d unknown=%d skipped=%d "
                     "unrepairable=%d shards_written=%d bytes_written=%d", result.objects, result.repaired,
                     result.lost_cas, result.failed, result.unknown, result.skipped, len(result.unrepairable),
                     result.shards_written, result.bytes_written)
        return result

    # ------------------------------------------------------------------ steps 2-6

    def _domain(self, disk: str) -> str:
        known = self.store.disk_map.get(disk)
        return known.domain if known is not None else f"disk:{disk}"

    def _bad_slots(self, placement, corrupt: set[tuple[str, int]]) -> dict[int, str]:
        layout = bp.Layout(placement)
        out = self._out_disks()
        known = {disk.id for disk in self.layout.disks(include_out=True)}
        bad = {slot: MISSING for slot in placement.missing}
        for slot, disk in enumerate(placement.disks):
            if disk in out or disk not in known:
                bad[slot] = LOST
        for disk, index in corrupt:
            slot = index % layout.slots
            if slot < len(placement.disks) and placement.disks[slot] == disk and index in layout.shard_indexes(slot):
                bad[slot] = CORRUPT
        if bad or bp.full_durability(placement):
            return bad
        # Co-located below full durability: move extra slots of crowded domains to unused live ones.
        used = collections.Counter(self._domain(disk) for disk in placement.disks)
        free = {disk.domain for disk in self.store.disk_map.live
                if disk.disk_id not in out and self.store.spreader.has_room(disk)} - set(used)
        seen: set[str] = set()
        for slot, disk in enumerate(placement.disks):
            domain = self._domain(disk)
            if domain in seen and len(bad) < len(free):
                bad[slot] = SPREAD
            seen.add(domain)
        return bad

    def _targets(self, placement, bad: dict[int, str], shard_bytes: int) -> dict[int, str] | None:
        spreader, disk_map = self.store.spreader, self.store.disk_map
        out = self._out_disks()
        held = {disk for slot, disk in enumerate(placement.disks) if slot not in bad}
        domains = collections.Counter(self._domain(disk) for disk in held)
        targets: dict[int, str] = {}
        for slot in sorted(bad):
            old = placement.disks[slot]
            own = disk_map.get(old)
            if bad[slot] == MISSING and own is not None and old not in out and old not in held \
                    and spreader.has_room(own, shard_bytes) and domains[own.domain] == 0:
                pick = own
            else:
                pool = [disk for disk in disk_map.live if disk.disk_id not in out and disk.disk_id not in held
                        and disk.disk_id != old and spreader.has_room(disk, shard_bytes)]
                if not pool and bad[slot] == CORRUPT and own is not None and own.up and old not in out \
                        and old not in held and spreader.has_room(own, shard_bytes):
                    pool = [own]                                 # nowhere else: rewrite it in place
                if not pool:
                    return None
                fewest = min(domains[disk.domain] for disk in pool)
                pool = [disk for disk in pool if domains[disk.domain] == fewest]
                first, second = self.rng.choice(pool), self.rng.choice(pool)
                pick = second if spreader.score(second) < spreader.score(first) else first
            targets[slot] = pick.disk_id
            held.add(pick.disk_id)
            domains[pick.domain] += 1
        return targets

    async def repair_one(self, ref: BlobRef, corrupt: set[tuple[str, int]], result: RepairPass) -> str:
        """Steps 2-6 for one data id; returns the RepairPass counter to raise."""
        placement = bp.decode_placement(ref.placement)
        if placement is None:
            return "skipped"
        layout = bp.Layout(placement)
        bad = self._bad_slots(placement, corrupt)                                   # step 2
        if not bad:
            return "skipped"
        if layout.slots - len(bad) < bp.needed(placement):
            log.error("RepairImpossible data_id=%s good_slots=%d needed=%d", ref.data_id.hex(),
                      layout.slots - len(bad), bp.needed(placement))
            result.unrepairable.append(ref.data_id)
            return "failed"
        shard_bytes = max((layout.shard_length(index) for index in range(layout.slots)), default=0)
        targets = self._targets(placement, bad, shard_bytes)                        # step 3
        if targets is None:
            log.warning("RepairNoTarget data_id=%s slots=%s", ref.data_id.hex(), sorted(bad))
            return "failed"
        final = [targets.get(slot, disk) for slot, disk in enumerate(placement.disks)]
        survives = survivable_domain_losses(collections.Counter(self._domain(disk) for disk in final).values(),
                                            layout.slots - bp.needed(placement))
        if all(reason == SPREAD for reason in bad.values()) and survives <= placement.survives_domain_losses:
            return "skipped"
        began_us = self.clock_us()
        written: list[tuple[str, ShardId]] = []
        in_place = {(placement.disks[slot], ShardId(ref.data_id, index)) for slot, disk in targets.items()
                    if disk == placement.disks[slot] for index in layout.shard_indexes(slot)}

        def ours() -> list[tuple[str, ShardId]]:
            """What a failed repair may delete: never a shard its slot's own disk holds."""
            return [shard for shard in written if shard not in in_place]
        try:
            await self._rebuild(ref, placement, layout, targets, written, result)  # step 4
        except BaseException as error:
            await self._delete(ours())
            if isinstance(error, Exception):
                log.warning("RepairRebuildFailed data_id=%s error=%r", ref.data_id.hex(), error)
                return "failed"
            raise
        new = bp.BlobPlacement()
        new.CopyFrom(placement)
        del new.disks[:]
        new.disks.extend(final)
        del new.missing[:]
        new.survives_domain_losses = survives
        new.generation = placement.generation + 1
        new.written_us = began_us
        not_after_us = self.clock_us() + self.limits.COMMIT_DEADLINE_MS * 1000
        try:                                                                       # step 5
            await self.meta.commit(ReplacePlacement(ref.data_id, ref.placement, bp.encode_placement(new), began_us),
                                   None, fresh_request_id("ReplacePlacement"), not_after_us)
        except (PreconditionFailed, WriteExpired, Expired) as error:      # decisively not applied
            log.info("RepairLostCas data_id=%s refusal=%s: deleting the %d shards it wrote", ref.data_id.hex(),
                     type(error).__name__, len(ours()))
            await self._delete(ours())
            return "lost_cas"
        except OutcomeUnknown:
            log.warning("RepairOutcomeUnknown data_id=%s", ref.data_id.hex())
            return "unknown"
        replaced = [(placement.disks[slot], ShardId(ref.data_id, index)) for slot in bad
                    if targets[slot] != placement.disks[slot] for index in layout.shard_indexes(slot)]
        await self._delete(replaced)                                               # step 6
        log.info("Repaired data_id=%s slots=%s generation=%d", ref.data_id.hex(),
                 {slot: f"{bad[slot]}:{placement.disks[slot]}->{targets[slot]}" for slot in sorted(bad)},
                 new.generation)
        return "repaired"

    # ------------------------------------------------------------------ step 4

    def _code(self, placement) -> Code:
        key = (placement.k, placement.m)
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = Code(placement.k, placement.m)
        if code.code_id != placement.code_id:
            raise _Failed(f"placement code {placement.code_id} is not {code.code_id}")
        return code

    async def _rebuild(self, ref: BlobRef, placement, layout: bp.Layout, targets: dict[int, str],
                       written: list, result: RepairPass) -> None:
        reading = bp.BlobPlacement()
        reading.CopyFrom(placement)
        del reading.missing[:]
        reading.missing.extend(sorted(set(placement.missing) | set(targets)))     # decode around the bad slots
        source = self.store.read(replace(ref, placement=bp.encode_placement(reading)), 0, ref.size)
        block = self.limits.CHECKSUM_BLOCK
        if layout.copies:
            data = b"".join([piece async for piece in source])
            checksums = block_checksums(data, block)
            await asyncio.gather(*(self._put(disk, ShardId(ref.data_id, slot), data, checksums, written, result)
                                   for slot, disk in targets.items()))
            return
        code = self._code(placement)
        writers: dict[int, object] = {}
        buffer = bytearray()
        stripe = 0
        try:
            async for piece in source:
                buffer += piece
                while stripe < layout.stripe_count and len(buffer) >= layout.stripe_length(stripe):
                    length = layout.stripe_length(stripe)
                    data = bytes(buffer[:length])
                    del buffer[:length]
                    pieces = await asyncio.to_thread(_stripe_pieces, code, data, layout, stripe, sorted(targets), block)
                    await self._write_stripe(ref.data_id, layout, stripe, targets, pieces, writers, written, result)
                    stripe += 1
            if stripe != layout.stripe_count:
                raise _Failed(f"read {stripe} of {layout.stripe_count} stripes")
        finally:
            for writer in writers.values():
                await writer.abort()

    async def _write_stripe(self, data_id: bytes, layout: bp.Layout, stripe: int, targets: dict[int, str],
                            pieces: dict, writers: dict, written: list, result: RepairPass) -> None:
        segment = stripe // layout.segment_stripes
        stripes = layout.segment_stripes_of(segment)
        if len(stripes) == 1:
            await asyncio.gather(*(self._put(disk, ShardId(data_id, layout.shard_index(stripe, slot)),
                                             *pieces[slot], written, result) for slot, disk in targets.items()))
            return

        async def one(slot: int, disk: str) -> None:
            shard = ShardId(data_id, layout.shard_index(stripe, slot))
            if stripe == stripes[0]:
                writers[slot] = self.store.disks[disk].client.open_put(
                    disk, shard, layout.shard_length(shard.shard_index), timeout_s=self.timeout_s)
                written.append((disk, shard))
            data, checksums = pieces[slot]
            if len(data):
                await self._guard(disk, writers[slot].write(data, checksums))
                result.bytes_written += len(data)
            if stripe == stripes[-1]:
                await self._guard(disk, writers.pop(slot).finish())
                result.shards_written += 1

        await asyncio.gather(*(one(slot, disk) for slot, disk in targets.items()))

    async def _guard(self, disk: str, call):
        """A shard call to `disk`; an unreachable disk is routed around at once (as the BlobStore does)."""
        try:
            return await call
        except (ConnectionLost, DeadlineExceeded, OSError) as error:
            self.store.mark_down(disk, error)
            raise

    async def _put(self, disk: str, shard: ShardId, data, checksums, written: list, result: RepairPass) -> None:
        written.append((disk, shard))
        await self._guard(disk, self.store.disks[disk].client.put(disk, shard, data, checksums,
                                                                  timeout_s=self.timeout_s))
        result.shards_written += 1
        result.bytes_written += len(data)

    async def _delete(self, shards: list[tuple[str, ShardId]]) -> None:
        by_disk: dict[str, list[ShardId]] = collections.defaultdict(list)
        for disk, shard in shards:
            by_disk[disk].append(shard)

        async def one(disk: str, ids: list[ShardId]) -> None:
            spec = self.store.disks.get(disk)
            if spec is None:
                return
            try:
                await spec.client.delete_many(disk, ids, timeout_s=self.timeout_s)
            except Exception as error:        # unreachable: the sweep's, later
                log.warning("RepairDeleteSkipped disk=%s shards=%d error=%r", disk, len(ids), error)

        await asyncio.gather(*(one(disk, ids) for disk, ids in by_disk.items()))


def _stripe_pieces(code: Code, data: bytes, layout: bp.Layout, stripe: int, slots: list[int],
                   block: int) -> dict[int, tuple[bytes, list[bytes]]]:
    """The stored chunks of `slots` for one stripe's bytes, with their block checksums
    (the writer's own arithmetic: shardstore.blobstore._stripe_pass)."""
    k, chunk = layout.k, layout.chunk_bytes
    length = len(data)
    parity = code.encode(stripe_chunks(data, k, min(chunk, length))) if any(slot >= k for slot in slots) else []
    pieces = {}
    for slot in slots:
        piece = data[slot * chunk:min((slot + 1) * chunk, length)] if slot < k else parity[slot - k]
        if len(piece) != layout.chunk_length(stripe, slot):
            raise _Failed(f"stripe {stripe} slot {slot}: {len(piece)} bytes, layout says "
                          f"{layout.chunk_length(stripe, slot)}")
        pieces[slot] = (bytes(piece), block_checksums(piece, block))
    return pieces

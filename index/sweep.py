"""The orphan sweep (DESIGN §14): deletes shards that no index entry keeps or queues.

Orphans come from a frontend that died mid-PUT, an unrecorded refusal (its data
ids never reach `G`), a delete that skipped a down disk, or repair's leftovers.
Per disk, one pass:

1. List the disk's shards in pages (`ShardClient.list`: id, length, put time).
2. Ask the index about every data id of the page that could qualify below
   (`lookup_placements`: the `L` entries it knows, and the answering replica's
   applied entry time).
3. Orphan rule. A shard is deleted only if
   a. its data id's time (common.ids.data_id_time_ms) is older than
      now − MAX_WRITE_AGE − MAX_CLOCK_SKEW, and
   b. `L` has no entry for the data id, and
   c. the answer's applied entry time is past data-id time + MAX_WRITE_AGE: apply
      refuses any later entry introducing that data id (WriteExpired), and every
      earlier one is applied in the state that answered, so it can never become
      referenced.
4. Unplaced rule (repair's leftovers). A shard of a data id `L` knows, on a slot
   of its current placement that is not on this disk (repair moved it, or a write
   was abandoned), is deleted only if its put time is older than
   now − MAX_WRITE_AGE − MAX_CLOCK_SKEW and the applied entry time is past put
   time + MAX_WRITE_AGE: a repair that wrote it began before its put time, so its
   ReplacePlacement is refused from then on, and one that applied is visible.
5. Idle partition: when 3c or 4's fence is all that keeps a shard, the sweep
   commits one no-op entry (`Reaped(0)`: the reaped seq only rises, so it changes
   nothing but the applied time) per pass and asks again.

Invariants: no shard of a data id that is referenced, queued in `G`, or may still
be introduced or re-placed by an entry is ever deleted; safety rests on the log
(the applied time), never on a bare timeout. The fences use the partition's own
MAX_WRITE_AGE (from `M`, returned with the lookup), or this process's if larger.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from common import blob_placement as bp
from common.ids import data_id_time_ms
from common.limits import DEFAULT_LIMITS, Limits
from common.seams import Reaped
from index.reaper import fresh_request_id
from shardstore.client import ShardInfo
from shardstore.format import ShardId

log = logging.getLogger("cairn.sweep")


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class SweepPass:
    listed: int = 0
    orphans_deleted: int = 0      # step 3
    unplaced_deleted: int = 0     # step 4
    fenced: int = 0               # old enough, kept only by the applied-time fence
    disks_skipped: int = 0        # unreachable this pass
    no_ops: int = 0               # step 5 entries committed


class Sweep:
    def __init__(self, meta, disks: Mapping[str, object], *, limits: Limits = DEFAULT_LIMITS,
                 clock_us: Callable[[], int] = _now_us) -> None:
        self.meta = meta
        self.disks = disks            # disk id -> ShardClient of the process serving it
        self.limits = limits
        self.clock_us = clock_us
        self.timeout_s = limits.SHARD_CALL_TIMEOUT_MS / 1000

    async def run_once(self) -> SweepPass:
        result = SweepPass()
        self._no_op_done = False
        for disk in sorted(self.disks):
            try:
                await self._sweep_disk(disk, self.disks[disk], result)
            except Exception as error:        # unreachable or refusing: the next pass tries again
                result.disks_skipped += 1
                log.warning("SweepSkippedDisk disk=%s error=%r", disk, error)
        log.info("SweepPass listed=%d orphans_deleted=%d unplaced_deleted=%d fenced=%d disks_skipped=%d",
                 result.listed, result.orphans_deleted, result.unplaced_deleted, result.fenced, result.disks_skipped)
        return result

    async def _sweep_disk(self, disk: str, client, result: SweepPass) -> None:
        after: ShardId | None = None
        while True:
            page, more = await client.list(disk, after, self.limits.MAINTENANCE_PAGE, timeout_s=self.timeout_s)  # step 1
            if not page:
                return
            result.listed += len(page)
            doomed = await self._judge(disk, page, result)
            if doomed:
                await client.delete_many(disk, doomed, timeout_s=self.timeout_s)
            after = page[-1].id
            if not more:
                return

    async def _judge(self, disk: str, page: list[ShardInfo], result: SweepPass) -> list[ShardId]:
        age_us = self.limits.MAX_WRITE_AGE_MS * 1000
        horizon_us = self.clock_us() - age_us - self.limits.MAX_CLOCK_SKEW_MS * 1000
        old = {}
        for info in page:
            if data_id_time_ms(info.id.data_id) * 1000 < horizon_us or info.put_time_us < horizon_us:
                old.setdefault(info.id.data_id, []).append(info)
        if not old:
            return []
        decisions = await self._decide(disk, old, horizon_us, age_us)              # steps 2-4
        if decisions[1] and not self._no_op_done:                                   # step 5
            self._no_op_done = True
            result.no_ops += 1
            not_after_us = self.clock_us() + self.limits.COMMIT_DEADLINE_MS * 1000
            await self.meta.commit(Reaped(0), None, fresh_request_id("SweepNoOp"), not_after_us)
            decisions = await self._decide(disk, old, horizon_us, age_us)
        doomed, fenced, orphans = decisions
        result.fenced += fenced
        result.orphans_deleted += orphans
        result.unplaced_deleted += len(doomed) - orphans
        return doomed

    async def _decide(self, disk: str, old: dict[bytes, list[ShardInfo]], horizon_us: int,
                      age_us: int) -> tuple[list[ShardId], int, int]:
        """(shards to delete, how many are kept only by the fence, how many of the deleted are orphans)."""
        found, applied_time_us, partition_age_us = await self.meta.lookup_placements(sorted(old))
        age_us = max(age_us, partition_age_us)       # the fence is the age apply enforces, from M
        doomed: list[ShardId] = []
        fenced = orphans = 0
        for data_id, infos in old.items():
            known = found.get(data_id)
            if known is None:                                                       # step 3
                data_time_us = data_id_time_ms(data_id) * 1000
                if data_time_us >= horizon_us:
                    continue
                if applied_time_us > data_time_us + age_us:
                    doomed.extend(info.id for info in infos)
                    orphans += len(infos)
                else:
                    fenced += len(infos)
                continue
            placement = bp.decode_placement(known[0].placement)                     # step 4
            if placement is None:
                continue
            layout = bp.Layout(placement)
            placed = {index for slot, slot_disk in enumerate(placement.disks) if slot_disk == disk
                      for index in layout.shard_indexes(slot)}
            for info in infos:
                if info.id.shard_index in placed or info.put_time_us >= horizon_us:
                    continue
                if applied_time_us > info.put_time_us + age_us:
                    doomed.append(info.id)
                else:
                    fenced += 1
        return doomed, fenced, orphans

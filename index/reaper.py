"""The reaper (DESIGN §14): deletes the shards of displaced data ids once no GET can still read them.

Apply queues, in the reap queue `G` at each entry's seq, the data ids that entry
displaced (an overwrite, a deleted version, a replaced or unlisted part, an abort)
or introduced in a recorded refusal. One pass:

1. Read the queue in pages (`reap_queue(after_seq, limit)`), in seq order.
2. Stop at the first entry whose time + REAP_DELAY has not passed (REAP_DELAY is
   at least the longest GET; entry times rise with seq, so every later entry waits too).
3. For every data id of a due entry, delete its shards through the BlobStore's
   `delete(ref)`: the placement `G` recorded and, when repair moved it since
   (`lookup_placements`: `L` keeps a displaced data id until it is reaped), the
   current one too. Deleting is idempotent; a missing shard is fine; a shard on a
   disk that is down is left to the orphan sweep.
4. Commit `Reaped(up_to_seq)` (the last due entry's seq) with a fresh request id:
   apply raises the reaped seq as a max and drops those `G`, `L` and `R` entries.

Invariants:
- Progress is only ever the committed `Reaped`: the reaper keeps no state of its
  own, so a restarted (or second) reaper repeats the unfinished range, which is safe
  because deleting twice is harmless and `Reaped` only rises.
- It deletes only data ids `G` lists, and only after REAP_DELAY of entry time (the
  reaper's clock against the head's, both within MAX_CLOCK_SKEW): a displaced data
  id is never referenced again (a data id is referenced by one record, ever), so
  no referenced byte is deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from common import ids
from common.limits import DEFAULT_LIMITS, Limits
from common.seams import BlobRef, Reaped

log = logging.getLogger("cairn.reaper")


def _now_us() -> int:
    return time.time_ns() // 1000


def fresh_request_id(kind: str) -> bytes:
    """A random request id for one maintenance commit (retried with the same id inside `commit`)."""
    return ids.request_id(None, access_key="cairn-maintain", method=kind, bucket="", key="")


@dataclass
class ReapPass:
    """What one pass did."""

    entries: int = 0          # due queue entries handled
    blobs: int = 0            # data ids whose shards were deleted
    reaped_seq: int = 0       # the reaped seq after the pass


class Reaper:
    def __init__(self, meta, blobs, *, limits: Limits = DEFAULT_LIMITS,
                 clock_us: Callable[[], int] = _now_us) -> None:
        self.meta = meta              # index.client.ClusterMetadataStore (or a LocalIndex-backed twin in tests)
        self.blobs = blobs            # the BlobStore: delete(ref)
        self.limits = limits
        self.clock_us = clock_us

    async def run_once(self) -> ReapPass:
        result = ReapPass()
        delay_us = self.limits.REAP_DELAY_MS * 1000
        after_seq, up_to = 0, 0
        while True:
            entries, reaped_seq = await self.meta.reap_queue(after_seq, self.limits.MAINTENANCE_PAGE)  # step 1
            result.reaped_seq = max(result.reaped_seq, reaped_seq)
            due = True
            for seq, time_us, refs in entries:
                if time_us + delay_us > self.clock_us():                   # step 2
                    due = False
                    break
                await self._delete(refs)                                   # step 3
                result.entries += 1
                result.blobs += len(refs)
                up_to = seq
            if not due or len(entries) < self.limits.MAINTENANCE_PAGE:
                break
            after_seq = entries[-1][0]
        if up_to > result.reaped_seq:                                      # step 4
            not_after_us = self.clock_us() + self.limits.COMMIT_DEADLINE_MS * 1000
            await self.meta.commit(Reaped(up_to), None, fresh_request_id("Reaped"), not_after_us)
            result.reaped_seq = up_to
            log.info("Reaped up_to_seq=%d entries=%d blobs=%d", up_to, result.entries, result.blobs)
        return result

    async def _delete(self, refs: tuple[BlobRef, ...]) -> None:
        if not refs:
            return
        current, _, _ = await self.meta.lookup_placements([ref.data_id for ref in refs])
        for ref in refs:
            await self.blobs.delete(ref)
            moved = current.get(ref.data_id)
            if moved is not None and moved[0].placement != ref.placement:
                await self.blobs.delete(moved[0])                          # repair moved it before it was displaced

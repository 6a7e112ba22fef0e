"""The read side of the cluster BlobStore (shardstore/blobstore.py, whose
docstring describes it): copies read from the coolest live copy with failover and a
hedge; RS stripes read as the data chunk ranges they need or decoded from k whole
chunks, BLOB_READ_PREFETCH_STRIPES ahead; small shard reads bound for one disk
coalesced into `get_many` calls by that disk's `GetBatcher`.

Invariants: every byte yielded came from a get the client verified against the
stored block checksums, or from a decode of k such chunks; fewer than k readable is
an error (ServiceUnavailable or BlobCorrupt), never bytes. At most
BLOB_READ_PREFETCH_STRIPES + 1 stripes are in memory per read.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, AsyncIterator, Iterable

from common import blob_placement as bp
from common.errors import BlobCorrupt, ServiceUnavailable, invariant
from common.framing import ConnectionLost
from common.placement import DiskId, NotEnoughShards, Placement, read_plan
from shardstore.blob_write import UNREACHABLE, DiskBatcher, forget
from shardstore.format import ShardId
from shardstore.framed import MANY_ITEMS_MAX, MANY_PAYLOAD_MAX_BYTES
from shardstore.node import ShardCorrupt

log = logging.getLogger("cairn.blobs")


class GetBatcher(DiskBatcher):
    """Small shard reads bound for one disk: one `get_many` in flight; what arrives
    meanwhile goes in the next (no timers), up to SMALL_GET_BATCH_MAX reads and
    SMALL_GET_BATCH_MAX_BYTES of the blocks they may be sent. The read-side twin of
    blob_write.PutBatcher (both a blob_write.DiskBatcher); one per disk per ShardBlobStore.

    - A read that finds no batch running starts one at once: its task runs on the
      loop's next turn, so reads begun in the same turn (a read's prefetched stripes,
      concurrent GETs) ride along; nothing waits on a timer. A batch of one goes as a
      plain `get`: the frame a lone read sent before batching, smaller than a
      GET_MANY of one, so a read that meets no company costs exactly what it did.
    - Each read has its own outcome: its verified bytes, or its own refusal
      (ShardNotFound, ShardCorrupt, ...). A failure of the whole call (ConnectionLost,
      DeadlineExceeded, a refused frame) fails every read of the batch with that
      error, and the store marks the disk down as for any call, so the Reader fails
      over and hedges exactly as around a lone `get`.
    - A reader that gives up cancels its future: a read not yet sent is skipped, a
      sent one's answer is dropped; the other reads of the batch are unaffected.
    - A batch waits for the call before it: on a slow disk the Reader's hedge
      (READ_HEDGE_MS) reads elsewhere, as it does around a slow lone `get`.
    """

    def get(self, shard: ShardId, start: int, end: int) -> asyncio.Future:
        """The bytes [start, end) of `shard` on this disk, verified (or the read's error)."""
        return self._submit((shard, start, end))

    def caps(self) -> tuple[int, int]:
        limits = self.store.limits
        return (min(limits.SMALL_GET_BATCH_MAX, MANY_ITEMS_MAX),
                min(limits.SMALL_GET_BATCH_MAX_BYTES, MANY_PAYLOAD_MAX_BYTES))

    def _size(self, item: tuple) -> int:
        _, start, end = item
        return end - start + 2 * (self.store.limits.CHECKSUM_BLOCK - 1)  # its blocks reach up to a block past each end

    async def _send(self, items: list[tuple]) -> list:
        client = self.store._client(self.disk)
        timeout_s = self.store.timeout_s
        if len(items) == 1:
            shard, start, end = items[0]
            return [await self.store._call(self.disk, client.get(self.disk, shard, start, end, timeout_s=timeout_s))]
        return await self.store._call(self.disk, client.get_many(self.disk, items, timeout_s=timeout_s))


class Reader:
    def __init__(self, store: ShardBlobStore, data_id: bytes, placement) -> None:
        self.store, self.data_id, self.placement = store, data_id, placement
        self.layout = bp.Layout(placement)
        self.disks = [DiskId(disk) for disk in placement.disks]
        self.missing = set(placement.missing)
        self.hedge_s = store.limits.READ_HEDGE_MS / 1000
        self.unreachable = False     # some shard's disk could not be reached

    def _plan_placement(self, excluded: set[int]) -> Placement:
        """A common.placement view of the slots, with excluded ones on no disk (never live)."""
        disks = tuple(DiskId("") if slot in excluded else disk for slot, disk in enumerate(self.disks))
        return Placement(disks=disks, domains=("",) * len(disks), needed=1 if self.layout.copies else self.layout.k,
                         copies=self.layout.copies, survives_domain_losses=0)

    def _order(self, slots: Iterable[int], excluded: set[int]) -> list[int]:
        """Live, not excluded slots, coolest first (data before parity among the cool)."""
        disk_map = self.store.disk_map
        hot = disk_map.hot_threshold_bytes_per_s(self.store.limits.HOT_FACTOR)
        ranked = []
        for slot in slots:
            disk = disk_map.get(self.disks[slot])
            if slot in excluded or disk is None or not disk.up:
                continue
            parity = not self.layout.copies and slot >= self.layout.k
            ranked.append(((disk.load_bytes_per_s > hot, parity, disk.load_bytes_per_s, slot), slot))
        return [slot for _, slot in sorted(ranked)]

    async def _get(self, slot: int, shard_index: int, start: int, end: int):
        """Every shard read: a small range (at most SMALL_OBJECT_MAX) through the disk's
        GetBatcher, a larger one as a `get` of its own (its blocks stream as one big payload)."""
        disk = self.disks[slot]
        if disk in self.store.down:
            self.unreachable = True
            raise ConnectionLost(f"disk {disk} is down")
        shard = ShardId(self.data_id, shard_index)
        try:
            if end - start <= self.store.limits.SMALL_OBJECT_MAX:
                return await self.store._get_batcher(disk).get(shard, start, end)
            return await self.store._call(disk, self.store._client(disk).get(
                disk, shard, start, end, timeout_s=self.store.timeout_s))
        except UNREACHABLE:
            self.unreachable = True
            raise
        except ShardCorrupt:
            log.error("ShardCorrupt data_id=%s shard=%d disk=%s", self.data_id.hex(), shard_index, disk)
            raise

    def _unreadable(self, need: int, got: int) -> Exception:
        message = f"{self.data_id.hex()}: {got} of {need} needed shards readable"
        if self.unreachable:
            return ServiceUnavailable(message, need=need, got=got)
        return BlobCorrupt(message)

    # ------------------------------------------------------------------ copies

    async def copies(self, start: int, end: int) -> AsyncIterator[bytes]:
        if start == end:
            return
        excluded = set(self.missing)
        try:
            first = read_plan(self._plan_placement(excluded), (), self.store.disk_map,
                              hot_factor=self.store.limits.HOT_FACTOR).shards[0]
        except NotEnoughShards:
            self.unreachable = True
            raise self._unreadable(1, 0) from None
        order = [first] + [slot for slot in self._order(range(len(self.disks)), excluded) if slot != first]
        running: dict[asyncio.Future, int] = {}
        launch = True
        try:
            while True:
                if launch and order:
                    slot = order.pop(0)
                    running[asyncio.ensure_future(self._get(slot, slot, start, end))] = slot
                if not running:
                    break
                done, _ = await asyncio.wait(running, timeout=self.hedge_s if order else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                launch = True                    # a failure fails over, a timeout hedges
                for task in done:
                    running.pop(task)
                    if not task.cancelled() and task.exception() is None:
                        data = task.result()
                        invariant(len(data) == end - start, "a shard get returns exactly its range")
                        yield _as_bytes(data)
                        return
        finally:
            for task in running:
                task.cancel()
                forget(task)
        raise self._unreadable(1, 0)

    # ------------------------------------------------------------------ RS

    async def coded(self, start: int, end: int) -> AsyncIterator[bytes]:
        if start == end:
            return
        layout = self.layout
        first, last = start // layout.stripe_bytes, (end - 1) // layout.stripe_bytes
        window: collections.deque[asyncio.Task] = collections.deque()
        ahead = self.store.limits.BLOB_READ_PREFETCH_STRIPES
        following = first
        try:
            while window or following <= last:
                while following <= last and len(window) <= ahead:
                    base = following * layout.stripe_bytes
                    low, high = max(start, base) - base, min(end, base + layout.stripe_length(following)) - base
                    window.append(asyncio.ensure_future(self._stripe(following, low, high)))
                    following += 1
                for piece in await window.popleft():
                    yield _as_bytes(piece)
        finally:
            for task in window:
                task.cancel()
                forget(task)

    async def _stripe(self, stripe: int, low: int, high: int) -> list:
        """Bytes [low, high) of stripe `stripe`, as pieces (no copy on the fast path)."""
        layout = self.layout
        chunk = layout.chunk_bytes
        wanted = range(low // chunk, (high - 1) // chunk + 1)
        excluded = set(self.missing)
        try:
            plan = read_plan(self._plan_placement(excluded), wanted, self.store.disk_map,
                             hot_factor=self.store.limits.HOT_FACTOR)
        except NotEnoughShards as error:
            self.unreachable = True
            raise self._unreadable(layout.k, error.live) from None
        have: dict[int, Any] = {}
        slow: set[int] = set()
        carried: dict[asyncio.Future, int] = {}
        if not plan.decode:
            offset = layout.chunk_offset(stripe)
            tasks = {}
            for slot in wanted:
                lo, hi = max(low, slot * chunk) - slot * chunk, min(high, (slot + 1) * chunk) - slot * chunk
                tasks[slot] = (lo, hi, asyncio.ensure_future(
                    self._get(slot, layout.shard_index(stripe, slot), offset + lo, offset + hi)))
            done, pending = await asyncio.wait([task for *_, task in tasks.values()], timeout=self.hedge_s)
            if not pending and all(task.exception() is None for task in done):
                self.store.counters["stripes_direct"] += 1
                return [task.result() for *_, task in tasks.values()]
            for slot, (lo, hi, task) in tasks.items():
                whole = lo == 0 and hi == layout.chunk_length(stripe, slot)
                if task in pending:
                    if whole:
                        carried[task] = slot     # still useful: whichever k chunks come first win
                    else:
                        task.cancel()
                        forget(task)
                        slow.add(slot)           # a partial range: read whole later if need be
                elif task.exception() is not None:
                    excluded.add(slot)
                elif whole:
                    have[slot] = task.result()  # a whole chunk: usable for the decode
        return await self._recover(stripe, low, high, excluded, slow, have, carried)

    async def _recover(self, stripe: int, low: int, high: int, excluded: set[int], slow: set[int],
                       have: dict[int, Any], running: dict[asyncio.Future, int]) -> list:
        """Whole chunks until the wanted data chunks are all in hand, or any k are
        (then decode). `running` are whole-chunk reads already in flight and slower than
        READ_HEDGE_MS: one more shard starts now, and one each READ_HEDGE_MS after."""
        layout = self.layout
        k, chunk = layout.k, layout.chunk_bytes
        wanted = range(low // chunk, (high - 1) // chunk + 1)
        length = layout.chunk_length(stripe, layout.k)       # the parity (and padded) length
        offset = layout.chunk_offset(stripe)
        for slot in range(k):
            if layout.chunk_length(stripe, slot) == 0:
                have[slot] = b""                # past the blob's end: zeros, known without a read
        busy = set(running.values())
        candidates = self._order(range(layout.slots), excluded | slow | set(have) | busy)
        retry = [slot for slot in self._order(range(layout.slots), set(self.missing) | set(have) | busy)
                 if slot in slow]                # slow partial reads come back last, rather than failing
        failed: set[int] = set()

        def launch() -> bool:
            for queue in (candidates, retry):
                while queue:
                    slot = queue.pop(0)
                    if slot in failed or slot in have or slot in running.values():
                        continue
                    running[asyncio.ensure_future(self._get(slot, layout.shard_index(stripe, slot), offset,
                                                            offset + layout.chunk_length(stripe, slot)))] = slot
                    return True
            return False

        def complete() -> bool:
            return len(have) >= k or all(slot in have for slot in wanted)

        hedge_now = bool(running)
        try:
            while not complete():
                while len(have) + len(running) < k and launch():
                    pass
                if hedge_now and launch():
                    self.store.counters["read_hedges"] += 1
                hedge_now = False
                if not running:
                    raise self._unreadable(k, len(have))
                done, _ = await asyncio.wait(running, timeout=self.hedge_s, return_when=asyncio.FIRST_COMPLETED)
                hedge_now = not done
                for task in done:
                    slot = running.pop(task)
                    if task.cancelled() or task.exception() is not None:
                        failed.add(slot)
                    else:
                        have[slot] = task.result()
        finally:
            for task in running:
                task.cancel()
                forget(task)
        if all(slot in have for slot in wanted):
            self.store.counters["stripes_direct"] += 1
            data = have
        else:
            self.store.counters["stripes_decoded"] += 1
            shards = {slot: _padded(chunk_data, length) for slot, chunk_data in have.items()}
            data = dict(enumerate(await asyncio.to_thread(self.store.code.decode, shards, length)))
        pieces = []
        for slot in wanted:
            lo, hi = max(low, slot * chunk) - slot * chunk, min(high, (slot + 1) * chunk) - slot * chunk
            whole = lo == 0 and hi == len(data[slot])
            pieces.append(data[slot] if whole else memoryview(data[slot])[lo:hi])   # a whole chunk goes uncopied
        return pieces


def _as_bytes(piece):
    """What the seam promises, bytes or a bytearray nobody writes to again (a large
    payload arrives as one: copying it would cost ~60 µs per MiB here); a view (a
    slice of a decoded chunk, or of a shard's reply) is copied."""
    return piece if type(piece) is bytes or type(piece) is bytearray else bytes(piece)


def _padded(data, length: int):
    size = len(data)
    if size == length:
        return data
    invariant(size < length, "a data chunk is never longer than the stripe's parity")
    return bytes(data) + bytes(length - size)

"""The cluster BlobStore: blobs as Reed-Solomon shards or whole copies over shardstore
disks (DESIGN §7, §8, §11 BlobStore, §13, §14), reached through
`shardstore.client.ShardClient` on the framed protocol.

Construction: a layout `disk id -> DiskSpec(client, host)` (one ShardClient per
shardstore process, which may serve several disks; the host is the failure domain).
`start()` runs a first Stat round, then the disk monitor: every
DISK_STAT_INTERVAL_MS it Stats every disk and refreshes the heat-aware `Spreader`
(common/placement.py). A disk whose call fails with ConnectionLost, DeadlineExceeded
or OSError — a Stat or any shard call — is marked down at once for placement and
reads; the next Stat that succeeds marks it up. `close()` stops the monitor and the
stragglers and closes the clients (the store owns them).

Write (`write`, steps cited in the code):
1. Route by size. Known and <= SMALL_OBJECT_MAX: m+1 copies. Unknown: read ahead up to
   one full stripe (k·CHUNK_MAX) + 1 byte; a stream that ends there has a known size
   after all (a small chunked upload becomes copies, a short one gets ceil(size/k)
   chunks). Otherwise RS k+m.
2. Place: the spreader picks disks in distinct failure domains (co-locating evenly
   when there are fewer live domains, the placement then recording the reduced
   `survives_domain_losses`); none eligible -> ServiceUnavailable.
3. Copies: MD5/checksums (on the loop up to INLINE_HASH_MAX_BYTES, a thread hop costs
   more; on a worker thread above), one block-checksum list, and each copy goes to its
   disk's `_PutBatcher`: concurrent small puts bound for one disk ride one `put_many`
   frame (one fsync); whatever arrives while a call is in flight goes in the next.
4. RS, stripe by stripe (memory: the stripe being received, the one on the worker
   thread, the one being sent, plus the clients' windows and at most
   _SEGMENTS_FINISHING segments finishing): receive stripe t+1 while a worker
   thread runs stripe t's pass — MD5 and checksums (sequential: pass t+1 starts
   after pass t), RS parity, and the xxh3-128 of every block of every shard piece —
   then send stripe t's k+m pieces while pass t+1 runs. Chunk size
   `min(CHUNK_MAX, ceil(size/k))` (CHUNK_MAX when unknown).
5. Segments (layout in common/blob_placement.py): a shardstore shard is at most
   SHARD_MAX_BYTES and declares its length up front. Known size: segments of
   SHARD_MAX_BYTES // chunk stripes (256 MiB of data by default); each shard of a
   multi-stripe segment is streamed through `open_put` in chunk-sized pieces.
   Unknown size: one stripe per segment, its length known once it has arrived. A
   single-stripe segment's shards go whole: `put` (one frame), or the batcher when
   small. Every segment uses the same k+m disks (slot i's shards all on disks[i]);
   shard index = segment·(k+m) + slot.
6. Degraded writes (DESIGN §7): every wait on the k+m shards of a stripe or a
   segment's finish lasts until all are done, or until PUT_HEDGE_MS after k+1 of them
   were, or until k+1 can no longer be reached. A slot that failed or lagged is
   dropped (its writers aborted) and recorded `missing` (a per-slot list: all of its
   shards are rebuilt); its disk stays in the placement, as a late write may land
   there. Fewer than k+1 slots left (copies: 2) -> the write fails with
   ServiceUnavailable (HTTP 503).
7. On any failure — too few slots, a stream whose length differs from `size`
   (ValueError, raised as soon as it overruns), a stream error, cancellation — the
   writers are aborted, in-flight puts settle, and every shard index the write may
   have touched is deleted (`delete_many` per disk) before the error is raised (in
   the background when cancelled). Nothing is kept; a disk that is down then leaves
   an orphan for the sweep (DESIGN §14).
8. The placement record (common/blob_placement.py): scheme, code id, k, m, chunk
   bytes, length, segment stripes, the disk of every slot, missing slots,
   survives_domain_losses (recomputed over the slots written), generation 0, and
   when the write began.

Read (`read(ref, start, end)`), yielding `[start, end)` in pieces, never buffering
more than BLOB_READ_PREFETCH_STRIPES + 1 stripes:
- Copies: the coolest live copy (`read_plan`); on any error, or after READ_HEDGE_MS
  without an answer, also the next coolest; the first good answer wins.
- RS, per stripe, up to BLOB_READ_PREFETCH_STRIPES ahead: `read_plan` picks the data
  chunks covering the range (fetching only those byte ranges) or, when one is on a
  down, missing or hot disk, k shards to decode. A chunk read that fails (down disk,
  ShardCorrupt from the client's checksum check, not found) or takes longer than
  READ_HEDGE_MS turns the stripe into a decode: whole chunks from the remaining
  shards, coolest first, one more started each READ_HEDGE_MS without an answer and
  one per failure; decoded on a worker thread. Fewer than k readable ->
  ServiceUnavailable when a disk was unreachable, else BlobCorrupt; never wrong bytes.
Delete: `delete_many` per disk, concurrently, every shard index of every slot. A disk
that is down (or fails) is skipped silently: the orphan sweep finds its shards
(DESIGN §14), as a GET never reads them again.

Costs on this path (DESIGN §13; RS 4+2, 1 MiB chunks, 3 copies; priced with
MEASURED.md, and bench/ec_blob_bench.py measures them):
- 64 KiB PUT (3 copies): 3 shard messages — one entry each in a `put_many` frame to
  three disks, shared with whatever else is queued for those disks — and 3 fsyncs,
  each shared by the whole group commit of its disk. CPU: MD5 of 64 KiB (~0.1 ms) on
  the loop, one xxh3 block list (~7 µs), ~3 × the framed per-message cost
  (~50–100 µs each with batching), so ~0.3–0.5 ms in the frontend.
- 64 MiB PUT (RS 4+2): one segment, 16 stripes; 6 `open_put` streams of 16 MiB,
  ~16 × 6 = 96 piece frames plus 6 opens and 6 finishes (~110 messages), 16 fsyncs per
  disk in the store's 1 MiB write steps (96 in all). CPU in the frontend: MD5
  ~1.9 ms/MiB (the bound on one stream), ISA-L parity + xxh3 ~0.45 ms/MiB, framing
  ~0.4 ms/MiB, so ~2.8 ms/MiB (~180 ms), plus ~0.9 ms/MiB in the stores.
- GET of n bytes (RS): one `get` per data chunk the range touches (64 MiB: 64 frames
  of 1 MiB, no decode, no fsync, ~0.8 ms/MiB of framing and checksum checks in the
  frontend); degraded (a data disk down): 4 whole chunks per stripe instead, plus an
  ISA-L decode (~0.15 ms/MiB). A copies GET: one `get` of the range.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping

from common import blob_placement as bp
from common.checksums import Digests
from common.erasure import Code, stripe_chunks
from common.errors import BlobCorrupt, BlobNotFound, ServiceUnavailable, invariant
from common.framing import ConnectionLost, DeadlineExceeded
from common.limits import DEFAULT_LIMITS, Limits
from common.placement import (Disk, DiskId, DiskMap, NoEligibleDisk, NotEnoughShards, Placement, Spreader,
                              disk_from_stat, read_plan, survivable_domain_losses)
from common.seams import CHECKSUM_ALGORITHMS, BlobRef
from shardstore.format import ShardId, block_checksums
from shardstore.framed import MANY_ITEMS_MAX, MANY_PAYLOAD_MAX_BYTES
from shardstore.node import ShardCorrupt, ShardNotFound

log = logging.getLogger("cairn.blobs")

INLINE_HASH_MAX_BYTES = 64 * 1024   # hash a copies body on the loop below this (a thread hop costs more)
_SEGMENTS_FINISHING = 2             # segments of one write whose last pieces/finishes may be in flight
_DISCARD_TIMEOUT_S = 5.0            # how long a failed write waits for its puts to settle before deleting
_UNREACHABLE = (ConnectionLost, DeadlineExceeded, OSError)


@dataclass(frozen=True)
class DiskSpec:
    """One disk of the layout: the client of the process serving it, and its failure domain."""

    client: Any            # shardstore.client.ShardClient
    host: str | None = None


def _now_us() -> int:
    return time.time_ns() // 1000


def _forget(task: asyncio.Future) -> None:
    """A straggler nobody awaits: retrieve its outcome so it is never logged as lost."""
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


class ShardBlobStore:
    def __init__(self, layout: Mapping[str, DiskSpec | tuple], *, limits: Limits = DEFAULT_LIMITS,
                 rng: random.Random | None = None, code_path: str | None = None,
                 clock_us: Callable[[], int] = _now_us) -> None:
        invariant(len(layout) > 0, "a blob store needs disks")
        self.limits = limits
        self.k, self.m = limits.EC_K, limits.EC_M
        self.code = Code(self.k, self.m, path=code_path)
        self.disks: dict[DiskId, DiskSpec] = {
            DiskId(disk): spec if isinstance(spec, DiskSpec) else DiskSpec(*spec) for disk, spec in layout.items()}
        self.rng = rng or random.Random()
        self.clock_us = clock_us
        self.timeout_s = limits.SHARD_CALL_TIMEOUT_MS / 1000
        self.down: set[DiskId] = set(self.disks)        # up once a Stat answers
        self._known: dict[DiskId, Disk] = {
            disk: Disk(disk_id=disk, host=spec.host, capacity_bytes=1, up=False) for disk, spec in self.disks.items()}
        self.disk_map = self._build_map()
        self.spreader = Spreader(self.disk_map, k=self.k, m=self.m,
                                 heat_half_life_s=limits.SHARD_HEAT_HALF_LIFE_MS / 1000)
        self._batchers: dict[DiskId, _PutBatcher] = {}
        self._background: set[asyncio.Future] = set()
        self._monitor: asyncio.Task | None = None

    # ================================================================ disks

    async def start(self) -> None:
        await self.stat_round()
        self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
            self._monitor = None
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        clients = {id(spec.client): spec.client for spec in self.disks.values()}
        await asyncio.gather(*(client.close() for client in clients.values()), return_exceptions=True)

    async def _monitor_loop(self) -> None:
        interval_s = self.limits.DISK_STAT_INTERVAL_MS / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.stat_round()
            except Exception:                       # a bug; keep routing on the last map
                log.exception("DiskMonitorFailed")

    async def stat_round(self) -> None:
        """Stat every disk at once; answers refresh the map, failures mark disks down."""
        timeout_s = min(self.timeout_s, self.limits.DISK_STAT_INTERVAL_MS / 1000)

        async def one(disk: DiskId) -> None:
            spec = self.disks[disk]
            try:
                stat = await spec.client.stat(disk, timeout_s=timeout_s)
            except Exception as error:
                if disk not in self.down:
                    log.warning("DiskDown disk=%s error=%r", disk, error)
                self.down.add(disk)
                return
            if disk in self.down:
                log.info("DiskUp disk=%s", disk)
            self.down.discard(disk)
            self._known[disk] = disk_from_stat(disk, spec.host, stat)

        await asyncio.gather(*(one(disk) for disk in self.disks))
        self._refresh()

    def _build_map(self) -> DiskMap:
        return DiskMap((replace(disk, up=disk.disk_id not in self.down) for disk in self._known.values()),
                       reserve_fraction=self.limits.DISK_RESERVE_FRACTION)

    def _refresh(self) -> None:
        self.disk_map = self._build_map()
        self.spreader.refresh(self.disk_map)

    def mark_down(self, disk: DiskId, error: BaseException) -> None:
        """Route around `disk` at once (placement and reads) until a Stat answers."""
        if disk in self.down:
            return
        log.warning("DiskDown disk=%s error=%r", disk, error)
        self.down.add(disk)
        self._refresh()

    async def _call(self, disk: DiskId, call: Awaitable):
        try:
            return await call
        except _UNREACHABLE as error:
            self.mark_down(disk, error)
            raise

    def _client(self, disk: DiskId):
        return self.disks[disk].client

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._track(task)
        return task

    def _track(self, task: asyncio.Future) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        _forget(task)

    # ================================================================ write

    async def write(self, data_id: bytes, stream: AsyncIterable[bytes], size: int | None,
                    algorithms: tuple[str, ...]) -> BlobRef:
        unknown = set(algorithms) - set(CHECKSUM_ALGORITHMS)
        if unknown:
            raise ValueError(f"unknown checksum algorithms {sorted(unknown)}")
        if size is not None and size < 0:
            raise ValueError(f"negative size {size}")
        started_us = self.clock_us()
        digests = Digests(algorithms)
        source = _Source(stream, size)
        if size is None:                                # step 1: read ahead one stripe
            lookahead = self.k * self.limits.CHUNK_MAX
            head = await source.read(lookahead + 1)
            if len(head) <= lookahead:
                size = len(head)
            source.unread(head)
        if size is not None and size <= self.limits.SMALL_OBJECT_MAX:
            data = await source.read(size)
            await source.read_end()
            placement = await self._write_copies(data_id, data, digests, started_us)
        else:
            placement = await _CodedWrite(self, data_id, source, size, digests, started_us).run()
        return BlobRef(data_id=data_id, size=source.received, md5_hex=digests.md5_hex(),
                       checksums=digests.checksums(), placement=bp.encode_placement(placement))

    def _place(self, shards: int, shard_bytes: int) -> Placement:
        try:
            return self.spreader.place(shards, self.rng, shard_size_bytes=shard_bytes)
        except NoEligibleDisk as error:
            raise ServiceUnavailable(f"cannot place {shards} shards: {error}", need=shards, got=0) from None

    async def _write_copies(self, data_id: bytes, data: bytes, digests: Digests,
                            started_us: int) -> bp.BlobPlacement:
        """Step 3."""
        if len(data) <= INLINE_HASH_MAX_BYTES:
            digests.update(data)
            checksums = block_checksums(data, self.limits.CHECKSUM_BLOCK)
        else:
            checksums = await asyncio.to_thread(_hash_copy, digests, data, self.limits.CHECKSUM_BLOCK)
        count = self.m + 1
        placement = self._place(count, len(data))
        quorum = min(count, 2)
        tasks = {slot: asyncio.ensure_future(self._put_whole(placement.disks[slot], ShardId(data_id, slot), data,
                                                             checksums))
                 for slot in range(count)}
        durable, failed, late = await _settle(tasks, quorum, self.limits.PUT_HEDGE_MS / 1000)
        for task in late:
            self._track(task)
        if len(durable) < quorum:
            await self._discard(data_id, placement.disks, 1, ())
            raise ServiceUnavailable(f"{len(durable)} of {count} copies written, need {quorum}",
                                     need=quorum, got=len(durable))
        missing = sorted(failed | {slot for slot, task in tasks.items() if task in late})
        durability = _durability(placement, set(missing), 1)
        if durability < min(1, self.m):
            await self._discard(data_id, placement.disks, 1, late)
            raise ServiceUnavailable(f"{count - len(missing)} copies written in too few failure domains to survive "
                                     f"the loss of one", need=quorum, got=len(durable))
        return bp.BlobPlacement(
            scheme=bp.COPIES, k=1, m=self.m, chunk_bytes=len(data), length=len(data), segment_stripes=1,
            disks=list(placement.disks), missing=missing, survives_domain_losses=durability, generation=0,
            written_us=started_us)

    def _put_whole(self, disk: DiskId, shard: ShardId, data, checksums: list[bytes]) -> Awaitable[int]:
        """A whole shard in one frame: batched with other small puts to `disk`, else alone."""
        if len(data) <= self.limits.SMALL_OBJECT_MAX:
            batcher = self._batchers.get(disk)
            if batcher is None:
                batcher = self._batchers[disk] = _PutBatcher(self, disk)
            return batcher.put(shard, data, checksums)
        return self._call(disk, self._client(disk).put(disk, shard, data, checksums, timeout_s=self.timeout_s))

    async def _discard(self, data_id: bytes, disks: tuple[str, ...], segments: int,
                       pending: Iterable[asyncio.Future]) -> None:
        """Step 7: let in-flight puts settle, then delete every shard index the write touched."""
        pending = [task for task in pending if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=_DISCARD_TIMEOUT_S)
        width = len(disks)
        by_disk: dict[DiskId, list[ShardId]] = {}
        for slot, disk in enumerate(disks):
            by_disk.setdefault(DiskId(disk), []).extend(
                ShardId(data_id, segment * width + slot) for segment in range(segments))
        await self._delete_shards(by_disk)

    # ================================================================ delete

    async def delete(self, ref: BlobRef) -> None:
        placement = bp.decode_placement(ref.placement)
        if placement is None:
            return
        layout = bp.Layout(placement)
        by_disk: dict[DiskId, list[ShardId]] = {}
        for slot, disk in enumerate(placement.disks):
            by_disk.setdefault(DiskId(disk), []).extend(
                ShardId(ref.data_id, index) for index in layout.shard_indexes(slot))
        await self._delete_shards(by_disk)

    async def _delete_shards(self, by_disk: Mapping[DiskId, list[ShardId]]) -> None:
        """delete_many per disk, concurrently; down or failing disks are skipped (the sweep's)."""

        async def one(disk: DiskId, shards: list[ShardId]) -> None:
            if disk in self.down or disk not in self.disks:
                return
            try:
                await self._call(disk, self._client(disk).delete_many(disk, shards, timeout_s=self.timeout_s))
            except Exception as error:
                log.warning("DeleteSkipped disk=%s shards=%d error=%r", disk, len(shards), error)

        await asyncio.gather(*(one(disk, shards) for disk, shards in by_disk.items()))

    # ================================================================ read

    def read(self, ref: BlobRef, start: int, end: int) -> AsyncIterator[bytes]:
        placement = bp.decode_placement(ref.placement)
        if placement is None:
            raise BlobNotFound(f"{ref.data_id.hex()}: not a shard placement")
        if not 0 <= start <= end <= ref.size or placement.length != ref.size:
            raise ValueError(f"range [{start}, {end}) outside a blob of {ref.size} bytes")
        reader = _Reader(self, ref.data_id, placement)
        return reader.copies(start, end) if reader.layout.copies else reader.coded(start, end)


def _hash_copy(digests: Digests, data: bytes, block: int) -> list[bytes]:
    digests.update(data)
    return block_checksums(data, block)


def _durability(placement: Placement, missing: set[int], needed: int) -> int:
    """survives_domain_losses over the slots actually written (DESIGN §7, degraded)."""
    counts: dict[str, int] = {}
    for slot, domain in enumerate(placement.domains):
        if slot not in missing:
            counts[domain] = counts.get(domain, 0) + 1
    written = len(placement.disks) - len(missing)
    return survivable_domain_losses(counts.values(), max(0, written - needed))


async def _settle(tasks: Mapping[int, asyncio.Future], quorum: int,
                  hedge_s: float) -> tuple[dict[int, Any], set[int], set[asyncio.Future]]:
    """Step 6: wait until every task is done, or `hedge_s` after `quorum` succeeded, or
    until `quorum` is out of reach. Returns (slot -> result, failed slots, tasks still
    running — the caller cancels or tracks them)."""
    slot_of = {task: slot for slot, task in tasks.items()}
    durable: dict[int, Any] = {}
    failed: set[int] = set()
    pending = set(tasks.values())
    quorum_at: float | None = None
    loop = asyncio.get_running_loop()
    while pending:
        timeout = None if quorum_at is None else max(0.0, quorum_at + hedge_s - loop.time())
        done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            break
        for task in done:
            slot = slot_of[task]
            if task.cancelled() or task.exception() is not None:
                failed.add(slot)
            else:
                durable[slot] = task.result()
        if quorum_at is None and len(durable) >= quorum:
            quorum_at = loop.time()
        if len(durable) + len(pending) < quorum:
            break
    return durable, failed, pending


class _Source:
    """The body stream, read in exact amounts, checked against the declared size."""

    def __init__(self, stream: AsyncIterable[bytes], size: int | None) -> None:
        self._iterator = aiter(stream)
        self._size = size
        self._pieces: collections.deque = collections.deque()
        self._buffered = 0
        self.received = 0       # bytes taken from the stream
        self.ended = False

    async def _pull(self) -> bool:
        try:
            chunk = await anext(self._iterator)
        except StopAsyncIteration:
            self.ended = True
            if self._size is not None and self.received != self._size:
                raise ValueError(f"stream gave {self.received} bytes, {self._size} declared") from None
            return False
        if chunk:
            if type(chunk) is not bytes:
                chunk = bytes(chunk)     # its owner may reuse the buffer
            self.received += len(chunk)
            if self._size is not None and self.received > self._size:
                raise ValueError(f"stream is longer than the declared {self._size} bytes")
            self._pieces.append(chunk)
            self._buffered += len(chunk)
        return True

    async def read(self, count: int):
        """Exactly `count` bytes, fewer only at the end of the stream (a bytes-like)."""
        while self._buffered < count and not self.ended:
            await self._pull()
        if not self._pieces:
            return b""
        if len(self._pieces) == 1 and len(self._pieces[0]) <= count:
            data = self._pieces.popleft()
        else:
            data = b"".join(self._pieces)
            self._pieces.clear()
            if len(data) > count:
                self._pieces.append(memoryview(data)[count:])
                data = memoryview(data)[:count]
        self._buffered -= len(data)
        return data

    async def read_end(self) -> None:
        """The stream must end here (ValueError if it gives more than declared)."""
        if self._buffered:
            raise ValueError("stream is longer than its declared size")
        while not self.ended:
            await self._pull()
            if self._buffered:
                raise ValueError("stream is longer than its declared size")

    def unread(self, data) -> None:
        if len(data):
            self._pieces.appendleft(data)
            self._buffered += len(data)
        if self.ended and self._size is None:
            self._size = self.received


class _PutBatcher:
    """Small whole shards bound for one disk: one `put_many` in flight; what arrives
    meanwhile goes in the next (no timers), up to SMALL_PUT_BATCH_MAX(_BYTES)."""

    def __init__(self, store: ShardBlobStore, disk: DiskId) -> None:
        self.store, self.disk = store, disk
        self._queue: collections.deque = collections.deque()
        self._running = False

    def put(self, shard: ShardId, data, checksums: list[bytes]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((shard, data, checksums, future))
        if not self._running:
            self._running = True
            self.store._spawn(self._run())
        return future

    async def _run(self) -> None:
        limits = self.store.limits
        items_max = min(limits.SMALL_PUT_BATCH_MAX, MANY_ITEMS_MAX)
        bytes_max = min(limits.SMALL_PUT_BATCH_MAX_BYTES, MANY_PAYLOAD_MAX_BYTES)
        try:
            while self._queue:
                batch, batch_bytes = [], 0
                while self._queue and len(batch) < items_max and (
                        not batch or batch_bytes + len(self._queue[0][1]) <= bytes_max):
                    item = self._queue.popleft()
                    batch.append(item)
                    batch_bytes += len(item[1])
                client = self.store._client(self.disk)
                try:
                    outcomes = await self.store._call(self.disk, client.put_many(
                        self.disk, [(shard, data, checksums) for shard, data, checksums, _ in batch],
                        timeout_s=self.store.timeout_s))
                except BaseException as error:
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(error if isinstance(error, Exception) else ConnectionLost("cancelled"))
                    if not isinstance(error, Exception):
                        raise
                    continue
                for (*_, future), outcome in zip(batch, outcomes):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._running = False
            for *_, future in self._queue:       # cancelled with items queued: fail them
                if not future.done():
                    future.set_exception(ConnectionLost("blob store closed"))
            self._queue.clear()


# ==================================================================== coded write


class _Slot:
    """One of the k+m shard positions of a coded write, across its segments."""

    __slots__ = ("index", "disk", "writer", "failed")

    def __init__(self, index: int, disk: DiskId) -> None:
        self.index, self.disk = index, disk
        self.writer = None          # the open ShardWriter of the current segment, if streamed
        self.failed = False


class _CodedWrite:
    """Steps 4–8 for one RS write."""

    def __init__(self, store: ShardBlobStore, data_id: bytes, source: _Source, size: int | None,
                 digests: Digests, started_us: int) -> None:
        limits = store.limits
        self.store, self.data_id, self.source, self.size = store, data_id, source, size
        self.digests, self.started_us = digests, started_us
        self.k, self.m = store.k, store.m
        self.width = self.k + self.m
        self.quorum = self.k + 1 if self.m else self.k
        self.hedge_s = limits.PUT_HEDGE_MS / 1000
        self.block = limits.CHECKSUM_BLOCK
        if size is not None:
            self.chunk = min(limits.CHUNK_MAX, -(-size // self.k))
            self.segment_stripes = max(1, limits.SHARD_MAX_BYTES // self.chunk)
        else:
            self.chunk = limits.CHUNK_MAX
            self.segment_stripes = 1
        self.stripe_bytes = self.k * self.chunk
        self.placement: Placement | None = None
        self.slots: list[_Slot] = []
        self.segments_opened = 0
        self.finishing: collections.deque[asyncio.Task] = collections.deque()
        self.in_flight: set[asyncio.Future] = set()     # every put/write/finish not yet settled
        self.segment_bytes = 0      # blob bytes of the open segment (known size) ...
        self.segment_single = False  # ... and whether its shards go whole (one stripe)

    async def run(self) -> bp.BlobPlacement:
        expected_shard = -(-self.size // self.k) if self.size is not None else self.chunk
        self.placement = self.store._place(self.width, min(expected_shard, self.store.limits.SHARD_MAX_BYTES))
        self.slots = [_Slot(index, disk) for index, disk in enumerate(self.placement.disks)]
        try:
            await self._pipeline()
            while self.finishing:
                await self.finishing.popleft()
            self._check_quorum()
        except BaseException as error:
            await self._fail(error)
            raise
        missing = sorted(slot.index for slot in self.slots if slot.failed)
        return bp.BlobPlacement(
            scheme=bp.RS, code_id=self.store.code.code_id, k=self.k, m=self.m, chunk_bytes=self.chunk,
            length=self.source.received, segment_stripes=self.segment_stripes, disks=list(self.placement.disks),
            missing=missing, survives_domain_losses=_durability(self.placement, set(missing), self.k),
            generation=0, written_us=self.started_us)

    async def _fail(self, error: BaseException) -> None:
        for task in self.finishing:
            task.cancel()
        for slot in self.slots:
            if slot.writer is not None:
                self.in_flight.add(self.store._spawn(slot.writer.abort()))
                slot.writer = None
        discard = self.store._spawn(self.store._discard(self.data_id, self.placement.disks, self.segments_opened,
                                                        list(self.in_flight)))
        if not isinstance(error, asyncio.CancelledError):
            await discard

    def _check_quorum(self) -> None:
        live = sum(not slot.failed for slot in self.slots)
        if live < self.quorum:
            raise ServiceUnavailable(f"{live} of {self.width} shards written, need {self.quorum}",
                                     need=self.quorum, got=live)
        missing = {slot.index for slot in self.slots if slot.failed}
        if _durability(self.placement, missing, self.k) < min(1, self.m):
            raise ServiceUnavailable(f"{live} shards written in too few failure domains to survive the loss of one",
                                     need=self.quorum, got=live)

    def _drop(self, slot: _Slot, why: str) -> None:
        if slot.failed:
            return
        log.warning("ShardSlotDropped data_id=%s slot=%d disk=%s why=%s", self.data_id.hex(), slot.index,
                    slot.disk, why)
        slot.failed = True
        if slot.writer is not None:
            self.store._spawn(slot.writer.abort())
            slot.writer = None

    # ------------------------------------------------------------------ step 4

    def _stripe_length(self, stripe: int) -> int:
        if self.size is None:
            return self.stripe_bytes
        return max(0, min(self.stripe_bytes, self.size - stripe * self.stripe_bytes))

    async def _pipeline(self) -> None:
        stripe = 0
        data = await self._receive(0)
        pending = self._start_pass(data) if len(data) else None
        while pending is not None:
            following = await self._receive(stripe + 1)
            pieces, checksums, stripe_bytes = await pending
            pending = self._start_pass(following) if len(following) else None
            await self._send(stripe, pieces, checksums, stripe_bytes, last=pending is None)
            stripe += 1

    async def _receive(self, stripe: int):
        """Stripe `stripe`'s bytes (short or empty at the end); after the last one the
        stream must end (ValueError otherwise, and on any size mismatch)."""
        length = self._stripe_length(stripe)
        data = await self.source.read(length) if length else b""
        if not len(data) or (self.size is not None and self._stripe_length(stripe + 1) == 0):
            await self.source.read_end()
        return data

    def _start_pass(self, data) -> asyncio.Future:
        return asyncio.ensure_future(asyncio.to_thread(
            _stripe_pass, self.digests, self.store.code, data, self.k, self.chunk, self.block))

    # ------------------------------------------------------------------ steps 5, 6

    async def _send(self, stripe: int, pieces: list, checksums: list[list[bytes]], stripe_bytes: int,
                    last: bool) -> None:
        if stripe % self.segment_stripes == 0:
            await self._open_segment(stripe, stripe_bytes)
        segment = stripe // self.segment_stripes
        end_of_segment = last or (stripe + 1) % self.segment_stripes == 0
        if self.segment_single:
            tasks = {slot.index: asyncio.ensure_future(self.store._put_whole(
                slot.disk, ShardId(self.data_id, segment * self.width + slot.index), pieces[slot.index],
                checksums[slot.index])) for slot in self.slots if not slot.failed}
            self.in_flight.update(tasks.values())
            self._finish_later(self._settle_segment(tasks))
            return
        tasks = {slot.index: asyncio.ensure_future(slot.writer.write(pieces[slot.index], checksums[slot.index]))
                 for slot in self.slots if not slot.failed and len(pieces[slot.index])}
        self.in_flight.update(tasks.values())
        await self._settle_slots(tasks, "write")
        if end_of_segment:
            finishes = {}
            for slot in self.slots:
                if not slot.failed:
                    finishes[slot.index] = asyncio.ensure_future(slot.writer.finish())
                    slot.writer = None
            self.in_flight.update(finishes.values())
            self._finish_later(self._settle_segment(finishes))

    async def _open_segment(self, stripe: int, stripe_bytes: int) -> None:
        segment = stripe // self.segment_stripes
        if self.size is not None:
            segment_bytes = min(self.segment_stripes * self.stripe_bytes, self.size - stripe * self.stripe_bytes)
        else:
            segment_bytes = stripe_bytes
        self.segment_single = segment_bytes <= self.stripe_bytes
        while len(self.finishing) >= _SEGMENTS_FINISHING:
            await self.finishing.popleft()
        self._check_quorum()
        self.segments_opened = segment + 1
        if self.segment_single:
            return
        lengths = bp.segment_shard_lengths(self.k, self.m, self.chunk, segment_bytes)
        for slot in self.slots:
            if not slot.failed:
                client = self.store._client(slot.disk)
                try:
                    slot.writer = client.open_put(slot.disk, ShardId(self.data_id, segment * self.width + slot.index),
                                                  lengths[slot.index], timeout_s=self.store.timeout_s)
                except Exception as error:
                    self._drop(slot, repr(error))

    def _finish_later(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self.finishing.append(task)

    async def _settle_segment(self, tasks: dict[int, asyncio.Future]) -> None:
        await self._settle_slots(tasks, "finish")
        self._check_quorum()

    async def _settle_slots(self, tasks: dict[int, asyncio.Future], what: str) -> None:
        durable, failed, late = await _settle(tasks, self.quorum, self.hedge_s)
        for index in failed:
            task = tasks[index]
            error = task.exception() if not task.cancelled() else "cancelled"
            if isinstance(error, _UNREACHABLE):
                self.store.mark_down(self.slots[index].disk, error)
            self._drop(self.slots[index], f"{what} failed: {error!r}")
        reached = len(durable) >= self.quorum
        for index, task in tasks.items():
            if task in late:
                task.cancel()
                self._drop(self.slots[index], f"{what} slower than PUT_HEDGE_MS after {self.quorum} shards"
                           if reached else f"{what} abandoned: {self.quorum} shards out of reach")
        self.in_flight.difference_update(tasks.values())
        for task in late:
            self.store._track(task)
        self._check_quorum()


def _stripe_pass(digests: Digests, code: Code, stripe, k: int, chunk: int, block: int):
    """Step 4's worker-thread pass over one stripe: MD5 and checksums, parity, block
    xxh3s. Returns (k+m pieces as stored, their block checksums, stripe length)."""
    digests.update(stripe)
    view = memoryview(stripe)
    length = view.nbytes
    parity_length = min(chunk, length)
    data = [view[index * chunk:min((index + 1) * chunk, length)] for index in range(k)]
    parity = code.encode(stripe_chunks(view, k, parity_length))
    pieces = data + parity
    return pieces, [block_checksums(piece, block) for piece in pieces], length


# ==================================================================== read


class _Reader:
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
        disk = self.disks[slot]
        if disk in self.store.down:
            self.unreachable = True
            raise ConnectionLost(f"disk {disk} is down")
        try:
            return await self.store._call(disk, self.store._client(disk).get(
                disk, ShardId(self.data_id, shard_index), start, end, timeout_s=self.store.timeout_s))
        except _UNREACHABLE:
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
                _forget(task)
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
                _forget(task)

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
        if not plan.decode:
            offset = layout.chunk_offset(stripe)
            tasks = {}
            for slot in wanted:
                lo, hi = max(low, slot * chunk) - slot * chunk, min(high, (slot + 1) * chunk) - slot * chunk
                tasks[slot] = (lo, hi, asyncio.ensure_future(
                    self._get(slot, layout.shard_index(stripe, slot), offset + lo, offset + hi)))
            done, pending = await asyncio.wait([task for *_, task in tasks.values()], timeout=self.hedge_s)
            if not pending and all(task.exception() is None for task in done):
                return [task.result() for *_, task in tasks.values()]
            for slot, (lo, hi, task) in tasks.items():
                if task in pending:
                    task.cancel()
                    _forget(task)
                    excluded.add(slot)           # slow: decode around it (it may come back below)
                elif task.exception() is not None:
                    excluded.add(slot)
                elif lo == 0 and hi == layout.chunk_length(stripe, slot):
                    have[slot] = task.result()  # a whole chunk: usable for the decode
        return await self._decode(stripe, low, high, excluded, have)

    async def _decode(self, stripe: int, low: int, high: int, excluded: set[int], have: dict[int, Any]) -> list:
        layout = self.layout
        k, chunk = layout.k, layout.chunk_bytes
        length = layout.chunk_length(stripe, layout.k)       # the parity (and padded) length
        offset = layout.chunk_offset(stripe)
        for slot in range(k):
            if layout.chunk_length(stripe, slot) == 0:
                have[slot] = b""                # past the blob's end: zeros, known without a read
        candidates = [slot for slot in self._order(range(layout.slots), excluded | set(have))]
        # Slots excluded only for slowness come back last, rather than failing the read.
        retry = [slot for slot in self._order(range(layout.slots), set(self.missing) | set(have))
                 if slot in excluded]
        failed: set[int] = set()
        running: dict[asyncio.Future, int] = {}

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

        try:
            while len(have) < k:
                while len(have) + len(running) < k and launch():
                    pass
                if not running:
                    raise self._unreadable(k, len(have))
                done, _ = await asyncio.wait(running, timeout=self.hedge_s, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    launch()                     # a hedge: one more shard
                    continue
                for task in done:
                    slot = running.pop(task)
                    if task.cancelled() or task.exception() is not None:
                        failed.add(slot)
                    else:
                        have[slot] = task.result()
        finally:
            for task in running:
                task.cancel()
                _forget(task)
        shards = {slot: _padded(data, length) for slot, data in have.items()}
        data = await asyncio.to_thread(self.store.code.decode, shards, length)
        pieces = []
        for slot in range(low // chunk, (high - 1) // chunk + 1):
            lo, hi = max(low, slot * chunk) - slot * chunk, min(high, (slot + 1) * chunk) - slot * chunk
            pieces.append(memoryview(data[slot])[lo:hi])
        return pieces


def _as_bytes(piece):
    """Bytes as the seam promises (a client may hand back views; a slice of a decoded
    chunk is one): a copy only then."""
    return piece if type(piece) is bytes else bytes(piece)


def _padded(data, length: int):
    size = len(data)
    if size == length:
        return data
    invariant(size < length, "a data chunk is never longer than the stripe's parity")
    return bytes(data) + bytes(length - size)

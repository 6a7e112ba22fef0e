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
   disk's `PutBatcher`: concurrent small puts bound for one disk ride one `put_many`
   frame (one fsync); whatever arrives while a call is in flight goes in the next.
4. RS, stripe by stripe (memory: the stripe being received, the one on the worker
   thread, the one being sent, plus the clients' windows and at most
   SEGMENTS_FINISHING segments finishing): receive stripe t+1 while a worker
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
- Every shard read of at most SMALL_OBJECT_MAX bytes goes to its disk's `GetBatcher`
  (blob_read.py): concurrent small reads bound for one disk ride one `get_many`
  frame, each with its own outcome; whatever arrives while a call is in flight goes
  in the next. A larger read is a `get` of its own.
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

Modules: this one holds the store (disks, monitor, routing, copies, delete);
blob_write.py the body reader, the small-put batcher, the degraded-write wait and
the RS write; blob_read.py the small-get batcher and the reader.

Costs on this path (DESIGN §13; RS 4+2, 1 MiB chunks, 3 copies). Messages and fsyncs
by construction; CPU measured by bench/ec_blob_bench.py (six disks in two
`cairn shardstore` processes, no HTTP, a busy 2-core box, load average ~6):
- 64 KiB PUT (3 copies): 3 shard messages — one entry each in a `put_many` frame to
  three disks, shared with whatever else is queued for those disks — and 3 fsyncs,
  each shared by its disk's group commit (~7 records per fsync at 32 in flight).
  CPU: store ~0.34 ms (MD5 of 64 KiB on the loop, one xxh3 block list, three
  entries' framing), nodes ~0.44 ms; ~1,000 PUT/s at 32 in flight.
- 64 MiB PUT (RS 4+2): one segment of 16 stripes; 6 `open_put` streams of 16 MiB:
  6 opens + 96 piece frames of 1 MiB (window 4 per shard) ≈ 102 requests; each node
  writes its shard in 1 MiB steps with an fsync each (96 fsyncs in all). CPU: store
  ~3.1 ms per MiB of object (MD5 ~1.9, parity + xxh3 ~0.45, framing the rest), nodes
  ~5.0 ms per MiB of object (1.5 MiB of shards); ~100 MiB/s on one stream here.
- GET of n bytes (RS): one `get` per data chunk the range touches (64 MiB: 64 frames
  of ≤ 1 MiB, no decode, no fsync); CPU store ~0.7 ms/MiB (checksum checks, framing),
  nodes ~0.9 ms/MiB; ~560 MiB/s. Degraded (two data disks down): 4 whole chunks per
  stripe from 2 data + 2 parity and an ISA-L decode, ~0.9 ms/MiB in the store.
  A copies GET: one `get` of the range (store ~95 µs, nodes ~125 µs at 64 KiB), or
  under concurrency one entry in a `get_many` frame shared with the other small
  reads of that disk. Measured at 64 KiB, 32 in flight, against every read a `get`
  of its own: less store CPU (83-100 against 96-118 µs), more in the nodes (104-122
  against 87-109 µs), reads/s within this box's noise; no gain shown through S3
  either (bench/s3_bench.py get64k32).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping

from common import blob_placement as bp
from common.checksums import Digests
from common.erasure import Code
from common.errors import BlobNotFound, InsufficientStorage, ServiceUnavailable, invariant
from common.limits import DEFAULT_LIMITS, Limits
from common.placement import Disk, DiskId, DiskMap, NoEligibleDisk, Placement, Spreader, disk_from_stat
from common.seams import CHECKSUM_ALGORITHMS, BlobRef
from shardstore.blob_read import GetBatcher, Reader
from shardstore.blob_write import UNREACHABLE, CodedWrite, PutBatcher, Source, durability, forget, settle
from shardstore.format import ShardId, block_checksums
from shardstore.node import DiskFull

log = logging.getLogger("cairn.blobs")

INLINE_HASH_MAX_BYTES = 64 * 1024   # hash a copies body on the loop below this (a thread hop costs more)
_DISCARD_TIMEOUT_S = 5.0            # how long a failed write waits for its puts to settle before deleting


@dataclass(frozen=True)
class DiskSpec:
    """One disk of the layout: the client of the process serving it, and its failure domain."""

    client: Any            # shardstore.client.ShardClient
    host: str | None = None


def _now_us() -> int:
    return time.time_ns() // 1000


def layout_limits(layout, limits: Limits) -> Limits:
    """The limits a BlobStore over `layout` (common/layout.DataLayout) runs with: its EC parameters."""
    return replace(limits, EC_K=layout.k, EC_M=layout.m)


def disk_specs(layout, limits: Limits, clients: dict | None = None) -> dict[str, DiskSpec]:
    """Every disk of `layout` (`out` ones too: the store treats them as down) with the
    client of the shardstore process serving it — one ShardClient per data address,
    taken from `clients` when it has one and added to it otherwise."""
    from shardstore.client import ShardClient

    clients = {} if clients is None else clients
    specs = {}
    for disk in layout.disks(include_out=True):
        if disk.data_address not in clients:
            clients[disk.data_address] = ShardClient(disk.data_address, limits=limits)
        specs[disk.id] = DiskSpec(clients[disk.data_address], disk.domain)
    return specs


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
        self.out: set[DiskId] = set()                   # removed for good: never placed on nor read
        self._known: dict[DiskId, Disk] = {
            disk: Disk(disk_id=disk, host=spec.host, capacity_bytes=1, up=False) for disk, spec in self.disks.items()}
        self.disk_map = self._build_map()
        self.spreader = Spreader(self.disk_map, k=self.k, m=self.m,
                                 heat_half_life_s=limits.SHARD_HEAT_HALF_LIFE_MS / 1000)
        self._put_batchers: dict[DiskId, PutBatcher] = {}
        self._get_batchers: dict[DiskId, GetBatcher] = {}
        self._background: set[asyncio.Future] = set()
        self._monitor: asyncio.Task | None = None
        # What reads did, for benchmarks and metrics: stripes served as stored, stripes
        # decoded, and extra shard reads started by a hedge.
        self.counters: dict[str, int] = {"stripes_direct": 0, "stripes_decoded": 0, "read_hedges": 0}

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

    def set_layout(self, layout: Mapping[str, DiskSpec], out: Iterable[str] = ()) -> None:
        """The layout changed (`cairn disk add/remove`): new disks join, down until their
        first Stat answers; disks marked out count as down from now on — nothing is
        placed on them and reads decode around them while repair moves their shards."""
        for disk, spec in layout.items():
            if DiskId(disk) not in self.disks:
                log.info("DiskAdded disk=%s", disk)
                self.disks[DiskId(disk)] = spec
                self.down.add(DiskId(disk))
                self._known[DiskId(disk)] = Disk(disk_id=DiskId(disk), host=spec.host, capacity_bytes=1, up=False)
        for disk in set(out) - self.out:
            log.info("DiskOut disk=%s", disk)
        self.out = {DiskId(disk) for disk in out}
        self._refresh()

    def _build_map(self) -> DiskMap:
        return DiskMap((replace(disk, up=disk.disk_id not in self.down and disk.disk_id not in self.out)
                        for disk in self._known.values()),
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
        except UNREACHABLE as error:
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
        forget(task)

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
        source = Source(stream, size)
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
            placement = await CodedWrite(self, data_id, source, size, digests, started_us).run()
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
        try:
            durable, failed, late = await settle(tasks, quorum, self.limits.PUT_HEDGE_MS / 1000)
        except BaseException:               # cancelled (the client went away): keep nothing (step 7)
            self._spawn(self._discard(data_id, placement.disks, 1, list(tasks.values())))
            raise
        for task in late:
            self._track(task)
        if len(durable) < quorum:
            await self._discard(data_id, placement.disks, 1, ())
            full = any(isinstance(tasks[slot].exception(), DiskFull) for slot in failed if not tasks[slot].cancelled())
            raise (InsufficientStorage if full else ServiceUnavailable)(
                f"{len(durable)} of {count} copies written, need {quorum}", need=quorum, got=len(durable))
        missing = sorted(failed | {slot for slot, task in tasks.items() if task in late})
        survives = durability(placement, set(missing), 1)
        if survives < min(1, self.m):
            await self._discard(data_id, placement.disks, 1, late)
            raise ServiceUnavailable(f"{count - len(missing)} copies written in too few failure domains to survive "
                                     f"the loss of one", need=quorum, got=len(durable))
        return bp.BlobPlacement(
            scheme=bp.COPIES, k=1, m=self.m, chunk_bytes=len(data), length=len(data), segment_stripes=1,
            disks=list(placement.disks), missing=missing, survives_domain_losses=survives, generation=0,
            written_us=started_us)

    def _put_whole(self, disk: DiskId, shard: ShardId, data, checksums: list[bytes]) -> Awaitable[int]:
        """A whole shard in one frame: batched with other small puts to `disk`, else alone."""
        if len(data) <= self.limits.SMALL_OBJECT_MAX:
            batcher = self._put_batchers.get(disk)
            if batcher is None:
                batcher = self._put_batchers[disk] = PutBatcher(self, disk)
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

    def _get_batcher(self, disk: DiskId) -> GetBatcher:
        """The disk's small-read batcher, made on its first read (like the put batchers)."""
        batcher = self._get_batchers.get(disk)
        if batcher is None:
            batcher = self._get_batchers[disk] = GetBatcher(self, disk)
        return batcher

    def read(self, ref: BlobRef, start: int, end: int) -> AsyncIterator[bytes]:
        placement = bp.decode_placement(ref.placement)
        if placement is None:
            raise BlobNotFound(f"{ref.data_id.hex()}: not a shard placement")
        if not 0 <= start <= end <= ref.size or placement.length != ref.size:
            raise ValueError(f"range [{start}, {end}) outside a blob of {ref.size} bytes")
        reader = Reader(self, ref.data_id, placement)
        return reader.copies(start, end) if reader.layout.copies else reader.coded(start, end)


def _hash_copy(digests: Digests, data: bytes, block: int) -> list[bytes]:
    digests.update(data)
    return block_checksums(data, block)

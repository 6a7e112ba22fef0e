"""One shardstore node: one disk's shards in append-only extents plus a RocksDB index.

Layout (DESIGN §9, formats in `shardstore.format`): records are appended to open
extents ("heads"). Small puts (the whole shard in one message) and tombstones share
one head and one group commit; a streamed put or a compaction copy holds a head of
its own while its record is written in SHARD_WRITE_STEP_BYTES steps (O_DIRECT where
the disk allows, below), so a record is always contiguous. The index
(`shardstore.index`) is the durable state as of its last checkpoint plus an
in-memory overlay; the extents are the source of truth.

Write path, the steps the code cites:
1. Check the request and admit it: RESOURCE_EXHAUSTED if its record would eat into
   the reserve (max(DISK_RESERVE_FRACTION of the disk, 2 extents), kept for
   compaction); nothing is written then.
2. Append the record (header, data, trailer with the next seq) to a head.
3. Queue it for the committer, which fsyncs every dirty extent once for everything
   queued (group commit), then applies the queued records in seq order through
   `format.apply_rule`, making them visible, and answers each. Nothing is
   acknowledged or visible before its record is durable. Batching, without timers:
   the next batch gathers while one is being synced, and before taking a batch the
   committer yields to the loop while records are still joining it (at most
   _GATHER_YIELDS_MAX turns). On a real disk the fsyncs run on one thread of their
   own (`_Syncer`): one hand-off and one loop wake-up per batch.
4. Now and then (SHARD_INDEX_FLUSH_ENTRIES / _MS) the overlay is written to RocksDB
   in one synced batch with the checkpoint it covers.

Streamed records and O_DIRECT (`_append_streamed`). A large shard's record is written
as the stream arrives, cut by file offset, never by the format (a record is the same
bytes however it was cut, so extents stay format version 1, readable by older code):
  a. the header and the first data bytes up to the first offset aligned to the disk's
     `direct_alignment` (4 KiB) past the header: one small buffered write, made when
     the first whole step is ready;
  b. whole steps of SHARD_WRITE_STEP_BYTES (cut down to a multiple of the alignment)
     with `disk.write_direct` (O_DIRECT) from page-aligned anonymous mmaps: two per
     stream, one filling from the received pieces while the other is written on a
     thread, kept in a small pool for the next stream. No fdatasync per step: O_DIRECT
     leaves nothing in the page cache to bound (measured: one per step gained
     nothing and was slightly slower with 4 streams);
  c. the aligned part of what is left, direct, and then one fdatasync (it also makes
     durable the block allocations and file size the direct writes changed), so that
     every data byte is durable before the trailer that completes the record is
     written: a crash can tear the record's end, never leave a complete trailer over
     data that did not land;
  d. the last bytes (fewer than the alignment) and the trailer: one buffered write;
     the group commit's fdatasync (step 3) makes it durable before the ack.
A stream that ends before a whole step is one buffered write (a then d), as before. A
disk without O_DIRECT (`direct_alignment` 0) gets whole steps buffered, each followed
by an fdatasync, so the page cache never holds a whole shard.
Block checksums are computed from the received pieces (`format.BlockChecksummer`) and
checked against the sender's as each piece arrives, independent of the cuts.
What the cuts rely on, for the page cache: a direct write covers only whole pages past
the last buffered byte of its record, and no buffered write touches its pages later
(the next record starts past this one's buffered trailer; an aborted record is cut off
by ftruncate, which drops its pages from the cache, before the offsets are reused). So
a page is written either buffered or direct, never both. Linux would keep a mix
coherent anyway (an O_DIRECT write first writes back, then invalidates, the cached
pages of its range), only slower. A crash before the trailer is durable leaves a torn
record, cut off by recovery like any other; a direct write, like a buffered one, is
durable only once fdatasync returns. Reads of more than 256 KiB go direct the first
time (`disk.read_direct`, the aligned pages around the range: streamed shards are not
in the page cache, and a cold read through it costs ~2 ms of CPU per MiB here) and
through the page cache when the same range is read again soon (`_read_again`), so
hot objects are served from memory: on the event loop when every byte is cached
(`disk.read_cached`, which never waits for the disk), else on a thread.

Recovery (`Node.open`): read the checkpoint; scan every extent from the offset the
checkpoint covers; a record whose header or trailer fails its check ends that
extent (a torn or aborted tail, cut off); fsync what remains past the checkpoint
(complete records may have survived the crash unsynced, and a later crash must not
lose what recovery applied); replay the complete records in seq order through the
same `apply_rule`; flush. Each replayed record's data is checked against its block
checksums, read in SHARD_WRITE_STEP pieces; rot in the copy the index ends up
pointing at is a finding, as the scrubber's are. A put whose record did not survive
was never acknowledged; a tombstone acknowledged is durable, so the delete survives.

Compaction, three separately crash-safe steps: `compact_copy` appends a COPY record
naming the source location of each live shard of a mostly-dead extent, and the
rule switches the index entry only if it still points at that source (a CAS, also
at replay); `compact_drop` flushes the index (so no durable entry and no record
still to be replayed names the extent) and then removes the file. A copy is a
streamed record (`_append_copy`: the source read in steps, direct, on a thread), so
compaction neither stalls the loop nor holds a whole shard. `compact_forever` runs a
pass every SHARD_COMPACT_INTERVAL_MS, its reads paced to SHARD_COMPACT_BYTES_PER_S,
so deleted and overwritten shards give their space back unasked.

Invariants:
- A record is visible only after the fsync covering it; `seq` order = apply order.
- `covered[e]` = end of the last applied record of extent e; every record below it
  is applied, every record above it is not.
- `live_bytes[e]` = sum of record sizes of the index entries pointing into e.
- Every byte returned by a read passed its block's xxh3-128 check; a mismatch is
  a `ShardCorrupt` error and a scrub finding, never data.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import mmap
import queue
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator

import xxhash

from common.errors import invariant
from common.limits import DEFAULT_LIMITS, Limits
from shardstore import format as fmt
from shardstore.disk import Disk, aligned_buffer
from shardstore.format import Entry, Header, Location, ShardId
from shardstore.heat import Heat
from shardstore.index import Index

log = logging.getLogger("cairn.shardstore")

_FREE_BYTES_TTL_S = 0.05        # how stale admission's view of free space may get
_GATHER_YIELDS_MAX = 8          # loop turns a group commit may wait for more records
_STEP_BUFFERS_KEPT = 8          # idle page-aligned step buffers a node keeps for the next streams
_RECENT_READS_MAX = 4096        # large reads remembered, to send a second one through the page cache


class ShardStoreError(Exception):
    """A refusal with a gRPC status name in `status`."""

    status = "INTERNAL"


class ShardNotFound(ShardStoreError):
    status = "NOT_FOUND"


class ShardExists(ShardStoreError):
    status = "ALREADY_EXISTS"


class ShardCorrupt(ShardStoreError):
    status = "DATA_LOSS"


class DiskFull(ShardStoreError):
    status = "RESOURCE_EXHAUSTED"


class TooBusy(ShardStoreError):
    status = "RESOURCE_EXHAUSTED"


class BadShardRequest(ShardStoreError):
    status = "INVALID_ARGUMENT"


class UnknownDisk(BadShardRequest):
    """A request named a disk this process does not serve (the message names those it does)."""


ERRORS: dict[str, type[ShardStoreError]] = {error.__name__: error for error in (
    ShardStoreError, ShardNotFound, ShardExists, ShardCorrupt, DiskFull, TooBusy, BadShardRequest, UnknownDisk)}


@dataclass
class _Head:
    extent: int
    size: int


@dataclass
class _Queued:
    seq: int
    header: Header
    entry: Entry | None
    extent: int
    end: int
    future: asyncio.Future
    head: _Head | None = None          # a stream head to release once applied


@dataclass
class Stats:
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    live_bytes: int
    fill_ratio: float
    extent_count: int
    read_bytes_per_s: float
    write_bytes_per_s: float
    read_ops_per_s: float
    write_ops_per_s: float
    in_flight: int
    corrupt_count: int
    commit_batches: int
    committed_records: int


def _now_us() -> int:
    return time.time_ns() // 1000


def _verify_checksums(computed: list[bytes], expected, verified: int) -> int:
    """Compare the block checksums computed since `verified` with the sender's; returns
    how many are verified. The sender's arrive no later than their bytes."""
    count = len(computed)
    if count > verified and list(expected[verified:count]) != computed[verified:count]:
        raise BadShardRequest("block checksum mismatch: bytes damaged in transit")
    return count


def _close_buffer(buffer: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):     # still exported: the garbage collector frees it
        buffer.close()


class _Syncer:
    """The group commit's fsyncs, on one thread of its own: one hand-off and one
    wake-up of the loop per batch, however many extents it syncs (no executor,
    no context copy, no future chaining)."""

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="cairn-shardstore-sync", daemon=True)
        self._thread.start()

    def sync(self, names: list[str]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._requests.put((names, loop, future))
        return future

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (request := self._requests.get()) is not None:
            names, loop, future = request
            error = None
            try:
                for name in names:
                    self.disk.sync(name)
            except Exception as raised:        # OSError, or a bug: the committer raises it
                error = raised
            try:
                loop.call_soon_threadsafe(_settle, future, error)
            except RuntimeError:
                pass                            # the loop is closed: nobody waits


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return                                  # cancelled (the node was abandoned)
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Node:
    """Use `await Node.open(...)`; `close()` (clean) or `abandon()` (a simulated crash)."""

    def __init__(self, disk: Disk, index: Index, limits: Limits, clock_us: Callable[[], int]) -> None:
        self.disk = disk
        self.index = index
        self.limits = limits
        self.clock_us = clock_us
        self.seq = 0
        self.next_extent = 0
        self.extent_sizes: dict[int, int] = {}
        self.covered: dict[int, int] = {}
        self.live_bytes: dict[int, int] = {}
        self.corrupt: dict[ShardId, str] = {}
        self.heat = Heat(limits.SHARD_HEAT_HALF_LIFE_MS / 1000)
        self.in_flight = 0
        self.streams = 0
        self._small_head: _Head | None = None
        self._idle_heads: list[_Head] = []
        self._busy_heads: set[int] = set()
        self._dirty: set[int] = set()
        self._queue: list[_Queued] = []
        self._wake = asyncio.Event()
        self._reserved_bytes = 0
        self._readers: dict[int, int] = {}
        self._flush_lock = asyncio.Lock()
        self._compact_lock = asyncio.Lock()
        self._last_flush_s = time.monotonic()
        self._tasks: set[asyncio.Task] = set()
        self._committer: asyncio.Task | None = None
        self.failed: BaseException | None = None
        self.recovered_torn_tails = 0
        self.abandoned = False
        self._last_seq_taken = 0
        self._committing = False
        self.commit_batches = 0             # group commits (fsync rounds) so far
        self.committed_records = 0          # records they applied: entries per batch = the ratio
        self._capacity_bytes = disk.capacity_bytes()
        self._free_bytes_seen = 0           # disk.free_bytes() when last asked ...
        self._free_seen_s = -1.0            # ... at this monotonic time (never yet)
        self._admitted_since_seen = 0       # record bytes admitted since then
        self._syncer: _Syncer | None = _Syncer(disk) if disk.blocking else None
        self._step_buffers: list[mmap.mmap] = []   # idle page-aligned buffers of streamed puts
        self._recent_reads: collections.OrderedDict[tuple[int, int], None] = collections.OrderedDict()

    # ================================================================ open / close

    @classmethod
    async def open(cls, disk: Disk, index_path: str, limits: Limits = DEFAULT_LIMITS,
                   clock_us: Callable[[], int] = _now_us) -> "Node":
        node = cls(disk, Index(index_path), limits, clock_us)
        node._recover()
        await node.flush()
        node._committer = asyncio.get_running_loop().create_task(node._commit_loop())
        return node

    def _recover(self) -> None:
        checkpoint = self.index.checkpoint() or fmt.Checkpoint(0, 0, {})
        extents = sorted(n for n in map(fmt.extent_number, self.disk.list_files()) if n is not None)
        self.next_extent = max([checkpoint.next_extent] + [e + 1 for e in extents])
        self.seq = checkpoint.seq
        found = []
        for extent in extents:
            name = fmt.extent_name(extent)
            size = self.disk.size(name)
            start = checkpoint.covered.get(extent, 0)
            invariant(start <= size, f"{name} shorter than the checkpoint covers")
            offset = start
            while offset < size:
                parsed = self._parse_record(extent, offset, size)
                if parsed is None:
                    log.warning("TornTail extent=%d offset=%d cut_bytes=%d", extent, offset, size - offset)
                    self.disk.truncate(name, offset)
                    self.recovered_torn_tails += 1
                    size = offset
                    break
                header, checksums, seq, end, rotten = parsed
                found.append((seq, header, checksums, extent, offset, end, rotten))
                offset = end
            if size > start:
                # Records past the checkpoint may have survived only in the page cache
                # (a process crash, or the prefix of a torn write): make them durable
                # before they are applied, answered from and covered by a checkpoint.
                self.disk.sync(name)
            self.extent_sizes[extent] = size
            self.covered[extent] = start
            self.live_bytes[extent] = 0
        found.sort(key=lambda record: record[0])
        for seq, header, checksums, extent, offset, end, rotten in found:
            invariant(seq > self.seq, "replayed records must follow the checkpoint in seq order")
            entry = self._entry_for(header, Location(extent, offset), checksums)
            self._apply(seq, header, entry, extent, end)
            if rotten and self.index.get(fmt.index_key(header.shard)) == entry:
                # After its apply (which clears an older copy's finding): a later record
                # of the shard, replayed after this one, clears this finding in turn.
                self.corrupt[header.shard] = "checksum mismatch found by recovery"
        for extent, size in self.extent_sizes.items():
            self.covered[extent] = size
        self._last_seq_taken = self.seq
        self.live_bytes = {extent: 0 for extent in self.extent_sizes}
        for key, entry in self._all_entries():
            self.live_bytes[entry.location.extent] = self.live_bytes.get(entry.location.extent, 0) + entry.stored_bytes

    def _parse_record(self, extent: int, offset: int, size: int):
        """(header, checksums, seq, end, rotten) of a complete record at `offset`, else
        None. `rotten`: the data of a PUT or COPY record fails its block checksums."""
        name = fmt.extent_name(extent)
        header_raw = self.disk.read(name, offset, fmt.HEADER_BYTES)
        header = fmt.decode_header(header_raw)
        if header is None:
            return None
        end = offset + fmt.record_bytes(header.length, header.block_size)
        if end > size:
            return None
        trailer_offset = offset + fmt.HEADER_BYTES + header.length
        trailer = fmt.decode_trailer(header_raw, header, self.disk.read(name, trailer_offset, end - trailer_offset))
        if trailer is None:
            return None
        checksums, seq = trailer
        rotten = False
        if header.kind != fmt.KIND_TOMBSTONE:
            # In SHARD_WRITE_STEP pieces: a 64 MiB shard never sits whole in memory.
            summer = fmt.BlockChecksummer(header.block_size)
            step = self.limits.SHARD_WRITE_STEP_BYTES
            start = offset + fmt.HEADER_BYTES
            for at in range(start, start + header.length, step):
                summer.feed(self.disk.read(name, at, min(step, start + header.length - at)))
            rotten = summer.finish() != checksums
        return header, checksums, seq, end, rotten

    def _all_entries(self) -> Iterator[tuple[bytes, Entry]]:
        start = fmt.INDEX_PREFIX
        while True:
            page = self.index.items_from(start, 4096)
            yield from page
            if len(page) < 4096:
                return
            start = page[-1][0] + b"\0"

    def abandon(self) -> list[asyncio.Task]:
        """A simulated crash: stop at once, losing the overlay and everything queued.
        Cancelled requests then leave the disk alone (`abandoned`)."""
        self.abandoned = True
        tasks = list(self._tasks) + ([self._committer] if self._committer else [])
        for task in tasks:
            task.cancel()
        for queued in self._queue:
            if not queued.future.done():
                queued.future.cancel()
        self._queue.clear()
        self._close_syncer()
        self.index.close()
        self.failed = RuntimeError("node abandoned")
        return tasks

    def _close_syncer(self) -> None:
        if self._syncer is not None:
            self._syncer.close()
            self._syncer = None

    async def close(self) -> None:
        """A clean stop: wait for queued records, flush the index, close."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._queue or self._committing:
            await asyncio.sleep(0.001)
        await self.flush()
        if self._committer:
            self._committer.cancel()
            await asyncio.gather(self._committer, return_exceptions=True)
        self._close_syncer()
        self.index.close()
        self.disk.close()
        for buffer in self._step_buffers:
            _close_buffer(buffer)
        self._step_buffers.clear()
        self.failed = RuntimeError("node closed")

    def spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _io(self, function, *args):
        if self.disk.blocking:
            return await asyncio.to_thread(function, *args)
        return function(*args)

    # ================================================================ committing

    def _entry_for(self, header: Header, location: Location, checksums: list[bytes]) -> Entry | None:
        if header.kind == fmt.KIND_TOMBSTONE:
            return None
        return Entry(location, header.length, header.put_time_us, header.block_size, tuple(checksums))

    def _apply(self, seq: int, header: Header, entry: Entry | None, extent: int, end: int) -> str:
        """Step 3's apply (and recovery's): the pure rule, then the index and accounting."""
        key = fmt.index_key(header.shard)
        existing = self.index.get(key)
        outcome, new, store = fmt.apply_rule(existing, header, entry)
        if store:
            self.index.set(key, new)
            if existing is not None:
                self.live_bytes[existing.location.extent] -= existing.stored_bytes
            if new is not None:
                self.live_bytes[new.location.extent] = self.live_bytes.get(new.location.extent, 0) + new.stored_bytes
            if header.kind != fmt.KIND_COPY:
                self.corrupt.pop(header.shard, None)
        invariant(self.covered.get(extent, 0) <= end, "records of one extent apply in order")
        self.covered[extent] = end
        self.seq = max(self.seq, seq)
        return outcome

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                self._committing = True
                for _ in range(_GATHER_YIELDS_MAX):     # while records keep arriving, let them join
                    queued = len(self._queue)
                    await asyncio.sleep(0)
                    if len(self._queue) == queued:
                        break
                batch, self._queue = self._queue, []
                dirty, self._dirty = self._dirty, set()
                try:
                    names = [fmt.extent_name(extent) for extent in sorted(dirty)]
                    if self._syncer is not None:
                        await self._syncer.sync(names)
                    else:
                        for name in names:
                            self.disk.sync(name)
                except OSError as error:
                    # The records may or may not be durable: stop, recovery decides.
                    log.error("SyncFailed error=%s", error)
                    self.failed = error
                    for queued in batch:
                        if not queued.future.done():
                            queued.future.set_exception(ShardStoreError(f"sync failed: {error}"))
                    return
                now_s = time.monotonic()
                self.commit_batches += 1
                self.committed_records += len(batch)
                for queued in batch:
                    outcome = self._apply(queued.seq, queued.header, queued.entry, queued.extent, queued.end)
                    if queued.head is not None:
                        self._release_head(queued.head)
                    if queued.header.kind == fmt.KIND_PUT and outcome == fmt.OUTCOME_OK:
                        self.heat.wrote(queued.header.length, now_s)
                    if not queued.future.done():
                        queued.future.set_result(outcome)
                self._committing = False
                if len(self.index.overlay) >= self.limits.SHARD_INDEX_FLUSH_ENTRIES and not self._flush_lock.locked():
                    self.spawn(self.flush())

    def _enqueue(self, seq: int, header: Header, entry: Entry | None, extent: int, end: int,
                 head: _Head | None = None) -> asyncio.Future:
        """Step 3: queue an appended record (its seq is in its trailer). Called in the
        same loop step as `_take_seq`, so the queue is in seq order."""
        invariant(not self._queue or self._queue[-1].seq < seq, "queue in seq order")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(seq, header, entry, extent, end, future, head))
        self._dirty.add(extent)
        self._wake.set()
        return future

    def _take_seq(self) -> int:
        self._last_seq_taken += 1
        return self._last_seq_taken

    async def flush(self) -> None:
        """Step 4: the overlay and the checkpoint it covers, in one synced batch."""
        async with self._flush_lock:
            checkpoint = fmt.Checkpoint(self.seq, self.next_extent, dict(self.covered))
            batch, _ = self.index.begin_flush(checkpoint)
            try:
                await self._io(self.index.write_flush, batch)
            except BaseException:
                self.index.abort_flush()
                raise
            self.index.end_flush()
            self._last_flush_s = time.monotonic()

    async def flush_now_and_then(self) -> None:
        """Background: flush at least every SHARD_INDEX_FLUSH_MS while anything changed."""
        period_s = self.limits.SHARD_INDEX_FLUSH_MS / 1000
        while True:
            await asyncio.sleep(period_s)
            if self.index.overlay or time.monotonic() - self._last_flush_s > 10 * period_s:
                await self.flush()

    # ================================================================ heads

    def _new_extent(self) -> _Head:
        extent = self.next_extent
        self.next_extent += 1
        self.disk.create(fmt.extent_name(extent))
        self.extent_sizes[extent] = 0
        self.covered[extent] = 0
        self.live_bytes[extent] = 0
        return _Head(extent, 0)

    def _small(self) -> _Head:
        head = self._small_head
        if head is None or head.size >= self.limits.EXTENT_MAX_BYTES:
            head = self._small_head = self._new_extent()
        return head

    def _acquire_head(self) -> _Head:
        while self._idle_heads:
            head = self._idle_heads.pop()
            if head.size < self.limits.EXTENT_MAX_BYTES:
                self._busy_heads.add(head.extent)
                return head
        head = self._new_extent()
        self._busy_heads.add(head.extent)
        return head

    def _release_head(self, head: _Head) -> None:
        self._busy_heads.discard(head.extent)
        if head.size < self.limits.EXTENT_MAX_BYTES:
            self._idle_heads.append(head)

    def _is_head(self, extent: int) -> bool:
        return (extent in self._busy_heads or any(h.extent == extent for h in self._idle_heads)
                or (self._small_head is not None and self._small_head.extent == extent))

    # ================================================================ admission

    def reserve_bytes(self) -> int:
        return max(int(self.limits.DISK_RESERVE_FRACTION * self._capacity_bytes),
                   2 * self.limits.EXTENT_MAX_BYTES)

    def _free_bytes_estimate(self, fresh: bool) -> int:
        """Free bytes, asking the disk (a statvfs) at most every _FREE_BYTES_TTL_S or
        when `fresh`; in between, the last answer less every record admitted since
        (an underestimate: records are at most that big and this node is the disk's
        only writer of extents; the index's growth is covered by the next ask)."""
        now_s = time.monotonic()
        if fresh or now_s - self._free_seen_s > _FREE_BYTES_TTL_S:
            self._free_bytes_seen = self.disk.free_bytes()
            self._free_seen_s = now_s
            self._admitted_since_seen = 0
        return self._free_bytes_seen - self._admitted_since_seen

    @contextlib.contextmanager
    def _admit(self, record_size: int) -> Iterator[None]:
        """Step 1: refuse before writing when the record would reach into the reserve.
        A refusal is always judged on a fresh answer from the disk; the estimate only
        spares the common case the statvfs."""
        if self.failed is not None:
            raise ShardStoreError(f"node stopped: {self.failed}")
        reserve = self.reserve_bytes()
        if self._free_bytes_estimate(False) - self._reserved_bytes - record_size < reserve and \
                self._free_bytes_estimate(True) - self._reserved_bytes - record_size < reserve:
            raise DiskFull(f"disk full: {self._free_bytes_seen - self._reserved_bytes} bytes free, of which "
                           f"{reserve} are kept for compaction; a {record_size}-byte record does not fit")
        self._admitted_since_seen += record_size
        self._reserved_bytes += record_size
        try:
            yield
        finally:
            self._reserved_bytes -= record_size

    @contextlib.contextmanager
    def stream_slot(self) -> Iterator[None]:
        """Bound concurrent streams (SHARD_STREAMS_MAX); over it, refuse at once."""
        if self.streams >= self.limits.SHARD_STREAMS_MAX:
            raise TooBusy("too many concurrent streams")
        self.streams += 1
        try:
            yield
        finally:
            self.streams -= 1

    def _check_shard(self, shard: ShardId) -> None:
        if len(shard.data_id) != fmt.DATA_ID_BYTES:
            raise BadShardRequest("data id must be 16 bytes")
        if not 0 <= shard.shard_index < 2**32:
            raise BadShardRequest("shard index out of range")

    # ================================================================ put

    async def put(self, shard: ShardId, length: int, first: bytes,
                  rest: AsyncIterator[bytes] | None = None,
                  sender_checksums: list[bytes] | None = None, *, checksums_follow: bool = False) -> int:
        """Store a shard; returns, once it is durable and visible, the put time (µs)
        of the copy that serves it.

        `first` holds the first bytes; `rest` (if any) the others. Re-putting the same
        bytes is OK; other bytes under a taken id raise ShardExists.

        `sender_checksums` (xxh3-128 per block) are verified before the ack; with
        `checksums_follow` it is a list the caller extends as `rest` yields pieces
        (a piece's block checksums no later than the piece), checked step by step.
        """
        self._check_shard(shard)
        limits = self.limits
        if not 0 <= length <= limits.SHARD_MAX_BYTES:
            raise BadShardRequest(f"shard length must be in 0..{limits.SHARD_MAX_BYTES}")
        if len(first) > limits.SHARD_CHUNK_MAX_BYTES or len(first) > length:
            raise BadShardRequest("chunk too large")
        block_size = limits.CHECKSUM_BLOCK
        if sender_checksums is not None and not checksums_follow and \
                len(sender_checksums) != fmt.block_count(length, block_size):
            raise BadShardRequest("wrong number of block checksums")
        existing = self.index.get(fmt.index_key(shard))
        if existing is not None and existing.length != length:
            raise ShardExists("shard exists with other bytes")
        self.in_flight += 1
        try:
            with self._admit(fmt.record_bytes(length, block_size)):
                if rest is None or len(first) == length:
                    if len(first) != length:
                        raise BadShardRequest("shard shorter than its length")
                    if rest is not None:
                        async for extra in rest:
                            if extra:
                                raise BadShardRequest("shard longer than its length")
                    outcome, put_time_us = await self._put_small(shard, first, existing, sender_checksums)
                else:
                    outcome, put_time_us = await self._put_streamed(shard, length, first, rest, sender_checksums)
        finally:
            self.in_flight -= 1
        if outcome == fmt.OUTCOME_EXISTS:
            raise ShardExists("shard exists with other bytes")
        return put_time_us

    async def _put_small(self, shard: ShardId, data: bytes, existing: Entry | None,
                         sender_checksums: list[bytes] | None) -> tuple[str, int]:
        block_size = self.limits.CHECKSUM_BLOCK
        checksums = fmt.block_checksums(data, block_size)
        if sender_checksums is not None and checksums != list(sender_checksums):
            raise BadShardRequest("block checksum mismatch: bytes damaged in transit")
        if existing is not None:
            if tuple(checksums) != existing.checksums:
                return fmt.OUTCOME_EXISTS, 0
            if self._intact(existing):
                return fmt.OUTCOME_OK, existing.put_time_us      # the same bytes, already stored and sound
        header = Header(fmt.KIND_PUT, 0, shard, self.clock_us(), len(data), block_size)
        return await self._append_whole(header, data, checksums), header.put_time_us

    async def _append_whole(self, header: Header, data: bytes, checksums: list[bytes]) -> str:
        """Step 2 on the shared head: one contiguous write, then the group commit."""
        head = self._small()
        header_raw = fmt.encode_header(header)
        seq = self._take_seq()
        record = b"".join((header_raw, data, fmt.encode_trailer(header_raw, checksums, seq)))
        offset = head.size
        try:
            self.disk.write(fmt.extent_name(head.extent), offset, record)
        except OSError as error:
            raise DiskFull(f"write failed: {error}") from error
        head.size = offset + len(record)
        self.extent_sizes[head.extent] = head.size
        entry = self._entry_for(header, Location(head.extent, offset), checksums)
        return await self._enqueue(seq, header, entry, head.extent, head.size)

    async def _put_streamed(self, shard: ShardId, length: int, first: bytes, rest: AsyncIterator[bytes],
                            sender_checksums: list[bytes] | None) -> tuple[str, int]:
        header = Header(fmt.KIND_PUT, 0, shard, self.clock_us(), length, self.limits.CHECKSUM_BLOCK)

        async def pieces() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for chunk in rest:
                if len(chunk) > self.limits.SHARD_CHUNK_MAX_BYTES:
                    raise BadShardRequest("chunk too large")
                yield chunk

        return await self._append_streamed(header, pieces(), sender_checksums), header.put_time_us

    def _step_layout(self) -> tuple[int, bool]:
        """(bytes per data step, whether steps go direct): SHARD_WRITE_STEP_BYTES, cut
        down to a multiple of the disk's direct alignment when it has one."""
        step = self.limits.SHARD_WRITE_STEP_BYTES
        alignment = self.disk.direct_alignment
        if alignment and step >= alignment:
            return step - step % alignment, True
        return step, False

    def _take_buffer(self, size: int) -> mmap.mmap:
        while self._step_buffers:
            buffer = self._step_buffers.pop()
            if len(buffer) == size:
                return buffer
            _close_buffer(buffer)
        return aligned_buffer(size)

    def _give_buffers(self, buffers: list[mmap.mmap]) -> None:
        for buffer in buffers:
            if len(self._step_buffers) < _STEP_BUFFERS_KEPT:
                self._step_buffers.append(buffer)
            else:
                _close_buffer(buffer)

    async def _append_streamed(self, header: Header, pieces: AsyncIterator[bytes],
                               expected_checksums: list[bytes] | None, *,
                               copy_of: list[bytes] | None = None) -> str:
        """Step 2 on a head of its own, cut as the module docstring's "Streamed records"
        says: the header and the first data bytes up to an aligned offset buffered, whole
        steps direct (or buffered and each fsynced, without O_DIRECT) from two page-aligned
        buffers, one filling while the other is written, then the rest and the trailer
        buffered. An error or a cancellation before the trailer is written cuts the record
        off again. A compaction copy passes the source's checksums as `copy_of`: they go
        in the trailer whatever the bytes are, and a mismatch is a corruption finding,
        not a refusal (rot found while copying stays detectable on the copy)."""
        head = self._acquire_head()
        name = fmt.extent_name(head.extent)
        start = head.size
        header_raw = fmt.encode_header(header)
        step, direct = self._step_layout()
        alignment = self.disk.direct_alignment
        data_start = start + fmt.HEADER_BYTES
        steps_from = -(-data_start // alignment) * alignment if direct else data_start
        prefix = bytearray(header_raw)          # the bytes of [start, steps_from), written buffered
        summer = fmt.BlockChecksummer(header.block_size)
        verified = 0
        position = start                        # every byte below it is written or being written
        buffers: list[mmap.mmap] = []           # [filling, spare]; the spare may be in flight
        fill = 0
        in_flight: asyncio.Future | None = None
        received = 0
        queued = False
        try:
            async for piece in pieces:
                received += len(piece)
                if received > header.length:
                    raise BadShardRequest("shard longer than its length")
                summer.feed(piece)
                if expected_checksums is not None:
                    verified = _verify_checksums(summer.checksums, expected_checksums, verified)
                view = memoryview(piece)
                if len(prefix) < steps_from - start:
                    take = steps_from - start - len(prefix)
                    prefix += view[:take]
                    view = view[take:]
                while view:
                    if not buffers:
                        buffers = [self._take_buffer(step), self._take_buffer(step)]
                    take = min(step - fill, len(view))
                    buffers[0][fill:fill + take] = view[:take]
                    fill += take
                    view = view[take:]
                    if fill < step:
                        continue
                    if position == start:
                        self.disk.write(name, start, prefix)
                        position = steps_from
                    if in_flight is not None:
                        await asyncio.shield(in_flight)
                    in_flight = self._start_step(name, position, buffers[0], step, direct, sync=not direct)
                    position += step
                    buffers.reverse()
                    fill = 0
            if received != header.length:
                raise BadShardRequest("shard shorter than its length")
            checksums = summer.finish()
            if copy_of is not None:
                if checksums != copy_of:
                    self.corrupt[header.shard] = "checksum mismatch found by compaction"
                checksums = copy_of
            elif expected_checksums is not None and checksums != list(expected_checksums):
                raise BadShardRequest("block checksum mismatch: bytes damaged in transit")
            if in_flight is not None:
                await asyncio.shield(in_flight)
            if position == start:               # no whole step: one buffered write, as a small put
                tail = prefix + (buffers[0][:fill] if buffers else b"")
            else:
                aligned = fill - fill % alignment if direct else 0
                if direct:
                    # The aligned rest direct too, then one fdatasync: every data byte is
                    # durable before the trailer that makes the record complete is written.
                    in_flight = self._start_step(name, position, buffers[0], aligned, True, sync=True)
                    if in_flight is not None:
                        await asyncio.shield(in_flight)
                    position += aligned
                tail = bytearray(buffers[0][aligned:fill])
            seq = self._take_seq()
            tail += fmt.encode_trailer(header_raw, checksums, seq)
            self.disk.write(name, position, tail)
            position += len(tail)
            head.size = position
            self.extent_sizes[head.extent] = position
            entry = self._entry_for(header, Location(head.extent, start), checksums)
            future = self._enqueue(seq, header, entry, head.extent, position, head)
            queued = True
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise DiskFull(f"write failed: {error}") from error
            raise
        finally:
            writing = in_flight is not None and not in_flight.done()
            if not queued and not self.abandoned:     # aborted before the trailer: cut it off
                if writing:
                    await asyncio.wait([in_flight])     # a thread may still be writing
                    writing = False
                    if not in_flight.cancelled():
                        in_flight.exception()           # retrieved: the record is cut off anyway
                self.disk.truncate(name, start)
                head.size = start
                self.extent_sizes[head.extent] = start
                self._release_head(head)
            if buffers and not writing:
                self._give_buffers(buffers)
        return await future

    def _start_step(self, name: str, position: int, buffer: mmap.mmap, length: int, direct: bool,
                    sync: bool) -> asyncio.Future | None:
        """Write buffer[:length] at `position` (then fdatasync if `sync`): on a thread for
        a real disk, returning its future; inline (returning None) for a simulated one."""
        if self.disk.blocking:
            return asyncio.get_running_loop().run_in_executor(
                None, self._write_step, name, position, buffer, length, direct, sync)
        self._write_step(name, position, buffer, length, direct, sync)
        return None

    def _write_step(self, name: str, position: int, buffer: mmap.mmap, length: int, direct: bool,
                    sync: bool) -> None:
        if length:
            with memoryview(buffer) as whole, whole[:length] as view:
                if direct:
                    self.disk.write_direct(name, position, view)
                else:
                    self.disk.write(name, position, view)
        if sync:
            self.disk.sync(name)

    # ================================================================ delete

    async def delete(self, shard: ShardId) -> None:
        """Delete a shard; durable on return. Deleting a missing shard is OK."""
        self._check_shard(shard)
        if self.failed is not None:
            raise ShardStoreError(f"node stopped: {self.failed}")
        if self.index.get(fmt.index_key(shard)) is None:
            return          # nothing applied to delete; a put still queued orders after us
        header = Header(fmt.KIND_TOMBSTONE, 0, shard, self.clock_us(), 0, self.limits.CHECKSUM_BLOCK)
        self._admitted_since_seen += fmt.record_bytes(0, header.block_size)     # not refused, but counted
        self.in_flight += 1
        try:
            await self._append_whole(header, b"", [])       # may use the reserve
        finally:
            self.in_flight -= 1

    # ================================================================ read

    def locate(self, shard: ShardId) -> Entry:
        self._check_shard(shard)
        entry = self.index.get(fmt.index_key(shard))
        if entry is None:
            raise ShardNotFound("no such shard")
        return entry

    async def read(self, shard: ShardId, start: int = 0, end: int | None = None,
                   piece_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        """Yield the bytes [start, end) of a shard in verified pieces of about `piece_bytes`
        (each `bytes`, or a `bytearray` the caller alone holds)."""
        entry = self.locate(shard)
        end = entry.length if end is None else end
        if not 0 <= start <= end <= entry.length:
            raise BadShardRequest(f"range {start}-{end} outside 0-{entry.length}")
        return self._read_pieces(shard, entry, start, end, piece_bytes)

    async def _read_pieces(self, shard: ShardId, entry: Entry, start: int, end: int,
                           piece_bytes: int) -> AsyncIterator[bytes]:
        extent = entry.location.extent
        self._readers[extent] = self._readers.get(extent, 0) + 1
        self.in_flight += 1
        try:
            block = entry.block_size
            per_piece = max(1, piece_bytes // block)
            first_block, last_block = start // block, max(start, end - 1) // block
            if start == end:
                return
            for piece_first in range(first_block, last_block + 1, per_piece):
                piece_last = min(last_block, piece_first + per_piece - 1)
                data = await self._read_blocks(shard, entry, piece_first, piece_last)
                low = max(start - piece_first * block, 0)
                high = min(end - piece_first * block, len(data))
                self.heat.read(high - low, time.monotonic())
                yield data if low == 0 and high == len(data) else data[low:high]   # a bytearray's slice copies
        finally:
            self.in_flight -= 1
            self._readers[extent] -= 1

    def _read_again(self, extent: int, offset: int) -> bool:
        """Whether a large read at (extent, offset) was made recently: a first read goes
        direct (a cold read through the page cache costs ~2 ms of CPU per MiB here, a
        direct one ~0.15), a second one through the page cache, which then keeps the
        bytes for the reads after it (a hot read costs ~0.2)."""
        key = (extent, offset)
        if key in self._recent_reads:
            self._recent_reads.move_to_end(key)
            return True
        self._recent_reads[key] = None
        if len(self._recent_reads) > _RECENT_READS_MAX:
            self._recent_reads.popitem(last=False)
        return False

    async def _read_blocks(self, shard: ShardId, entry: Entry, first: int, last: int) -> bytes:
        block = entry.block_size
        offset = first * block
        length = min((last + 1) * block, entry.length) - offset
        name = fmt.extent_name(entry.location.extent)
        if self.disk.blocking and length > 256 * 1024:
            start = entry.data_offset + offset
            if not self._read_again(entry.location.extent, start):
                data = await asyncio.to_thread(self.disk.read_direct, name, start, length)
            else:
                data = self.disk.read_cached(name, start, length)
                if data is None:
                    data = await asyncio.to_thread(self.disk.read, name, start, length)
        else:
            data = self.disk.read(name, entry.data_offset + offset, length)
        view = memoryview(data)
        for i in range(first, last + 1):
            piece = view[(i - first) * block:(i - first + 1) * block]
            if len(piece) != min(block, entry.length - i * block) or \
                    xxhash.xxh3_128_digest(piece) != entry.checksums[i]:
                self.corrupt[shard] = f"checksum mismatch in block {i}"
                log.error("ShardCorrupt shard=%s/%d block=%d", shard.data_id.hex(), shard.shard_index, i)
                raise ShardCorrupt(f"checksum mismatch in block {i}")
        return data

    async def read_all(self, shard: ShardId, start: int = 0, end: int | None = None) -> bytes:
        return b"".join([piece async for piece in await self.read(shard, start, end)])

    def _intact(self, entry: Entry) -> bool:
        name = fmt.extent_name(entry.location.extent)
        data = self.disk.read(name, entry.data_offset, entry.length)
        return fmt.block_checksums(data, entry.block_size) == list(entry.checksums)

    # ================================================================ list, stat

    def list(self, start_after: ShardId | None = None, limit: int | None = None) -> list[tuple[ShardId, Entry]]:
        limit = min(limit or self.limits.SHARD_LIST_MAX, self.limits.SHARD_LIST_MAX)
        start = fmt.INDEX_PREFIX if start_after is None else fmt.index_key(start_after) + b"\0"
        return [(fmt.shard_of_key(key), entry) for key, entry in self.index.items_from(start, limit)]

    def stat(self) -> Stats:
        now_s = time.monotonic()
        capacity = self._capacity_bytes
        free = self.disk.free_bytes()
        used = sum(self.extent_sizes.values())
        live = sum(self.live_bytes.values())
        return Stats(
            capacity_bytes=capacity, used_bytes=used, free_bytes=free, live_bytes=live,
            fill_ratio=(capacity - free) / capacity if capacity else 1.0,
            extent_count=len(self.extent_sizes),
            read_bytes_per_s=self.heat.read_bytes.per_second(now_s),
            write_bytes_per_s=self.heat.write_bytes.per_second(now_s),
            read_ops_per_s=self.heat.read_ops.per_second(now_s),
            write_ops_per_s=self.heat.write_ops.per_second(now_s),
            in_flight=self.in_flight, corrupt_count=len(self.corrupt),
            commit_batches=self.commit_batches, committed_records=self.committed_records)

    # ================================================================ compaction

    def compaction_candidates(self) -> list[int]:
        """Sealed extents whose live fraction is below SHARD_COMPACT_LIVE_FRACTION, emptiest first."""
        candidates = []
        for extent, size in self.extent_sizes.items():
            if self._is_head(extent):
                continue
            live = self.live_bytes.get(extent, 0)
            if size == 0 or live / size < self.limits.SHARD_COMPACT_LIVE_FRACTION:
                candidates.append((live / size if size else 0.0, extent))
        return [extent for _, extent in sorted(candidates)]

    async def compact_copy(self, extent: int, bytes_per_s: int | None = None) -> int:
        """Compaction step 1-2: copy each live shard out of `extent`; the index switches
        by CAS on the old location when the copy commits. Returns shards copied.
        `bytes_per_s` paces the reads (the background compactor's rate)."""
        invariant(not self._is_head(extent), "never compact an open extent")
        name = fmt.extent_name(extent)
        size = self.extent_sizes[extent]
        offset, copied = 0, 0
        while offset < size and self.live_bytes.get(extent, 0) > 0:
            header = fmt.decode_header(await self._io(self.disk.read, name, offset, fmt.HEADER_BYTES))
            invariant(header is not None, f"a committed record's header is unreadable at {extent}:{offset}")
            end = offset + fmt.record_bytes(header.length, header.block_size)
            entry = self.index.get(fmt.index_key(header.shard)) if header.kind != fmt.KIND_TOMBSTONE else None
            if entry is not None and entry.location == Location(extent, offset):
                copy = Header(fmt.KIND_COPY, 0, header.shard, entry.put_time_us, entry.length,
                              entry.block_size, Location(extent, offset))
                outcome = await self._append_copy(copy, entry, bytes_per_s)
                copied += outcome == fmt.OUTCOME_OK
            offset = end
        return copied

    async def _append_copy(self, header: Header, entry: Entry, bytes_per_s: int | None) -> str:
        """Copy the raw bytes under their original checksums (rot stays detectable), as
        a streamed record: read in SHARD_WRITE_STEP pieces (direct, on a thread, on a
        real disk: cold bytes neither cost a buffered read's CPU nor fill the page
        cache) and written like a streamed put's (whole steps direct, on a thread), so
        a copy never stalls the loop nor holds a whole shard."""
        name = fmt.extent_name(entry.location.extent)
        step = self.limits.SHARD_WRITE_STEP_BYTES
        read = self.disk.read_direct if self.disk.blocking else self.disk.read

        async def pieces() -> AsyncIterator[bytes]:
            for offset in range(0, entry.length, step):
                length = min(step, entry.length - offset)
                yield await self._io(read, name, entry.data_offset + offset, length)
                if bytes_per_s:
                    await asyncio.sleep(length / bytes_per_s)

        self._readers[entry.location.extent] = self._readers.get(entry.location.extent, 0) + 1
        self._admitted_since_seen += fmt.record_bytes(header.length, header.block_size)   # copies may use the reserve
        try:
            return await self._append_streamed(header, pieces(), None, copy_of=list(entry.checksums))
        finally:
            self._readers[entry.location.extent] -= 1

    async def compact_drop(self, extent: int) -> bool:
        """Compaction step 3: once nothing lives in `extent`, make the index durable
        without it, then remove the file. False when it is not (yet) droppable."""
        if not self._droppable(extent):
            return False
        await self.flush()
        if not self._droppable(extent) or self.covered.get(extent) != self.extent_sizes.get(extent):
            return False
        self.disk.remove(fmt.extent_name(extent))
        for table in (self.extent_sizes, self.covered, self.live_bytes, self._readers):
            table.pop(extent, None)
        return True

    def _droppable(self, extent: int) -> bool:
        return (extent in self.extent_sizes and not self._is_head(extent)
                and self.live_bytes.get(extent, 0) == 0 and self._readers.get(extent, 0) == 0
                and extent not in self._dirty
                and not any(queued.extent == extent for queued in self._queue))

    async def compact(self, bytes_per_s: int | None = None) -> int:
        """Run every step on every candidate, emptiest first; returns extents dropped.
        A candidate that stopped being one meanwhile (reopened as a head, or dropped)
        is skipped."""
        dropped = 0
        async with self._compact_lock:          # one pass at a time (background, or a Compact call)
            for extent in self.compaction_candidates():
                if extent not in self.extent_sizes or self._is_head(extent):
                    continue
                await self.compact_copy(extent, bytes_per_s)
                dropped += await self.compact_drop(extent)
        return dropped

    async def compact_forever(self) -> None:
        """Background: a compaction pass every SHARD_COMPACT_INTERVAL_MS, its copies read
        at SHARD_COMPACT_BYTES_PER_S, so the space of deleted and overwritten shards
        comes back without anybody asking. A refused copy (the disk full even with the
        reserve) or a failed read or write ends the pass, logged; the next one tries
        again. Stops once the node failed."""
        period_s = self.limits.SHARD_COMPACT_INTERVAL_MS / 1000
        while self.failed is None:
            await asyncio.sleep(period_s)
            before = len(self.extent_sizes), sum(self.extent_sizes.values())
            try:
                dropped = await self.compact(self.limits.SHARD_COMPACT_BYTES_PER_S)
            except (ShardStoreError, OSError) as error:     # refused, or the disk failed a read or write
                log.warning("CompactionStopped error=%s", error)
                continue
            if dropped:
                log.info("Compacted extents_dropped=%d extents=%d->%d bytes=%d->%d", dropped, before[0],
                         len(self.extent_sizes), before[1], sum(self.extent_sizes.values()))

    # ================================================================ scrub

    async def scrub(self, bytes_per_s: int | None = None) -> list[ShardId]:
        """Re-read and verify every shard, at most `bytes_per_s`; returns the corrupt ones.
        Findings stay in `self.corrupt` (and Stat) until the shard is re-put or deleted."""
        found: list[ShardId] = []
        for key, entry in list(self._all_entries()):
            shard = fmt.shard_of_key(key)
            current = self.index.get(key)
            if current is None or current.location.extent not in self.extent_sizes:
                continue
            self._readers[current.location.extent] = self._readers.get(current.location.extent, 0) + 1
            try:
                intact = await self._scrub_one(current, bytes_per_s)
            finally:
                self._readers[current.location.extent] -= 1
            if not intact:
                self.corrupt[shard] = "checksum mismatch found by scrub"
                log.error("ShardCorrupt shard=%s/%d by=scrub", shard.data_id.hex(), shard.shard_index)
                found.append(shard)
            elif shard in self.corrupt and self.index.get(key) == current:
                del self.corrupt[shard]
        return found

    async def _scrub_one(self, entry: Entry, bytes_per_s: int | None) -> bool:
        """Whether every block of a stored shard matches its checksum, read in pieces of
        at most SHARD_WRITE_STEP_BYTES, each paced to `bytes_per_s` (or a loop turn).
        A piece goes direct on a real disk, on a thread: a scrub of a cold shard neither
        pays a cold buffered read's CPU (~2 ms per MiB here, against ~0.15) nor pushes
        hot objects out of the page cache, and holds one piece, not the whole shard."""
        name = fmt.extent_name(entry.location.extent)
        block = entry.block_size
        step = max(block, self.limits.SHARD_WRITE_STEP_BYTES // block * block)

        def sums_of(start: int, length: int) -> list[bytes] | None:
            data = self.disk.read_direct(name, start, length) if self.disk.blocking else \
                self.disk.read(name, start, length)
            return fmt.block_checksums(data, block) if len(data) == length else None

        if entry.length == 0:
            await asyncio.sleep(0)
        for offset in range(0, entry.length, step):
            length = min(step, entry.length - offset)
            first = offset // block
            sums = await self._io(sums_of, entry.data_offset + offset, length)
            if sums is None or sums != list(entry.checksums[first:first + len(sums)]):
                return False
            await asyncio.sleep(length / bytes_per_s if bytes_per_s else 0)
        return True

    async def scrub_forever(self) -> None:
        while True:
            await self.scrub(self.limits.SHARD_SCRUB_BYTES_PER_S)
            await asyncio.sleep(60)

"""The write side of the cluster BlobStore (shardstore/blobstore.py, whose
docstring numbers the steps cited here): the body stream read in exact amounts, the
per-disk small-put batcher, the degraded-write wait, and the stripe-by-stripe RS
write in segments.

Invariants: a write keeps at most a few stripes in memory (the stripe received, the
one on the worker thread, the one being sent, the clients' windows, at most
SEGMENTS_FINISHING segments finishing); MD5 runs in stripe order (pass t+1 starts
after pass t); a slot once dropped is never written again and is recorded missing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, AsyncIterable, Mapping

from common import blob_placement as bp
from common.batching import Coalescer
from common.checksums import Digests
from common.erasure import Code, stripe_chunks
from common.errors import InsufficientStorage, ServiceUnavailable
from common.framing import ConnectionLost, DeadlineExceeded
from common.placement import Placement, survivable_domain_losses
from shardstore.format import ShardId, block_checksums
from shardstore.framed import MANY_ITEMS_MAX, MANY_PAYLOAD_MAX_BYTES
from shardstore.node import DiskFull

log = logging.getLogger("cairn.blobs")

SEGMENTS_FINISHING = 2      # segments of one write whose last pieces/finishes may be in flight
UNREACHABLE = (ConnectionLost, DeadlineExceeded, OSError)


def forget(task: asyncio.Future) -> None:
    """A straggler nobody awaits: retrieve its outcome so it is never logged as lost."""
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


def durability(placement: Placement, missing: set[int], needed: int) -> int:
    """survives_domain_losses over the slots actually written (DESIGN §7, degraded)."""
    counts: dict[str, int] = {}
    for slot, domain in enumerate(placement.domains):
        if slot not in missing:
            counts[domain] = counts.get(domain, 0) + 1
    written = len(placement.disks) - len(missing)
    return survivable_domain_losses(counts.values(), max(0, written - needed))


async def settle(tasks: Mapping[int, asyncio.Future], quorum: int,
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


class Source:
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


class DiskBatcher(Coalescer):
    """Calls to one disk, coalesced (common/batching.py): one call in flight; the items
    that arrive meanwhile go in the next (no timers), up to `caps()` items and bytes."""

    def __init__(self, store: ShardBlobStore, disk: DiskId) -> None:
        super().__init__(store._spawn)
        self.store, self.disk = store, disk


class PutBatcher(DiskBatcher):
    """Small whole shards bound for one disk, in `put_many` calls of up to
    SMALL_PUT_BATCH_MAX(_BYTES)."""

    def put(self, shard: ShardId, data, checksums: list[bytes]) -> asyncio.Future:
        return self._submit((shard, data, checksums))

    def caps(self) -> tuple[int, int]:
        limits = self.store.limits
        return (min(limits.SMALL_PUT_BATCH_MAX, MANY_ITEMS_MAX),
                min(limits.SMALL_PUT_BATCH_MAX_BYTES, MANY_PAYLOAD_MAX_BYTES))

    def _size(self, item: tuple) -> int:
        return len(item[1])

    async def _send(self, items: list[tuple]) -> list:
        client = self.store._client(self.disk)
        return await self.store._call(self.disk, client.put_many(self.disk, items, timeout_s=self.store.timeout_s))


# ---------------------------------------------------------------------- coded write (steps 4-8)


class _Slot:
    """One of the k+m shard positions of a coded write, across its segments."""

    __slots__ = ("index", "disk", "writer", "failed", "full")

    def __init__(self, index: int, disk: DiskId) -> None:
        self.index, self.disk = index, disk
        self.writer = None          # the open ShardWriter of the current segment, if streamed
        self.failed = False
        self.full = False           # failed because the disk refused it for lack of room


class CodedWrite:
    """Steps 4–8 for one RS write."""

    def __init__(self, store: ShardBlobStore, data_id: bytes, source: Source, size: int | None,
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
            missing=missing, survives_domain_losses=durability(self.placement, set(missing), self.k),
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
            refusal = InsufficientStorage if any(slot.full for slot in self.slots) else ServiceUnavailable
            raise refusal(f"{live} of {self.width} shards written, need {self.quorum}", need=self.quorum, got=live)
        missing = {slot.index for slot in self.slots if slot.failed}
        if durability(self.placement, missing, self.k) < min(1, self.m):
            raise ServiceUnavailable(f"{live} shards written in too few failure domains to survive the loss of one",
                                     need=self.quorum, got=live)

    def _drop(self, slot: _Slot, why: str, error: BaseException | str | None = None) -> None:
        if slot.failed:
            return
        slot.full = isinstance(error, DiskFull)
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
        while len(self.finishing) >= SEGMENTS_FINISHING:
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
                    self._drop(slot, repr(error), error)

    def _finish_later(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self.finishing.append(task)

    async def _settle_segment(self, tasks: dict[int, asyncio.Future]) -> None:
        await self._settle_slots(tasks, "finish")
        self._check_quorum()

    async def _settle_slots(self, tasks: dict[int, asyncio.Future], what: str) -> None:
        durable, failed, late = await settle(tasks, self.quorum, self.hedge_s)
        for index in failed:
            task = tasks[index]
            error = task.exception() if not task.cancelled() else "cancelled"
            if isinstance(error, UNREACHABLE):
                self.store.mark_down(self.slots[index].disk, error)
            self._drop(self.slots[index], f"{what} failed: {error!r}", error)
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

"""Calls to one peer, coalesced (DESIGN §13: batching on every hop, no timers).

One call is in flight; the items that arrive meanwhile go in the next one. There is
no timer: an item that finds no call running starts one at once, in a task that runs
on the loop's next turn. So items submitted in the same turn (concurrent requests)
ride together, and a lone item costs what a call of its own does.

Users: the shardstore batchers (shardstore/blob_write.py DiskBatcher: small puts and
gets per disk) and the metadata reads per node (index/transport.py).

Contract for a subclass:
- `caps()`: at most (items, bytes) per call.
- `_size(item)`: an item's bytes.
- `_send(items)`: makes the call and returns, per item, its result or its exception.
  If the whole call fails, it raises, and that fails every item of the call with the
  same error.
- An item whose caller gave up (its future cancelled) before it was sent is dropped.
  A sent one's answer is dropped.
- Items still queued when the loop is cancelled (the owner closing) fail with
  ConnectionLost.
- With `fail_queued_with_call` set, a failed call also fails the items queued behind
  it, with the same error. They would go to the same peer next, and wait out a
  second timeout before their callers could fail over.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Callable, Coroutine

from common.framing import ConnectionLost


class Coalescer:
    fail_queued_with_call = False

    def __init__(self, spawn: Callable[[Coroutine], Any]) -> None:
        """`spawn(coroutine)` runs the call loop as a task its owner tracks (and cancels on close)."""
        self._spawn = spawn
        self._queue: collections.deque = collections.deque()
        self._running = False

    def _submit(self, item: Any) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if not self._running:
            self._running = True
            self._spawn(self._run())
        return future

    def caps(self) -> tuple[int, int]:
        raise NotImplementedError

    def _size(self, item: Any) -> int:
        raise NotImplementedError

    async def _send(self, items: list) -> list:
        raise NotImplementedError

    def _take(self) -> list:
        items_max, bytes_max = self.caps()
        batch, batch_bytes = [], 0
        while self._queue and len(batch) < items_max:
            item, future = self._queue[0]
            if future.done():
                self._queue.popleft()
                continue
            size = self._size(item)
            if batch and batch_bytes + size > bytes_max:
                break
            batch.append(self._queue.popleft())
            batch_bytes += size
        return batch

    async def _run(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                try:
                    results = await self._send([item for item, _ in batch])
                except BaseException as error:
                    failed = batch
                    if self.fail_queued_with_call and isinstance(error, Exception):
                        failed, self._queue = batch + list(self._queue), collections.deque()
                    for _, future in failed:
                        if not future.done():
                            future.set_exception(error if isinstance(error, Exception) else ConnectionLost("cancelled"))
                    if not isinstance(error, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result if isinstance(result, Exception) else ConnectionLost("cancelled"))
                    else:
                        future.set_result(result)
        finally:
            self._running = False
            for _, future in self._queue:
                if not future.done():
                    future.set_exception(ConnectionLost("closed"))
            self._queue.clear()

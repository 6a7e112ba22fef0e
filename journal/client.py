"""The journal client: one per frontend worker (DESIGN §3 step 3, §13).

Protocol:
1. `commit(request_id, slots, payload)` queues the entry and waits for its outcome.
2. Coalescing, no timers: entries that arrive while a Submit message is in flight
   wait and leave together in the next message (at most max_entries_per_message).
   A second message may be in flight beside the first (max_in_flight) once at
   least pipeline_min_entries wait: the chain's round is mostly waiting (fsyncs,
   hops), so two overlapping rounds carry more when the queue is deep, while a
   shallow queue keeps the one big batch that costs least per entry.
3. Answers per entry: DONE resolves the caller with (seq, outcome); RETRY (a broken
   or changing chain) and NOT_HEAD (go to config.chain[0]) requeue the entry with
   the SAME request id; a lost connection or a missed attempt deadline requeues the
   whole message and tries the next node. Backoff is exponential with jitter and
   resets on progress.
4. The newest config seen (highest epoch) names the head.
5. An entry whose `not_after` passes before its outcome is known fails with
   OutcomeUnknown: it may still commit (its retry with the same request id finds
   the original outcome through apply's dedup).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from common import framing
from journal import journal_pb2 as pb
from journal.server import KIND_SUBMIT, KIND_STATUS


class OutcomeUnknown(Exception):
    """not_after passed before the outcome was known; the entry may or may not commit."""


@dataclass(frozen=True)
class CommitResult:
    seq: int                   # the entry that carried the answered attempt
    outcome: bytes             # apply's (for a duplicate, the original's)
    attempts: int


@dataclass
class _Pending:
    request_id: bytes
    slots: tuple[int, ...]
    payload: bytes
    future: asyncio.Future
    not_after: float           # loop time
    attempts: int = 0


class JournalClient:
    def __init__(self, nodes: dict[int, tuple[str, int]], *, commit_deadline_s: float = 20.0,
                 attempt_timeout_s: float = 2.0, max_entries_per_message: int = 1024,
                 backoff_initial_s: float = 0.01, backoff_max_s: float = 0.3,
                 max_in_flight: int = 2, pipeline_min_entries: int = 8) -> None:
        self.node_ids = sorted(nodes)
        self.connections = {node: framing.Client(host, port, backoff_initial_s=0.02, backoff_max_s=0.3,
                                                  connect_timeout_s=1.0)
                            for node, (host, port) in nodes.items()}
        self.commit_deadline_s = commit_deadline_s
        self.attempt_timeout_s = attempt_timeout_s
        self.max_entries = max_entries_per_message
        self.max_in_flight = max_in_flight
        self.pipeline_min_entries = pipeline_min_entries
        self._in_flight = 0
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.head = self.node_ids[0]
        self.epoch = 0
        self.messages_sent = 0
        self.entries_sent = 0
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._senders: list[asyncio.Task] = []
        self._backoff_s = 0.0
        self._closed = False

    async def commit(self, request_id: bytes, slots: tuple[int, ...], payload: bytes,
                     not_after_s: float | None = None) -> CommitResult:
        """Step 1; `not_after_s` is seconds from now (default commit_deadline_s)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        deadline = loop.time() + (self.commit_deadline_s if not_after_s is None else not_after_s)
        self._queue.append(_Pending(request_id, tuple(slots), payload, future, deadline))
        self._wake.set()
        if not self._senders:
            self._senders = [asyncio.ensure_future(self._send_loop()) for _ in range(self.max_in_flight)]
        return await future

    async def close(self) -> None:
        self._closed = True
        for sender in self._senders:
            sender.cancel()
            try:
                await sender
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing
                pass
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(OutcomeUnknown("client closed"))
        for connection in self.connections.values():
            await connection.close()

    async def status(self, node: int, key: bytes = b"", timeout_s: float = 2.0) -> pb.StatusReply:
        frame = await self.connections[node].call(KIND_STATUS, pb.StatusRequest(key=key).SerializeToString(),
                                                  timeout_s=timeout_s)
        return pb.StatusReply.FromString(frame.meta)

    # ------------------------------------------------------------ steps 2-5

    def _learn(self, config: pb.ChainConfig) -> None:
        if config.chain and config.epoch >= self.epoch:
            self.epoch = config.epoch
            self.head = config.chain[0]

    def _next_node(self, after: int) -> int:
        index = self.node_ids.index(after)
        return self.node_ids[(index + 1) % len(self.node_ids)]

    async def _backoff(self) -> None:
        self._backoff_s = min(self.backoff_max_s, max(self.backoff_initial_s, self._backoff_s * 2))
        await asyncio.sleep(self._backoff_s * random.uniform(0.5, 1.0))

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self._queue or (self._in_flight and len(self._queue) < self.pipeline_min_entries):
                self._wake.clear()
                await self._wake.wait()
                continue
            now = loop.time()
            batch: list[_Pending] = []
            rest: list[_Pending] = []
            for pending in self._queue:
                if pending.future.done():
                    continue                                         # the caller gave up (cancelled)
                if now > pending.not_after:                          # step 5
                    pending.future.set_exception(OutcomeUnknown(
                        f"request {pending.request_id!r}: no outcome after {pending.attempts} attempts"))
                elif len(batch) < self.max_entries:
                    batch.append(pending)
                else:
                    rest.append(pending)
            self._queue = rest
            if not batch:
                continue
            target = self.head
            request = pb.SubmitRequest(entries=[pb.SubmitEntry(request_id=p.request_id, slots=p.slots,
                                                               payload=p.payload) for p in batch])
            for pending in batch:
                pending.attempts += 1
            timeout = min(self.attempt_timeout_s, max(0.001, max(p.not_after for p in batch) - now))
            self.messages_sent += 1
            self.entries_sent += len(batch)
            self._in_flight += 1
            try:
                frame = await self.connections[target].call(KIND_SUBMIT, request.SerializeToString(),
                                                            timeout_s=timeout)
            except (framing.ConnectionLost, framing.DeadlineExceeded, framing.RemoteError):
                self._in_flight -= 1
                self._wake.set()
                self._queue = batch + self._queue                    # step 3: same request ids, next node
                self.head = self._next_node(target)
                await self._backoff()
                continue
            self._in_flight -= 1
            self._wake.set()                                         # a waiting second sender may go now
            reply = pb.SubmitReply.FromString(frame.meta)
            self._learn(reply.config)                                # step 4
            again: list[_Pending] = []
            wait = False
            for pending, result in zip(batch, reply.results):
                if result.status == pb.EntryResult.DONE:
                    if not pending.future.done():
                        pending.future.set_result(CommitResult(result.seq, result.outcome, pending.attempts))
                else:
                    again.append(pending)
                    if result.status == pb.EntryResult.RETRY or self.head == target:
                        wait = True
                    if result.status == pb.EntryResult.NOT_HEAD and self.head == target:
                        self.head = self._next_node(target)          # it is not the head, whatever it says
            if again:
                self._queue = again + self._queue
            if wait:
                await self._backoff()
            elif not again:
                self._backoff_s = 0.0

"""The Transport of the cluster MetadataStore (index/client.py) over the metadata nodes.

Commits go through the worker's one JournalClient (journal/client.py: coalescing,
the head, retries with the same request id). Reads go to one node — the tail
first, whose witness and fence never exceed the committed seq, so it rarely has
to wait — and fail over to the others on TRY_OTHER or a lost connection.

Concurrent reads bound for one node share a frame (DESIGN §13), through `_ReadBatcher`
(common/batching.py: one call in flight per node, what arrives meanwhile goes in the
next, no timers). A read that meets no company goes as a plain READ, as before; two
or more go as one READ_MANY (journal/server.py step 8). Each read keeps its own
answer, and fails over on its own. A node that refuses READ_MANY (a build from before
it) is sent plain READs from then on.
"""

from __future__ import annotations

import asyncio

from common import framing
from common.batching import Coalescer
from journal import journal_pb2 as pb
from common.errors import OutcomeUnknown
from index.client import TransportRetry
from journal.client import JournalClient
from journal.client import OutcomeUnknown as JournalOutcomeUnknown
from journal.server import KIND_READ, KIND_READ_MANY, READ_MANY_MAX

READ_TIMEOUT_S = 2.0
READ_MANY_MAX_BYTES = 1 << 20
"""Request bytes per READ_MANY, at most (a read request is ~100 bytes: READ_MANY_MAX binds first)."""

_UNAVAILABLE = (framing.ConnectionLost, framing.DeadlineExceeded, framing.RemoteError)


class _ReadBatcher(Coalescer):
    """The reads bound for one node. Per read: (status, chain, answer bytes). A call that
    fails (the node down or silent) fails the reads queued behind it too: they fail over
    at once instead of waiting out a second READ_TIMEOUT_S on the same node."""

    fail_queued_with_call = True

    def __init__(self, transport: JournalTransport, node: int) -> None:
        super().__init__(transport._spawn)
        self.client = transport.readers[node]
        self.batching = True            # False once the node refused READ_MANY

    def read(self, frame: pb.ReadFrame, request: bytes) -> asyncio.Future:
        return self._submit((frame, request))

    def caps(self) -> tuple[int, int]:
        return READ_MANY_MAX, READ_MANY_MAX_BYTES

    def _size(self, item: tuple) -> int:
        return len(item[1])

    async def _send(self, items: list) -> list:
        if len(items) == 1:
            return [await self._one(*items[0])]         # its failure is the call's
        if not self.batching:
            return await asyncio.gather(*(self._one(*item) for item in items), return_exceptions=True)
        frame = pb.ReadManyFrame(reads=[read for read, _ in items], request_bytes=[len(request) for _, request in items])
        try:
            reply_frame = await self.client.call(KIND_READ_MANY, frame.SerializeToString(),
                                                 b"".join(request for _, request in items), timeout_s=READ_TIMEOUT_S)
        except framing.RemoteError as error:
            if "unknown kind" not in str(error):
                raise
            self.batching = False       # an older node: one READ per read from now on
            return await asyncio.gather(*(self._one(*item) for item in items), return_exceptions=True)
        reply = pb.ReadManyReply.FromString(reply_frame.meta)
        if len(reply.statuses) != len(items) or len(reply.answer_bytes) != len(items):
            raise framing.RemoteError(f"READ_MANY of {len(items)} reads answered {len(reply.statuses)}")
        chain, payload, at, results = tuple(reply.config.chain), bytes(reply_frame.payload), 0, []
        for status, size in zip(reply.statuses, reply.answer_bytes):
            results.append((status, chain, payload[at:at + size]))
            at += size
        return results

    async def _one(self, frame: pb.ReadFrame, request: bytes) -> tuple:
        reply_frame = await self.client.call(KIND_READ, frame.SerializeToString(), request, timeout_s=READ_TIMEOUT_S)
        reply = pb.ReadFrameReply.FromString(reply_frame.meta)
        return reply.status, tuple(reply.config.chain), bytes(reply_frame.payload)


class JournalTransport:
    def __init__(self, nodes: dict[int, tuple[str, int]], *, commit_deadline_s: float = 20.0) -> None:
        self.client = JournalClient(nodes, commit_deadline_s=commit_deadline_s)
        self.nodes = sorted(nodes)
        self.readers = {node: framing.Client(host, port, backoff_initial_s=0.02, backoff_max_s=0.3,
                                             connect_timeout_s=1.0) for node, (host, port) in nodes.items()}
        self.chain: list[int] = list(self.nodes)
        self._tasks: set[asyncio.Task] = set()
        self._batchers = {node: _ReadBatcher(self, node) for node in self.nodes}

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def submit(self, request_id: bytes, slots: tuple[int, ...], payload: bytes) -> bytes:
        try:
            result = await self.client.commit(request_id, slots, payload)
        except JournalOutcomeUnknown as error:
            raise OutcomeUnknown(str(error)) from None
        return result.outcome

    async def read(self, slot: int, request: bytes, as_of: int | None, also_slots: tuple[int, ...] = ()) -> bytes | None:
        frame = pb.ReadFrame(slot=max(slot, 0), has_as_of=as_of is not None, as_of=as_of or 0, any_slot=slot < 0,
                             also_slots=also_slots)
        for node in list(reversed(self.chain)):
            try:
                status, chain, answer = await self._batchers[node].read(frame, request)
            except _UNAVAILABLE:
                continue
            if chain:
                self.chain = list(chain)
            if status == pb.ReadFrameReply.CURRENT:
                return None
            if status == pb.ReadFrameReply.VALUE:
                return answer
        raise TransportRetry()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()
        for reader in self.readers.values():
            await reader.close()

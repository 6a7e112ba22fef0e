"""The Transport of the cluster MetadataStore (index/client.py) over the metadata nodes.

Commits go through the worker's one JournalClient (journal/client.py: coalescing,
the head, retries with the same request id). Reads go to one node — the tail
first, whose witness and fence never exceed the committed seq, so it rarely has
to wait — and fail over to the others on TRY_OTHER or a lost connection.
"""

from __future__ import annotations

from common import framing
from journal import journal_pb2 as pb
from common.errors import OutcomeUnknown
from index.client import TransportRetry
from journal.client import JournalClient
from journal.client import OutcomeUnknown as JournalOutcomeUnknown
from journal.server import KIND_READ

READ_TIMEOUT_S = 2.0


class JournalTransport:
    def __init__(self, nodes: dict[int, tuple[str, int]], *, commit_deadline_s: float = 20.0) -> None:
        self.client = JournalClient(nodes, commit_deadline_s=commit_deadline_s)
        self.nodes = sorted(nodes)
        self.readers = {node: framing.Client(host, port, backoff_initial_s=0.02, backoff_max_s=0.3,
                                             connect_timeout_s=1.0) for node, (host, port) in nodes.items()}
        self.chain: list[int] = list(self.nodes)

    async def submit(self, request_id: bytes, slots: tuple[int, ...], payload: bytes) -> bytes:
        try:
            result = await self.client.commit(request_id, slots, payload)
        except JournalOutcomeUnknown as error:
            raise OutcomeUnknown(str(error)) from None
        return result.outcome

    async def read(self, slot: int, request: bytes, as_of: int | None, also_slots: tuple[int, ...] = ()) -> bytes | None:
        frame = pb.ReadFrame(slot=max(slot, 0), has_as_of=as_of is not None, as_of=as_of or 0, any_slot=slot < 0,
                             also_slots=also_slots)
        meta = frame.SerializeToString()
        for node in list(reversed(self.chain)):
            try:
                reply_frame = await self.readers[node].call(KIND_READ, meta, request, timeout_s=READ_TIMEOUT_S)
            except (framing.ConnectionLost, framing.DeadlineExceeded, framing.RemoteError):
                continue
            reply = pb.ReadFrameReply.FromString(reply_frame.meta)
            if reply.config.chain:
                self.chain = list(reply.config.chain)
            if reply.status == pb.ReadFrameReply.CURRENT:
                return None
            if reply.status == pb.ReadFrameReply.VALUE:
                return bytes(reply_frame.payload)
        raise TransportRetry()

    async def close(self) -> None:
        await self.client.close()
        for reader in self.readers.values():
            await reader.close()

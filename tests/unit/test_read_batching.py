"""Concurrent metadata reads share frames, and each keeps its own answer (index/transport.py).

Property: reads issued together through one JournalTransport reach a node in fewer
frames than reads. A lone read goes as a plain READ, two or more as a READ_MANY.
Every read gets the answer a read of its own would get: its VALUE bytes, None for
CURRENT, or a fail-over to the next node on TRY_OTHER or a node that is down. Reads
queued behind a call to a silent node fail over when that call times out, not one
timeout later. A node that refuses READ_MANY (a build from before it) still answers
every read, through plain READs, and is sent no READ_MANY again.
Method: in-process framing servers standing in for the metadata nodes; their answers
depend only on the request, so any batching must give the same results. The real
nodes' READ_MANY: tests/cluster/test_journal_chain.py.
"""

from __future__ import annotations

import asyncio
import collections

from hypothesis import given, settings, strategies as st

from common import framing
from index.transport import JournalTransport
from journal import journal_pb2 as pb
from journal.server import KIND_READ, KIND_READ_MANY


def _answer(node: int, request: bytes, read: pb.ReadFrame) -> tuple[int, bytes]:
    """What node `node` answers: TRY_OTHER for requests it does not hold ("x" on the tail),
    CURRENT when the caller's as-of is at least 100, else its name and the request."""
    if request.startswith(b"x") and node == 2:
        return pb.ReadFrameReply.TRY_OTHER, b""
    if read.has_as_of and read.as_of >= 100:
        return pb.ReadFrameReply.CURRENT, b""
    return pb.ReadFrameReply.VALUE, b"node%d:" % node + request


class FakeNode:
    def __init__(self, node: int, *, batching: bool = True, silent: bool = False) -> None:
        self.node = node
        self.frames: collections.Counter = collections.Counter()
        self.reads = 0
        handlers = {KIND_READ: self._read}
        if batching:
            handlers[KIND_READ_MANY] = self._read_many
        if silent:                                  # takes every frame, answers none
            handlers = {kind: lambda connection, frame: self.frames.update([frame.kind]) for kind in handlers}
        self.server = framing.Server(handlers)

    def _read(self, connection, frame) -> None:
        self.frames[KIND_READ] += 1
        self.reads += 1
        status, payload = _answer(self.node, bytes(frame.payload), pb.ReadFrame.FromString(frame.meta))
        reply = pb.ReadFrameReply(status=status, config=pb.ChainConfig(epoch=1, chain=[0, 1, 2]))
        connection.reply(frame.id, KIND_READ, reply.SerializeToString(), payload)

    def _read_many(self, connection, frame) -> None:
        self.frames[KIND_READ_MANY] += 1
        request = pb.ReadManyFrame.FromString(frame.meta)
        payload, at, statuses, answers = bytes(frame.payload), 0, [], []
        for read, size in zip(request.reads, request.request_bytes):
            status, answer = _answer(self.node, payload[at:at + size], read)
            at += size
            statuses.append(status)
            answers.append(answer)
        self.reads += len(statuses)
        reply = pb.ReadManyReply(config=pb.ChainConfig(epoch=1, chain=[0, 1, 2]), statuses=statuses,
                                 answer_bytes=[len(answer) for answer in answers])
        connection.reply(frame.id, KIND_READ_MANY, reply.SerializeToString(), b"".join(answers))


reads_strategy = st.lists(st.tuples(st.sampled_from([b"a", b"bb", b"x1", b"x2", b"", b"k" * 300]),
                                    st.sampled_from([None, 5, 100, 7000])), min_size=1, max_size=150)


def _expected(request: bytes, as_of: int | None) -> bytes | None:
    if as_of is not None and as_of >= 100:
        return None
    return (b"node1:" if request.startswith(b"x") else b"node2:") + request


async def _run(reads, *, batching: bool, down: bool = False):
    nodes = [FakeNode(node, batching=batching) for node in range(3)]
    for fake in nodes:
        await fake.server.start("127.0.0.1", 0)
    addresses = {fake.node: ("127.0.0.1", fake.server.port) for fake in nodes}
    if down:
        addresses[2] = ("127.0.0.1", 1)              # the tail unreachable: every read fails over
    transport = JournalTransport(addresses)
    try:
        answers = await asyncio.gather(*(transport.read(3, request, as_of) for request, as_of in reads))
        again = await transport.read(3, b"a", None)  # a lone read after the batch
    finally:
        await transport.close()
        for fake in nodes:
            await fake.server.close()
    return answers, again, nodes


@settings(max_examples=40, deadline=None)
@given(reads=reads_strategy)
def test_a_batch_answers_each_read_as_its_own_read_would(reads):
    answers, again, nodes = asyncio.run(_run(reads, batching=True))
    assert answers == [_expected(request, as_of) for request, as_of in reads]
    assert again == b"node2:a"
    tail = nodes[2]
    assert tail.reads == len(reads) + 1
    if len(reads) >= 8:
        assert sum(tail.frames.values()) < tail.reads and tail.frames[KIND_READ_MANY] >= 1


def test_a_node_without_read_many_is_sent_plain_reads():
    reads = [(b"a%d" % index, None) for index in range(40)] + [(b"x9", None)]
    answers, again, nodes = asyncio.run(_run(reads, batching=False))
    assert answers == [_expected(request, as_of) for request, as_of in reads]
    assert again == b"node2:a"
    for fake in nodes:
        assert KIND_READ_MANY not in fake.frames
    assert nodes[2].frames[KIND_READ] == len(reads) + 1


def test_reads_fail_over_around_a_node_that_is_down():
    reads = [(b"a%d" % index, None) for index in range(30)]
    answers, again, nodes = asyncio.run(_run(reads, batching=True, down=True))
    assert answers == [b"node1:" + request for request, _ in reads]
    assert again == b"node1:a"


def test_reads_queued_behind_a_call_to_a_silent_node_fail_over_with_it(monkeypatch):
    """The first read goes alone to the silent tail and the others queue behind it.
    When its call times out, they fail over with it: the tail never sees a second frame,
    and no read waits out a second timeout."""
    monkeypatch.setattr("index.transport.READ_TIMEOUT_S", 0.3)

    async def main():
        nodes = [FakeNode(node, silent=node == 2) for node in range(3)]
        for fake in nodes:
            await fake.server.start("127.0.0.1", 0)
        transport = JournalTransport({fake.node: ("127.0.0.1", fake.server.port) for fake in nodes})
        try:
            first = asyncio.ensure_future(transport.read(3, b"first", None))
            while not nodes[2].frames:                   # the lone read is on the wire
                await asyncio.sleep(0.01)
            rest = [asyncio.ensure_future(transport.read(3, b"a%d" % index, None)) for index in range(20)]
            answers = await asyncio.gather(first, *rest)
        finally:
            await transport.close()
            for fake in nodes:
                await fake.server.close()
        return answers, nodes

    answers, nodes = asyncio.run(main())
    assert answers == [b"node1:first"] + [b"node1:a%d" % index for index in range(20)]
    assert sum(nodes[2].frames.values()) == 1

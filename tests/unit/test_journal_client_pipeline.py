"""The journal client's coalescing and pipelining (journal/client.py step 2), against a
fake head on a real socket that holds its answers until the test releases them.

- entries that arrive while a message is in flight leave together in the next one;
- a second message goes out beside the first only once pipeline_min_entries wait,
  never a third (max_in_flight 2); with max_in_flight 1 nothing overtakes the first;
- every caller gets its own entry's answer, whichever message carried it.
"""

from __future__ import annotations

import asyncio

from common import framing
from journal import journal_pb2 as pb
from journal.client import JournalClient
from journal.server import KIND_SUBMIT


class HeldHead:
    """Answers each Submit only when `release()` is called, echoing a seq per entry."""

    def __init__(self) -> None:
        self.messages: list[list[bytes]] = []
        self.held: list[tuple[framing.Connection, int, pb.SubmitRequest]] = []
        self.seq = 0
        self.server = framing.Server({KIND_SUBMIT: self._submit})

    def _submit(self, connection, frame) -> None:
        request = pb.SubmitRequest.FromString(frame.meta)
        self.messages.append([entry.request_id for entry in request.entries])
        self.held.append((connection, frame.id, request))

    def release(self) -> None:
        for connection, frame_id, request in self.held:
            results = []
            for entry in request.entries:
                self.seq += 1
                results.append(pb.EntryResult(status=pb.EntryResult.DONE, seq=self.seq, outcome=entry.request_id))
            reply = pb.SubmitReply(config=pb.ChainConfig(epoch=1, chain=[0]), results=results)
            connection.reply(frame_id, KIND_SUBMIT, reply.SerializeToString())
        self.held.clear()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def _run(max_in_flight: int):
    async def scenario():
        head = HeldHead()
        await head.server.start("127.0.0.1", 0)
        client = JournalClient({0: ("127.0.0.1", head.server.port)}, max_in_flight=max_in_flight,
                               pipeline_min_entries=8)
        commits = [asyncio.ensure_future(client.commit(b"first", (), b""))]
        await _settle()                                   # message 1: [first], held
        for number in range(5):                           # below the pipelining threshold: they wait
            commits.append(asyncio.ensure_future(client.commit(b"a%d" % number, (), b"")))
        await _settle()
        shape_after_five = [len(message) for message in head.messages]
        for number in range(5):                           # 10 waiting now
            commits.append(asyncio.ensure_future(client.commit(b"b%d" % number, (), b"")))
        await _settle()
        shape_after_ten = [len(message) for message in head.messages]
        for number in range(9):                           # 9 more: no third message may leave
            commits.append(asyncio.ensure_future(client.commit(b"c%d" % number, (), b"")))
        await _settle()
        shape_held = [len(message) for message in head.messages]
        while not all(commit.done() for commit in commits):
            head.release()
            await _settle()
        results = [commit.result() for commit in commits]
        await client.close()
        await head.server.close()
        return shape_after_five, shape_after_ten, shape_held, results, head.messages
    return asyncio.run(scenario())


def test_a_second_message_leaves_only_once_enough_entries_wait():
    after_five, after_ten, held, results, messages = _run(max_in_flight=2)
    assert after_five == [1], "five waiting entries do not start a second message"
    assert after_ten == [1, 10], "ten do, all in one message"
    assert held == [1, 10], "never a third message while two are in flight"
    assert [result.outcome for result in results] == [b"first"] + [b"a%d" % n for n in range(5)] + \
        [b"b%d" % n for n in range(5)] + [b"c%d" % n for n in range(9)]
    assert sum(len(message) for message in messages) == 20, "each entry sent once"


def test_one_in_flight_never_overtakes():
    after_five, after_ten, held, results, messages = _run(max_in_flight=1)
    assert after_five == after_ten == held == [1]
    assert [len(message) for message in messages] == [1, 19], "the rest leave together"
    assert len({result.seq for result in results}) == 20

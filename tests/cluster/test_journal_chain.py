"""Property: the journal chain on real processes, sockets and disks commits every acknowledged entry
at one dense seq, in the order each writer issued it, on every node's log — through a SIGKILL of
the middle node mid-storm and of the head, and a retried request id takes effect exactly once.

Method: three `python -m journal.main` processes on 127.0.0.1 (temp data dirs, free ports,
MemoryApplier), several JournalClients (separate connections) with closed-loop writers.
- Failure-free: the answers' seqs are exactly 1..N, each writer's seqs ascend, and after a
  clean stop (SIGTERM) every node's log holds the same entries (epoch, seq, request id) at those seqs.
- Middle killed mid-storm: commits stop for the outage ("retry" past ACK_WAIT; the client
  resends with the same request id), resume once the node restarts, rejoins as tail in epoch 2
  (truncating any unreplicated suffix) and catches up; nothing acknowledged is lost or reordered.
- Head killed under load (so entries the middle appended are unacknowledged at the kill — best
  effort timing): once it is back (epoch 2, node 1 heads) every client retry with the same request
  id gets one outcome, its "append" applied exactly once on every node, and a second client
  resending the same request id later gets the same outcome.
- Reads: concurrent reads through one JournalTransport share READ_MANY frames and each
  gets its own answer (VALUE, CURRENT, a fence); a malformed READ_MANY is refused.
Every process a test starts is stopped by it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import uvloop

from journal.client import JournalClient
from journal.disk import RealDisk
from journal.log import LogStore
from journal.server import parse_outcome

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    def __init__(self, directory: str, ack_wait_ms: int = 300) -> None:
        self.directory = directory
        self.ports = {node: _free_port() for node in range(3)}
        self.config = os.path.join(directory, "journal.toml")
        lines = ["[journal]", f"ack_wait_ms = {ack_wait_ms}", "resend_after_ms = 50", ""]
        for node, port in self.ports.items():
            lines += ["[[nodes]]", f"id = {node}", 'host = "127.0.0.1"', f"port = {port}",
                      f'data_dir = "{self.data_dir(node)}"', ""]
        with open(self.config, "w") as file:
            file.write("\n".join(lines))
        self.processes: dict[int, subprocess.Popen] = {}

    def data_dir(self, node: int) -> str:
        return os.path.join(self.directory, f"node{node}")

    @property
    def addresses(self) -> dict[int, tuple[str, int]]:
        return {node: ("127.0.0.1", port) for node, port in self.ports.items()}

    def start(self, node: int) -> None:
        stderr = open(os.path.join(self.directory, f"node{node}.log"), "a")
        process = subprocess.Popen([sys.executable, "-m", "journal.main", "--node", str(node), "--config",
                                    self.config], cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
        stderr.close()
        self.processes[node] = process
        line = process.stdout.readline()
        assert line.strip() == f"listening: 127.0.0.1:{self.ports[node]}", line

    def kill(self, node: int) -> None:
        process = self.processes[node]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> dict[int, int]:
        codes = {}
        for node, process in self.processes.items():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for node, process in self.processes.items():
            try:
                codes[node] = process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[node] = process.wait(10)
            process.stdout.close()
        return codes

    def logs(self) -> dict[int, dict[int, tuple]]:
        """After stop: every node's log as seq -> (epoch, request id, payload)."""
        out = {}
        for node in self.ports:
            disk = RealDisk(os.path.join(self.data_dir(node), "log"))
            store = LogStore.open(disk)
            entries = store.read(store.first_seq, store.last_seq) if store.last_seq is not None else []
            out[node] = {e.seq: (e.epoch, e.request_id, e.payload) for e in entries}
            disk.close()
        return out


@pytest.fixture
def cluster():
    with tempfile.TemporaryDirectory(prefix="journal-chain-") as directory:
        running = Cluster(directory)
        try:
            for node in range(3):
                running.start(node)
            yield running
        finally:
            running.stop_all()


class Storm:
    """Closed-loop writers over several clients; records (writer, request id, seq, outcome, ack time, attempts)."""

    def __init__(self, cluster: Cluster, clients: int, writers_per_client: int) -> None:
        self.clients = [JournalClient(cluster.addresses, attempt_timeout_s=1.0) for _ in range(clients)]
        self.writers_per_client = writers_per_client
        self.acks: list[tuple] = []
        self.stop = False

    async def writer(self, client: JournalClient, name: str, limit: int | None) -> None:
        count = 0
        while not self.stop and (limit is None or count < limit):
            count += 1
            request_id = f"{name}.{count}".encode()
            result = await client.commit(request_id, (count % 97,), b"A" + request_id + b"\x00v")
            self.acks.append((name, request_id, result.seq, result.outcome, time.monotonic(), result.attempts))

    def run(self, limit: int | None = None) -> list[asyncio.Task]:
        return [asyncio.ensure_future(self.writer(client, f"w{c}.{w}", limit))
                for c, client in enumerate(self.clients) for w in range(self.writers_per_client)]

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def check_acks_against_logs(acks, logs, dense: bool) -> None:
    by_writer: dict[str, list[int]] = {}
    seqs = set()
    for name, request_id, seq, outcome, _, _ in acks:
        assert seq not in seqs, f"seq {seq} answered twice"
        seqs.add(seq)
        by_writer.setdefault(name, []).append(seq)
        status, original_seq, _ = parse_outcome(outcome)
        assert status == "OK" and original_seq <= seq
        for node, entries in logs.items():                  # acknowledged => durable on every node
            assert seq in entries, f"acknowledged seq {seq} missing from node {node}'s log"
            assert entries[seq][1] == request_id, f"node {node} holds another entry at seq {seq}"
        original = logs[0].get(original_seq)
        assert original is not None and original[1] == request_id, "the outcome names another entry"
    for name, writer_seqs in by_writer.items():
        assert writer_seqs == sorted(writer_seqs), f"writer {name}'s entries reordered"
    if dense:
        assert seqs == set(range(1, max(seqs) + 1)), "answered seqs are not dense"
    committed = min(max(entries) for entries in logs.values())
    for seq in range(1, committed + 1):                       # the logs agree on the shared prefix
        tags = {entries[seq][:2] for entries in logs.values()}
        assert len(tags) == 1, f"logs disagree at seq {seq}: {tags}"


def test_failure_free_commits_dense_and_logs_agree(cluster):
    async def main():
        storm = Storm(cluster, clients=4, writers_per_client=16)
        await asyncio.gather(*storm.run(limit=60))
        statuses = [await storm.clients[0].status(node) for node in range(3)]
        await storm.close()
        return storm.acks, statuses

    acks, statuses = uvloop.run(main())
    assert len(acks) == 4 * 16 * 60
    assert {s.applied for s in statuses} == {len(acks)}
    assert cluster.stop_all() == {0: 0, 1: 0, 2: 0}            # SIGTERM stops cleanly
    check_acks_against_logs(acks, cluster.logs(), dense=True)


def test_middle_killed_mid_storm_pauses_then_rejoins(cluster):
    async def main():
        storm = Storm(cluster, clients=4, writers_per_client=8)
        tasks = storm.run()
        await asyncio.sleep(1.0)
        before = len(storm.acks)
        assert before > 100
        killed_at = time.monotonic()
        cluster.kill(1)
        await asyncio.sleep(1.5)
        during = [a for a in storm.acks if a[4] > killed_at + 0.5]
        assert not during, "commits went on with the middle dead"
        await asyncio.get_running_loop().run_in_executor(None, cluster.start, 1)
        restarted_at = time.monotonic()
        await asyncio.sleep(1.5)
        storm.stop = True
        await asyncio.gather(*tasks)
        after = [a for a in storm.acks if a[4] > restarted_at]
        assert len(after) > 100, "commits did not resume after the rejoin"
        assert any(a[5] > 1 for a in storm.acks), "no entry was resent (the head never answered retry?)"
        statuses = [await storm.clients[0].status(node) for node in range(3)]
        await storm.close()
        return storm.acks, statuses

    acks, statuses = uvloop.run(main())
    for status in statuses:
        assert (status.config.epoch, tuple(status.config.chain)) == (2, (0, 2, 1))
        assert status.serving and status.applied == statuses[0].applied
    cluster.stop_all()
    check_acks_against_logs(acks, cluster.logs(), dense=False)


def test_head_killed_retry_with_same_request_id_has_one_outcome(cluster):
    async def main():
        storm = Storm(cluster, clients=4, writers_per_client=8)
        tasks = storm.run()
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        cluster.kill(0)                                       # under load: entries in flight past the head
        await asyncio.sleep(0.5)
        await asyncio.get_running_loop().run_in_executor(None, cluster.start, 0)
        await asyncio.sleep(1.5)
        storm.stop = True
        await asyncio.gather(*tasks)
        retried = [a for a in storm.acks if a[5] > 1]
        assert retried, "no request was in flight at the kill"
        checker = JournalClient(cluster.addresses)
        for name, request_id, seq, outcome, at, attempts in retried:
            again = await checker.commit(request_id, (0,), b"A" + request_id + b"\x00v")
            assert again.outcome == outcome, "a resent request id got another outcome"
            for node in range(3):
                status = await checker.status(node, request_id)
                assert status.value == b"v,", f"request {request_id!r} applied {status.value!r} on node {node}"
        statuses = [await checker.status(node) for node in range(3)]
        await checker.close()
        await storm.close()
        return storm.acks, statuses, killed_at

    acks, statuses, killed_at = uvloop.run(main())
    for status in statuses:
        assert (status.config.epoch, tuple(status.config.chain)) == (2, (1, 2, 0))
        assert status.serving
    cluster.stop_all()
    check_acks_against_logs(acks, cluster.logs(), dense=False)


def test_concurrent_reads_share_read_many_frames_on_real_nodes(cluster):
    """Step 8 of journal/server.py: reads issued together through one JournalTransport
    (index/transport.py) reach the tail as READ_MANY frames. Each read still gets its own
    answer through the core: VALUE after a fence, CURRENT for an as-of past the slot's
    witness, the value of its own key. A malformed READ_MANY is refused and the node
    serves on."""
    from common import framing
    from index.transport import JournalTransport
    from journal import journal_pb2 as pb
    from journal.server import KIND_READ_MANY

    async def main():
        client = JournalClient(cluster.addresses)
        for key in range(20):
            await client.commit(f"set-{key}".encode(), (key,), b"S" + b"k%d" % key + b"\x00" + b"v%d" % key)
        await client.close()
        transport = JournalTransport(cluster.addresses)
        kinds = []
        for reader in transport.readers.values():
            real_call = reader.call

            async def counting(kind, *arguments, _real=real_call, **keywords):
                kinds.append(kind)
                return await _real(kind, *arguments, **keywords)
            reader.call = counting
        reads = [(key % 20, b"k%d" % (key % 20), None) for key in range(60)]
        reads += [(-1, b"k3", None), (5, b"k5", 10**9), (7, b"k7", 10**9)]
        try:
            answers = await asyncio.gather(*(transport.read(slot, request, as_of) for slot, request, as_of in reads))
        finally:
            await transport.close()
        raw = framing.Client(*cluster.addresses[2])
        try:
            bad = pb.ReadManyFrame(reads=[pb.ReadFrame(slot=1)], request_bytes=[99])
            with pytest.raises(framing.RemoteError, match="malformed READ_MANY"):
                await raw.call(KIND_READ_MANY, bad.SerializeToString(), b"k1", timeout_s=5)
            good = pb.ReadManyFrame(reads=[pb.ReadFrame(slot=1), pb.ReadFrame(slot=2)], request_bytes=[2, 2])
            reply_frame = await raw.call(KIND_READ_MANY, good.SerializeToString(), b"k1k2", timeout_s=5)
        finally:
            await raw.close()
        return reads, answers, kinds, pb.ReadManyReply.FromString(reply_frame.meta), bytes(reply_frame.payload)

    reads, answers, kinds, reply, payload = uvloop.run(main())
    for (slot, request, as_of), answer in zip(reads, answers):
        if as_of is not None:
            assert answer is None                           # CURRENT: the caller's cache holds
        else:
            assert answer[8:] == b"v" + request[1:]         # MemoryApplier: applied seq, then the value
    assert kinds.count(KIND_READ_MANY) >= 1 and len(kinds) < len(answers)
    assert list(reply.statuses) == [pb.ReadFrameReply.VALUE] * 2 and list(reply.answer_bytes) == [10, 10]
    assert payload[8:10] == b"v1" and payload[18:] == b"v2"

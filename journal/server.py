"""The async shell of one journal node: the chain replica core on real sockets and a real disk.

It carries out the effects of journal/replica.py (ChainReplica) and journal/config.py
(Acceptor, Proposer) exactly as journal/simulation.py does, in order, over
common/framing.py connections and the durable log of journal/log.py on RealDisk.

Steps:
1. Start: open the log (torn tail cut) and the acceptor state (fsynced JSON). No
   acceptor file means a fresh node of a fresh cluster: write it and serve in
   epoch 1. Otherwise the node restarted: it builds its core with `restarted=True`
   and runs the register's proposer for the next epoch with itself as tail
   (DESIGN §6), then syncs, truncates and catches up before serving.
2. Inputs (client frames, peer frames, disk completions, ticks) go through one queue
   on the event loop: each input calls one core handler, whose effects are carried
   out in order before the next input; an Apply's completion and a chosen config
   are queued as inputs, as the simulation schedules them.
3. Persist: the batch is written and fdatasynced in the one disk thread (appends,
   truncations in FIFO order), so the loop keeps receiving and the next batch
   accumulates meanwhile; completion -> on_persisted.
4. Send: node-to-node messages are ONEWAY frames on this node's one long-lived
   outgoing connection to each peer (so a chain link is a connection each way:
   Forward down one, Ack up the other). Frames for one peer in one drain leave in
   one write. A peer that is not connected drops them; the core resends on ticks.
   Forward carries its entries as stored records (journal/records.py), checked by
   their xxh3 on arrival.
5. Submit: one client frame carries many entries; the node answers the frame once
   every entry has a Reply (done, retry or not_head) from the core.
6. PersistAcceptor: written to a temp file, fsynced, renamed, directory fsynced,
   before the effect that follows it (the Promise/Accepted) is sent.
7. Apply goes to the `Applier` (the index side plugs in here): apply(entries) ->
   one outcome (bytes) per entry, deterministic; durable_applied_seq() feeds
   retention.
9. Restart: a node whose last stop was clean (it was serving and caught up, its log
   and replica synced, `CLEAN_FILE` written last) resumes its role in its epoch
   with its witness floor at its highest seq — the whole dev cluster restarts this
   way; the marker is removed before it serves, so a later crash is never taken for
   a clean stop. Any other restart rejoins through a new epoch (step 1); several nodes
   restarting at once (a whole-cluster crash) recover as journal/replica.py step 12 says.
10. Test hook: CAIRN_CRASH_AT names crash points (journal/crashpoints.py) at which the
   process exits as if SIGKILLed; unset, it is inert.
8. Read (DESIGN §4): a READ frame names the key's witness slot and the as-of of the
   frontend's cached answer; the core answers CURRENT (the cache holds), TRY_OTHER,
   or — once applied >= the witness — ReadValue, which the Applier answers from one
   snapshot. Listings and bucket reads use FENCE_SLOT, whose witness is the node's
   highest seq: they wait until everything the node has appended is applied.
   A READ_MANY frame carries up to READ_MANY_MAX reads (a frontend's concurrent reads,
   DESIGN §13): each goes through the core as a READ does, all in one input, and
   the frame is answered once every one of them has its answer.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import os
import struct
import time
import tomllib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from google.protobuf.message import DecodeError

from common import framing
from journal import journal_pb2 as pb
from common.errors import InvariantViolation, invariant
from journal import records
from journal.crashpoints import TAIL_AFTER_COMMIT_BEFORE_APPLY, CrashPoints
from journal.config import (
    NO_BALLOT, Accept, Acceptor, AcceptorState, Accepted, Config, ConfigChosen, Nack, PersistAcceptor, Prepare,
    Promise, Proposer, SendRegister,
)
from journal.disk import RealDisk
from journal.log import LogStore
from journal.messages import (
    Ack, Apply, Forward, Persist, RaiseWitness, Read, ReadReply, ReadValue, Refuse, Reply, Send, Submit, Sync, SyncReply,
    TruncatePrefix, TruncateSuffix,
)
from journal.records import Entry
from journal.replica import ChainReplica, JournalLimits

KIND_SUBMIT = 1
KIND_PEER = 2
KIND_STATUS = 3
KIND_READ = 4
KIND_READ_MANY = 5
READ_MANY_MAX = 64
"""Reads per READ_MANY frame, at most (the protocol's bound: a larger frame is refused)."""

FENCE_SLOT = -1
"""A read slot standing for "every slot": its witness is the node's highest appended seq."""

CLEAN_FILE = "clean-stop"
ACCEPTOR_FILE = "acceptor.json"
ACCEPTOR_FORMAT = 1
ACK_REPEAT_US = 50_000          # an ack with nothing new is still sent this often (it may have been lost)

log = logging.getLogger("cairn.journal")


# ------------------------------------------------------------ configuration

@dataclass(frozen=True)
class NodeAddress:
    id: int
    host: str
    port: int
    data_dir: str


@dataclass(frozen=True)
class ClusterConfig:
    nodes: tuple[NodeAddress, ...]
    limits: JournalLimits
    tick_ms: int = 10
    replica_sync_ms: int = 1000
    proposer_retry_ms: int = 200

    def node(self, node_id: int) -> NodeAddress:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"node {node_id} is not in the config")


def load_config(path: str) -> ClusterConfig:
    """The journal's TOML:

        [journal]                     # optional; milliseconds
        ack_wait_ms = 1000
        resend_after_ms = 100
        read_wait_ms = 50
        tick_ms = 10
        max_batch_entries = 256

        [[nodes]]                     # three, head first in epoch 1
        id = 0
        host = "127.0.0.1"
        port = 7100
        data_dir = "/var/lib/cairn/journal0"
    """
    with open(path, "rb") as file:
        table = tomllib.load(file)
    journal = table.get("journal", {})
    nodes = tuple(NodeAddress(int(n["id"]), str(n.get("host", "127.0.0.1")), int(n["port"]), str(n["data_dir"]))
                  for n in table.get("nodes", []))
    if len(nodes) < 2 or len({n.id for n in nodes}) != len(nodes):
        raise ValueError(f"{path}: need at least two [[nodes]] with distinct ids")
    batch = int(journal.get("max_batch_entries", 256))
    limits = JournalLimits(
        ack_wait_us=int(journal.get("ack_wait_ms", 1000)) * 1000,
        read_wait_us=int(journal.get("read_wait_ms", 50)) * 1000,
        resend_after_us=int(journal.get("resend_after_ms", 100)) * 1000,
        retention_entries=int(journal.get("retention_entries", 4096)),
        max_batch_entries=batch,
        max_forward_entries=int(journal.get("max_forward_entries", batch)),
    )
    if limits.resend_after_us >= limits.ack_wait_us:
        raise ValueError(f"{path}: resend_after_ms must be below ack_wait_ms")
    return ClusterConfig(nodes, limits, tick_ms=int(journal.get("tick_ms", 10)),
                         replica_sync_ms=int(journal.get("replica_sync_ms", 1000)),
                         proposer_retry_ms=int(journal.get("proposer_retry_ms", 200)))


# ------------------------------------------------------------ the apply seam

class Applier(Protocol):
    """The index side of a node (index/apply.py plugs in here). Deterministic: same entries, same outcomes."""

    def open(self) -> int:
        """Recover; return the applied seq of the durable state."""

    def apply(self, entries: Sequence[Entry]) -> list[bytes]:
        """Apply committed entries in seq order; one outcome per entry."""

    def durable_applied_seq(self) -> int:
        """The highest seq whose effects survive a crash (the log is truncated only below it)."""

    def read(self, key: bytes) -> bytes | None:
        """The applied value of `key` (tests)."""

    def answer(self, request: bytes) -> bytes:
        """Answer an encoded read from one snapshot of the applied state (DESIGN §4 step 2)."""


class MemoryApplier:
    """A toy applier for tests and the benchmark: a dict, request-id dedup, nothing durable.

    payload = op (1 byte) | key | 0x00 | value, op "S" sets key to value, "A" appends
    value + "," (so a double apply shows). A duplicate request id is a no-op that
    returns the original outcome. Outcome = "OK" | original seq u64 | entry time u64.
    Nothing is durable, so a restarted node replays its whole log (retention never
    truncates: durable_applied_seq is 0).
    """

    def __init__(self) -> None:
        self.kv: dict[bytes, bytes] = {}
        self.dedup: dict[bytes, bytes] = {}
        self.applied = 0

    def open(self) -> int:
        return 0

    def apply(self, entries: Sequence[Entry]) -> list[bytes]:
        outcomes = []
        for entry in entries:
            invariant(entry.seq == self.applied + 1, f"apply of seq {entry.seq} after {self.applied}")
            self.applied = entry.seq
            outcome = self.dedup.get(entry.request_id)
            if outcome is None:
                payload = entry.payload
                key, _, value = payload[1:].partition(b"\x00")
                if payload[:1] == b"A":
                    self.kv[key] = self.kv.get(key, b"") + value + b","
                elif payload[:1] == b"S":
                    self.kv[key] = value
                outcome = b"OK" + struct.pack("<QQ", entry.seq, entry.time_us)
                self.dedup[entry.request_id] = outcome
            outcomes.append(outcome)
        return outcomes

    def durable_applied_seq(self) -> int:
        return 0

    def read(self, key: bytes) -> bytes | None:
        return self.kv.get(key)

    def answer(self, request: bytes) -> bytes:
        return struct.pack("<Q", self.applied) + self.kv.get(request, b"")


def parse_outcome(outcome: bytes) -> tuple[str, int, int]:
    """MemoryApplier's outcome -> (status, original seq, entry time in µs)."""
    seq, time_us = struct.unpack_from("<QQ", outcome, 2)
    return outcome[:2].decode(), seq, time_us


# ------------------------------------------------------------ wire forms

def config_to_pb(config: Config) -> pb.ChainConfig:
    return pb.ChainConfig(epoch=config.epoch, chain=config.chain)


def config_from_pb(message: pb.ChainConfig) -> Config:
    return Config(message.epoch, tuple(message.chain))


def _ballot_to_pb(ballot) -> pb.Ballot:
    return pb.Ballot(counter=ballot[0], node=ballot[1])


def _ballot(message: pb.Ballot) -> tuple[int, int]:
    return (message.counter, message.node)


def _pairs(pairs) -> list[pb.NodeSeq]:
    return [pb.NodeSeq(node=node, seq=seq) for node, seq in pairs]


def encode_peer(sender: int, message) -> tuple[bytes, bytes]:
    """A core message -> (PeerMessage bytes, payload)."""
    payload = b""
    out = pb.PeerMessage(sender=sender)
    if isinstance(message, Forward):
        body = out.forward
        body.config.CopyFrom(config_to_pb(message.config))
        if message.prev is not None:
            body.has_prev, body.prev_epoch, body.prev_seq = True, message.prev[0], message.prev[1]
        body.durable_applied.extend(_pairs(message.durable_applied))
        payload = b"".join([records.encode(entry) for entry in message.entries])
    elif isinstance(message, Ack):
        body = out.ack
        body.config.CopyFrom(config_to_pb(message.config))
        body.durable_seq, body.committed, body.gap = message.durable_seq, message.committed, message.gap
        body.applied.extend(_pairs(message.applied))
        body.durable_applied.extend(_pairs(message.durable_applied))
        body.outcomes.extend([pb.SeqOutcome(seq=seq, outcome=outcome) for seq, outcome in message.outcomes])
    elif isinstance(message, Sync):
        out.sync.config.CopyFrom(config_to_pb(message.config))
        out.sync.runs.extend([pb.EpochRun(epoch=e, first=f, last=l) for e, f, l in message.runs])
    elif isinstance(message, SyncReply):
        out.sync_reply.config.CopyFrom(config_to_pb(message.config))
        out.sync_reply.common_seq, out.sync_reply.highest_seq = message.common_seq, message.highest_seq
    elif isinstance(message, Refuse):
        out.refuse.config.CopyFrom(config_to_pb(message.config))
    elif isinstance(message, Prepare):
        out.prepare.ballot.CopyFrom(_ballot_to_pb(message.ballot))
    elif isinstance(message, Promise):
        out.promise.ballot.CopyFrom(_ballot_to_pb(message.ballot))
        out.promise.accepted_ballot.CopyFrom(_ballot_to_pb(message.accepted_ballot))
        out.promise.value.CopyFrom(config_to_pb(message.value))
    elif isinstance(message, Accept):
        out.accept.ballot.CopyFrom(_ballot_to_pb(message.ballot))
        out.accept.value.CopyFrom(config_to_pb(message.value))
    elif isinstance(message, Accepted):
        out.accepted.ballot.CopyFrom(_ballot_to_pb(message.ballot))
    elif isinstance(message, Nack):
        out.nack.ballot.CopyFrom(_ballot_to_pb(message.ballot))
        out.nack.promised.CopyFrom(_ballot_to_pb(message.promised))
    else:
        raise InvariantViolation(f"no wire form for {message!r}")
    return out.SerializeToString(), payload


def decode_peer(meta: bytes, payload) -> tuple[int, object]:
    """PeerMessage bytes and payload -> (sender, core message). RecordError on a bad record."""
    message = pb.PeerMessage.FromString(meta)
    sender = message.sender
    which = message.WhichOneof("body")
    if which == "forward":
        body = message.forward
        entries = []
        offset = 0
        while offset < len(payload):
            entry, offset = records.decode_at(payload, offset)
            entries.append(entry)
        invariant(bool(entries), "a forward without entries")
        prev = (body.prev_epoch, body.prev_seq) if body.has_prev else None
        return sender, Forward(config_from_pb(body.config), sender, prev, tuple(entries),
                               tuple((p.node, p.seq) for p in body.durable_applied))
    if which == "ack":
        body = message.ack
        return sender, Ack(config_from_pb(body.config), sender, body.durable_seq, body.committed,
                           tuple((p.node, p.seq) for p in body.applied),
                           tuple((p.node, p.seq) for p in body.durable_applied),
                           tuple((o.seq, o.outcome) for o in body.outcomes), body.gap)
    if which == "sync":
        body = message.sync
        return sender, Sync(config_from_pb(body.config), sender, tuple((r.epoch, r.first, r.last) for r in body.runs))
    if which == "sync_reply":
        body = message.sync_reply
        return sender, SyncReply(config_from_pb(body.config), sender, body.common_seq, body.highest_seq)
    if which == "refuse":
        return sender, Refuse(config_from_pb(message.refuse.config))
    if which == "prepare":
        return sender, Prepare(_ballot(message.prepare.ballot))
    if which == "promise":
        body = message.promise
        return sender, Promise(_ballot(body.ballot), _ballot(body.accepted_ballot), config_from_pb(body.value))
    if which == "accept":
        return sender, Accept(_ballot(message.accept.ballot), config_from_pb(message.accept.value))
    if which == "accepted":
        return sender, Accepted(_ballot(message.accepted.ballot))
    if which == "nack":
        return sender, Nack(_ballot(message.nack.ballot), _ballot(message.nack.promised))
    raise ValueError(f"peer message without a body from node {sender}")


# ------------------------------------------------------------ acceptor state (step 6)

def _state_to_json(state: AcceptorState) -> bytes:
    return json.dumps({"format": ACCEPTOR_FORMAT, "promised": list(state.promised),
                       "accepted_ballot": list(state.accepted_ballot),
                       "epoch": state.value.epoch, "chain": list(state.value.chain)}).encode()


def load_acceptor(data_dir: str) -> AcceptorState | None:
    path = os.path.join(data_dir, ACCEPTOR_FILE)
    try:
        with open(path, "rb") as file:
            table = json.loads(file.read())
    except FileNotFoundError:
        return None
    invariant(table.get("format") == ACCEPTOR_FORMAT, f"{path}: unknown format {table.get('format')}")
    return AcceptorState(tuple(table["promised"]), tuple(table["accepted_ballot"]),
                         Config(table["epoch"], tuple(table["chain"])))


def store_acceptor(data_dir: str, state: AcceptorState) -> None:
    path = os.path.join(data_dir, ACCEPTOR_FILE)
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, _state_to_json(state))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    directory = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# ------------------------------------------------------------ the node

@dataclass
class _Ticket:
    """One client Submit frame waiting for a Reply per entry (step 5)."""
    connection: framing.Connection
    frame_id: int
    slots: dict[bytes, list[int]]
    results: list
    remaining: int


def now_us() -> int:
    return time.time_ns() // 1000


class JournalNode:
    def __init__(self, cluster: ClusterConfig, node_id: int, applier: Applier | None = None) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.address = cluster.node(node_id)
        self.applier: Applier = applier or MemoryApplier()
        self.server: framing.Server | None = None
        self.peers: dict[int, framing.Client] = {}
        self._outbox: dict[int, list[tuple[bytes, bytes]]] = collections.defaultdict(list)
        self._inputs: collections.deque = collections.deque()
        self._draining = False
        self._tickets: dict[int, _Ticket] = {}
        self._reads: dict[int, Callable[[int, bytes], None]] = {}     # ticket -> answer(status, payload)
        self._next_ticket = 1
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"journal{node_id}-disk")
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.core: ChainReplica | None = None
        self.acceptor: Acceptor | None = None
        self.proposer: Proposer | None = None
        self.log_store: LogStore | None = None
        self.persist_batches = 0
        self._last_ack: dict[int, tuple] = {}
        self.persisted_entries = 0
        self._persist_failed = False
        self._crash_points = CrashPoints.from_environment(self.address.data_dir)   # a test hook, inert unset
        self._crash_pending = False

    # ------------------------------------------------------------ step 1: start

    async def start(self) -> framing.Server:
        data_dir = self.address.data_dir
        os.makedirs(data_dir, exist_ok=True)
        self.log_store = LogStore.open(RealDisk(os.path.join(data_dir, "log")))
        state = load_acceptor(data_dir)
        clean = os.path.exists(os.path.join(data_dir, CLEAN_FILE))
        restarted = state is not None and not clean
        if clean:                                   # step 9: a clean stop resumes its role, once
            os.unlink(os.path.join(data_dir, CLEAN_FILE))
            _fsync_directory(data_dir)
        if state is None:
            state = AcceptorState(NO_BALLOT, NO_BALLOT, Config(1, tuple(n.id for n in self.cluster.nodes)))
            store_acceptor(data_dir, state)
        self.acceptor = Acceptor(state)
        applied = self.applier.open()
        store = self.log_store
        entries = store.read(store.first_seq, store.last_seq) if store.last_seq is not None else []
        if entries:
            invariant(entries[0].seq <= applied + 1, "log truncated above the replica's applied seq")
            invariant(entries[-1].seq >= applied, "the replica is ahead of the log")
        self.core = ChainReplica(self.node_id, state.value, entries, applied, self.cluster.limits,
                                 restarted=restarted, now_us=now_us())
        if clean:
            # The witness was in memory; every write this node acknowledged or forwarded
            # is in its log, so its highest seq is a conservative floor for every slot.
            self.core.witness_floor = max(self.core.witness_floor, self.core.last_seq)
        log.info("JournalNodeStart node=%d restarted=%s epoch=%d chain=%s log=%s..%s applied=%d torn_bytes=%d",
                 self.node_id, restarted, state.value.epoch, state.value.chain, store.first_seq, store.last_seq,
                 applied, store.torn_bytes_dropped)
        for node in self.cluster.nodes:
            if node.id != self.node_id:
                self.peers[node.id] = framing.Client(node.host, node.port, backoff_initial_s=0.02,
                                                     backoff_max_s=0.5, connect_timeout_s=1.0)
        self.server = await framing.Server({KIND_SUBMIT: self._on_submit_frame, KIND_PEER: self._on_peer_frame,
                                            KIND_STATUS: self._on_status_frame,
                                            KIND_READ: self._on_read_frame,
                                            KIND_READ_MANY: self._on_read_many_frame}).start(self.address.host,
                                                                                             self.address.port)
        for peer in self.peers.values():
            peer._kick()
        self._tasks.append(asyncio.ensure_future(self._ticker()))
        self._tasks.append(asyncio.ensure_future(self._replica_syncer()))
        if restarted:
            me = self.node_id
            self.proposer = Proposer(me, tuple(n.id for n in self.cluster.nodes),
                                     lambda config: config.rejoin(me),
                                     retry_after_us=self.cluster.proposer_retry_ms * 1000)
            self._input(self.proposer.start)
        return self.server

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self.server is not None:
            await self.server.close()
        for peer in self.peers.values():
            await peer.close()
        await asyncio.get_running_loop().run_in_executor(self._disk, self.log_store.sync)
        self._disk.shutdown(wait=True)
        self.log_store.disk.close()
        if self.core is not None and self.core.caught_up() and not self._persist_failed:
            self._clean_stop_pending = True          # written by mark_clean(), after the applier syncs

    def mark_clean(self) -> None:
        """Step 9: record a clean stop (log synced, replica synced by the caller) so the
        next start resumes this node's role instead of rejoining through a new epoch."""
        if not getattr(self, "_clean_stop_pending", False):
            return
        path = os.path.join(self.address.data_dir, CLEAN_FILE)
        with open(path, "wb") as handle:
            handle.write(b"clean\n")
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_directory(self.address.data_dir)

    async def _ticker(self) -> None:
        interval = self.cluster.tick_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._input(self._tick)

    def _tick(self, now: int) -> list:
        effects = self.core.on_tick(now)
        if self.proposer is not None:
            effects += self.proposer.on_tick(now)
        return effects

    async def _replica_syncer(self) -> None:
        while True:
            await asyncio.sleep(self.cluster.replica_sync_ms / 1000)
            durable = self.applier.durable_applied_seq()
            self._input(lambda now: self.core.on_replica_synced(durable, now))

    # ------------------------------------------------------------ step 2: the input queue

    def _input(self, handler) -> None:
        """`handler(now_us) -> effects`; run after the inputs queued before it."""
        self._inputs.append(handler)
        if self._draining:
            return
        self._draining = True
        try:
            while self._inputs:
                handler = self._inputs.popleft()
                for effect in handler(now_us()):
                    self._execute(effect)
                if self._crash_pending:                              # journal/crashpoints.py
                    break
        finally:
            self._draining = False
            self._flush()
        if self._crash_pending:
            log.warning("CrashPoint node=%d point=%s: exiting", self.node_id, TAIL_AFTER_COMMIT_BEFORE_APPLY)
            CrashPoints.exit()

    def _execute(self, effect) -> None:
        if isinstance(effect, Persist):                               # step 3
            batch_id = effect.batch_id
            self.persist_batches += 1
            self.persisted_entries += len(effect.entries)
            future = asyncio.get_running_loop().run_in_executor(self._disk, self.log_store.append,
                                                                list(effect.entries))
            future.add_done_callback(lambda done: self._persisted(done, batch_id))
        elif isinstance(effect, Send):                                # step 4
            self._outbox[effect.to].append(effect.message)
        elif isinstance(effect, RaiseWitness):
            pass                                                      # the core holds the witness
        elif isinstance(effect, Apply):                               # step 7
            if self._crash_pending or (self.core.is_tail and self._crash_points.reached(TAIL_AFTER_COMMIT_BEFORE_APPLY)):
                self._crash_pending = True                            # the test hook: never applied
                return
            entries = effect.entries
            outcomes = self.applier.apply(entries)
            invariant(len(outcomes) == len(entries), "one outcome per applied entry")
            pairs = [(entry.seq, outcome) for entry, outcome in zip(entries, outcomes)]
            last = entries[-1].seq
            self._inputs.append(lambda now: self.core.on_applied(last, pairs, now))
        elif isinstance(effect, Reply):                               # step 5
            self._reply(effect)
        elif isinstance(effect, TruncateSuffix):
            log.info("TruncateSuffix node=%d after_seq=%d", self.node_id, effect.after_seq)
            self._disk.submit(self.log_store.truncate_suffix, effect.after_seq)
        elif isinstance(effect, TruncatePrefix):
            self._disk.submit(self.log_store.truncate_prefix, effect.below_seq)
        elif isinstance(effect, PersistAcceptor):                     # step 6
            store_acceptor(self.address.data_dir, effect.state)
        elif isinstance(effect, SendRegister):
            if effect.to == self.node_id:
                message = effect.message
                self._inputs.append(lambda now: self._register_message(self.node_id, message, now))
            else:
                self._outbox[effect.to].append(effect.message)
        elif isinstance(effect, ConfigChosen):
            config = effect.config
            log.info("ConfigChosen node=%d epoch=%d chain=%s", self.node_id, config.epoch, config.chain)
            self._inputs.append(lambda now: self._config_chosen(config, now))
        elif isinstance(effect, ReadValue):                           # step 8
            self._answer_read(effect.client, pb.ReadFrameReply.VALUE, self.applier.answer(effect.key))
        elif isinstance(effect, ReadReply):
            status = pb.ReadFrameReply.CURRENT if effect.status == "CURRENT" else pb.ReadFrameReply.TRY_OTHER
            self._answer_read(effect.client, status, b"")
        else:
            raise InvariantViolation(f"unknown effect {effect!r}")

    def _persisted(self, done: asyncio.Future, batch_id: int) -> None:
        error = done.exception()
        if error is not None:
            log.critical("PersistFailed node=%d error=%r: stopping", self.node_id, error)
            os._exit(70)                                              # never run on with an unsynced log
        self._input(lambda now: self.core.on_persisted(batch_id, now))

    def _config_chosen(self, config: Config, now: int) -> list:
        if not self.core.electing:
            return []
        self.proposer = None
        return self.core.on_config_chosen(config, now)

    def _register_message(self, sender: int, message, now: int) -> list:
        if isinstance(message, Prepare):
            return self.acceptor.on_prepare(sender, message)
        if isinstance(message, Accept):
            return self.acceptor.on_accept(sender, message)
        if self.proposer is not None:
            return self.proposer.on_message(sender, message, now)
        return []

    def _flush(self) -> None:
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, collections.defaultdict(list)
        for to, messages in outbox.items():
            peer = self.peers.get(to)
            if peer is None:
                continue
            if not peer.connected:
                peer._kick()                                          # dropped; the core resends
                continue
            messages = self._merge_acks(to, messages)
            if not messages:
                continue
            connection = peer.connection
            connection.cork()
            try:
                for message in messages:
                    connection.send(KIND_PEER, *encode_peer(self.node_id, message))
            except framing.ConnectionLost:
                pass
            finally:
                connection.uncork()

    def _merge_acks(self, to: int, messages: list) -> list:
        """Step 4: acks are cumulative, so one drain's acks to a peer leave as one — the last, carrying
        every outcome in order — and an ack saying nothing new is held back (for ACK_REPEAT_US at most)."""
        acks = [m for m in messages if isinstance(m, Ack)]
        if not acks:
            return messages
        last = acks[-1]
        outcomes = tuple(o for ack in acks for o in ack.outcomes)
        merged = Ack(last.config, last.sender, last.durable_seq, last.committed, last.applied,
                     last.durable_applied, outcomes, any(ack.gap for ack in acks))
        others = [m for m in messages if not isinstance(m, Ack)]
        summary = (merged.config, merged.durable_seq, merged.committed, merged.applied, merged.durable_applied)
        now = now_us()
        previous = self._last_ack.get(to)
        if (not outcomes and not merged.gap and previous is not None and previous[0] == summary
                and now - previous[1] < ACK_REPEAT_US):
            return others
        self._last_ack[to] = (summary, now)
        return others + [merged]

    # ------------------------------------------------------------ frames

    def _on_peer_frame(self, connection: framing.Connection, frame: framing.Frame) -> None:
        try:
            sender, message = decode_peer(frame.meta, frame.payload)
        except (records.RecordError, ValueError) as error:
            log.warning("BadPeerMessage node=%d peer=%s error=%s", self.node_id, connection.peer, error)
            connection.abort()
            return
        core = self.core
        if isinstance(message, Forward):
            self._input(lambda now: core.on_forward(message, now))
        elif isinstance(message, Ack):
            self._input(lambda now: core.on_ack(message, now))
        elif isinstance(message, Sync):
            self._input(lambda now: core.on_sync(message, now))
        elif isinstance(message, SyncReply):
            self._input(lambda now: core.on_sync_reply(message, now))
        elif isinstance(message, Refuse):
            self._input(lambda now: core.on_refuse(message, now))
        else:
            self._input(lambda now: self._register_message(sender, message, now))

    def _on_submit_frame(self, connection: framing.Connection, frame: framing.Frame) -> None:
        request = pb.SubmitRequest.FromString(frame.meta)
        ticket_id = self._next_ticket
        self._next_ticket += 1
        count = len(request.entries)
        if count == 0:
            connection.reply(frame.id, KIND_SUBMIT, pb.SubmitReply(config=config_to_pb(self.core.config))
                             .SerializeToString())
            return
        slots: dict[bytes, list[int]] = {}
        submits = []
        for index, entry in enumerate(request.entries):
            request_id = entry.request_id
            slots.setdefault(request_id, []).append(index)
            submits.append(Submit(ticket_id, request_id, tuple(entry.slots), entry.payload))
        self._tickets[ticket_id] = _Ticket(connection, frame.id, slots, [None] * count, count)
        self._input(lambda now: self.core.on_submits(submits, now))

    def _reply(self, reply: Reply) -> None:
        ticket = self._tickets.get(reply.client)
        if ticket is None:
            return
        indexes = ticket.slots.get(reply.request_id)
        if not indexes:
            return
        index = indexes.pop(0)
        if reply.outcome == "retry":
            result = pb.EntryResult(status=pb.EntryResult.RETRY)
        elif reply.outcome == "not_head":
            result = pb.EntryResult(status=pb.EntryResult.NOT_HEAD)
        else:
            result = pb.EntryResult(status=pb.EntryResult.DONE, seq=reply.seq, outcome=reply.outcome)
        ticket.results[index] = result
        ticket.remaining -= 1
        if ticket.remaining == 0:
            del self._tickets[reply.client]
            answer = pb.SubmitReply(config=config_to_pb(self.core.config), results=ticket.results)
            if not ticket.connection.closed:
                ticket.connection.reply(ticket.frame_id, KIND_SUBMIT, answer.SerializeToString())

    def _on_read_frame(self, connection: framing.Connection, frame: framing.Frame) -> None:
        """Step 8: a read goes through the core's witness check (journal/replica.py step 11)."""
        request = pb.ReadFrame.FromString(frame.meta)

        def answer(status: int, payload: bytes) -> None:
            if not connection.closed:
                reply = pb.ReadFrameReply(status=status, config=config_to_pb(self.core.config))
                connection.reply(frame.id, KIND_READ, reply.SerializeToString(), payload)
        read = self._read(request, bytes(frame.payload), answer)
        self._input(lambda now: self.core.on_read(read, now))

    def _on_read_many_frame(self, connection: framing.Connection, frame: framing.Frame) -> None:
        """Step 8 for up to READ_MANY_MAX reads: each as a READ, one reply for all."""
        try:
            request = pb.ReadManyFrame.FromString(frame.meta)
        except DecodeError:
            request = None
        sizes = list(request.request_bytes) if request is not None else []
        if request is None or not 0 < len(request.reads) <= READ_MANY_MAX or len(sizes) != len(request.reads) \
                or sum(sizes) != len(frame.payload):
            connection.reply_error(frame.id, f"malformed READ_MANY frame (1 to {READ_MANY_MAX} reads, "
                                             "request_bytes adding up to the payload)")
            return
        statuses = [pb.ReadFrameReply.TRY_OTHER] * len(sizes)
        answers = [b""] * len(sizes)
        remaining = [len(sizes)]

        def answer_at(index: int):
            def answer(status: int, payload: bytes) -> None:
                statuses[index], answers[index] = status, payload
                remaining[0] -= 1
                if remaining[0] == 0 and not connection.closed:
                    reply = pb.ReadManyReply(config=config_to_pb(self.core.config), statuses=statuses,
                                             answer_bytes=[len(answer) for answer in answers])
                    connection.reply(frame.id, KIND_READ_MANY, reply.SerializeToString(), b"".join(answers))
            return answer
        payload = bytes(frame.payload)
        reads, at = [], 0
        for index, (one, size) in enumerate(zip(request.reads, sizes)):
            reads.append(self._read(one, payload[at:at + size], answer_at(index)))
            at += size
        self._input(lambda now: [effect for read in reads for effect in self.core.on_read(read, now)])

    def _read(self, request: pb.ReadFrame, payload: bytes, answer: Callable[[int, bytes], None]) -> Read:
        ticket_id = self._next_ticket
        self._next_ticket += 1
        self._reads[ticket_id] = answer
        slot = FENCE_SLOT if request.any_slot else request.slot
        return Read(ticket_id, ticket_id, slot, request.as_of if request.has_as_of else None, payload,
                    tuple(request.also_slots))

    def _answer_read(self, ticket_id: int, status, payload: bytes) -> None:
        answer = self._reads.pop(ticket_id, None)
        if answer is not None:
            answer(status, payload)

    def _on_status_frame(self, connection: framing.Connection, frame: framing.Frame) -> None:
        request = pb.StatusRequest.FromString(frame.meta)
        core = self.core
        answer = pb.StatusReply(config=config_to_pb(core.config), last_seq=core.last_seq,
                                durable_seq=core.durable_seq, committed=core.committed, applied=core.applied,
                                serving=core.caught_up(), electing=core.electing, first_seq=core.first_seq,
                                persist_batches=self.persist_batches, persisted_entries=self.persisted_entries)
        if request.key:
            value = self.applier.read(request.key)
            if value is not None:
                answer.has_value, answer.value = True, value
        connection.reply(frame.id, KIND_STATUS, answer.SerializeToString())


def _fsync_directory(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

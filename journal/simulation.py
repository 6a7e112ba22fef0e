"""A deterministic simulation of one partition's three-node chain (test harness only).

Nothing in the product imports this module. It drives the pure cores —
journal/replica.py (ChainReplica), journal/config.py (Acceptor, Proposer) — and
the real log store (journal/log.py) on MemoryDisks, from ONE seeded RNG and one
event queue, so a seed replays exactly.

World:
- Network: every message may be dropped, delayed (uniform), duplicated; random
  delays reorder. Messages to a crashed node are lost.
- Disks: MemoryDisk; a crash loses unsynced appends and may tear the last one.
- Crashes: after any effect a node carries out (crash point = the effect's name,
  plus "Persist.unsynced" between write and fdatasync), with the fault model's
  probability, while fewer than the model's `max_out` nodes are out of service
  (crashed, electing or catching up): one at a time in most models, two at once in
  "double", and in "blackout" a crash may take every node down at the same instant
  (a power cut: each disk loses its unsynced writes). A crashed node restarts after
  a random downtime: recovers its log (torn tail cut), its acceptor state and its
  replica's last durable checkpoint, then goes through the register for a new epoch
  and catch-up (ChainReplica steps 9 and 12: several restarting at once recover
  from the new head's log).
- Clocks: every node and client has its own skew within MAX_CLOCK_SKEW.
- Clients: closed loop, one operation at a time, on a few hot keys: put, delete,
  If-Match CAS, If-None-Match CAS, and reads through the read path with a cache
  (DESIGN §4). A write is retried with the same request id until its outcome is
  known or not_after + MAX_CLOCK_SKEW passes (then it is "unknown", as a 503).
- Toy apply (ToyReplica): a key/value dict with a dedup table request id ->
  outcome (a duplicate returns the original outcome), Expired past not_after
  (unrecorded), PreconditionFailed for a failed condition (recorded).
- Real apply (a fault model with `real_apply`, IndexSimReplica): each replica is
  index/apply.py's deterministic apply over an in-memory index/state.py
  MemoryView. Every log starts with one committed CreateBucket (seq 1, applied
  everywhere: "the bucket created first"); clients issue real S3 mutations
  encoded as the frontend does (index/codec.py): PutObject with an inline body,
  DeleteObject, PutObject If-None-Match * and PutObject If-Match(ETag), and reads
  answer from index/reader.py's get_object. A replica's checkpoint is a copy of
  its view (RocksDB's durable state in miniature).

Checks (each raises SimulationFailure with the seed and the trace tail):
- I1, per applied entry: a replica applies seq = its applied + 1; every replica
  applies the same (epoch, request id, payload) at a seq; at the end the logs of
  all nodes agree on (epoch, seq) over the committed prefix.
- I2, per answer: the answered entry is durable in every node's log (unless
  already truncated below the retention point), committed on the head, and
  applied by a majority per the head's counts.
- I3, per read: the answer's state (applied seq, or as-of for CURRENT) is >= the
  seq of every write to the key acknowledged before the read began and of every
  write an earlier completed read of the key observed.
- I6, per applied entry: every replica computes the same outcome and reaches the
  same state digest at a seq (real apply: a digest of the view's key/value pairs,
  iterated in order; at the end, replicas at one applied seq are compared pair for
  pair); a request id mutates state at most once per replica.
- I8, per applied entry: every current member that serves has a witness >= seq
  for every slot the entry touches.
- I5: the client history, per key, through spec/linearizability.
- Liveness: every client finishes within the simulated time bound.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import heapq
import json
import random
from dataclasses import dataclass, field
from typing import Any

import xxhash

from common.errors import InvariantViolation, invariant
from journal.config import (
    NO_BALLOT, Accept, Acceptor, AcceptorState, Accepted, Config, ConfigChosen, Nack, PersistAcceptor,
    Prepare, Promise, Proposer, SendRegister,
)
from journal.disk import MemoryDisk
from journal.log import LogStore
from journal.messages import (
    Ack, Apply, Forward, Persist, RaiseWitness, Read, ReadReply, ReadValue, Refuse, Reply, Send, Submit,
    Sync, SyncReply, TruncatePrefix, TruncateSuffix,
)
from journal.records import Entry
from journal.replica import ChainReplica, JournalLimits
from spec.linearizability import Operation, check_history

NODES = (0, 1, 2)
SETTLE_US = 5_000_000           # after the clients finish, every node must serve again within this


class SimulationFailure(Exception):
    pass


@dataclass(frozen=True)
class FaultModel:
    name: str
    drop: float = 0.0
    duplicate: float = 0.0
    delay_us: tuple[int, int] = (50, 400)
    crash_per_effect: float = 0.0
    max_crashes: int = 0
    downtime_us: tuple[int, int] = (2_000, 40_000)
    clock_skew_us: int = 0
    tear: bool = True
    slow_apply: float = 0.1                     # chance an Apply takes up to slow_apply_us (a lagging replica)
    slow_apply_us: int = 15_000
    max_out: int = 1                            # nodes that may be out of service at once
    blackout: float = 0.0                       # chance a crash takes every live node down with it
    real_apply: bool = False                    # replicas run index/apply.py (IndexSimReplica)


CALM = FaultModel("calm")
LOSSY = FaultModel("lossy", drop=0.05, duplicate=0.05, delay_us=(50, 3_000), clock_skew_us=2_000)
CRASHY = FaultModel("crashy", drop=0.03, duplicate=0.03, delay_us=(50, 2_000), crash_per_effect=0.004,
                    max_crashes=3, clock_skew_us=2_000)
# Long outages: the head answers "retry" past ACK_WAIT, clients pass their deadline (ambiguous outcomes).
OUTAGE = FaultModel("outage", drop=0.03, duplicate=0.03, delay_us=(50, 2_000), crash_per_effect=0.006,
                    max_crashes=2, downtime_us=(50_000, 300_000), clock_skew_us=2_000)
# Many crashes per run (still at most one node out of service at a time).
STORM = FaultModel("storm", drop=0.03, duplicate=0.03, delay_us=(50, 2_000), crash_per_effect=0.02,
                   max_crashes=8, downtime_us=(5_000, 60_000), clock_skew_us=2_000)
# Two nodes out at once: the third (if it stayed up) heads the recovered chain, else
# writes pause until one returns (ChainReplica step 12).
DOUBLE = FaultModel("double", drop=0.03, duplicate=0.03, delay_us=(50, 2_000), crash_per_effect=0.01,
                    max_crashes=6, max_out=2, downtime_us=(2_000, 80_000), clock_skew_us=2_000)
# Whole-cluster crashes (every node at one instant) besides single and double ones.
BLACKOUT = FaultModel("blackout", drop=0.03, duplicate=0.03, delay_us=(50, 2_000), crash_per_effect=0.008,
                      max_crashes=6, max_out=3, blackout=0.5, downtime_us=(2_000, 60_000), clock_skew_us=2_000)
# The same faults with the real apply of index/apply.py behind every replica.
REAL_CRASHY = dataclasses.replace(CRASHY, name="real-crashy", real_apply=True)
REAL_BLACKOUT = dataclasses.replace(BLACKOUT, name="real-blackout", real_apply=True)
PROFILES = {model.name: model for model in (CALM, LOSSY, CRASHY, OUTAGE, STORM, DOUBLE, BLACKOUT,
                                            REAL_CRASHY, REAL_BLACKOUT)}


@dataclass(frozen=True)
class Workload:
    clients: int = 3
    operations_per_client: int = 8
    keys: tuple[str, ...] = ("a", "b")
    witness_slots: int = 4
    commit_deadline_us: int = 150_000
    max_clock_skew_us: int = 5_000
    client_retry_us: int = 25_000
    time_limit_us: int = 20_000_000


# ------------------------------------------------------------ toy apply

@dataclass
class ToyReplica:
    """The index side in miniature: deterministic apply with request-id dedup (DESIGN §3)."""
    kv: dict = field(default_factory=dict)
    written_seq: dict = field(default_factory=dict)      # key -> seq of the entry that last wrote it
    dedup: dict = field(default_factory=dict)            # request id -> (seq, time, status)
    mutations: dict = field(default_factory=dict)        # request id -> times it mutated (<= 1)
    applied: int = 0
    applied_time_us: int = 0

    def apply(self, entry) -> tuple[int, int, str]:
        invariant(entry.seq == self.applied + 1, f"I1: apply of seq {entry.seq} after {self.applied}")
        invariant(entry.time_us > self.applied_time_us, f"entry time not monotone in seq at {entry.seq}")
        self.applied_time_us = entry.time_us
        op = json.loads(entry.payload)
        request_id = entry.request_id
        if request_id in self.dedup:
            outcome = self.dedup[request_id]
        elif entry.time_us > op["not_after"]:
            outcome = (entry.seq, entry.time_us, "Expired")          # not recorded
        elif op["op"] == "cas" and self.kv.get(op["key"]) != op["expected"]:
            outcome = (entry.seq, entry.time_us, "PreconditionFailed")
            self.dedup[request_id] = outcome
        else:
            if op["value"] is None:
                self.kv.pop(op["key"], None)
            else:
                self.kv[op["key"]] = op["value"]
            self.written_seq[op["key"]] = entry.seq
            self.mutations[request_id] = self.mutations.get(request_id, 0) + 1
            invariant(self.mutations[request_id] == 1, f"I6: request {request_id!r} took effect twice")
            outcome = (entry.seq, entry.time_us, "OK")
            self.dedup[request_id] = outcome
        self.applied = entry.seq
        return outcome

    def digest(self) -> int:
        return xxhash.xxh3_64_intdigest(repr((sorted(self.kv.items()), sorted(self.dedup.items()))).encode())

    def read(self, key: str) -> tuple[Any, int]:
        """(value or None, seq of the entry that wrote it)."""
        return self.kv.get(key), self.written_seq.get(key, 0)


# ------------------------------------------------------------ real apply

SIM_BUCKET = "sim"
GENESIS_REQUEST = b"genesis:create-bucket"


def genesis_entry() -> Entry:
    """Seq 1 of every real-apply run: CreateBucket, committed before any client starts."""
    from common.seams import CreateBucket
    from index import codec

    payload = codec.encode_command(CreateBucket(SIM_BUCKET, "sim-owner", "us-east-1"), None, GENESIS_REQUEST, 1 << 62)
    return Entry(1, 1, 1, GENESIS_REQUEST, (), payload)


def real_payload(op: "ClientOp", incarnation: str) -> bytes:
    """A client operation as the frontend would commit it (index/codec.py Command)."""
    from common.seams import DeleteObject, IfMatch, IfNoneMatchStar, Inline, ObjectDraft, PutObject
    from index import codec

    if op.kind == "write" and op.value is None:
        mutation, condition = DeleteObject(SIM_BUCKET, incarnation, op.key), None
    else:
        body = op.value.encode()
        draft = ObjectDraft(size=len(body), etag=hashlib.md5(body).hexdigest(), body=Inline(body))
        mutation = PutObject(SIM_BUCKET, incarnation, op.key, draft)
        condition = None
        if op.kind == "cas":
            condition = (IfNoneMatchStar() if op.expected is None
                         else IfMatch(hashlib.md5(op.expected.encode()).hexdigest()))
    return codec.encode_command(mutation, condition, op.request_id, op.not_after)


class IndexSimReplica:
    """An index replica in miniature: index/apply.py over a MemoryView (I6 on the real apply)."""

    def __init__(self) -> None:
        from common.limits import DEFAULT_LIMITS
        from index import apply
        from index.state import MemoryView, Overlay

        self.view = MemoryView()
        overlay = Overlay(self.view)
        apply.initial_state(overlay, partition=0, dedup_window_us=DEFAULT_LIMITS.DEDUP_WINDOW_MS * 1000,
                            max_write_age_us=DEFAULT_LIMITS.MAX_WRITE_AGE_MS * 1000)
        self.view.write(overlay.ops())
        self.applied = 0
        self.incarnation = ""
        self.mutated: set[bytes] = set()             # request ids that changed this replica's state

    def apply(self, entry) -> tuple[int, int, str]:
        from index import apply
        from index.state import Overlay

        invariant(entry.seq == self.applied + 1, f"I1: apply of seq {entry.seq} after {self.applied}")
        overlay = Overlay(self.view)
        result = apply.apply_entry(overlay, apply.JournalEntry(entry.epoch, entry.seq, entry.time_us, entry.payload))
        self.view.write(overlay.ops())
        self.applied = entry.seq
        outcome = result.outcome
        if entry.request_id == GENESIS_REQUEST:
            invariant(result.status == "OK" and outcome.bucket_incarnation, "the genesis CreateBucket failed")
            self.incarnation = outcome.bucket_incarnation
        if result.status == "OK" and outcome.seq == entry.seq:       # a fresh mutation, not a dedup hit
            invariant(entry.request_id not in self.mutated,
                      f"I6: request {entry.request_id!r} took effect twice")
            self.mutated.add(entry.request_id)
        if outcome is not None:
            return outcome.seq, outcome.time_us, result.status
        return entry.seq, entry.time_us, result.status

    def pairs(self) -> list[tuple[bytes, bytes]]:
        return list(self.view.scan(b"", None))

    def digest(self) -> int:
        hasher = xxhash.xxh3_64()
        for key, value in self.view.scan(b"", None):                # iterated, not compared as files
            hasher.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
        return hasher.intdigest()

    def read(self, key: str) -> tuple[Any, int]:
        from index import reader

        record, _ = reader.get_object(self.view, SIM_BUCKET, self.incarnation, key)
        if record is None:
            return None, 0
        return record.body.data.decode(), record.seq


# ------------------------------------------------------------ nodes and clients

@dataclass
class SimNode:
    node: int
    disk: MemoryDisk
    log: LogStore
    acceptor_durable: AcceptorState
    checkpoint: Any                           # ToyReplica | IndexSimReplica: the replica's durable state
    skew_us: int
    alive: bool = True
    incarnation: int = 0
    core: ChainReplica | None = None
    acceptor: Acceptor | None = None
    proposer: Proposer | None = None
    replica: Any = None


@dataclass
class ClientOp:
    kind: str                     # write | read | cas
    key: str
    value: Any = None
    expected: Any = None
    request_id: bytes = b""
    not_after: int = 0
    read_id: int = 0
    invoke: int = 0
    attempts: int = 0
    target: int = 0


@dataclass
class SimClient:
    client: int
    config: Config
    remaining: int
    skew_us: int
    op: ClientOp | None = None
    counter: int = 0
    cache: dict = field(default_factory=dict)            # key -> (value, as_of, value_seq)
    last_seen: dict = field(default_factory=dict)        # key -> value last read or written


class Simulation:
    def __init__(self, seed: int, faults: FaultModel = CALM, workload: Workload = Workload(),
                 limits: JournalLimits | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults
        self.workload = workload
        self.limits = limits or JournalLimits(ack_wait_us=40_000, read_wait_us=5_000, resend_after_us=4_000,
                                              retention_entries=8)
        self.now = 0
        self.order = 0                 # a global event counter: history times, heap tie-break
        self.queue: list = []
        self.trace: list = []
        self.crashes = 0
        self.settling = False
        config = Config(1, NODES)
        initial = AcceptorState(NO_BALLOT, NO_BALLOT, config)
        self.latest_config = config
        self.nodes: dict[int, SimNode] = {}
        genesis: list[Entry] = []
        template: Any = ToyReplica()
        if faults.real_apply:
            genesis = [genesis_entry()]
            template = IndexSimReplica()
            template.apply(genesis[0])
        self.incarnation = getattr(template, "incarnation", "")
        for node in NODES:
            disk = MemoryDisk()
            skew = self.rng.randint(-faults.clock_skew_us, faults.clock_skew_us)
            log = LogStore.open(disk, segment_bytes=2048)
            if genesis:
                log.append(genesis)
            sim_node = SimNode(node, disk, log, initial, copy.deepcopy(template), skew)
            sim_node.acceptor = Acceptor(initial)
            sim_node.replica = copy.deepcopy(template)
            sim_node.core = ChainReplica(node, config, genesis, len(genesis), self.limits, restarted=False)
            self.nodes[node] = sim_node
            self._at(self.rng.randint(0, 1000), "tick", node, 0)
            self._at(self.rng.randint(0, 5000), "replica_sync", node, 0)
        self.clients = [SimClient(c, config, workload.operations_per_client,
                                  self.rng.randint(-faults.clock_skew_us, faults.clock_skew_us))
                        for c in range(workload.clients)]
        for client in self.clients:
            self._at(self.rng.randint(0, 2000), "client_next", client.client)
        # Checks' bookkeeping.
        self.history: list[Operation] = []
        self.entry_at: dict[int, tuple] = {}         # seq -> (epoch, request id, payload)  (I1)
        self.outcome_at: dict[int, tuple] = {}       # seq -> outcome                       (I6)
        self.digest_at: dict[int, int] = {}          # seq -> state digest                  (I6)
        self.acked: dict[str, list[tuple[int, int]]] = {k: [] for k in workload.keys}     # (order, seq)
        self.observed: dict[str, list[tuple[int, int]]] = {k: [] for k in workload.keys}
        self.answers = 0
        self.reads_served = {"CURRENT": 0, "VALUE": 0}
        self.stats: collections.Counter = collections.Counter()

    # ------------------------------------------------------------ plumbing

    def _at(self, delay: int, kind: str, *args) -> None:
        self.order += 1
        heapq.heappush(self.queue, (self.now + delay, self.order, kind, args))

    def _note(self, *what) -> None:
        self.trace.append((self.now, what))
        if len(self.trace) > 3000:
            del self.trace[:1000]

    def fail(self, message: str) -> None:
        lines = [f"SIMULATION FAILURE seed={self.seed} faults={self.faults.name}: {message}",
                 f"  replay: Simulation({self.seed}, {self.faults.name.upper()}).run()",
                 "  last trace lines:"]
        for at, what in self.trace[-150:]:
            lines.append(f"  {at:>9} " + " ".join(str(w) for w in what))
        raise SimulationFailure("\n".join(lines))

    def slot(self, key: str) -> int:
        return xxhash.xxh3_64_intdigest(key.encode()) % self.workload.witness_slots

    def node_now(self, node: SimNode) -> int:
        return self.now + node.skew_us

    def _send(self, sender, to, message) -> None:
        if self.rng.random() < self.faults.drop:
            self._note("drop", sender, "->", to, _short(message))
            return
        copies = 2 if self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            self._at(self.rng.randint(*self.faults.delay_us), "deliver", sender, to, message)

    # ------------------------------------------------------------ running

    def run(self) -> "Simulation":
        try:
            while self.queue:
                at, _, kind, args = heapq.heappop(self.queue)
                self.now = at
                if self.now > self.workload.time_limit_us:
                    self.fail("liveness: clients did not finish within the time limit "
                              + str([(c.client, c.remaining, c.op) for c in self.clients if c.remaining or c.op]))
                getattr(self, "_on_" + kind)(*args)
                if all(c.remaining == 0 and c.op is None for c in self.clients):
                    break
            self._settle()
            self._final_checks()
        except InvariantViolation as error:
            self.fail(f"invariant violated: {error}")
        return self

    def _settle(self) -> None:
        """Liveness of recovery: with no more crashes, every node comes back and serves in the
        latest epoch within SETTLE_US (after a whole-cluster crash too), so the chain commits again."""
        self.settling = True
        deadline = self.now + SETTLE_US
        while not all(not self._out_of_service(n) and n.core.config == self.latest_config
                      for n in self.nodes.values()):
            if not self.queue or self.queue[0][0] > deadline:
                self.fail("liveness: the cluster did not recover: " + str(
                    [(n.node, n.alive, n.core and (n.core.config, n.core.serving, n.core.electing,
                                                    n.core.last_seq, n.core.committed, n.core.applied))
                     for n in self.nodes.values()]))
            at, _, kind, args = heapq.heappop(self.queue)
            self.now = at
            getattr(self, "_on_" + kind)(*args)
        self.stats["settle_us"] += self.now - (deadline - SETTLE_US)

    def _final_checks(self) -> None:
        # I1: logs agree on (epoch, seq) over the committed prefix.
        live = [n for n in self.nodes.values()]
        committed = min((n.core.committed if n.core else 0) for n in live)
        for seq in range(1, committed + 1):
            tags = set()
            for n in live:
                if seq in n.log:
                    entry = n.log.read(seq, seq)[0]
                    tags.add((entry.epoch, entry.request_id))
            if len(tags) > 1:
                self.fail(f"I1: logs disagree at committed seq {seq}: {tags}")
        if self.faults.real_apply:                     # I6, pair for pair, at the end
            by_seq: dict[int, tuple[int, list]] = {}
            for n in live:
                if n.replica is None:
                    continue
                pairs = n.replica.pairs()
                first = by_seq.setdefault(n.replica.applied, (n.node, pairs))
                if first[1] != pairs:
                    self.fail(f"I6: replicas n{first[0]} and n{n.node} differ at applied seq {n.replica.applied}")
        result = check_history(self.history)
        if not result.ok:
            self.fail("I5: " + result.describe())

    # ------------------------------------------------------------ effects (with crash points)

    def _run_effects(self, node: SimNode, effects: list) -> None:
        incarnation = node.incarnation
        for effect in effects:
            if not node.alive or node.incarnation != incarnation:
                return
            self._execute(node, effect)
            if node.alive and node.incarnation == incarnation:
                self._maybe_crash(node, type(effect).__name__)

    def _out_of_service(self, node: SimNode) -> bool:
        return (not node.alive or node.core is None or not node.core.caught_up()
                or node.core.config.epoch != self.latest_config.epoch)

    def _may_crash(self, node: SimNode) -> bool:
        if self.crashes >= self.faults.max_crashes or self.faults.crash_per_effect == 0 or self.settling:
            return False
        out = sum(1 for other in self.nodes.values() if other is not node and self._out_of_service(other))
        return out < self.faults.max_out

    def _maybe_crash(self, node: SimNode, point: str) -> None:
        if self.rng.random() < self.faults.crash_per_effect and self._may_crash(node):
            if any(other is not node and self._out_of_service(other) for other in self.nodes.values()):
                self.stats["crash_while_another_out"] += 1
            if self.faults.blackout and self.rng.random() < self.faults.blackout:
                self.stats["blackout"] += 1
                self._note("BLACKOUT: every node crashes at once")
                for other in self.nodes.values():
                    if other is not node and other.alive:
                        self._crash(other, "blackout")
            self._crash(node, point)

    def _crash(self, node: SimNode, point: str) -> None:
        self.crashes += 1
        self.stats["crash@" + point] += 1
        self._note("CRASH", f"n{node.node}", "after", point)
        node.alive = False
        node.incarnation += 1
        node.disk.crash(self.rng, tear=self.faults.tear)
        node.log = LogStore.open(node.disk, segment_bytes=2048)
        node.core = node.proposer = node.replica = node.acceptor = None
        self._at(self.rng.randint(*self.faults.downtime_us), "restart", node.node)

    def _execute(self, node: SimNode, effect) -> None:
        n = node.node
        if isinstance(effect, Persist):
            node.log.write(list(effect.entries))
            self._maybe_crash(node, "Persist.unsynced")
            if not node.alive:
                return
            node.log.sync()
            self._note(f"n{n}", "persist", effect.entries[0].seq, "..", effect.entries[-1].seq)
            self._at(self.rng.randint(100, 600), "persisted", n, node.incarnation, effect.batch_id)
        elif isinstance(effect, Send):
            self._send(n, effect.to, effect.message)
        elif isinstance(effect, RaiseWitness):
            pass                                        # the core raised it; a crash point only
        elif isinstance(effect, Apply):
            self._apply(node, effect.entries)
        elif isinstance(effect, Reply):
            self._check_answer(node, effect)
            if effect.outcome == "retry":
                self.stats["answer_retry"] += 1
            self._send(n, ("client", effect.client), effect)
        elif isinstance(effect, ReadReply):
            self._send(n, ("client", effect.client), effect)
        elif isinstance(effect, ReadValue):
            replica = node.replica
            value, value_seq = replica.read(effect.key)
            answer = ("VALUE", effect.read_id, value, replica.applied, value_seq, effect.config)
            self._send(n, ("client", effect.client), answer)
        elif isinstance(effect, TruncateSuffix):
            self._note(f"n{n}", "truncate suffix after", effect.after_seq)
            self.stats["truncate_suffix"] += 1
            node.log.truncate_suffix(effect.after_seq)
        elif isinstance(effect, TruncatePrefix):
            invariant(effect.below_seq <= node.checkpoint.applied + 1,
                      "retention: truncating above the replica's durable applied seq")
            node.log.truncate_prefix(effect.below_seq)
        elif isinstance(effect, PersistAcceptor):
            node.acceptor_durable = effect.state
        elif isinstance(effect, SendRegister):
            self._send(n, effect.to, effect.message)
        elif isinstance(effect, ConfigChosen):
            self._note(f"n{n}", "config chosen", effect.config)
            self.stats["epoch_changes"] += 1
            if effect.config.epoch > self.latest_config.epoch:
                self.latest_config = effect.config
            self._at(0, "config_chosen", n, node.incarnation, effect.config)
        else:
            raise InvariantViolation(f"unknown effect {effect!r}")

    def _apply(self, node: SimNode, entries) -> None:
        """The replica applies after a delay (sometimes long: a lagging replica), then tells the core."""
        delay = self.rng.randint(0, 200)
        if self.rng.random() < self.faults.slow_apply:
            delay = self.rng.randint(200, self.faults.slow_apply_us)
        self._at(delay, "apply", node.node, node.incarnation, entries)

    def _on_apply(self, node_id: int, incarnation: int, entries) -> None:
        node = self._alive(node_id, incarnation)
        if node is None:
            return
        outcomes = []
        for entry in entries:
            outcome = node.replica.apply(entry)
            seq = entry.seq
            fingerprint = (entry.epoch, entry.request_id, entry.payload)
            first = self.entry_at.setdefault(seq, fingerprint)
            if first != fingerprint:
                self.fail(f"I1: seq {seq} applied as {fingerprint[:2]} on n{node.node}, earlier as {first[:2]}")
            if self.outcome_at.setdefault(seq, outcome) != outcome:
                self.fail(f"I6: outcome of seq {seq} differs on n{node.node}: {outcome} vs {self.outcome_at[seq]}")
            digest = node.replica.digest()
            if self.digest_at.setdefault(seq, digest) != digest:
                self.fail(f"I6: replica state after seq {seq} differs on n{node.node}")
            for member in self.latest_config.chain:           # I8
                other = self.nodes[member]
                if not other.alive or other.core is None or not other.core.serving or other.core.electing:
                    continue
                for slot in entry.slots:
                    if other.core.witness_of(slot) < seq:
                        self.fail(f"I8: n{node.node} applies seq {seq} but n{member}'s witness for slot "
                                  f"{slot} is {other.core.witness_of(slot)}")
            outcomes.append((seq, outcome))
        self._note(f"n{node.node}", "apply", entries[0].seq, "..", entries[-1].seq)
        self._run_effects(node, node.core.on_applied(entries[-1].seq, outcomes, self.node_now(node)))

    def _check_answer(self, node: SimNode, reply: Reply) -> None:
        if not isinstance(reply.outcome, tuple):
            return
        self.answers += 1
        seq = reply.seq
        core = node.core
        if seq > core.committed:
            self.fail(f"I2: n{node.node} answers seq {seq} above committed {core.committed}")
        count = sum(1 for m in core.config.chain if core.applied_by.get(m, 0) >= seq)
        if count < 2:
            self.fail(f"I2: n{node.node} answers seq {seq} applied by only {count}")
        tag = core.tag(seq)
        for other in self.nodes.values():
            log = other.log
            if log.first_seq is not None and seq < log.first_seq:
                continue
            if seq not in log or log.read(seq, seq)[0].tag != tag:
                self.fail(f"I2: answered seq {seq} {tag} is not durable on n{other.node}")

    # ------------------------------------------------------------ node events

    def _alive(self, node_id: int, incarnation: int | None = None) -> SimNode | None:
        node = self.nodes[node_id]
        if not node.alive or (incarnation is not None and node.incarnation != incarnation):
            return None
        return node

    def _on_tick(self, node_id: int, incarnation: int) -> None:
        node = self._alive(node_id, incarnation)
        if node is None:
            return
        now = self.node_now(node)
        effects = node.core.on_tick(now)
        if node.proposer is not None:
            effects += node.proposer.on_tick(now)
        self._run_effects(node, effects)
        self._at(self.rng.randint(800, 1500), "tick", node_id, incarnation)

    def _on_replica_sync(self, node_id: int, incarnation: int) -> None:
        node = self._alive(node_id, incarnation)
        if node is None:
            return
        node.checkpoint = copy.deepcopy(node.replica)
        self._run_effects(node, node.core.on_replica_synced(node.checkpoint.applied, self.node_now(node)))
        self._at(self.rng.randint(3000, 8000), "replica_sync", node_id, incarnation)

    def _on_persisted(self, node_id: int, incarnation: int, batch_id: int) -> None:
        node = self._alive(node_id, incarnation)
        if node is not None:
            self._run_effects(node, node.core.on_persisted(batch_id, self.node_now(node)))

    def _on_config_chosen(self, node_id: int, incarnation: int, config: Config) -> None:
        node = self._alive(node_id, incarnation)
        if node is not None and node.core.electing:
            node.proposer = None
            self._run_effects(node, node.core.on_config_chosen(config, self.node_now(node)))

    def _on_restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        node.alive = True
        node.incarnation += 1
        node.log = LogStore.open(node.disk, segment_bytes=2048)
        node.replica = copy.deepcopy(node.checkpoint)
        entries = node.log.read(node.log.first_seq, node.log.last_seq) if node.log.last_seq else []
        if entries:
            invariant(entries[0].seq <= node.replica.applied + 1, "log truncated above the replica checkpoint")
            entries = [e for e in entries if e.seq >= min(entries[0].seq, node.replica.applied + 1)]
        invariant(not entries or entries[-1].seq >= node.replica.applied,
                  "the replica checkpoint is ahead of the log")
        node.acceptor = Acceptor(node.acceptor_durable)
        node.core = ChainReplica(node_id, node.acceptor_durable.value, entries, node.replica.applied,
                                 self.limits, restarted=True, now_us=self.node_now(node))
        node.proposer = Proposer(node_id, NODES, lambda config, me=node_id: config.rejoin(me),
                                 retry_after_us=10_000)
        self._note("RESTART", f"n{node_id}", "log", node.log.first_seq, "..", node.log.last_seq,
                   "checkpoint", node.replica.applied)
        self._at(self.rng.randint(0, 1000), "tick", node_id, node.incarnation)
        self._at(self.rng.randint(1000, 5000), "replica_sync", node_id, node.incarnation)
        self._run_effects(node, node.proposer.start(self.node_now(node)))

    def _on_deliver(self, sender, to, message) -> None:
        if isinstance(to, tuple):
            self._client_receive(self.clients[to[1]], message)
            return
        node = self._alive(to)
        if node is None:
            return
        self._note(f"n{to}", "<-", sender, _short(message))
        now = self.node_now(node)
        core = node.core
        if isinstance(message, Forward):
            effects = core.on_forward(message, now)
        elif isinstance(message, Ack):
            effects = core.on_ack(message, now)
        elif isinstance(message, Sync):
            effects = core.on_sync(message, now)
        elif isinstance(message, SyncReply):
            effects = core.on_sync_reply(message, now)
        elif isinstance(message, Refuse):
            effects = core.on_refuse(message, now)
        elif isinstance(message, Submit):
            effects = core.on_submit(message, now)
        elif isinstance(message, Read):
            effects = core.on_read(message, now)
        elif isinstance(message, Prepare):
            effects = node.acceptor.on_prepare(sender, message)
        elif isinstance(message, Accept):
            effects = node.acceptor.on_accept(sender, message)
        elif isinstance(message, (Promise, Accepted, Nack)):
            effects = node.proposer.on_message(sender, message, now) if node.proposer else []
        else:
            raise InvariantViolation(f"unknown message {message!r}")
        self._run_effects(node, effects)

    # ------------------------------------------------------------ clients

    def _client_now(self, client: SimClient) -> int:
        return self.now + client.skew_us

    def _on_client_next(self, client_id: int) -> None:
        client = self.clients[client_id]
        if client.op is not None or client.remaining == 0:
            return
        client.remaining -= 1
        client.counter += 1
        key = self.rng.choice(self.workload.keys)
        roll = self.rng.random()
        self.order += 1
        op = ClientOp("read", key, invoke=self.order)
        if client.remaining == 0:
            pass                                                     # every client ends with a read
        elif roll < 0.35:
            op = ClientOp("write", key, value=f"c{client_id}.{client.counter}", invoke=self.order)
        elif roll < 0.45:
            op = ClientOp("write", key, value=None, invoke=self.order)
        elif roll < 0.6:
            op = ClientOp("cas", key, value=f"c{client_id}.{client.counter}",
                          expected=client.last_seen.get(key), invoke=self.order)
        elif roll < 0.7:
            op = ClientOp("cas", key, value=f"c{client_id}.{client.counter}", expected=None, invoke=self.order)
        if op.kind != "read":
            op.request_id = f"c{client_id}.{client.counter}".encode()
            op.not_after = self._client_now(client) + self.workload.commit_deadline_us
        else:
            op.read_id = client.counter
        client.op = op
        self._note(f"c{client_id}", "invoke", op.kind, key, op.value, op.expected)
        self._client_send(client, client.config.head if op.kind != "read" else self.rng.choice(NODES))

    def _client_send(self, client: SimClient, target: int) -> None:
        op = client.op
        op.attempts += 1
        op.target = target
        if op.kind == "read":
            cached = client.cache.get(op.key)
            message = Read(client.client, op.read_id, self.slot(op.key), cached[1] if cached else None, op.key)
        else:
            if self.faults.real_apply:
                payload = real_payload(op, self.incarnation)
            else:
                payload = json.dumps({"op": "cas" if op.kind == "cas" else "put", "key": op.key, "value": op.value,
                                      "expected": op.expected, "not_after": op.not_after}).encode()
            message = Submit(client.client, op.request_id, (self.slot(op.key),), payload)
        self._send(("client", client.client), target, message)
        self._at(self.workload.client_retry_us, "client_timeout", client.client, op.invoke, op.attempts)

    def _on_client_timeout(self, client_id: int, invoke: int, attempts: int) -> None:
        client = self.clients[client_id]
        op = client.op
        if op is None or op.invoke != invoke or op.attempts != attempts:
            return
        if self._client_gave_up(client):
            return
        target = client.config.head if op.kind != "read" and self.rng.random() < 0.6 else self.rng.choice(NODES)
        self._client_send(client, target)

    def _client_gave_up(self, client: SimClient) -> bool:
        op = client.op
        deadline = op.not_after if op.kind != "read" else None
        if op.kind == "read":
            if op.attempts < 40:
                return False
        elif self._client_now(client) <= deadline + self.workload.max_clock_skew_us:
            return False
        self._note(f"c{client.client}", "gives up", op.kind, op.key, "(outcome unknown)")
        self.stats["unknown_" + op.kind] += 1
        if op.kind != "read":
            self.history.append(Operation(op.key, op.kind, op.invoke, None, value=op.value, expected=op.expected,
                                          client=client.client, label=op.request_id.decode()))
        self._client_done(client)
        return True

    def _client_done(self, client: SimClient) -> None:
        client.op = None
        if client.remaining:
            self._at(self.rng.randint(0, 3000), "client_next", client.client)

    def _client_receive(self, client: SimClient, message) -> None:
        op = client.op
        config = getattr(message, "config", None) or (message[5] if isinstance(message, tuple) else None)
        if config is not None and config.epoch > client.config.epoch:
            client.config = config
        if op is None:
            return
        if isinstance(message, Reply):
            if op.kind == "read" or message.request_id != op.request_id:
                return
            if message.outcome == "not_head":
                if message.config.head != op.target:
                    self._client_send(client, message.config.head)
                return
            if message.outcome == "retry":
                return                                                # the timeout resends
            seq, _, status = message.outcome
            self.order += 1
            self._note(f"c{client.client}", "answer", op.request_id, status, "seq", seq)
            self.stats["status_" + status] += 1
            if status == "Expired":
                self._client_done(client)                             # decisively did not happen
                return
            ok = status == "OK"
            invariant(ok or (op.kind == "cas" and status == "PreconditionFailed"), f"unexpected {status}")
            self.history.append(Operation(op.key, op.kind, op.invoke, self.order, value=op.value,
                                          expected=op.expected, output=ok if op.kind == "cas" else None,
                                          client=client.client, label=f"{op.request_id.decode()} seq {seq}"))
            if ok:
                self.acked[op.key].append((self.order, seq))
                client.last_seen[op.key] = op.value
            self._client_done(client)
            return
        if op.kind != "read":
            return
        if isinstance(message, ReadReply):
            if message.read_id != op.read_id:
                return
            if message.status == "TRY_OTHER":
                self.stats["try_other"] += 1
                tail = client.config.tail
                self._client_send(client, tail if op.target != tail else self.rng.choice(NODES))
                return
            value, as_of, value_seq = client.cache[op.key]
            self._finish_read(client, value, as_of, value_seq, "CURRENT")
            return
        if isinstance(message, tuple) and message[0] == "VALUE":
            _, read_id, value, applied, value_seq, _ = message
            if read_id != op.read_id:
                return
            client.cache[op.key] = (value, applied, value_seq)
            self._finish_read(client, value, applied, value_seq, "VALUE")

    def _finish_read(self, client: SimClient, value, served_seq: int, value_seq: int, how: str) -> None:
        op = client.op
        self.order += 1
        # I3: the state served covers every write acknowledged, or observed, before the read began.
        bound = max([seq for at, seq in self.acked[op.key] if at < op.invoke]
                    + [seq for at, seq in self.observed[op.key] if at < op.invoke] + [0])
        if served_seq < bound:
            self.fail(f"I3: read of {op.key} by c{client.client} served at {served_seq} ({how}) "
                      f"below the fence {bound}")
        self.observed[op.key].append((self.order, value_seq))
        self.reads_served[how] += 1
        self.stats["read_" + how] += 1
        self._note(f"c{client.client}", "read", op.key, "->", value, how, served_seq)
        self.history.append(Operation(op.key, "read", op.invoke, self.order, output=value,
                                      client=client.client, label=f"{how} at {served_seq}"))
        client.last_seen[op.key] = value
        self._client_done(client)


def _short(message) -> str:
    if isinstance(message, Forward):
        return (f"Forward e{message.config.epoch} from n{message.sender} "
                f"{message.entries[0].seq}..{message.entries[-1].seq}")
    if isinstance(message, Ack):
        return (f"Ack e{message.config.epoch} from n{message.sender} durable {message.durable_seq} "
                f"committed {message.committed} applied {dict(message.applied)}{' GAP' if message.gap else ''}")
    if isinstance(message, Sync):
        return f"Sync e{message.config.epoch} {message.config.chain} from n{message.sender} runs {message.runs}"
    if isinstance(message, SyncReply):
        return f"SyncReply e{message.config.epoch} common {message.common_seq} highest {message.highest_seq}"
    if isinstance(message, Submit):
        return f"Submit {message.request_id!r}"
    if isinstance(message, Reply):
        return f"Reply {message.request_id!r} seq {message.seq} {message.outcome}"
    text = repr(message)
    return text if len(text) < 160 else text[:157] + "..."

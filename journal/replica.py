"""The chain replica core: one journal node of a partition, every role (head, middle, tail).

A pure, synchronous state machine: handlers take an input (with the time as an
argument) and return a list of effects (journal/messages.py) that the shell
carries out IN ORDER; a crash may happen after any of them. No I/O, no clock.

Write path (DESIGN §3):
1. Head, on Submit: if the chain is broken (entries uncommitted and no commit
   progress for ACK_WAIT) answer "retry" — no seq, no witness raised. A request
   id already waiting in the head's log is not appended twice. Otherwise tag the
   entry (epoch, seq = last + 1), stamp time = max(clock, previous + 1 µs).
2. Any node appends the entries it holds beyond its durable seq with ONE Persist
   (one fsync); entries arriving meanwhile wait and form the next batch
   (coalescing, no timers).
3. On on_persisted: raise the witness for every slot of the batch (RaiseWitness),
   THEN forward the durable entries to the successor (Forward).
4. The tail's durable seq is the committed seq. Committed entries are applied in
   order, one Apply at a time, from the node's own log.
5. Acks flow up cumulatively: durable seq, committed <= N, applied <= N per
   downstream replica, their durable applied seq, outcomes. A node raises its
   committed seq from its successor's ack and applies (step 4).
6. The head answers a waiting request once its entry is committed and applied by
   a majority of the chain's replicas (the head's own included: its outcome is
   the one answered; the other replicas' outcomes must agree, I6).

Epochs and rejoin (DESIGN §6, first version):
7. Every message carries the sender's config; an older epoch is refused with
   Refuse(config), a newer one is adopted first (step 8).
8. On adopting an epoch, a node with a predecessor sends it Sync(its log's epoch
   runs) and accepts no forwards until the SyncReply; a node with a successor
   forwards nothing until that successor's Sync. The predecessor answers with the
   longest common prefix on (epoch, seq) and its highest seq, and forwards from there
   — but only once it is itself synced with ITS predecessor (the head always is): a
   Sync arriving earlier is held and answered right after the node's own SyncReply.
   So the handshake settles head first, and every synced node's log is a prefix of
   its predecessor's, hence of the head's (the "prefix order" the recovery rule uses).
9. A restarted node (`restarted=True`) serves nothing until (a) the register has
   chosen a new epoch with it as tail (journal/config.py, proposer), (b) SyncReply:
   it truncates its log to the common prefix (TruncateSuffix) and sets its witness
   floor to the predecessor's highest seq, (c) it has caught up: durable and
   applied >= that seq. A new tail treats its whole log as committed.
   Several nodes may be restarting at once (two, or the whole cluster after a
   power cut); step 12 is the rule that makes that safe.
10. Retention: every node truncates its log below min(durable applied seq of all
    current members) - RETENTION_ENTRIES (TruncatePrefix).

Reads (DESIGN §4):
11. W = witness(slot) (max of the slot's value and the floor). as_of >= W ->
    CURRENT; applied >= W -> ReadValue (the shell answers from one snapshot with
    its applied seq); else wait until applied >= W, at most READ_WAIT, then TRY_OTHER.
    A node not serving answers TRY_OTHER.

Recovery after double and whole-cluster failures (the head-recovery step):
12. Rule. The chain is always all three nodes, and an entry is committed only once
    durable on the tail after the tail synced (step 8), i.e. on every node of the
    chain. Only a restarted node that does not serve yet ever truncates its log
    (TruncateSuffix), and only to the common prefix with a synced predecessor, whose
    log holds every committed entry. By induction: EVERY committed entry — so every
    acknowledged one, and every one any replica applied or any read saw — is in
    EVERY node's durable log, at the same (epoch, seq). Hence:
    (a) Any node's log, as recovered from its disk, starts with the whole committed
        log; what lies beyond it was never acknowledged nor visible, and may be
        kept (committed later, as if it had just arrived) or cut, whole entries at
        a time — nothing unacknowledged becomes partly visible.
    (b) So a restarted node that finds itself head of a new epoch with no serving
        node before it (every node restarted: the register's rejoin proposals put
        serving nodes first, restarted ones after them in the order they were
        chosen) recovers from its OWN log: it sets its witness floor and its
        catch-up target to its highest seq, forwards its log down the chain (the
        others truncate to their common prefix with it, step 9(b)), and serves once
        that log is committed and applied — which needs the whole chain. The
        recovered chain therefore starts from the committed log, which is the same
        on every node; among uncommitted suffixes the head's wins.
    (c) With only two nodes back and the third not running, the third is still in
        the chain: nothing commits, so the restarted nodes never finish catching up
        and serve neither reads nor writes — a pause until it returns. A majority
        cannot prove where the committed log ends (the missing node may be the tail,
        the only one whose log ends exactly there), and removing a member needs the
        failure detection of a later issue. A node that stayed up keeps serving
        reads throughout, and heads the recovered chain.
    (d) Epochs fence old roles: every message carries the epoch, older ones are
        refused, so a node acting in an old epoch cannot commit beside the new chain.
    (e) Until it serves, a restarted head answers writes "retry" (the client keeps
        the request id) and reads TRY_OTHER; nothing it holds is visible before
        it is committed on all three.
    The argument rests on "the chain is every node": once members can be removed
    (a later issue), a chain shorter than the cluster commits without the removed
    node, and the recovering head must then come from the last chain's members.

Invariants (checked with invariant()): seqs dense; committed <= durable on every
node that could have it; apply in seq order, only committed entries; a suffix is
truncated only above the committed seq, only by a restarted node not yet serving.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import invariant
from journal.config import Config
from journal.messages import (
    Ack, Apply, Forward, Persist, RaiseWitness, Read, ReadReply, ReadValue, Refuse, Reply, Send,
    Submit, Sync, SyncReply, TruncatePrefix, TruncateSuffix,
)
from journal.records import Entry


@dataclass(frozen=True)
class JournalLimits:
    ack_wait_us: int = 1_000_000
    read_wait_us: int = 50_000
    resend_after_us: int = 20_000
    retention_entries: int = 64
    max_batch_entries: int = 256
    max_forward_entries: int = 256


class ChainReplica:
    def __init__(self, node: int, config: Config, log_entries: list[Entry], applied_seq: int,
                 limits: JournalLimits, restarted: bool, now_us: int = 0) -> None:
        self.node = node
        self.config = config
        self.limits = limits
        self.entries: dict[int, Entry] = {e.seq: e for e in log_entries}
        self.first_seq = log_entries[0].seq if log_entries else applied_seq + 1
        self.last_seq = log_entries[-1].seq if log_entries else applied_seq
        for previous, entry in zip(log_entries, log_entries[1:]):
            invariant(entry.seq == previous.seq + 1, "recovered log not dense")
        self.durable_seq = self.last_seq
        self.committed = applied_seq
        self.applied = applied_seq
        self.apply_in_flight = 0                     # highest seq handed to Apply, not yet applied
        self.applied_by: dict[int, int] = {node: applied_seq}
        self.durable_applied_by: dict[int, int] = {node: applied_seq}
        self.truncated_below = 0
        self.persisting: int | None = None           # batch id in flight
        self.next_batch_id = 1
        self.persist_upto = self.last_seq
        # Witness (DESIGN §4): slot -> highest seq; a floor for every slot.
        self.witness: dict[int, int] = {}
        self.witness_floor = 0
        # Rejoin (step 9).
        self.restarted = restarted
        self.serving = not restarted
        self.electing = restarted                    # waiting for the register's new epoch
        self.catch_up_to: int | None = None
        # Step 8: handshake state.
        self.synced_with_predecessor = not restarted
        self.sync_sent_us = -1 << 62
        self.successor_durable: int | None = None if restarted else self.last_seq
        self.sent_upto = self.last_seq
        self.last_forward_us = now_us
        self.pending_sync: Sync | None = None        # a successor's Sync held until this node is synced
        # Head state (steps 1, 6).
        self.last_time_us = log_entries[-1].time_us if log_entries else 0
        self.waiting: dict[int, list[tuple[int, bytes]]] = {}    # seq -> [(client, request id)]
        self.seq_of_request: dict[bytes, int] = {}
        self.outcomes: dict[int, object] = {}
        self.unacked_outcomes: list[tuple[int, object]] = []
        self.commit_progress_us = now_us
        self.parked_reads: list[tuple[int, Read]] = []            # (deadline, read)
        self.retention_done = 0

    # ------------------------------------------------------------ helpers

    @property
    def is_head(self) -> bool:
        return self.config.head == self.node and not self.electing

    @property
    def is_tail(self) -> bool:
        return self.config.tail == self.node

    @property
    def predecessor(self) -> int | None:
        return self.config.predecessor(self.node) if self.node in self.config.chain else None

    @property
    def successor(self) -> int | None:
        return self.config.successor(self.node) if self.node in self.config.chain else None

    def tag(self, seq: int) -> tuple[int, int] | None:
        entry = self.entries.get(seq)
        return entry.tag if entry else None

    def witness_of(self, slot: int) -> int:
        if slot < 0:        # the fence of listings (DESIGN §4 step 6): every durable entry
            return max(self.durable_seq, self.witness_floor)
        return max(self.witness.get(slot, 0), self.witness_floor)

    def _read_fence(self, read: Read) -> int:
        """The witness a read must reach: the highest over every slot its answer depends on."""
        fence = self.witness_of(read.slot)
        for slot in read.also_slots:
            fence = max(fence, self.witness_of(slot))
        return fence

    def caught_up(self) -> bool:
        return self.serving and self.synced_with_predecessor and not self.electing

    def _runs(self) -> tuple[tuple[int, int, int], ...]:
        runs: list[list[int]] = []
        for seq in range(self.first_seq, self.last_seq + 1):
            epoch = self.entries[seq].epoch
            if runs and runs[-1][0] == epoch:
                runs[-1][2] = seq
            else:
                runs.append([epoch, seq, seq])
        return tuple(tuple(run) for run in runs)

    # ------------------------------------------------------------ step 7: epochs

    def _check_epoch(self, config: Config, sender: int, now_us: int) -> tuple[bool, list]:
        """Refuse an older epoch; adopt a newer one. Returns (handle it?, effects)."""
        if self.electing:
            return False, []
        if config.epoch < self.config.epoch:
            return False, [Send(sender, Refuse(self.config))]
        if config.epoch > self.config.epoch:
            return True, self.adopt(config, now_us)
        return True, []

    def adopt(self, config: Config, now_us: int) -> list:
        """Step 8: adopt a newer configuration."""
        invariant(config.epoch > self.config.epoch or self.electing, "adopting an older epoch")
        was_head = self.is_head
        self.config = config
        self.electing = False
        effects: list = []
        if self.node not in config.chain:
            self.serving = False
            return effects
        if not self.is_head or not was_head:
            for seq, waiters in self.waiting.items():
                for client, request_id in waiters:
                    effects.append(Reply(client, request_id, seq, "retry", config))
            self.waiting.clear()
            self.seq_of_request.clear()
        if self.is_head:
            self.last_time_us = max(self.last_time_us, self.entries[self.last_seq].time_us
                                    if self.last_seq in self.entries else 0)
        self.successor_durable = None
        self.sent_upto = 0
        self.pending_sync = None
        self.commit_progress_us = now_us
        if self.predecessor is not None:
            self.synced_with_predecessor = False
            effects += self._send_sync(now_us)
        else:
            self.synced_with_predecessor = True
            if self.restarted and not self.serving:
                # Step 12(b): a restarted head recovers from its own log, which holds the
                # whole committed log; it serves once all of it is committed and applied.
                # Its witness: every slot at its highest seq (a target learned from an
                # earlier predecessor may name a dropped uncommitted suffix: forgotten).
                self.witness.clear()
                self.witness_floor = self.last_seq
                self.catch_up_to = self.last_seq
                self._check_caught_up()
        return effects

    def _send_sync(self, now_us: int) -> list:
        self.sync_sent_us = now_us
        return [Send(self.predecessor, Sync(self.config, self.node, self._runs()))]

    def on_config_chosen(self, config: Config, now_us: int) -> list:
        """Step 9(a): the register chose an epoch with this restarted node as tail."""
        invariant(self.electing, "config chosen while not electing")
        invariant(config.tail == self.node, "a restarted node rejoins as the tail")
        return self.adopt(config, now_us)

    # ------------------------------------------------------------ step 1: submit

    def on_submit(self, submit: Submit, now_us: int) -> list:
        return self.on_submits((submit,), now_us)

    def on_submits(self, submits, now_us: int) -> list:
        """Step 1 for every entry of one client message, then one Persist for all that were appended."""
        effects: list = []
        appended = False
        for submit in submits:
            if not self.is_head:
                effects.append(Reply(submit.client, submit.request_id, None, "not_head", self.config))
                continue
            if not self.serving:                           # step 12(b): a head still recovering
                effects.append(Reply(submit.client, submit.request_id, None, "retry", self.config))
                continue
            seq = self.seq_of_request.get(submit.request_id)
            if seq is not None:                            # already in the log, uncommitted
                self.waiting.setdefault(seq, []).append((submit.client, submit.request_id))
                effects += self._answer_waiting()
                continue
            if not self._chain_healthy(now_us):
                effects.append(Reply(submit.client, submit.request_id, None, "retry", self.config))
                continue
            if self.committed >= self.last_seq:
                self.commit_progress_us = now_us          # an idle chain starts its ACK_WAIT now
            self.last_time_us = max(now_us, self.last_time_us + 1)
            self.last_seq += 1
            entry = Entry(self.config.epoch, self.last_seq, self.last_time_us, submit.request_id,
                          submit.slots, submit.payload)
            self.entries[entry.seq] = entry
            self.waiting[entry.seq] = [(submit.client, submit.request_id)]
            self.seq_of_request[submit.request_id] = entry.seq
            appended = True
        if appended:
            effects += self._maybe_persist()
        return effects

    def _chain_healthy(self, now_us: int) -> bool:
        if self.committed >= self.last_seq:
            return True
        return now_us - self.commit_progress_us <= self.limits.ack_wait_us

    # ------------------------------------------------------------ steps 2, 3: persist, witness, forward

    def _maybe_persist(self) -> list:
        if self.persisting is not None or self.durable_seq >= self.last_seq:
            return []
        if self.electing or not self.synced_with_predecessor and self.predecessor is not None:
            return []
        upto = min(self.last_seq, self.durable_seq + self.limits.max_batch_entries)
        batch = tuple(self.entries[seq] for seq in range(self.durable_seq + 1, upto + 1))
        self.persisting = self.next_batch_id
        self.next_batch_id += 1
        self.persist_upto = upto
        return [Persist(self.persisting, batch)]

    def on_persisted(self, batch_id: int, now_us: int) -> list:
        if batch_id != self.persisting:
            return []                                  # a batch from before a truncation
        self.persisting = None
        first, upto = self.durable_seq + 1, self.persist_upto
        self.durable_seq = upto
        effects: list = []
        for seq in range(first, upto + 1):            # step 3: witness before forward
            entry = self.entries[seq]
            for slot in entry.slots:
                if self.witness.get(slot, 0) < seq:
                    self.witness[slot] = seq
            effects.append(RaiseWitness(entry.slots, seq))
        if self.is_tail and self.synced_with_predecessor:
            effects += self._commit(self.durable_seq, now_us)   # step 4
            effects += self._ack_up()
        else:
            effects += self._forward(now_us)
            if self.predecessor is not None:
                effects += self._ack_up()
        effects += self._maybe_persist()
        return effects

    def _forward(self, now_us: int) -> list:
        successor = self.successor
        if successor is None or self.successor_durable is None:
            return []
        start = max(self.sent_upto, self.successor_durable) + 1
        if start > self.durable_seq:
            return []
        upto = min(self.durable_seq, start + self.limits.max_forward_entries - 1)
        entries = tuple(self.entries[seq] for seq in range(start, upto + 1))
        self.sent_upto = upto
        self.last_forward_us = now_us
        prev = self.tag(start - 1)
        return [Send(successor, Forward(self.config, self.node, prev, entries,
                                        tuple(sorted(self.durable_applied_by.items()))))]

    def on_forward(self, message: Forward, now_us: int) -> list:
        handle, effects = self._check_epoch(message.config, message.sender, now_us)
        if not handle or message.sender != self.predecessor or not self.synced_with_predecessor:
            return effects
        self._merge_durable_applied(message.durable_applied)
        entries = message.entries
        first = entries[0].seq
        if first > self.last_seq + 1:
            return effects + self._ack_up(gap=True)          # a hole: ask for a resend
        mine = self.tag(first - 1)
        invariant(message.prev is None or mine is None or message.prev == mine,
                  f"node {self.node}: forward after {message.prev} but my log has {mine}")
        for entry in entries:
            if entry.seq <= self.last_seq:
                mine = self.tag(entry.seq)
                invariant(mine is None or mine == entry.tag,
                          f"node {self.node}: forward of {entry.tag} conflicts with {mine}")
                continue
            self.entries[entry.seq] = entry
            self.last_seq = entry.seq
        return effects + self._maybe_persist() + self._ack_up()

    # ------------------------------------------------------------ steps 4-6: commit, apply, ack, answer

    def _commit(self, seq: int, now_us: int) -> list:
        if seq > self.committed:
            invariant(seq <= self.durable_seq or not self.is_tail, "the tail commits only what is durable")
            self.committed = seq
            self.commit_progress_us = now_us
        return self._maybe_apply()

    def _maybe_apply(self) -> list:
        if self.apply_in_flight or self.applied >= self.committed:
            return []
        upto = min(self.committed, self.durable_seq, self.applied + self.limits.max_batch_entries)
        if upto <= self.applied:
            return []
        self.apply_in_flight = upto
        return [Apply(tuple(self.entries[seq] for seq in range(self.applied + 1, upto + 1)))]

    def on_applied(self, applied_seq: int, outcomes: list[tuple[int, object]], now_us: int) -> list:
        invariant(applied_seq == self.apply_in_flight, "applied seq is not the one handed to apply")
        self.apply_in_flight = 0
        self.applied = applied_seq
        self.applied_by[self.node] = max(self.applied_by.get(self.node, 0), applied_seq)
        for seq, outcome in outcomes:
            if seq in self.waiting or self.is_head:
                self.outcomes[seq] = outcome
        self.unacked_outcomes += outcomes
        self._check_caught_up()
        effects = self._maybe_apply() + self._wake_reads(now_us)
        if self.predecessor is not None:
            effects += self._ack_up()
        effects += self._answer_waiting()
        return effects

    def _check_caught_up(self) -> None:
        if self.catch_up_to is not None and self.durable_seq >= self.catch_up_to \
                and self.applied >= self.catch_up_to:
            self.serving = True                        # step 9(c)
            self.catch_up_to = None

    def on_replica_synced(self, durable_applied: int, now_us: int) -> list:
        self.durable_applied_by[self.node] = max(self.durable_applied_by.get(self.node, 0), durable_applied)
        return self._retention()

    def _merge_durable_applied(self, pairs) -> None:
        for node, seq in pairs:
            if seq > self.durable_applied_by.get(node, 0):
                self.durable_applied_by[node] = seq

    def _ack_up(self, gap: bool = False) -> list:
        predecessor = self.predecessor
        if predecessor is None or not self.synced_with_predecessor:
            return []
        outcomes, self.unacked_outcomes = tuple(self.unacked_outcomes[-64:]), []
        return [Send(predecessor, Ack(self.config, self.node, self.durable_seq, self.committed,
                                      tuple(sorted(self.applied_by.items())),
                                      tuple(sorted(self.durable_applied_by.items())), outcomes, gap))]

    def on_ack(self, message: Ack, now_us: int) -> list:
        handle, effects = self._check_epoch(message.config, message.sender, now_us)
        if not handle or message.sender != self.successor or self.successor_durable is None:
            return effects
        self.successor_durable = max(self.successor_durable, min(message.durable_seq, self.durable_seq))
        if message.gap:
            self.sent_upto = self.successor_durable
        for node, seq in message.applied:
            if seq > self.applied_by.get(node, 0):
                self.applied_by[node] = seq
        self._merge_durable_applied(message.durable_applied)
        for seq, outcome in message.outcomes:                # I6 on the fly
            mine = self.outcomes.get(seq)
            invariant(mine is None or mine == outcome,
                      f"replicas disagree on the outcome of seq {seq}: {mine} vs {outcome}")
        invariant(message.committed <= self.durable_seq or message.committed <= self.committed,
                  f"node {self.node}: successor committed {message.committed} beyond my durable {self.durable_seq}")
        effects += self._commit(min(message.committed, self.durable_seq), now_us)
        effects += self._forward(now_us)
        if self.predecessor is not None:
            effects += self._ack_up()
        effects += self._answer_waiting() + self._retention()
        return effects

    def _answer_waiting(self) -> list:
        if not self.is_head or not self.waiting:
            return []
        majority = len(self.config.chain) // 2 + 1
        effects = []
        for seq in sorted(self.waiting):
            if seq > self.committed or seq > self.applied:
                break
            count = sum(1 for node in self.config.chain if self.applied_by.get(node, 0) >= seq)
            if count < majority:
                break
            outcome = self.outcomes.pop(seq)
            for client, request_id in self.waiting.pop(seq):
                effects.append(Reply(client, request_id, seq, outcome, self.config))
                self.seq_of_request.pop(request_id, None)
        # Outcomes of entries nobody waits for here (retries answered elsewhere) are dropped.
        for seq in [s for s in self.outcomes if s not in self.waiting and s <= self.applied]:
            del self.outcomes[seq]
        return effects

    # ------------------------------------------------------------ step 8: sync

    def on_sync(self, message: Sync, now_us: int) -> list:
        handle, effects = self._check_epoch(message.config, message.sender, now_us)
        if not handle or message.sender != self.successor:
            return effects
        if not self.synced_with_predecessor:
            self.pending_sync = message                 # step 8: answered once this node is synced
            return effects
        common = self.first_seq - 1
        done = False
        for epoch, first, last in message.runs:
            for seq in range(first, last + 1):
                if seq < self.first_seq:
                    common = max(common, seq)
                    continue
                if self.tag(seq) != (epoch, seq) or seq > self.durable_seq:
                    done = True
                    break
                common = seq
            if done:
                break
        invariant(common >= self.first_seq - 1 or not message.runs,
                  "successor is behind the retained log: needs a checkpoint install")
        common = min(common, self.durable_seq)
        if self.successor_durable is not None:
            # A repeated Sync in this epoch (resent, duplicated): the successor takes only the
            # first reply to arrive, so never claim more than an earlier answer did — a higher
            # claim could be one it never took, and nothing would be forwarded to it again.
            common = min(common, self.successor_durable)
        self.successor_durable = common
        self.sent_upto = common
        effects.append(Send(message.sender, SyncReply(self.config, self.node, common, self.last_seq)))
        return effects + self._forward(now_us)

    def on_sync_reply(self, message: SyncReply, now_us: int) -> list:
        handle, effects = self._check_epoch(message.config, message.sender, now_us)
        if not handle or message.sender != self.predecessor or self.synced_with_predecessor:
            return effects
        if message.common_seq < self.last_seq:
            invariant(self.restarted and not self.serving,
                      f"node {self.node}: only a restarted node not yet serving truncates its log")
            invariant(message.common_seq >= self.applied,
                      f"node {self.node}: truncating to {message.common_seq} below applied {self.applied}")
            for seq in range(message.common_seq + 1, self.last_seq + 1):
                self.entries.pop(seq, None)
            self.last_seq = message.common_seq
            self.durable_seq = min(self.durable_seq, self.last_seq)
            self.persisting = None
            effects.append(TruncateSuffix(message.common_seq))
        self.synced_with_predecessor = True
        if self.restarted and not self.serving:
            # Every slot starts at the predecessor's highest seq, which is at or above every
            # committed entry (step 12); an earlier, higher target is forgotten with its epoch.
            self.witness.clear()
            self.witness_floor = message.highest_seq
            self.catch_up_to = message.highest_seq
        if self.is_tail:
            effects += self._commit(self.durable_seq, now_us)   # its whole log is committed
        self._check_caught_up()
        effects += self._ack_up() + self._maybe_persist()
        pending, self.pending_sync = self.pending_sync, None
        if pending is not None and pending.config.epoch == self.config.epoch and pending.sender == self.successor:
            effects += self.on_sync(pending, now_us)     # step 8: the successor's held Sync
        return effects

    def on_refuse(self, message: Refuse, now_us: int) -> list:
        if self.electing or message.config.epoch <= self.config.epoch:
            return []
        return self.adopt(message.config, now_us)

    # ------------------------------------------------------------ step 11: reads

    def on_read(self, read: Read, now_us: int) -> list:
        if not self.serving or self.electing:
            return [ReadReply(read.client, read.read_id, "TRY_OTHER", None, self.config)]
        fence = self._read_fence(read)
        if read.as_of is not None and read.as_of >= fence:
            return [ReadReply(read.client, read.read_id, "CURRENT", read.as_of, self.config)]
        if self.applied >= fence:
            return [ReadValue(read.client, read.read_id, read.key, self.config)]
        self.parked_reads.append((now_us + self.limits.read_wait_us, read))
        return []

    def _wake_reads(self, now_us: int) -> list:
        effects, still = [], []
        for deadline, read in self.parked_reads:
            if self.applied >= self._read_fence(read):
                effects.append(ReadValue(read.client, read.read_id, read.key, self.config))
            elif now_us > deadline:
                effects.append(ReadReply(read.client, read.read_id, "TRY_OTHER", None, self.config))
            else:
                still.append((deadline, read))
        self.parked_reads = still
        return effects

    # ------------------------------------------------------------ ticks: resend, retention

    def on_tick(self, now_us: int) -> list:
        effects = self._wake_reads(now_us)
        if self.electing:
            return effects
        if (self.predecessor is not None and not self.synced_with_predecessor
                and now_us - self.sync_sent_us > self.limits.resend_after_us):
            effects += self._send_sync(now_us)
        if (self.successor_durable is not None and self.durable_seq > self.successor_durable
                and now_us - self.last_forward_us > self.limits.resend_after_us):
            self.sent_upto = self.successor_durable            # resend what was not acked
            effects += self._forward(now_us)
        if self.predecessor is not None and now_us - self.last_forward_us > self.limits.resend_after_us:
            self.last_forward_us = now_us
            effects += self._ack_up()                          # keep the predecessor informed
        return effects + self._answer_waiting()

    def _retention(self) -> list:
        members = self.config.chain
        if any(node not in self.durable_applied_by for node in members):
            return []
        floor = min(self.durable_applied_by[node] for node in members) - self.limits.retention_entries
        floor = min(floor, self.committed, self.applied)
        if floor <= self.retention_done + self.limits.retention_entries:
            return []
        self.retention_done = floor
        for seq in range(self.first_seq, floor):
            self.entries.pop(seq, None)
        self.first_seq = max(self.first_seq, floor)
        return [TruncatePrefix(floor)]

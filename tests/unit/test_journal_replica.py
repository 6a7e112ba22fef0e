"""The chain replica core (journal/replica.py) and the register cores (journal/config.py),
driven by hand: the effect orders and decisions the protocol's steps name.

Properties:
1. Head (steps 1-3): one Persist per batch; submissions arriving while a batch is
   in flight coalesce into the next; seqs dense, times strictly increasing even
   if the clock goes back; RaiseWitness precedes Forward.
2. Head (step 1): with entries uncommitted past ACK_WAIT it answers "retry",
   assigns no seq and raises no witness; a request id already in flight is not
   appended twice.
3. Tail (step 4): persisting commits and emits Apply; the head answers only once
   committed and applied by 2 of 3 (step 6).
4. Epochs (step 7): an older epoch is refused with the newer config.
5. Rejoin (step 9): a restarted tail truncates to the common prefix, sets its
   witness floor, and serves only once caught up.
6. Reads (step 11): CURRENT / VALUE / wait then TRY_OTHER.
7. Register: two proposers cannot both choose different configs for one epoch.
"""

from __future__ import annotations

from journal.config import Acceptor, AcceptorState, Config, ConfigChosen, NO_BALLOT, Proposer, SendRegister
from journal.messages import (
    Ack, Apply, Forward, Persist, RaiseWitness, Read, ReadReply, ReadValue, Refuse, Reply, Send, Submit,
    Sync, SyncReply, TruncateSuffix,
)
from journal.records import Entry
from journal.replica import ChainReplica, JournalLimits

CONFIG = Config(1, (0, 1, 2))
LIMITS = JournalLimits(ack_wait_us=1000, read_wait_us=100, resend_after_us=50, retention_entries=4)


def submit(n: int, slot: int = 7) -> Submit:
    return Submit(client=9, request_id=b"r%d" % n, slots=(slot,), payload=b"p%d" % n)


def kinds(effects) -> list[str]:
    return [type(e).__name__ for e in effects]


def test_head_batches_while_a_persist_is_in_flight():
    head = ChainReplica(0, CONFIG, [], 0, LIMITS, restarted=False)
    first = head.on_submit(submit(1), now_us=100)
    assert kinds(first) == ["Persist"] and [e.seq for e in first[0].entries] == [1]
    assert head.on_submit(submit(2), now_us=90) == []          # coalesced; the clock went back
    assert head.on_submit(submit(3), now_us=95) == []
    effects = head.on_persisted(first[0].batch_id, now_us=120)
    assert kinds(effects) == ["RaiseWitness", "Send", "Persist"]
    second = effects[-1]
    assert [e.seq for e in second.entries] == [2, 3]
    times = [first[0].entries[0].time_us] + [e.time_us for e in second.entries]
    assert times == sorted(times) and len(set(times)) == 3
    forward = effects[1].message
    assert isinstance(forward, Forward) and effects[1].to == 1 and forward.entries[0].seq == 1


def test_broken_chain_answers_retry_without_raising_witness():
    head = ChainReplica(0, CONFIG, [], 0, LIMITS, restarted=False)
    persist = head.on_submit(submit(1), now_us=0)[0]
    head.on_persisted(persist.batch_id, now_us=10)
    effects = head.on_submit(submit(2), now_us=5_000)           # nothing committed for > ACK_WAIT
    assert kinds(effects) == ["Reply"] and effects[0].outcome == "retry"
    assert head.last_seq == 1 and head.witness_of(7) == 1
    again = head.on_submit(submit(1), now_us=5_001)             # the same request id, still in flight
    assert again == [] and head.last_seq == 1


def test_tail_commits_and_head_answers_at_majority_applied():
    head = ChainReplica(0, CONFIG, [], 0, LIMITS, restarted=False)
    tail = ChainReplica(2, CONFIG, [], 0, LIMITS, restarted=False)
    persist = head.on_submit(submit(1), now_us=0)[0]
    entry = persist.entries[0]
    head.on_persisted(persist.batch_id, 1)
    # The tail receives it (through a middle we skip here by talking to it directly).
    tail.config = Config(1, (0, 2))
    tail_effects = tail.on_forward(Forward(tail.config, 0, None, (entry,), ()), 2)
    assert kinds(tail_effects)[0] == "Persist"
    effects = tail.on_persisted(tail_effects[0].batch_id, 3)
    assert kinds(effects)[:2] == ["RaiseWitness", "Apply"]     # witness before apply (I8)
    assert tail.committed == 1
    # Head: committed by the ack, but no answer until applied by 2 of 3.
    ack = Ack(CONFIG, 1, 1, 1, ((1, 0), (2, 0)), (), ())
    head_effects = head.on_ack(ack, 4)
    assert kinds(head_effects) == ["Apply"]
    assert head.on_applied(1, [(1, "OUTCOME")], 5) == []       # only the head applied
    answer = head.on_ack(Ack(CONFIG, 1, 1, 1, ((1, 0), (2, 1)), (), ()), 6)
    assert kinds(answer) == ["Reply"] and answer[0].outcome == "OUTCOME" and answer[0].seq == 1


def test_older_epoch_refused_newer_adopted():
    node = ChainReplica(1, Config(3, (0, 1, 2)), [], 0, LIMITS, restarted=False)
    effects = node.on_ack(Ack(Config(2, (0, 1, 2)), 2, 0, 0, (), (), ()), 0)
    assert effects == [Send(2, Refuse(Config(3, (0, 1, 2))))]
    newer = Config(4, (1, 2, 0))
    effects = node.on_forward(Forward(newer, 0, None, (Entry(4, 1, 1, b"r", (), b""),), ()), 0)
    assert node.config == newer and node.is_head                     # adopted; no predecessor now


def _entry(epoch: int, seq: int) -> Entry:
    return Entry(epoch, seq, seq, b"r%d" % seq, (seq % 3,), b"")


def test_rejoining_tail_truncates_and_serves_only_when_caught_up():
    mine = [_entry(1, 1), _entry(1, 2), _entry(1, 3)]          # seq 3 never reached the others
    rejoiner = ChainReplica(0, CONFIG, mine, applied_seq=1, limits=LIMITS, restarted=True)
    assert not rejoiner.serving
    read = Read(5, 1, slot=1, as_of=None)
    assert rejoiner.on_read(read, 0)[0].status == "TRY_OTHER"
    new = CONFIG.rejoin(0)
    assert new == Config(2, (1, 2, 0))
    effects = rejoiner.on_config_chosen(new, 0)
    assert effects == [Send(2, Sync(new, 0, ((1, 1, 3),)))]
    predecessor = ChainReplica(2, CONFIG, [_entry(1, 1), _entry(1, 2), _entry(2, 3), _entry(2, 4)],
                               applied_seq=2, limits=LIMITS, restarted=False)
    reply = predecessor.on_sync(effects[0].message, 1)
    # The predecessor adopts epoch 2 and syncs with its own predecessor, node 1, first: it
    # answers the rejoiner only once synced itself (step 8), so its log is settled.
    assert reply == [Send(1, Sync(new, 2, ((1, 1, 2), (2, 3, 4))))]
    reply = predecessor.on_sync_reply(SyncReply(new, 1, 4, 4), 1)
    reply = [effect for effect in reply if isinstance(effect, Send) and effect.to == 0]
    assert reply[0] == Send(0, SyncReply(new, 2, 2, 4))
    forward = reply[1].message
    assert [e.tag for e in forward.entries] == [(2, 3), (2, 4)]
    effects = rejoiner.on_sync_reply(reply[0].message, 2)
    assert TruncateSuffix(2) in effects and rejoiner.last_seq == 2
    assert rejoiner.witness_of(1) == 4 and not rejoiner.serving
    # Its whole (truncated) log is committed: seq 2 applies now.
    assert [e.seq for e in next(e for e in effects if isinstance(e, Apply)).entries] == [2]
    rejoiner.on_applied(2, [], 3)
    effects = rejoiner.on_forward(forward, 3)
    persist = next(e for e in effects if isinstance(e, Persist))
    effects = rejoiner.on_persisted(persist.batch_id, 4)
    apply_effect = next(e for e in effects if isinstance(e, Apply))
    assert [e.seq for e in apply_effect.entries] == [3, 4]
    rejoiner.on_applied(4, [], 5)
    assert rejoiner.serving


def test_reads_current_value_wait_and_try_other():
    node = ChainReplica(1, CONFIG, [_entry(1, 1)], applied_seq=0, limits=LIMITS, restarted=False)
    node.witness[4] = 1
    assert node.on_read(Read(5, 1, slot=4, as_of=1), 0)[0].status == "CURRENT"
    assert node.on_read(Read(5, 2, slot=4, as_of=0), 0) == []              # waits for applied >= 1
    assert isinstance(node.on_read(Read(5, 3, slot=9, as_of=None), 0)[0], ReadValue)
    late = [e for e in node.on_tick(1_000) if not isinstance(e, Send)]
    assert [(type(e).__name__, e.read_id) for e in late] == [("ReadReply", 2)] and late[0].status == "TRY_OTHER"


def test_register_one_value_per_epoch():
    start = Config(1, (0, 1, 2))
    acceptors = {a: Acceptor(AcceptorState(NO_BALLOT, NO_BALLOT, start)) for a in (0, 1, 2)}
    p0 = Proposer(0, (0, 1, 2), lambda c: c.rejoin(0), retry_after_us=10)
    p1 = Proposer(1, (0, 1, 2), lambda c: c.rejoin(1), retry_after_us=10)
    chosen = []

    def deliver(proposer, effects, only=(0, 1, 2)):
        out = []
        for effect in effects:
            if isinstance(effect, ConfigChosen):
                chosen.append(effect.config)
                continue
            assert isinstance(effect, SendRegister)
            if effect.to not in only:
                continue
            acceptor = acceptors[effect.to]
            handler = acceptor.on_prepare if type(effect.message).__name__ == "Prepare" else acceptor.on_accept
            for reply in handler(proposer.node, effect.message):
                if isinstance(reply, SendRegister):
                    out += proposer.on_message(effect.to, reply.message, 0)
        chosen.extend(e.config for e in out if isinstance(e, ConfigChosen))
        return [e for e in out if not isinstance(e, ConfigChosen)]

    # 1. p0 prepares on {0, 1}; 2. p1, with a higher ballot, prepares on {1, 2}.
    accepts0 = deliver(p0, p0.start(0), only=(0, 1))
    p1.highest_seen = 5
    accepts1 = deliver(p1, p1.start(0), only=(1, 2))
    assert kinds(accepts0) == kinds(accepts1) == ["SendRegister"] * 3
    # 3. p0's accepts: acceptor 0 accepts, acceptor 1 refuses (promised to p1): nothing chosen.
    deliver(p0, accepts0, only=(0, 1))
    assert chosen == []
    # 4. p1's accepts reach {1, 2}: p1's value is chosen.
    deliver(p1, accepts1, only=(1, 2))
    assert chosen == [Config(2, (0, 2, 1))]
    # 5. p0 retries: its majority includes a p1 acceptor, so it builds on p1's value.
    deliver(p0, deliver(p0, p0.start(0)))
    assert chosen[-1] == Config(3, (2, 1, 0))

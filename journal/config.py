"""The chain configuration and the tiny quorum register that holds it (DESIGN §6, first version).

`Config(epoch, chain)`: the chain of one partition, head first, tail last. The
register is a CASPaxos register over the metadata nodes' acceptors; a change is
a function from the current config to the next, applied by one proposer:

Proposer (a node that restarts, DESIGN §6 "Joining and restarting"):
1. Pick a ballot `(counter, node)` above every ballot seen; send Prepare to all acceptors.
2. On Promises from a majority, take the value accepted with the highest ballot,
   compute `change(value)`, send Accept(ballot, new value) to all.
3. On Accepted from a majority the new value is chosen: effect `ConfigChosen`.
4. A Nack, or no majority within `retry_after_us` (see `on_tick`), restarts at
   step 1 with a higher ballot. Each attempt re-reads, so a change may be applied
   to a value newer than the one first seen (epochs may skip; they never repeat).

Acceptor:
A1. Prepare(b): if b > promised, promise b — `PersistAcceptor` (fsync) BEFORE the
    Promise carrying (accepted ballot, value) is sent; else Nack(promised).
A2. Accept(b, v): if b >= promised, accept — `PersistAcceptor` BEFORE Accepted; else Nack.

Invariants: an acceptor never answers from state it has not persisted; at most
one value is chosen per ballot, and a chosen value is seen by every later
ballot's majority, so epochs are unique and each names one chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from common.errors import invariant

Ballot = tuple[int, int]            # (counter, proposer node id); (0, -1) is "none"
NO_BALLOT: Ballot = (0, -1)


@dataclass(frozen=True, slots=True)
class Config:
    epoch: int
    chain: tuple[int, ...]

    @property
    def head(self) -> int:
        return self.chain[0]

    @property
    def tail(self) -> int:
        return self.chain[-1]

    def successor(self, node: int) -> int | None:
        index = self.chain.index(node)
        return self.chain[index + 1] if index + 1 < len(self.chain) else None

    def predecessor(self, node: int) -> int | None:
        index = self.chain.index(node)
        return self.chain[index - 1] if index > 0 else None

    def rejoin(self, node: int) -> "Config":
        """The next epoch with `node` moved to the tail, the others in their order (DESIGN §6)."""
        return Config(self.epoch + 1, tuple(n for n in self.chain if n != node) + (node,))


# ------------------------------------------------------------ messages

@dataclass(frozen=True, slots=True)
class Prepare:
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Promise:
    ballot: Ballot
    accepted_ballot: Ballot
    value: Config


@dataclass(frozen=True, slots=True)
class Accept:
    ballot: Ballot
    value: Config


@dataclass(frozen=True, slots=True)
class Accepted:
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Nack:
    ballot: Ballot
    promised: Ballot


# ------------------------------------------------------------ effects

@dataclass(frozen=True, slots=True)
class AcceptorState:
    promised: Ballot
    accepted_ballot: Ballot
    value: Config


@dataclass(frozen=True, slots=True)
class PersistAcceptor:
    state: AcceptorState


@dataclass(frozen=True, slots=True)
class SendRegister:
    to: int
    message: object


@dataclass(frozen=True, slots=True)
class ConfigChosen:
    config: Config


# ------------------------------------------------------------ cores

class Acceptor:
    def __init__(self, state: AcceptorState) -> None:
        self.state = state

    def on_prepare(self, sender: int, message: Prepare) -> list:
        state = self.state
        if message.ballot <= state.promised:                        # step A1: refuse
            return [SendRegister(sender, Nack(message.ballot, state.promised))]
        self.state = AcceptorState(message.ballot, state.accepted_ballot, state.value)
        return [PersistAcceptor(self.state),                         # step A1: fsync, then promise
                SendRegister(sender, Promise(message.ballot, state.accepted_ballot, state.value))]

    def on_accept(self, sender: int, message: Accept) -> list:
        if message.ballot < self.state.promised:                     # step A2: refuse
            return [SendRegister(sender, Nack(message.ballot, self.state.promised))]
        self.state = AcceptorState(message.ballot, message.ballot, message.value)
        return [PersistAcceptor(self.state), SendRegister(sender, Accepted(message.ballot))]


@dataclass
class Proposer:
    node: int
    acceptors: tuple[int, ...]
    change: Callable[[Config], Config]
    retry_after_us: int
    highest_seen: int = 0
    ballot: Ballot = NO_BALLOT
    phase: str = "idle"                 # idle | prepare | accept | done
    promises: dict = field(default_factory=dict)
    accepted: set = field(default_factory=set)
    proposed: Config | None = None
    started_us: int = 0

    @property
    def majority(self) -> int:
        return len(self.acceptors) // 2 + 1

    def start(self, now_us: int) -> list:
        """Step 1."""
        self.highest_seen += 1
        self.ballot = (self.highest_seen, self.node)
        self.phase, self.promises, self.accepted, self.started_us = "prepare", {}, set(), now_us
        return [SendRegister(a, Prepare(self.ballot)) for a in self.acceptors]

    def on_message(self, sender: int, message, now_us: int) -> list:
        if getattr(message, "ballot", None) != self.ballot or self.phase in ("idle", "done"):
            if isinstance(message, Nack):
                self.highest_seen = max(self.highest_seen, message.promised[0])
            return []
        if isinstance(message, Nack):                                # step 4
            self.highest_seen = max(self.highest_seen, message.promised[0])
            return self.start(now_us)
        if isinstance(message, Promise) and self.phase == "prepare":
            self.promises[sender] = message
            if len(self.promises) >= self.majority:                  # step 2
                best = max(self.promises.values(), key=lambda p: p.accepted_ballot)
                self.proposed = self.change(best.value)
                invariant(self.proposed.epoch > best.value.epoch, "a config change must raise the epoch")
                self.phase = "accept"
                return [SendRegister(a, Accept(self.ballot, self.proposed)) for a in self.acceptors]
            return []
        if isinstance(message, Accepted) and self.phase == "accept":
            self.accepted.add(sender)
            if len(self.accepted) >= self.majority:                  # step 3
                self.phase = "done"
                return [ConfigChosen(self.proposed)]
        return []

    def on_tick(self, now_us: int) -> list:
        if self.phase in ("prepare", "accept") and now_us - self.started_us > self.retry_after_us:
            return self.start(now_us)                                # step 4: no majority in time
        return []

"""Messages between journal nodes and clients, and the effects the cores return.

Every node-to-node message carries the sender's `Config` (epoch and chain): an
older epoch is refused (answered with `Refuse(newer config)`), a newer one makes
the receiver adopt it before handling the message (DESIGN §6). Carrying the
whole config (a few ids) stands in for "fetch the map from the register": only
configs the register chose are ever sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from journal.config import Config
from journal.records import Entry


# ------------------------------------------------------------ node to node

@dataclass(frozen=True, slots=True)
class Forward:
    """Predecessor -> successor: durable entries, the first right after `prev`."""
    config: Config
    sender: int
    prev: tuple[int, int] | None            # (epoch, seq) of the entry before entries[0]
    entries: tuple[Entry, ...]
    durable_applied: tuple[tuple[int, int], ...]    # gossip for retention: (node, seq)


@dataclass(frozen=True, slots=True)
class Ack:
    """Successor -> predecessor, cumulative (DESIGN §3 steps 4-5)."""
    config: Config
    sender: int
    durable_seq: int                        # the sender's last durable seq
    committed: int                          # committed <= N
    applied: tuple[tuple[int, int], ...]    # applied <= N, per downstream replica
    durable_applied: tuple[tuple[int, int], ...]
    outcomes: tuple[tuple[int, Any], ...]   # (seq, outcome) the sender applied since its last ack
    gap: bool = False                       # the sender saw a hole: resend from durable_seq + 1


@dataclass(frozen=True, slots=True)
class Sync:
    """Successor -> predecessor on adopting an epoch: my log's epoch runs (epoch, first, last)."""
    config: Config
    sender: int
    runs: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class SyncReply:
    config: Config
    sender: int
    common_seq: int                         # the longest prefix our logs share on (epoch, seq)
    highest_seq: int                        # the predecessor's last seq: the joiner's witness floor


@dataclass(frozen=True, slots=True)
class Refuse:
    config: Config                          # the receiver's newer config


# ------------------------------------------------------------ client to node

@dataclass(frozen=True, slots=True)
class Submit:
    client: int
    request_id: bytes
    slots: tuple[int, ...]
    payload: bytes


@dataclass(frozen=True, slots=True)
class Read:
    client: int
    read_id: int
    slot: int
    as_of: int | None                       # the cached entry's applied seq, if any
    key: Any = None                         # opaque to the core, handed to ReadValue
    also_slots: tuple[int, ...] = ()        # further slots the answer depends on (the bucket's)


# ------------------------------------------------------------ effects

@dataclass(frozen=True, slots=True)
class Persist:
    """Append these entries durably: one write, one fdatasync; then call on_persisted(batch_id)."""
    batch_id: int
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class TruncateSuffix:
    after_seq: int


@dataclass(frozen=True, slots=True)
class TruncatePrefix:
    below_seq: int


@dataclass(frozen=True, slots=True)
class RaiseWitness:
    slots: tuple[int, ...]
    seq: int


@dataclass(frozen=True, slots=True)
class Send:
    to: int
    message: Any


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply these committed entries in order; then call on_applied with their outcomes."""
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer a client: `outcome` is apply's, or the strings "retry" / "not_head"."""
    client: int
    request_id: bytes
    seq: int | None                         # the entry that carried this attempt
    outcome: Any
    config: Config


@dataclass(frozen=True, slots=True)
class ReadReply:
    client: int
    read_id: int
    status: str                             # CURRENT | TRY_OTHER
    as_of: int | None
    config: Config


@dataclass(frozen=True, slots=True)
class ReadValue:
    """Answer VALUE from one snapshot of the co-located replica, with its applied seq."""
    client: int
    read_id: int
    key: Any
    config: Config

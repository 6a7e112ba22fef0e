"""The shardstore's executable specification (DESIGN §9): a dict from shard id to bytes.

What a node must do, and what a crash may and may not change:
- put(id, b): OK if id is absent (then id -> b) or already holds b; else EXISTS.
- get(id, [start, end)): the bytes, or NOT_FOUND; a range covering a rotten byte
  must fail (CORRUPT); any range may fail CORRUPT once the shard has rot, never
  return other bytes.
- delete(id): OK, id absent afterwards.
- list(): the ids, in order.
- Acknowledged operations survive a crash. An operation in flight at the crash
  (`begin` without an answer) may have happened or not — but wholly: a shard is
  absent or holds exactly the bytes of one put.

The crash rule, exactly (`allowed_after_crash`). The operations in flight at a
crash were all invoked before it and none was answered, so none of them precedes
another in real time: they are concurrent, and a linearizable node may have
applied any subset of them, in any order. Those it applied compose, each acting on
the state the previous one left — they are not each judged against the
acknowledged state. So the states a shard may be in are exactly those reached from
its acknowledged state by applying some of its in-flight operations, each at most
once, in some order, with the rules of `put` and `delete` above. Example: A
acknowledged, then delete and put(B) in flight: A (neither, or the put alone, which
finds A and is refused), absent (the delete alone, or the put then the delete), or
B (the delete then the put). Issue order is not promised: two calls in flight
together have none (the node orders them when their records are appended, and a
streamed put takes its place only when its last byte has arrived).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

NOT_FOUND = "not_found"
EXISTS = "exists"
CORRUPT = "corrupt"
OK = "ok"


@dataclass
class ShardStoreModel:
    shards: dict[Hashable, bytes] = field(default_factory=dict)
    rot: dict[Hashable, set[int]] = field(default_factory=dict)       # id -> rotten byte offsets
    in_flight: list[tuple[str, Hashable, bytes | None]] = field(default_factory=list)

    def put(self, shard: Hashable, data: bytes) -> str:
        if shard in self.shards and self.shards[shard] != data:
            return EXISTS
        if shard not in self.shards or self.rot.get(shard):
            self.rot.pop(shard, None)          # a re-put of the same bytes repairs rot
        self.shards[shard] = data
        return OK

    def delete(self, shard: Hashable) -> str:
        self.shards.pop(shard, None)
        self.rot.pop(shard, None)
        return OK

    def get(self, shard: Hashable, start: int = 0, end: int | None = None) -> set[str | bytes]:
        """The answers allowed: a set, since rot makes CORRUPT allowed beyond its byte."""
        if shard not in self.shards:
            return {NOT_FOUND}
        data = self.shards[shard]
        end = len(data) if end is None else end
        rotten = self.rot.get(shard, set())
        if any(start <= offset < end for offset in rotten):
            return {CORRUPT}
        return {data[start:end], CORRUPT} if rotten else {data[start:end]}

    def list(self) -> list[Hashable]:
        return sorted(self.shards)

    def flip(self, shard: Hashable, offset: int) -> None:
        self.rot.setdefault(shard, set()).symmetric_difference_update({offset})

    def corrupt(self) -> set[Hashable]:
        return {shard for shard, offsets in self.rot.items() if offsets}

    # ------------------------------------------------------------ crashes

    def begin(self, kind: str, shard: Hashable, data: bytes | None = None) -> int:
        self.in_flight.append((kind, shard, data))
        return len(self.in_flight) - 1

    def allowed_after_crash(self, shard: Hashable) -> set[bytes | None]:
        """Every state `shard` may be in after a crash (the crash rule above): from
        the acknowledged state, apply any subset of its in-flight operations, each
        at most once, in any order."""
        operations = [(kind, data) for kind, target, data in self.in_flight if target == shard]
        allowed: set[bytes | None] = set()

        def explore(state: bytes | None, unused: frozenset[int]) -> None:
            allowed.add(state)
            for number in unused:
                kind, data = operations[number]
                if kind == "delete":
                    after = None
                else:
                    after = data if state is None or state == data else state     # else EXISTS: no change
                explore(after, unused - {number})

        explore(self.shards.get(shard), frozenset(range(len(operations))))
        return allowed

    def crash(self, observed: dict[Hashable, bytes | None]) -> None:
        """Adopt what the node shows for the in-flight shards (checked allowed before)."""
        for shard, data in observed.items():
            if data is None:
                self.shards.pop(shard, None)
                self.rot.pop(shard, None)
            else:
                if self.shards.get(shard) != data:
                    self.rot.pop(shard, None)
                self.shards[shard] = data
        self.in_flight.clear()

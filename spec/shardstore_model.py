"""The shardstore's executable specification (DESIGN §9): a dict from shard id to bytes.

What a node must do, and what a crash may and may not change:
- put(id, b): OK if id is absent (then id -> b) or already holds b; else EXISTS.
- get(id, [start, end)): the bytes, or NOT_FOUND; a range covering a rotten byte
  must fail (CORRUPT); any range may fail CORRUPT once the shard has rot, never
  return other bytes.
- delete(id): OK, id absent afterwards.
- list(): the ids, in order.
- Acknowledged operations survive a crash. An operation in flight at the crash
  (`begin_put` / `begin_delete` without `acknowledge`) may have happened or not —
  but wholly: a shard is absent or holds exactly its bytes.
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

    def allowed_after_crash(self, shard: Hashable) -> list[bytes | None]:
        """Every state `shard` may be in after a crash: the acknowledged one, or the
        result of any in-flight operations on it having happened (wholly)."""
        allowed: list[bytes | None] = [self.shards.get(shard)]
        for kind, target, data in self.in_flight:
            if target != shard:
                continue
            if kind == "put" and (allowed[0] is None or allowed[0] == data):
                allowed.append(data)
            elif kind == "delete":
                allowed.append(None)
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

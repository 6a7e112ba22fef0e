"""The frontend's record cache, kept coherent by the witness (DESIGN §4).

Each entry is a read's answer (absence included) with its as-of seq — the applied
seq of the snapshot it was read from. A read sends that as-of with the key to one
metadata node; the node compares it with its witness W for the key's slot and
answers CURRENT when as-of >= W (the cached answer may be served: no write to the
slot is newer), else the value with a newer as-of, which replaces the entry. The
cache itself never decides freshness: it only remembers (invariant I4 lives at
the node, which raises W before any write becomes visible).

Bounded by CACHE_MAX_BYTES (approximate: inline bytes plus a fixed overhead per
entry), least recently used first out. Entries of different
(partition, partition_generation) never compare: a lookup with another
generation misses.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from common.seams import Inline, ObjectRecord

ENTRY_OVERHEAD_BYTES = 512


def _weight(value: Any) -> int:
    record = getattr(value, "record", None)
    if isinstance(record, ObjectRecord) and isinstance(record.body, Inline):
        return ENTRY_OVERHEAD_BYTES + len(record.body.data)
    return ENTRY_OVERHEAD_BYTES


class RecordCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[tuple, tuple[tuple[int, int, int], Any, int]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def lookup(self, key: tuple, partition: tuple[int, int]) -> tuple[int, Any] | None:
        """(as-of seq, cached value) for `key` in this (partition, generation), or None."""
        found = self.entries.get(key)
        if found is None or found[0][:2] != partition:
            return None
        self.entries.move_to_end(key)
        return found[0][2], found[1]

    def store(self, key: tuple, as_of: tuple[int, int, int], value: Any) -> None:
        previous = self.entries.get(key)
        if previous is not None:
            if previous[0][:2] == as_of[:2] and previous[0][2] > as_of[2]:
                return                      # never replace a newer answer with an older one
            self.bytes -= previous[2]
        weight = _weight(value)
        self.entries[key] = (as_of, value, weight)
        self.entries.move_to_end(key)
        self.bytes += weight
        while self.bytes > self.max_bytes and self.entries:
            _, (_, _, dropped) = self.entries.popitem(last=False)
            self.bytes -= dropped

    def record_hit(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1

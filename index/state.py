"""The key-value view apply and reads work on: RocksDB, or an overlay of one.

`ReadView` is what reads need (get, ordered scan from a key). `Overlay` is a
batch in the making: apply's writes are visible to later reads of the same batch
(entries of one batch see each other), then `ops()` hands them to one RocksDB
write batch. `MemoryView` is a sorted in-memory view, for pure tests.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Iterator, Protocol


class ReadView(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with start <= key < end (end None: to the end), ascending."""


class MemoryView:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def scan(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        index = bisect_left(self.keys, start)
        while index < len(self.keys):
            key = self.keys[index]
            if end is not None and key >= end:
                return
            yield key, self.data[key]
            index += 1

    def write(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in ops:
            if value is None:
                if self.data.pop(key, None) is not None:
                    del self.keys[bisect_left(self.keys, key)]
            else:
                if key not in self.data:
                    insort(self.keys, key)
                self.data[key] = value


class Overlay:
    """Uncommitted writes over a base view; reads see both, writes win."""

    def __init__(self, base: ReadView) -> None:
        self.base = base
        self.writes: dict[bytes, bytes | None] = {}
        self._sorted: list[bytes] = []
        self._decoded: dict[bytes, tuple[bytes, object]] = {}

    def decoded(self, key: bytes, decode) -> object | None:
        """`decode(value)` of the key's current value, decoded once per distinct value
        within this batch (a batch's entries often share their bucket record)."""
        raw = self.get(key)
        if raw is None:
            return None
        memo = self._decoded.get(key)
        if memo is not None and memo[0] is raw:
            return memo[1]
        value = decode(raw)
        self._decoded[key] = (raw, value)
        return value

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        return self.base.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.writes:
            insort(self._sorted, key)
        self.writes[key] = value

    def delete(self, key: bytes) -> None:
        if key not in self.writes:
            insort(self._sorted, key)
        self.writes[key] = None

    def scan(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        mine = self._sorted[bisect_left(self._sorted, start):]
        if end is not None:
            mine = mine[:bisect_left(mine, end)]
        base = self.base.scan(start, end)
        base_item = next(base, None)
        index = 0
        while base_item is not None or index < len(mine):
            if index < len(mine) and (base_item is None or mine[index] <= base_item[0]):
                key = mine[index]
                index += 1
                if base_item is not None and base_item[0] == key:
                    base_item = next(base, None)
                value = self.writes[key]
                if value is not None:
                    yield key, value
            else:
                yield base_item
                base_item = next(base, None)

    def any_in(self, start: bytes, end: bytes | None) -> bool:
        return next(iter(self.scan(start, end)), None) is not None

    def ops(self) -> list[tuple[bytes, bytes | None]]:
        return [(key, self.writes[key]) for key in self._sorted]

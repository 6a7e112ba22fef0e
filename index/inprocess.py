"""An in-process Transport over one IndexReplica: sequencing like a head, no network.

For tests of the cluster MetadataStore's encoding, apply and read paths end to end
(tests/prop/test_index_apply.py) without processes; the metadata node replaces it
with the journal chain. Not a product path.
"""

from __future__ import annotations

import time
from typing import Callable

from index.replica import IndexReplica


class _Entry:
    __slots__ = ("epoch", "seq", "time_us", "payload")

    def __init__(self, epoch: int, seq: int, time_us: int, payload: bytes) -> None:
        self.epoch, self.seq, self.time_us, self.payload = epoch, seq, time_us, payload


class InProcessTransport:
    def __init__(self, replica: IndexReplica, clock_us: Callable[[], int] | None = None) -> None:
        self.replica = replica
        self.clock_us = clock_us or (lambda: time.time_ns() // 1000)
        self.time_us = 0
        self.witness: dict[int, int] = {}

    async def submit(self, request_id: bytes, slots: tuple[int, ...], payload: bytes) -> bytes:
        self.time_us = max(self.clock_us(), self.time_us + 1)
        entry = _Entry(1, self.replica.applied_seq + 1, self.time_us, payload)
        for slot in slots:                      # the witness is raised before the entry applies
            self.witness[slot] = entry.seq
        return self.replica.apply([entry])[0]

    async def read(self, slot: int, request: bytes, as_of: int | None, also_slots: tuple[int, ...] = ()) -> bytes | None:
        fence = max([self.witness.get(slot, 0)] + [self.witness.get(extra, 0) for extra in also_slots])
        if as_of is not None and as_of >= fence:
            return None                         # CURRENT
        return self.replica.answer(request)

    async def close(self) -> None:
        self.replica.close()

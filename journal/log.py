"""The durable log of one journal node (DESIGN §3 step 4, §6 truncation).

Entries live in segment files named by the seq of their first entry
(`%020d.log`), each a run of records (journal/records.py). The in-memory index
maps every seq held to its segment and offset.

Protocol:
1. `append(entries)` = `write(entries)` + `sync()`: one batch, one fdatasync. The
   batch goes to the active segment; a new segment starts only at a batch
   boundary, once the active one holds `segment_bytes`, so a batch is one file.
2. `read(first, last)` returns the entries held in that seq range.
3. `truncate_suffix(after_seq)` drops every entry above `after_seq` (a rejoining
   node cutting an unreplicated suffix, DESIGN §6), durably.
4. `truncate_prefix(below_seq)` drops whole segments whose entries are all below
   `below_seq` (retention below the replicas' durable applied seq); the active
   segment is kept, so entries at or above `below_seq` always survive.
5. `open(disk)` recovers: segments in seq order, records decoded until the first
   bad one; a bad record in the last segment is a torn tail (an append that was
   never synced, hence never acknowledged) and is cut off; one anywhere else is
   corruption and raises LogCorrupted.

Invariants: seqs in the log are dense and ascending; an empty log accepts any
first seq (a node that wiped its log catches up from a peer at any point).
"""

from __future__ import annotations

from common.errors import invariant
from journal import records
from journal.disk import Disk
from journal.records import Entry, RecordError

SEGMENT_BYTES_DEFAULT = 64 << 20
_SUFFIX = ".log"


class LogCorrupted(Exception):
    """A bad record before the tail of the log: not a torn write, so not silently cut."""


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{_SUFFIX}"


class LogStore:
    def __init__(self, disk: Disk, segment_bytes: int = SEGMENT_BYTES_DEFAULT) -> None:
        self.disk = disk
        self.segment_bytes = segment_bytes
        self._segments: list[str] = []                 # in seq order
        self._where: dict[int, tuple[str, int, int]] = {}   # seq -> (segment, offset, end)
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self._unsynced: set[str] = set()
        self.torn_bytes_dropped = 0

    # ------------------------------------------------------------ step 5: recovery

    @classmethod
    def open(cls, disk: Disk, segment_bytes: int = SEGMENT_BYTES_DEFAULT) -> "LogStore":
        store = cls(disk, segment_bytes)
        names = sorted(name for name in disk.list_files() if name.endswith(_SUFFIX))
        for index, name in enumerate(names):
            is_last = index == len(names) - 1
            size = disk.size(name)
            data = disk.read(name, 0, size)
            offset = 0
            while offset < size:
                try:
                    entry, end = records.decode_at(data, offset)
                except RecordError as error:
                    if not is_last:
                        raise LogCorrupted(f"{name} at {offset}: {error}") from None
                    store.torn_bytes_dropped += size - offset
                    disk.truncate(name, offset)
                    break
                if store.last_seq is not None and entry.seq != store.last_seq + 1:
                    raise LogCorrupted(f"{name} at {offset}: seq {entry.seq} after {store.last_seq}")
                if offset == 0 and name != _segment_name(entry.seq):
                    raise LogCorrupted(f"{name} starts with seq {entry.seq}")
                store._where[entry.seq] = (name, offset, end)
                if store.first_seq is None:
                    store.first_seq = entry.seq
                store.last_seq = entry.seq
                offset = end
            if disk.size(name) == 0:
                disk.remove(name)                      # an empty segment (crash after create)
            else:
                store._segments.append(name)
        return store

    # ------------------------------------------------------------ step 1: append

    def write(self, entries: list[Entry]) -> None:
        """Append a batch without syncing it (the first half of `append`)."""
        if not entries:
            return
        seq = entries[0].seq
        invariant(self.last_seq is None or seq == self.last_seq + 1,
                  f"log append of seq {seq} after {self.last_seq}")
        for previous, entry in zip(entries, entries[1:]):
            invariant(entry.seq == previous.seq + 1, "batch seqs not dense")
        if not self._segments or self.disk.size(self._segments[-1]) >= self.segment_bytes:
            name = _segment_name(seq)
            self.disk.create(name)
            self._segments.append(name)
        name = self._segments[-1]
        offset = self.disk.size(name)
        blob = bytearray()
        for entry in entries:
            record = records.encode(entry)
            self._where[entry.seq] = (name, offset + len(blob), offset + len(blob) + len(record))
            blob += record
        self.disk.append(name, bytes(blob))
        self._unsynced.add(name)
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = entries[-1].seq

    def sync(self) -> None:
        for name in sorted(self._unsynced):
            self.disk.sync(name)
        self._unsynced.clear()

    def append(self, entries: list[Entry]) -> None:
        self.write(entries)
        self.sync()

    # ------------------------------------------------------------ step 2: read

    def read(self, first_seq: int, last_seq: int) -> list[Entry]:
        out = []
        for seq in range(max(first_seq, self.first_seq or first_seq), last_seq + 1):
            place = self._where.get(seq)
            if place is None:
                break
            name, offset, end = place
            entry, _ = records.decode_at(self.disk.read(name, offset, end - offset), 0)
            invariant(entry.seq == seq, "log index points at the wrong record")
            out.append(entry)
        return out

    def __contains__(self, seq: int) -> bool:
        return seq in self._where

    # ------------------------------------------------------------ steps 3, 4: truncation

    def truncate_suffix(self, after_seq: int) -> None:
        if self.last_seq is None or after_seq >= self.last_seq:
            return
        self.sync()
        while self._segments:
            name = self._segments[-1]
            first = int(name[:-len(_SUFFIX)])
            if first > after_seq:
                self.disk.remove(name)
                self._segments.pop()
                continue
            _, _, end = self._where[after_seq]
            self.disk.truncate(name, end)
            break
        for seq in range(after_seq + 1, self.last_seq + 1):
            self._where.pop(seq, None)
        if self._segments:
            self.last_seq = after_seq
        else:
            self.first_seq = self.last_seq = None

    def truncate_prefix(self, below_seq: int) -> None:
        while len(self._segments) > 1:
            following_first = int(self._segments[1][:-len(_SUFFIX)])
            if following_first > below_seq:
                break                      # the oldest segment holds seqs >= below_seq
            name = self._segments.pop(0)
            first = int(name[:-len(_SUFFIX)])
            self.disk.remove(name)
            for seq in range(first, following_first):
                self._where.pop(seq, None)
            self.first_seq = following_first

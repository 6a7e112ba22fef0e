"""The journal log store (journal/log.py) keeps exactly what was synced.

Properties:
1. Records round-trip; a flipped byte or a truncated record is detected (RecordError).
2. Append / read / truncate_suffix / truncate_prefix agree with a list model,
   across segment rolls, and survive reopening.
3. Crash: whatever random crash of a MemoryDisk (unsynced appends lost, the
   last write torn at a random byte), recovery yields every synced entry followed
   by a prefix (whole entries only, never a half one) of the unsynced batch.
4. A bad record before the last segment's tail raises LogCorrupted.
5. The same on RealDisk in a temporary directory (real fdatasync).
"""

from __future__ import annotations

import random

import pytest

from journal import records
from journal.disk import MemoryDisk, RealDisk
from journal.log import LogCorrupted, LogStore
from journal.records import Entry, RecordError


def entry(seq: int, epoch: int = 1, size: int = 10) -> Entry:
    return Entry(epoch, seq, 1000 + seq, b"r%d" % seq, (seq % 7, 3), bytes([seq % 256]) * size)


def test_record_round_trip_and_detection():
    e = Entry(3, 99, 123456, b"req", (1, 2, 3), b"payload")
    blob = records.encode(e)
    decoded, end = records.decode_at(blob, 0)
    assert decoded == e and end == len(blob)
    for index in range(len(blob)):
        bad = bytearray(blob)
        bad[index] ^= 0x55
        with pytest.raises(RecordError):
            records.decode_at(bytes(bad), 0)
    for cut in range(len(blob)):
        with pytest.raises(RecordError):
            records.decode_at(blob[:cut], 0)


def test_model_agreement_and_reopen():
    rng = random.Random(5)
    disk = MemoryDisk()
    log = LogStore.open(disk, segment_bytes=200)
    model: list[Entry] = []
    next_seq = 1
    for _ in range(400):
        action = rng.random()
        if action < 0.6:
            batch = [entry(next_seq + i, size=rng.randint(0, 40)) for i in range(rng.randint(1, 4))]
            log.append(batch)
            model += batch
            next_seq += len(batch)
        elif action < 0.75 and model:
            after = rng.randint(model[0].seq - 1, model[-1].seq)
            log.truncate_suffix(after)
            model = [e for e in model if e.seq <= after]
            next_seq = after + 1 if model else next_seq
            if not model:
                next_seq = rng.randint(next_seq, next_seq + 5)
        elif action < 0.85 and model:
            below = rng.randint(model[0].seq, model[-1].seq + 1)
            log.truncate_prefix(below)
            # Whole segments only: everything >= below survives, maybe more.
            assert log.first_seq is not None and log.first_seq <= below
            model = [e for e in model if e.seq >= log.first_seq]
        else:
            log = LogStore.open(disk, segment_bytes=200)
        if model:
            assert (log.first_seq, log.last_seq) == (model[0].seq, model[-1].seq)
            assert log.read(model[0].seq, model[-1].seq) == model
        else:
            assert log.last_seq is None


@pytest.mark.parametrize("seed", range(200))
def test_crash_keeps_synced_batches_and_no_half_entry(seed):
    rng = random.Random(seed)
    disk = MemoryDisk()
    log = LogStore.open(disk, segment_bytes=rng.choice([150, 400, 1 << 20]))
    synced: list[Entry] = []
    seq = 1
    for _ in range(rng.randint(0, 12)):
        batch = [entry(seq + i, size=rng.randint(0, 30)) for i in range(rng.randint(1, 3))]
        log.append(batch)
        synced += batch
        seq += len(batch)
    unsynced: list[Entry] = []
    if rng.random() < 0.8:
        unsynced = [entry(seq + i, size=rng.randint(0, 30)) for i in range(rng.randint(1, 3))]
        log.write(unsynced)
    disk.crash(rng, tear=True)
    recovered = LogStore.open(disk)
    got = recovered.read(1, seq + 10) if recovered.last_seq is not None else []
    assert got[:len(synced)] == synced
    assert got[len(synced):] == unsynced[:len(got) - len(synced)]
    # And the recovered log accepts the next append.
    next_seq = (recovered.last_seq or 0) + 1
    recovered.append([entry(next_seq)])
    assert LogStore.open(disk).read(next_seq, next_seq) == [entry(next_seq)]


def test_bad_record_before_the_tail_is_corruption():
    disk = MemoryDisk()
    log = LogStore.open(disk, segment_bytes=50)
    for seq in range(1, 6):
        log.append([entry(seq)])
    first = disk.list_files()[0]
    disk.files[first][20] ^= 0xFF
    with pytest.raises(LogCorrupted):
        LogStore.open(disk, segment_bytes=50)


def test_real_disk(tmp_path):
    disk = RealDisk(str(tmp_path))
    log = LogStore.open(disk, segment_bytes=300)
    batches = [[entry(seq) for seq in range(start, start + 3)] for start in range(1, 30, 3)]
    for batch in batches:
        log.append(batch)
    log.truncate_suffix(20)
    log.truncate_prefix(9)
    disk.close()
    # A torn tail: garbage appended after the last record is cut at reopen.
    names = sorted(p.name for p in tmp_path.iterdir())
    with open(tmp_path / names[-1], "ab") as handle:
        handle.write(b"\x01\x02\x03")
    disk = RealDisk(str(tmp_path))
    log = LogStore.open(disk, segment_bytes=300)
    assert log.torn_bytes_dropped == 3
    assert log.last_seq == 20 and log.first_seq <= 9
    assert log.read(log.first_seq, 20) == [entry(s) for s in range(log.first_seq, 21)]
    log.append([entry(21)])
    disk.close()

"""Journal entries and their stored form (DESIGN §2, §3).

An entry is tagged `(epoch, seq)`: seq is dense per partition and assigned by the
head, epoch is the chain configuration in which the head assigned it; two logs
agree on an entry iff they agree on both. `time_us` is the head's stamp
(`max(clock, previous + 1 µs)`, so time is monotone in seq). `request_id` names
the client request (dedup happens in apply, DESIGN §3), `slots` are the witness
slots the entry touches (DESIGN §4), `payload` is opaque to the journal (the
index's encoded mutation).

Stored record (one per entry, appended to a log segment):

    version u8 | body length u32 | xxh3_64(version, length, body) u64 | body
    body = epoch u64 | seq u64 | time_us u64 | request id (u16 length, bytes)
           | slots (u16 count, u64 each) | payload (u32 length, bytes)

Invariants: a record decodes only if its version is known and its checksum
matches, so a torn or rotten record is detected, never misread.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

RECORD_VERSION = 1
_HEADER = struct.Struct("<BIQ")
_FIXED = struct.Struct("<QQQ")
HEADER_BYTES = _HEADER.size
MAX_RECORD_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Entry:
    epoch: int
    seq: int
    time_us: int
    request_id: bytes
    slots: tuple[int, ...]
    payload: bytes

    @property
    def tag(self) -> tuple[int, int]:
        return (self.epoch, self.seq)


class RecordError(Exception):
    """A record that is torn, rotten or of an unknown version."""


def encode(entry: Entry) -> bytes:
    parts = [
        _FIXED.pack(entry.epoch, entry.seq, entry.time_us),
        struct.pack("<H", len(entry.request_id)), entry.request_id,
        struct.pack(f"<H{len(entry.slots)}Q", len(entry.slots), *entry.slots),
        struct.pack("<I", len(entry.payload)), entry.payload,
    ]
    body = b"".join(parts)
    prefix = struct.pack("<BI", RECORD_VERSION, len(body))
    return prefix + struct.pack("<Q", xxhash.xxh3_64_intdigest(prefix + body)) + body


def decode_at(buffer: bytes | memoryview, offset: int) -> tuple[Entry, int]:
    """Decode the record at `offset`; return it and the offset past it. RecordError if bad."""
    if len(buffer) - offset < HEADER_BYTES:
        raise RecordError("short header")
    version, length, checksum = _HEADER.unpack_from(buffer, offset)
    if version != RECORD_VERSION:
        raise RecordError(f"unknown record version {version}")
    if length > MAX_RECORD_BYTES:
        raise RecordError("implausible length")
    start = offset + HEADER_BYTES
    end = start + length
    if end > len(buffer):
        raise RecordError("short body")
    body = bytes(buffer[start:end])
    if xxhash.xxh3_64_intdigest(bytes(buffer[offset:offset + 5]) + body) != checksum:
        raise RecordError("checksum mismatch")
    try:
        epoch, seq, time_us = _FIXED.unpack_from(body, 0)
        at = _FIXED.size
        (rid_length,) = struct.unpack_from("<H", body, at)
        at += 2
        request_id = body[at:at + rid_length]
        at += rid_length
        (slot_count,) = struct.unpack_from("<H", body, at)
        at += 2
        slots = struct.unpack_from(f"<{slot_count}Q", body, at)
        at += 8 * slot_count
        (payload_length,) = struct.unpack_from("<I", body, at)
        at += 4
        payload = body[at:at + payload_length]
        if at + payload_length != len(body):
            raise RecordError("body length mismatch")
    except struct.error as error:
        raise RecordError(str(error)) from None
    return Entry(epoch, seq, time_us, request_id, tuple(slots), payload), end

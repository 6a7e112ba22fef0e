"""Index key encoding (DESIGN §2): one keyspace per record type, order-preserving.

- Every key starts with a one-byte keyspace prefix (B, C, V, U, P, L, R, G, D, T, M).
- String components escape 0x00 as 0x00 0xFF and end with 0x00 0x00, so the
  encoding of (a, b) sorts exactly like the pair of UTF-8 byte strings, and no
  encoded component is a prefix of another's encoding except at a boundary.
- Integers are fixed-width big-endian: seq u64, part number u16, time in µs u64;
  an inverted seq is 2^64 − 1 − seq. A data id is its 16 raw bytes.
- Keys S3 allows are valid UTF-8; `surrogatepass` keeps the encoding injective
  for any Python str anyway.
"""

from __future__ import annotations

import struct

BUCKET = b"B"
CURRENT = b"C"
VERSION = b"V"
UPLOAD = b"U"
PART = b"P"
PLACEMENT = b"L"
REVERSE = b"R"
REAP = b"G"
DEDUP = b"D"
DEDUP_EXPIRY = b"T"
META = b"M"

_TERMINATOR = b"\x00\x00"
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
U64_MAX = (1 << 64) - 1


def encode_string(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff") + _TERMINATOR


def decode_string(raw: bytes, offset: int = 0) -> tuple[str, int]:
    """Decode one string component at `offset`; returns (text, offset after it)."""
    end = offset
    while True:
        end = raw.index(b"\x00", end)
        following = raw[end + 1: end + 2]
        if following == b"\x00":
            break
        if following != b"\xff":
            raise ValueError("malformed string component")
        end += 2
    text = raw[offset:end].replace(b"\x00\xff", b"\x00").decode("utf-8", "surrogatepass")
    return text, end + 2


def u64(value: int) -> bytes:
    return _U64.pack(value)


def read_u64(raw: bytes, offset: int) -> int:
    return _U64.unpack_from(raw, offset)[0]


def bucket_key(bucket: str) -> bytes:
    return BUCKET + encode_string(bucket)


def current_prefix(bucket: str) -> bytes:
    return CURRENT + encode_string(bucket)


def current_key(bucket: str, key: str) -> bytes:
    return current_prefix(bucket) + encode_string(key)


def key_of_current(raw: bytes, prefix_length: int) -> str:
    return decode_string(raw, prefix_length)[0]


def string_prefix(text: str) -> bytes:
    """The encoded form every key starting with `text` starts with (no terminator)."""
    return text.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff")


def upload_prefix(bucket: str) -> bytes:
    return UPLOAD + encode_string(bucket)


def upload_key(bucket: str, key: str, upload_seq: int) -> bytes:
    return upload_prefix(bucket) + encode_string(key) + u64(upload_seq)


def part_prefix(bucket: str, key: str, upload_seq: int) -> bytes:
    return PART + encode_string(bucket) + encode_string(key) + u64(upload_seq)


def part_key(bucket: str, key: str, upload_seq: int, part_number: int) -> bytes:
    return part_prefix(bucket, key, upload_seq) + _U16.pack(part_number)


DEGRADED_DISK = "DEGRADED"   # R's pseudo-disk of placements below full redundancy


def placement_key(data_id: bytes) -> bytes:
    return PLACEMENT + data_id


def reverse_prefix(disk: str) -> bytes:
    return REVERSE + encode_string(disk)


def reverse_key(disk: str, data_id: bytes) -> bytes:
    return reverse_prefix(disk) + data_id


def reap_key(seq: int) -> bytes:
    return REAP + u64(seq)


def dedup_key(request_id: bytes) -> bytes:
    return DEDUP + request_id


def dedup_expiry_key(time_us: int, request_id: bytes) -> bytes:
    return DEDUP_EXPIRY + u64(time_us) + request_id


def meta_key(name: str) -> bytes:
    return META + encode_string(name)


def prefix_successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])

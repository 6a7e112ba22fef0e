"""Identifiers: data ids, version and upload ids, request ids (DESIGN §2, §3).

- A data id is 16 bytes: a 48-bit millisecond timestamp, then 80 random bits, so
  data ids sort by creation time and the orphan sweep can fence on it.
- Version and upload ids are URL-safe encodings of the creating entry's
  `(partition, seq)`; committed seqs are unique per partition, so the ids are too.
- A request id is computed once per S3 request. With `amz-sdk-invocation-id`
  (resent by botocore on each retry) it is a hash of that and the request's
  identity, so an SDK retry finds its original outcome; otherwise it is random.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import time
from typing import NewType

DataId = NewType("DataId", bytes)
RequestId = NewType("RequestId", bytes)

DATA_ID_BYTES = 16


def new_data_id(now_ms: int | None = None) -> DataId:
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    return DataId(struct.pack(">Q", millis)[2:] + os.urandom(10))


def data_id_time_ms(data_id: bytes) -> int:
    return struct.unpack(">Q", b"\0\0" + data_id[:6])[0]


def encode_seq_id(partition: int, seq: int) -> str:
    """A URL-safe id naming the entry `(partition, seq)`; sorts like the pair."""
    raw = struct.pack(">IQ", partition, seq)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_seq_id(text: str) -> tuple[int, int] | None:
    """The `(partition, seq)` an id names, or None when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        return None
    if len(raw) != 12 or encode_seq_id(*struct.unpack(">IQ", raw)) != text:
        return None
    return struct.unpack(">IQ", raw)


def request_id(
    invocation_id: str | None,
    *,
    access_key: str,
    method: str,
    bucket: str,
    key: str,
    upload_id: str = "",
    part_number: int = 0,
    body_md5: str = "",
) -> RequestId:
    if not invocation_id:
        return RequestId(os.urandom(16))
    digest = hashlib.blake2b(digest_size=16)
    for field in (invocation_id, access_key, method, bucket, key, upload_id, str(part_number), body_md5):
        encoded = field.encode("utf-8", "surrogateescape")
        digest.update(struct.pack(">I", len(encoded)))
        digest.update(encoded)
    return RequestId(digest.digest())


def new_http_request_id() -> str:
    """The `x-amz-request-id` of one HTTP exchange: 16 upper-case hex digits."""
    return os.urandom(8).hex().upper()

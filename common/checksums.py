"""Body digests: the MD5 (ETag) and x-amz-checksum-* values, computed in one pass.

Values are what S3 puts on the wire: MD5 as lower-case hex, the checksums as
base64 of the big-endian digest. CRC32 comes from zlib, CRC32C and CRC64NVME from
awscrt (the C library the AWS SDKs use), SHA from hashlib. hashlib and zlib release
the GIL on large buffers, so `Digests.update` may run on a worker thread.

Multipart checksums: a COMPOSITE checksum is the checksum of the concatenated
binary part checksums, suffixed `-N`; a FULL_OBJECT CRC is combined from the part
CRCs and lengths (`combine`).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Iterable

from awscrt import checksums as crt

from common.seams import CHECKSUM_ALGORITHMS, Pairs

_CRC_WIDTH = {"crc32": 4, "crc32c": 4, "crc64nvme": 8}


class _Crc:
    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.value = 0
        self._fn = {
            "crc32": lambda data, previous: zlib.crc32(data, previous),
            "crc32c": crt.crc32c,
            "crc64nvme": crt.crc64nvme,
        }[algorithm]

    def update(self, data: bytes | memoryview) -> None:
        self.value = self._fn(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(_CRC_WIDTH[self.algorithm], "big")


def _hasher(algorithm: str):
    if algorithm in _CRC_WIDTH:
        return _Crc(algorithm)
    if algorithm in ("sha1", "sha256"):
        return hashlib.new(algorithm)
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


class Digests:
    """MD5 plus any of the x-amz-checksum-* algorithms over one stream of bytes."""

    def __init__(self, algorithms: Iterable[str] = ()) -> None:
        self.algorithms = tuple(sorted(set(algorithms)))
        self.size = 0
        self._md5 = hashlib.md5()
        self._checksums = {name: _hasher(name) for name in self.algorithms}

    def update(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self._md5.update(data)
        for hasher in self._checksums.values():
            hasher.update(data)

    def md5_hex(self) -> str:
        return self._md5.hexdigest()

    def md5_digest(self) -> bytes:
        return self._md5.digest()

    def checksums(self) -> Pairs:
        return tuple(
            (name, base64.b64encode(hasher.digest()).decode("ascii"))
            for name, hasher in self._checksums.items()
        )


def checksum_of(algorithm: str, data: bytes) -> str:
    hasher = _hasher(algorithm)
    hasher.update(data)
    return base64.b64encode(hasher.digest()).decode("ascii")


def composite(algorithm: str, part_values: Iterable[str]) -> str:
    """COMPOSITE multipart checksum: checksum of the binary part checksums, `-N`."""
    values = list(part_values)
    joined = b"".join(base64.b64decode(value) for value in values)
    return f"{checksum_of(algorithm, joined)}-{len(values)}"


def combine(algorithm: str, parts: Iterable[tuple[str, int]]) -> str:
    """FULL_OBJECT CRC of a multipart object from (part CRC, part length) pairs."""
    combiner = {"crc32": crt.combine_crc32, "crc32c": crt.combine_crc32c,
                "crc64nvme": crt.combine_crc64nvme}[algorithm]
    total = 0
    first = True
    for value, length in parts:
        crc = int.from_bytes(base64.b64decode(value), "big")
        total = crc if first else combiner(total, crc, length)
        first = False
    return base64.b64encode(total.to_bytes(_CRC_WIDTH[algorithm], "big")).decode("ascii")


def is_valid_value(algorithm: str, value: str) -> bool:
    """Whether `value` is well-formed base64 of the right width for `algorithm`."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        return False
    width = _CRC_WIDTH.get(algorithm) or {"sha1": 20, "sha256": 32}.get(algorithm)
    return width is not None and len(raw) == width


assert set(_CRC_WIDTH) | {"sha1", "sha256"} == set(CHECKSUM_ALGORITHMS)

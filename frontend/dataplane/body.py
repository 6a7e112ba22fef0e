"""Request payloads: decode, bound, and verify what a client uploads.

`open_payload` turns the raw HTTP body into the payload bytes:
- aws-chunked (signed, signed with trailer, unsigned with trailer) is decoded and
  each chunk signature checked (frontend/s3/chunked.py);
- a signed payload (`x-amz-content-sha256: <hex>`) is checked against its SHA-256;
- the size is bounded while streaming, so a body without Content-Length cannot
  exceed the operation's maximum.

`Integrity` gathers what the client claims about the bytes — Content-MD5,
`x-amz-checksum-<algorithm>` headers, checksums announced in `x-amz-trailer`, and
`x-amz-sdk-checksum-algorithm` — and checks the digests computed while storing
the bytes against those claims (BadDigest on mismatch).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import AsyncIterator

from common.checksums import is_valid_value
from common.seams import CHECKSUM_ALGORITHMS, Pairs
from frontend.s3 import errors
from frontend.s3.auth import PayloadMode
from frontend.s3.chunked import AwsChunkedDecoder, Sha256Verifier
from frontend.s3.request import Request

_STREAMING = (
    PayloadMode.STREAMING_SIGNED,
    PayloadMode.STREAMING_SIGNED_TRAILER,
    PayloadMode.STREAMING_UNSIGNED_TRAILER,
)


@dataclass
class Payload:
    stream: AsyncIterator[bytes]
    size: int | None
    decoder: AwsChunkedDecoder | None = None

    def trailers(self) -> dict[str, str]:
        return dict(self.decoder.trailers) if self.decoder is not None else {}


def open_payload(request: Request, *, max_size: int, max_chunk_bytes: int) -> Payload:
    headers = request.headers
    encoding = headers.get("content-encoding", "") or ""
    decoder = None
    size = _content_length(headers.get("content-length"))
    if request.auth.payload in _STREAMING or "aws-chunked" in encoding.lower():
        decoded = headers.get("x-amz-decoded-content-length")
        decoded_length = _content_length(decoded) if decoded is not None else None
        decoder = AwsChunkedDecoder(request.body, request.auth, decoded_length=decoded_length, max_chunk_bytes=max_chunk_bytes)
        stream: AsyncIterator[bytes] = decoder.__aiter__()
        size = decoded_length
    elif request.auth.payload is PayloadMode.SIGNED and request.auth.content_sha256:
        stream = Sha256Verifier(request.body, request.auth.content_sha256).__aiter__()
    else:
        stream = request.body
    if size is not None and size > max_size:
        raise errors.EntityTooLarge(MaxSizeAllowed=str(max_size), ProposedSize=str(size))
    return Payload(stream=_bounded(stream, size, max_size), size=size, decoder=decoder)


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit():
        raise errors.InvalidArgument("Content-Length must be a non-negative integer.")
    return int(value)


async def _bounded(stream: AsyncIterator[bytes], size: int | None, max_size: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_size:
            raise errors.EntityTooLarge(MaxSizeAllowed=str(max_size))
        if size is not None and received > size:
            raise errors.IncompleteBody("The request body is longer than its declared length.")
        yield chunk
    if size is not None and received != size:
        raise errors.IncompleteBody()


@dataclass
class Integrity:
    """What the client claims about a payload, and the check of those claims."""

    content_md5: bytes | None = None
    header_checksums: dict[str, str] = field(default_factory=dict)
    trailer_algorithms: tuple[str, ...] = ()
    requested: tuple[str, ...] = ()

    @classmethod
    def from_request(cls, request: Request) -> "Integrity":
        headers = request.headers
        integrity = cls()
        md5 = headers.get("content-md5")
        if md5 is not None:
            try:
                raw = base64.b64decode(md5.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise errors.InvalidDigest() from None
            if len(raw) != 16:
                raise errors.InvalidDigest()
            integrity.content_md5 = raw
        for algorithm in CHECKSUM_ALGORITHMS:
            value = headers.get(f"x-amz-checksum-{algorithm}")
            if value is not None:
                if not is_valid_value(algorithm, value.strip()):
                    raise errors.InvalidRequest(f"Value for x-amz-checksum-{algorithm} header is invalid.")
                integrity.header_checksums[algorithm] = value.strip()
        if len(integrity.header_checksums) > 1:
            raise errors.InvalidRequest("Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.")
        trailer = headers.get("x-amz-trailer")
        if trailer:
            names = [name.strip().lower() for name in trailer.split(",") if name.strip()]
            algorithms = []
            for name in names:
                if not name.startswith("x-amz-checksum-") or name[len("x-amz-checksum-"):] not in CHECKSUM_ALGORITHMS:
                    raise errors.InvalidRequest(f"The value specified in the x-amz-trailer header is not supported: {name}")
                algorithms.append(name[len("x-amz-checksum-"):])
            integrity.trailer_algorithms = tuple(algorithms)
        requested = headers.get("x-amz-sdk-checksum-algorithm") or headers.get("x-amz-checksum-algorithm")
        if requested:
            algorithm = requested.strip().lower()
            if algorithm not in CHECKSUM_ALGORITHMS:
                raise errors.InvalidRequest("Checksum algorithm provided is unsupported. Please try again with any of the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]")
            integrity.requested = (algorithm,)
        return integrity

    def algorithms(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.header_checksums) | set(self.trailer_algorithms) | set(self.requested)))

    def verify(self, md5_hex: str, computed: Pairs, trailers: dict[str, str]) -> Pairs:
        """Check the claims; return the checksums to store with the object."""
        if self.content_md5 is not None and self.content_md5.hex() != md5_hex:
            raise errors.BadDigest("The Content-MD5 you specified did not match what we received.")
        values = dict(computed)
        for algorithm, claimed in self.header_checksums.items():
            if values.get(algorithm) != claimed:
                raise errors.BadDigest(f"The {algorithm.upper()} you specified did not match the calculated checksum.")
        for algorithm in self.trailer_algorithms:
            claimed = trailers.get(f"x-amz-checksum-{algorithm}")
            if claimed is None:
                raise errors.InvalidRequest(f"The trailer x-amz-checksum-{algorithm} announced in x-amz-trailer was not sent.")
            if values.get(algorithm) != claimed.strip():
                raise errors.BadDigest(f"The {algorithm.upper()} you specified did not match the calculated checksum.")
        return tuple((algorithm, values[algorithm]) for algorithm in self.algorithms())

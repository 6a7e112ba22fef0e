"""aws-chunked request bodies, decoded as they stream, and the SIGNED payload check.

Wire form (Content-Encoding: aws-chunked), per chunk:

    hex-size[;chunk-signature=sig]\\r\\n  data  \\r\\n

ending with a zero-size chunk `0[;chunk-signature=sig]\\r\\n`, then:
- without trailer: `\\r\\n`;
- with trailer: optionally `\\r\\n` (some signers send the empty chunk's data
  terminator, botocore and the AWS examples do not), trailer lines
  `name:value\\r\\n`, in the signed trailer mode `x-amz-trailer-signature:sig\\r\\n`,
  then `\\r\\n` (tolerated missing at the very end).

Signatures (AWS "Signature Calculations for the Authorization Header: Transferring
Payload in Multiple Chunks" and "... trailing headers"), chained from the seed
signature of the Authorization header:
1. chunk:   HMAC(key, "AWS4-HMAC-SHA256-PAYLOAD\\n" date "\\n" scope "\\n" previous "\\n"
            sha256("") "\\n" sha256(data)), the zero chunk included;
2. trailer: HMAC(key, "AWS4-HMAC-SHA256-TRAILER\\n" date "\\n" scope "\\n" previous "\\n"
            sha256(trailer lines, each "name:value\\n")), previous being the zero chunk's.
   The lines are hashed as sent; if that does not match, sorted (aws-c-auth signs
   its trailers sorted by name; the names are lower case already).

Data is yielded as soon as it arrives, before its chunk's signature is checked:
it is provisional until iteration ends without an error, and callers must not
commit anything before that. Errors: malformed framing -> InvalidRequest, early
end -> IncompleteBody, bad signature -> SignatureDoesNotMatch, decoded size other
than x-amz-decoded-content-length -> IncompleteBody, a chunk over max_chunk_bytes
-> InvalidRequest.

Cost: each input piece is scanned once; only chunk header and trailer lines are
buffered (each bounded). SHA-256 of large runs of data goes to a worker thread
(hashlib releases the GIL), pipelined so the event loop keeps receiving.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import AsyncIterator

from common.errors import invariant
from frontend.s3 import errors
from frontend.s3.auth import EMPTY_SHA256, AuthResult, PayloadMode

MAX_LINE_BYTES = 4096
MAX_TRAILER_BYTES = 16 * 1024
THREAD_HASH_BYTES = 1024 * 1024
"""Data is hashed on a worker thread in batches of at least this many bytes."""

_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_SIGNATURE_PREFIX = b"chunk-signature="
_TRAILER_SIGNATURE = "x-amz-trailer-signature"

_HEADER, _DATA, _DATA_END, _TRAILER, _FINAL, _DONE = range(6)


class _Sha256:
    """SHA-256 fed in order; big batches hash on a worker thread, one at a time."""

    def __init__(self) -> None:
        self._hasher = hashlib.sha256()
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._running: asyncio.Future | None = None

    async def feed(self, data: bytes) -> None:
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= THREAD_HASH_BYTES:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            if self._running is not None:
                await self._running
            self._running = asyncio.get_running_loop().run_in_executor(None, _update_all, self._hasher, batch)

    async def hexdigest(self) -> str:
        if self._running is not None:
            await self._running
            self._running = None
        _update_all(self._hasher, self._batch)
        self._batch, self._batch_bytes = [], 0
        return self._hasher.hexdigest()

    async def close(self) -> None:
        """Wait for a worker still hashing, so nothing outlives the request."""
        if self._running is not None:
            try:
                await self._running
            finally:
                self._running = None


def _update_all(hasher, parts: list[bytes]) -> None:
    for part in parts:
        hasher.update(part)


class AwsChunkedDecoder:
    """Decodes an aws-chunked body (Content-Encoding: aws-chunked) as it streams."""

    def __init__(self, source: AsyncIterator[bytes], auth: AuthResult, *,
                 decoded_length: int | None, max_chunk_bytes: int) -> None:
        invariant(auth.payload.is_streaming, "aws-chunked decoding needs a STREAMING-* payload mode")
        self.trailers: dict[str, str] = {}
        self._source = source
        self._auth = auth
        self._decoded_length = decoded_length
        self._max_chunk_bytes = max_chunk_bytes
        self._signed = auth.payload.signs_chunks
        self._has_trailer = auth.payload.has_trailer
        if self._signed:
            invariant(auth.signing_key is not None and auth.seed_signature is not None,
                      "signed streaming needs a signing key and seed signature")
        self._previous = auth.seed_signature or ""
        self._decoded_bytes = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._decode()

    async def _decode(self) -> AsyncIterator[bytes]:
        state = _HEADER
        line = bytearray()              # a chunk header or trailer line being assembled
        remaining = 0                   # data bytes left in the current chunk
        terminator_seen = 0             # bytes of the data's "\r\n" seen
        chunk_signature = b""
        hasher: _Sha256 | None = None
        trailer_lines: list[bytes] = []
        trailer_bytes = 0
        blank_allowed = True            # the empty chunk's optional data terminator
        try:
            async for piece in self._source:
                if type(piece) is not bytes:
                    piece = bytes(piece)        # the source may reuse its buffer
                size = len(piece)
                at = 0
                while at < size:
                    if state == _DATA:
                        take = min(remaining, size - at)
                        data = piece if take == size else piece[at:at + take]
                        at += take
                        remaining -= take
                        self._decoded_bytes += take
                        if self._decoded_length is not None and self._decoded_bytes > self._decoded_length:
                            raise errors.IncompleteBody(
                                "The aws-chunked body is longer than x-amz-decoded-content-length.")
                        if hasher is not None:
                            await hasher.feed(data)
                        yield data
                        if remaining == 0:
                            if hasher is not None:
                                await self._check_chunk(chunk_signature, await hasher.hexdigest())
                                hasher = None
                            state, terminator_seen = _DATA_END, 0
                    elif state == _DATA_END:
                        while at < size and terminator_seen < 2:
                            if piece[at] != b"\r\n"[terminator_seen]:
                                raise errors.InvalidRequest("aws-chunked: chunk data is not followed by CRLF.")
                            at += 1
                            terminator_seen += 1
                        if terminator_seen == 2:
                            state = _HEADER
                    elif state == _DONE:
                        raise errors.InvalidRequest("aws-chunked: data after the end of the body.")
                    else:
                        newline = piece.find(b"\n", at)
                        end = size if newline < 0 else newline + 1
                        line += piece[at:end]
                        at = end
                        if len(line) > MAX_LINE_BYTES:
                            raise errors.InvalidRequest("aws-chunked: line too long.")
                        if newline < 0:
                            continue
                        if len(line) < 2 or line[-2] != 0x0D:
                            raise errors.InvalidRequest("aws-chunked: line does not end with CRLF.")
                        text = bytes(line[:-2])
                        line.clear()
                        if state == _HEADER:
                            length, chunk_signature = self._parse_chunk_header(text)
                            if length:
                                state, remaining = _DATA, length
                                hasher = _Sha256() if self._signed else None
                            else:
                                if self._signed:
                                    await self._check_chunk(chunk_signature, EMPTY_SHA256)
                                state = _TRAILER if self._has_trailer else _FINAL
                        elif state == _FINAL:
                            if text:
                                raise errors.InvalidRequest("aws-chunked: expected CRLF after the last chunk.")
                            state = _DONE
                        elif not text:               # _TRAILER, a blank line
                            if blank_allowed and not trailer_lines:
                                blank_allowed = False
                            else:
                                self._finish_trailers(trailer_lines)
                                state = _DONE
                        else:                        # _TRAILER, a trailer line
                            blank_allowed = False
                            trailer_bytes += len(text) + 2
                            if trailer_bytes > MAX_TRAILER_BYTES:
                                raise errors.InvalidRequest("aws-chunked: trailer too long.")
                            trailer_lines.append(text)
            # End of the source.
            if state == _TRAILER and not line and (trailer_lines or not blank_allowed):
                self._finish_trailers(trailer_lines)    # tolerate a missing final blank line
                state = _DONE
            if state != _DONE:
                raise errors.IncompleteBody("The aws-chunked body ended early.")
            if self._decoded_length is not None and self._decoded_bytes != self._decoded_length:
                raise errors.IncompleteBody(
                    f"The aws-chunked body decoded to {self._decoded_bytes} bytes; "
                    f"x-amz-decoded-content-length is {self._decoded_length}.")
        finally:
            if hasher is not None:
                await hasher.close()

    def _parse_chunk_header(self, text: bytes) -> tuple[int, bytes]:
        size_text, semicolon, extension = text.partition(b";")
        if not size_text or len(size_text) > 16 or not all(byte in _HEX_DIGITS for byte in size_text):
            raise errors.InvalidRequest("aws-chunked: malformed chunk size.")
        length = int(size_text, 16)
        if length > self._max_chunk_bytes:
            raise errors.InvalidRequest(
                f"aws-chunked: a chunk of {length} bytes exceeds the limit of {self._max_chunk_bytes}.")
        signature = b""
        if semicolon:
            if not extension.startswith(_SIGNATURE_PREFIX):
                if self._signed:
                    raise errors.InvalidRequest("aws-chunked: malformed chunk extension.")
            else:
                signature = extension[len(_SIGNATURE_PREFIX):]
        if self._signed and not signature:
            raise errors.SignatureDoesNotMatch("aws-chunked: a chunk has no chunk-signature.")
        return length, signature

    async def _check_chunk(self, signature: bytes, data_sha256: str) -> None:
        string_to_sign = (f"AWS4-HMAC-SHA256-PAYLOAD\n{self._auth.amz_date}\n{self._auth.scope}\n"
                          f"{self._previous}\n{EMPTY_SHA256}\n{data_sha256}")
        expected = hmac.digest(self._auth.signing_key, string_to_sign.encode("ascii"), "sha256").hex()
        if not hmac.compare_digest(expected.encode("ascii"), signature):
            raise errors.SignatureDoesNotMatch(
                "The chunk signature we calculated does not match the signature you provided.",
                StringToSign=string_to_sign)
        self._previous = expected

    def _finish_trailers(self, lines: list[bytes]) -> None:
        """Parse the trailer lines; in the signed trailer mode, check their signature."""
        signature: bytes | None = None
        signed_lines: list[bytes] = []
        for text in lines:
            name, colon, value = text.partition(b":")
            if not colon or not name.strip():
                raise errors.InvalidRequest("aws-chunked: malformed trailer line.")
            if signature is not None:
                raise errors.InvalidRequest("aws-chunked: trailer after x-amz-trailer-signature.")
            key = name.strip().decode("latin-1").lower()
            if key == _TRAILER_SIGNATURE:
                signature = value.strip()
                continue
            signed_lines.append(text)
            self.trailers[key] = value.strip().decode("latin-1")
        if self._signed:
            if signature is None:
                raise errors.SignatureDoesNotMatch("aws-chunked: the trailer has no x-amz-trailer-signature.")
            self._check_trailer(signed_lines, signature)

    def _check_trailer(self, lines: list[bytes], signature: bytes) -> None:
        as_sent = b"".join(text + b"\n" for text in lines)
        canonical = b"".join(sorted(text + b"\n" for text in lines))
        string_to_sign = ""
        for hashed in (as_sent, canonical) if canonical != as_sent else (as_sent,):
            string_to_sign = (f"AWS4-HMAC-SHA256-TRAILER\n{self._auth.amz_date}\n{self._auth.scope}\n"
                              f"{self._previous}\n{hashlib.sha256(hashed).hexdigest()}")
            expected = hmac.digest(self._auth.signing_key, string_to_sign.encode("ascii"), "sha256").hex()
            if hmac.compare_digest(expected.encode("ascii"), signature):
                self._previous = expected
                return
        raise errors.SignatureDoesNotMatch(
            "The trailer signature we calculated does not match the signature you provided.",
            StringToSign=string_to_sign)


class Sha256Verifier:
    """Passes a body through, raising XAmzContentSHA256Mismatch at the end if its sha256 differs."""

    def __init__(self, source: AsyncIterator[bytes], expected_hex: str) -> None:
        self._source = source
        self._expected_hex = expected_hex.lower()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._verify()

    async def _verify(self) -> AsyncIterator[bytes]:
        hasher = _Sha256()
        try:
            async for piece in self._source:
                if type(piece) is not bytes:
                    piece = bytes(piece)
                await hasher.feed(piece)
                yield piece
            computed = await hasher.hexdigest()
        finally:
            await hasher.close()
        if not hmac.compare_digest(computed.encode("ascii"), self._expected_hex.encode("utf-8", "replace")):
            raise errors.XAmzContentSHA256Mismatch(
                ClientComputedContentSHA256=self._expected_hex, S3ComputedContentSHA256=computed)


__all__ = ["AwsChunkedDecoder", "Sha256Verifier", "PayloadMode"]

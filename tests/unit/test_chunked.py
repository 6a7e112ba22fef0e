"""aws-chunked decoding (frontend/s3/chunked.py): exact bytes out, every signature checked.

Properties and method:
- AWS's published chunked-upload examples decode to their 66560 'a's, however the
  source stream is split: STREAMING-AWS4-HMAC-SHA256-PAYLOAD (chunk signatures
  ad80c730..., 0055627c..., b6c6ea8a..., sigv4-streaming.html) and the -TRAILER
  variant (b474d886..., 1c1344b1..., 2ca2aba2..., trailer d81f82fc... over
  "x-amz-checksum-crc32c:sOO8/Q==\\n", sigv4-streaming-trailers.html). The trailer
  rule is also checked against aws-crt-swift's ChunkSignerTests (trailer
  first/second/third chained from b6c6ea8a... gives df5735bd...).
- botocore's own aws-chunked writer (AwsChunkedWrapper, STREAMING-UNSIGNED-PAYLOAD-TRAILER)
  decodes, and its trailer checksum arrives in `trailers`.
- Hypothesis: a random body in random chunks, split at arbitrary byte boundaries of
  the source, decodes to the same bytes in all three streaming modes (with the
  worker-thread hashing forced on); any single-byte change of a signed stream is
  refused (the one harmless exception, a case flip of a chunk-size hex digit, must
  then decode to exactly the same bytes).
- Framing faults map to S3 errors, never to an unhandled exception; data is yielded
  before its chunk ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
from unittest import mock

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum
from hypothesis import HealthCheck, given, settings, strategies as st

from common.checksums import checksum_of
from frontend.s3 import chunked, errors
from frontend.s3.auth import EMPTY_SHA256, AuthResult, PayloadMode, User, derive_signing_key
from frontend.s3.chunked import AwsChunkedDecoder, Sha256Verifier

USER = User("example", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
KEY = derive_signing_key(USER.secret_key, "20130524", "us-east-1")
DATE = "20130524T000000Z"
SCOPE = "20130524/us-east-1/s3/aws4_request"
BODY = b"a" * 66560
MiB = 1024 * 1024


def auth_result(mode: PayloadMode, seed: str | None) -> AuthResult:
    return AuthResult(user=USER, payload=mode, content_sha256=None, seed_signature=seed, signing_key=KEY,
                      amz_date=DATE, scope=SCOPE, presigned=False, region="us-east-1")


async def _pieces(data: bytes, cuts: list[int]):
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if last <= cut <= len(data):
            yield data[last:cut]
            last = cut


def decode(wire: bytes, auth: AuthResult, *, cuts: list[int] | None = None, decoded_length: int | None = None,
           max_chunk_bytes: int = 16 * MiB) -> tuple[bytes, dict[str, str]]:
    async def run():
        decoder = AwsChunkedDecoder(_pieces(wire, cuts or []), auth, decoded_length=decoded_length,
                                    max_chunk_bytes=max_chunk_bytes)
        parts = [part async for part in decoder]
        return b"".join(parts), decoder.trailers
    return asyncio.run(run())


# -- AWS's published examples ----------------------------------------------------------

SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
AWS_STREAM = (
    b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"
    + BODY[:65536] + b"\r\n"
    b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n"
    + BODY[:1024] + b"\r\n"
    b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n")
TRAILER_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
AWS_TRAILER_STREAM = (
    b"10000;chunk-signature=b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2\r\n"
    + BODY[:65536] + b"\r\n"
    b"400;chunk-signature=1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7\r\n"
    + BODY[:1024] + b"\r\n"
    b"0;chunk-signature=2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992\r\n"
    b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
    b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n")


@pytest.mark.parametrize("cuts", [[], [1], [3, 90, 91, 92], list(range(0, 67000, 997)), list(range(66600, 66900))])
def test_aws_streaming_example_decodes(cuts):
    assert len(AWS_STREAM) == 66824                          # the example's Content-Length
    data, trailers = decode(AWS_STREAM, auth_result(PayloadMode.STREAMING_SIGNED, SEED), cuts=cuts,
                            decoded_length=66560)
    assert data == BODY and trailers == {}


@pytest.mark.parametrize("cuts", [[], [5], list(range(0, 67000, 1009)), list(range(66640, 66900))])
def test_aws_trailer_example_decodes(cuts):
    data, trailers = decode(AWS_TRAILER_STREAM, auth_result(PayloadMode.STREAMING_SIGNED_TRAILER, TRAILER_SEED),
                            cuts=cuts, decoded_length=66560)
    assert data == BODY
    assert trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    assert checksum_of("crc32c", BODY) == "sOO8/Q=="


def test_trailer_after_the_empty_chunks_crlf_is_accepted():
    # Some signers send the zero chunk's data terminator before the trailer.
    wire = AWS_TRAILER_STREAM.replace(b"f992\r\nx-amz", b"f992\r\n\r\nx-amz")
    data, trailers = decode(wire, auth_result(PayloadMode.STREAMING_SIGNED_TRAILER, TRAILER_SEED))
    assert data == BODY and trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}


def test_aws_crt_trailer_vector():
    # aws-crt-swift ChunkSignerTests: the example's chunks, then trailers first/second/third.
    wire = AWS_STREAM[:-2] + (b"first:1st\r\nsecond:2nd\r\nthird:3rd\r\nx-amz-trailer-signature:"
                              b"df5735bd9f3295cd9386572292562fefc93ba94e80a0a1ddcbd652c4e0a75e6c\r\n\r\n")
    data, trailers = decode(wire, auth_result(PayloadMode.STREAMING_SIGNED_TRAILER, SEED))
    assert data == BODY and trailers == {"first": "1st", "second": "2nd", "third": "3rd"}
    swapped = wire.replace(b"first:1st\r\nsecond:2nd\r\n", b"second:2nd\r\nfirst:1st\r\n")
    assert decode(swapped, auth_result(PayloadMode.STREAMING_SIGNED_TRAILER, SEED))[1]["first"] == "1st"
    changed = wire.replace(b"third:3rd", b"third:3rD")
    with pytest.raises(errors.SignatureDoesNotMatch):
        decode(changed, auth_result(PayloadMode.STREAMING_SIGNED_TRAILER, SEED))


@pytest.mark.parametrize("old, new, error", [
    (b"ad80c730", b"ad80c731", errors.SignatureDoesNotMatch),             # chunk signature
    (b"b6c6ea8a", b"b6c6ea8b", errors.SignatureDoesNotMatch),             # final chunk signature
    (b"aaaa\r\n400", b"aaab\r\n400", errors.SignatureDoesNotMatch),       # data
    (b"\r\n400;", b"\r\n401;", errors.IncompleteBody),                    # longer than decoded length
    (b"\r\n400;", b"\r\n3ff;", errors.SignatureDoesNotMatch),             # shorter data
    (b"400;chunk-signature=", b"400;chunk-signaturX=", errors.InvalidRequest),
    (b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497", b"400",
     errors.SignatureDoesNotMatch),                                       # signature dropped
    (b"\r\n400;", b"\r\nzz0;", errors.InvalidRequest),
])
def test_aws_streaming_example_corrupted(old, new, error):
    wire = AWS_STREAM.replace(old, new, 1)
    assert wire != AWS_STREAM
    with pytest.raises(error):
        decode(wire, auth_result(PayloadMode.STREAMING_SIGNED, SEED), decoded_length=66560)


def test_chunks_cannot_be_reordered_or_replayed():
    first = AWS_STREAM[:AWS_STREAM.index(b"400;")]
    replayed = first + first + AWS_STREAM[len(first):]
    with pytest.raises(errors.SignatureDoesNotMatch):
        decode(replayed, auth_result(PayloadMode.STREAMING_SIGNED, SEED))
    with pytest.raises(errors.SignatureDoesNotMatch):   # the same chunks under another seed
        decode(AWS_STREAM, auth_result(PayloadMode.STREAMING_SIGNED, TRAILER_SEED))


@pytest.mark.parametrize("wire, error", [
    (AWS_STREAM[:-2], errors.IncompleteBody),                           # no final CRLF
    (AWS_STREAM[:-1], errors.IncompleteBody),
    (AWS_STREAM[:70000 - 4000], errors.IncompleteBody),                  # cut inside data
    (AWS_STREAM[:40], errors.IncompleteBody),                            # cut inside a header
    (AWS_STREAM + b"x", errors.InvalidRequest),                          # data after the end
    (AWS_STREAM[:-2] + b"x\r\n", errors.InvalidRequest),
    (AWS_STREAM.replace(b"\r\n400;", b"\n\n400;"), errors.InvalidRequest),
    (b"", errors.IncompleteBody),
])
def test_framing_faults(wire, error):
    with pytest.raises(error):
        decode(wire, auth_result(PayloadMode.STREAMING_SIGNED, SEED))


def test_decoded_length_must_match():
    auth = auth_result(PayloadMode.STREAMING_SIGNED, SEED)
    assert decode(AWS_STREAM, auth, decoded_length=66560)[0] == BODY
    for wrong in (0, 65536, 66559, 66561, 10 ** 9):
        with pytest.raises(errors.IncompleteBody):
            decode(AWS_STREAM, auth, decoded_length=wrong)


def test_chunk_over_the_limit_is_refused_before_its_data():
    with pytest.raises(errors.InvalidRequest):
        decode(AWS_STREAM, auth_result(PayloadMode.STREAMING_SIGNED, SEED), max_chunk_bytes=65535)
    with pytest.raises(errors.InvalidRequest):
        decode(b"ffffffffffffffffff\r\n", auth_result(PayloadMode.STREAMING_UNSIGNED_TRAILER, None))


@pytest.mark.parametrize("tail, error", [
    (b"x-amz-checksum-crc32c:sOO8/Q==\r\n\r\n", errors.SignatureDoesNotMatch),          # signature missing
    (b"x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:" + b"0" * 64 + b"\r\n\r\n",
     errors.SignatureDoesNotMatch),
    (b"x-amz-checksum-crc32c:sOO9/Q==\r\nx-amz-trailer-signature:"
     b"d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n", errors.SignatureDoesNotMatch),
    (b"x-amz-checksum-crc32c sOO8/Q==\r\n\r\n", errors.InvalidRequest),
    (b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n"
     b"x-amz-checksum-crc32c:sOO8/Q==\r\n\r\n", errors.InvalidRequest),                 # line after the signature
    (b"x-amz-checksum-crc32c:sOO8/Q==\r\n", errors.SignatureDoesNotMatch),
    (b"x-amz-checksum-crc32c:sOO8/Q==", errors.IncompleteBody),
    (b"", errors.IncompleteBody),
    (b"x" * 20000 + b"\r\n", errors.InvalidRequest),
])
def test_signed_trailer_faults(tail, error):
    head = AWS_TRAILER_STREAM[:AWS_TRAILER_STREAM.index(b"x-amz-checksum-crc32c")]
    with pytest.raises(error):
        decode(head + tail, auth_result(PayloadMode.STREAMING_SIGNED_TRAILER, TRAILER_SEED))


# -- botocore's writer ----------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 1000, 65536, 65537, 300_000])
def test_botocore_unsigned_trailer_stream_decodes(size):
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    wrapper = AwsChunkedWrapper(io.BytesIO(body), checksum_cls=Crc32Checksum,
                                checksum_name="x-amz-checksum-crc32", chunk_size=65536)
    wire = wrapper.read()
    data, trailers = decode(wire, auth_result(PayloadMode.STREAMING_UNSIGNED_TRAILER, None),
                            cuts=list(range(0, len(wire), 4099)), decoded_length=size)
    assert data == body
    assert trailers == {"x-amz-checksum-crc32": checksum_of("crc32", body)}


# -- a reference signer, for the property tests -------------------------------------------

def _hmac_hex(message: str) -> str:
    return hmac.new(KEY, message.encode(), hashlib.sha256).hexdigest()


def sign_stream(chunks: list[bytes], mode: PayloadMode, seed: str, trailers: list[tuple[str, str]]) -> bytes:
    """The documented aws-chunked writer: one chained signature per chunk, then the trailer."""
    signed = mode.signs_chunks
    previous = seed
    out = bytearray()
    for chunk in [*chunks, b""]:
        out += b"%x" % len(chunk)
        if signed:
            previous = _hmac_hex(f"AWS4-HMAC-SHA256-PAYLOAD\n{DATE}\n{SCOPE}\n{previous}\n{EMPTY_SHA256}\n"
                                 f"{hashlib.sha256(chunk).hexdigest()}")
            out += b";chunk-signature=" + previous.encode()
        out += b"\r\n"
        if chunk:
            out += chunk + b"\r\n"
    if not mode.has_trailer:
        return bytes(out + b"\r\n")
    lines = "".join(f"{name}:{value}\n" for name, value in trailers)
    for name, value in trailers:
        out += f"{name}:{value}\r\n".encode()
    if signed:
        signature = _hmac_hex(f"AWS4-HMAC-SHA256-TRAILER\n{DATE}\n{SCOPE}\n{previous}\n"
                              f"{hashlib.sha256(lines.encode()).hexdigest()}")
        out += f"x-amz-trailer-signature:{signature}\r\n".encode()
    return bytes(out + b"\r\n")


def test_reference_signer_reproduces_the_aws_examples():
    assert sign_stream([BODY[:65536], BODY[:1024]], PayloadMode.STREAMING_SIGNED, SEED, []) == AWS_STREAM
    assert sign_stream([BODY[:65536], BODY[:1024]], PayloadMode.STREAMING_SIGNED_TRAILER, TRAILER_SEED,
                       [("x-amz-checksum-crc32c", "sOO8/Q==")]) == AWS_TRAILER_STREAM


@st.composite
def streams(draw, modes=tuple(PayloadMode.__members__[name] for name in
                              ("STREAMING_SIGNED", "STREAMING_SIGNED_TRAILER", "STREAMING_UNSIGNED_TRAILER"))):
    mode = draw(st.sampled_from(modes))
    body = draw(st.binary(max_size=3000))
    cut_points = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
    chunks = [body[a:b] for a, b in zip([0, *cut_points], [*cut_points, len(body)]) if b > a]
    trailers = []
    if mode.has_trailer:
        trailers = draw(st.lists(st.tuples(st.sampled_from(["x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-a"]),
                                           st.text("ABCxyz019+/=", min_size=1, max_size=12)),
                                 max_size=2, unique_by=lambda pair: pair[0]))
    wire = sign_stream(chunks, mode, SEED, trailers)
    return mode, body, wire, dict(trailers)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.data())
def test_any_chunking_and_any_split_decodes_to_the_body(stream, data):
    mode, body, wire, trailers = stream
    source_cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=20))
    with mock.patch.object(chunked, "THREAD_HASH_BYTES", data.draw(st.sampled_from([1, 100, 1 << 20]))):
        decoded, decoded_trailers = decode(wire, auth_result(mode, SEED), cuts=source_cuts, decoded_length=len(body))
    assert decoded == body
    assert decoded_trailers == trailers


def _refused_or_identical(wire: bytes, position: int, corrupted: bytes, mode: PayloadMode, body: bytes,
                          trailers: dict[str, str]) -> None:
    try:
        decoded, decoded_trailers = decode(corrupted, auth_result(mode, SEED), decoded_length=len(body))
    except errors.S3Error:
        return
    # Accepted: only a case flip of a chunk-size hex digit may pass, and it changes nothing.
    line_start = wire.rfind(b"\n", 0, position) + 1
    size_field = wire[line_start:wire.find(b";", line_start)]
    assert wire[position:position + 1].lower() == corrupted[position:position + 1].lower()
    assert line_start + len(size_field) > position and chr(wire[position]) in "abcdefABCDEF"
    assert decoded == body and decoded_trailers == trailers


@settings(max_examples=300, deadline=None)
@given(streams(modes=(PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER)), st.data())
def test_any_single_byte_change_of_a_signed_stream_is_refused(stream, data):
    mode, body, wire, trailers = stream
    position = data.draw(st.integers(0, len(wire) - 1))
    replacement = data.draw(st.integers(0, 255).filter(lambda byte: byte != wire[position]))
    corrupted = wire[:position] + bytes([replacement]) + wire[position + 1:]
    _refused_or_identical(wire, position, corrupted, mode, body, trailers)


@settings(max_examples=100, deadline=None)
@given(streams(modes=(PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER)), st.data())
def test_truncated_signed_stream_is_refused(stream, data):
    mode, body, wire, _ = stream
    length = data.draw(st.integers(0, len(wire) - 1))
    if wire[length:] == b"\r\n" and mode is PayloadMode.STREAMING_SIGNED_TRAILER:
        # Only the closing blank line after a signed trailer is missing: every signed
        # byte arrived, and the decoder accepts it (some clients omit it).
        assert decode(wire[:length], auth_result(mode, SEED), decoded_length=len(body))[0] == body
        return
    with pytest.raises(errors.S3Error):
        decode(wire[:length], auth_result(mode, SEED), decoded_length=len(body))


# -- streaming behaviour ------------------------------------------------------------------

def test_data_is_yielded_before_its_chunk_ends():
    wire = sign_stream([b"x" * 100_000], PayloadMode.STREAMING_SIGNED, SEED, [])
    pulled = []

    async def source():
        for start in range(0, len(wire), 10_000):
            pulled.append(start)
            yield wire[start:start + 10_000]

    async def run():
        decoder = AwsChunkedDecoder(source(), auth_result(PayloadMode.STREAMING_SIGNED, SEED),
                                    decoded_length=100_000, max_chunk_bytes=MiB)
        iterator = decoder.__aiter__()
        first = await iterator.__anext__()
        assert 0 < len(first) < 10_000 and len(pulled) == 1
        rest = [part async for part in iterator]
        return first + b"".join(rest)

    assert asyncio.run(run()) == b"x" * 100_000


def test_large_chunks_hash_on_a_worker_thread_and_verify():
    body = bytes(range(256)) * (12 * MiB // 256)
    wire = sign_stream([body[:8 * MiB], body[8 * MiB:]], PayloadMode.STREAMING_SIGNED, SEED, [])
    with mock.patch("asyncio.BaseEventLoop.run_in_executor", autospec=True,
                    side_effect=asyncio.BaseEventLoop.run_in_executor) as offloaded:
        data, _ = decode(wire, auth_result(PayloadMode.STREAMING_SIGNED, SEED),
                         cuts=list(range(0, len(wire), 65536)), decoded_length=len(body))
    assert data == body
    assert offloaded.call_count >= 10
    corrupted = wire[:5 * MiB] + b"\x00" + wire[5 * MiB + 1:]
    with pytest.raises(errors.SignatureDoesNotMatch):
        decode(corrupted, auth_result(PayloadMode.STREAMING_SIGNED, SEED), cuts=list(range(0, len(wire), 65536)))


# -- Sha256Verifier ---------------------------------------------------------------------

def verify(data: bytes, expected_hex: str, cuts: list[int]) -> bytes:
    async def run():
        return b"".join([part async for part in Sha256Verifier(_pieces(data, cuts), expected_hex)])
    return asyncio.run(run())


@pytest.mark.parametrize("size", [0, 1, 65536, 3 * MiB + 7])
def test_sha256_verifier_passes_matching_bodies(size):
    body = b"\x5a" * size
    cuts = list(range(0, size, 65536))
    assert verify(body, hashlib.sha256(body).hexdigest(), cuts) == body
    assert verify(body, hashlib.sha256(body).hexdigest().upper(), cuts) == body


@pytest.mark.parametrize("size", [0, 1, 65536, 3 * MiB + 7])
def test_sha256_verifier_refuses_other_bodies(size):
    body = b"\x5a" * size
    with pytest.raises(errors.XAmzContentSHA256Mismatch):
        verify(body + b"!", hashlib.sha256(body).hexdigest(), list(range(0, size, 65536)))

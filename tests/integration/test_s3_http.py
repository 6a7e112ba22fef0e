"""Raw HTTP against a real `cairn dev`: connection handling and malformed requests.

Properties:
1. The HTTP layer does what S3 clients rely on: keep-alive (many requests on one
   connection), `Expect: 100-continue` (100 then the final answer; a write that
   fails its precondition answers 412 without 100), chunked request bodies
   without Content-Length, aws-chunked trailers over plain HTTP.
2. A malformed request is answered 4xx with S3 error XML carrying the right code
   and a request id, and changes nothing; it is never a 500.
3. No request in this module made the server log a traceback (its stderr is read
   at the end; the test `test_zz_server_logged_no_traceback` runs last).

Method: requests are built by hand with http.client or a socket and signed with
botocore's S3SigV4Auth (a subclass fixes the payload hash and, for the skew
test, the clock), so each one is exactly the bytes under test.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import itertools
import os
import re
import socket
import zlib
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

pytestmark = pytest.mark.timeout(60)

_names = itertools.count()


class _Auth(S3SigV4Auth):
    """S3 SigV4 with the payload hash given, not computed."""

    def __init__(self, credentials, payload: str | None):
        super().__init__(credentials, "s3", "us-east-1")
        self._payload = payload

    def payload(self, request):
        return self._payload if self._payload is not None else super().payload(request)


def signed_headers(server, method: str, target: str, headers: dict | None = None, body: bytes = b"", *,
                   payload: str | None = "UNSIGNED-PAYLOAD", when: dt.datetime | None = None,
                   secret_key: str | None = None) -> dict[str, str]:
    """The headers (Authorization included) for `method target` as the server's user."""
    headers = dict(headers or {})
    headers.setdefault("Host", f"127.0.0.1:{server.port}")
    request = AWSRequest(method=method, url=f"{server.endpoint}{target}", headers=headers, data=body)
    auth = _Auth(Credentials(server.access_key, secret_key or server.secret_key), payload)
    if when is None:
        auth.add_auth(request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            auth.add_auth(request)
    return {name: value for name, value in request.headers.items()}


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def code(self) -> str | None:
        match = re.search(rb"<Code>([^<]*)</Code>", self.body)
        return match.group(1).decode() if match else None

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:300]!r})"


def send(connection: http.client.HTTPConnection, method: str, target: str, headers: dict, body: bytes | None = None) -> Answer:
    connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders(body if body else None)
    response = connection.getresponse()
    data = response.read()
    return Answer(response.status, {name.lower(): value for name, value in response.getheaders()}, data)


def request(server, method: str, target: str, headers: dict | None = None, body: bytes = b"", **signing) -> Answer:
    all_headers = signed_headers(server, method, target, headers, body, **signing)
    if body and "Content-Length" not in all_headers and "Transfer-Encoding" not in all_headers:
        all_headers["Content-Length"] = str(len(body))
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        return send(connection, method, target, all_headers, body)
    finally:
        connection.close()


def assert_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer
    assert answer.code == code, answer
    assert answer.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Error>'), answer
    assert answer.headers.get("x-amz-request-id"), answer
    assert answer.headers.get("content-type") == "application/xml"


@pytest.fixture
def bucket(server):
    name = f"raw-{next(_names)}"
    assert request(server, "PUT", f"/{name}").status == 200
    return name


def put(server, bucket: str, key: str, body: bytes) -> Answer:
    answer = request(server, "PUT", f"/{bucket}/{key}", body=body, payload=hashlib.sha256(body).hexdigest())
    assert answer.status == 200, answer
    return answer


def get(server, bucket: str, key: str, headers: dict | None = None) -> Answer:
    return request(server, "GET", f"/{bucket}/{key}", headers=headers)


def absent(server, bucket: str, key: str) -> bool:
    answer = request(server, "HEAD", f"/{bucket}/{key}")
    assert answer.status in (200, 404), answer
    return answer.status == 404


# -- connection handling --------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(server, bucket):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        seen_sockets = set()
        request_ids = set()
        for index in range(5):
            body = f"keep-alive {index}".encode()
            target = f"/{bucket}/ka-{index}"
            answer = send(connection, "PUT", target, {**signed_headers(server, "PUT", target, body=body,
                                                                         payload=hashlib.sha256(body).hexdigest()),
                                                       "Content-Length": str(len(body))}, body)
            assert answer.status == 200, answer
            seen_sockets.add(id(connection.sock))
            answer = send(connection, "GET", target, signed_headers(server, "GET", target))
            assert answer.status == 200 and answer.body == body
            answer = send(connection, "HEAD", target, signed_headers(server, "HEAD", target))
            assert answer.status == 200 and answer.headers["content-length"] == str(len(body))
            answer = send(connection, "GET", f"/{bucket}/missing", signed_headers(server, "GET", f"/{bucket}/missing"))
            assert_error(answer, 404, "NoSuchKey")
            request_ids.add(answer.headers["x-amz-request-id"])
            seen_sockets.add(id(connection.sock))
        assert len(seen_sockets) == 1 and connection.sock is not None
        assert len(request_ids) == 5
    finally:
        connection.close()


def _raw_socket(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=15)


def _read_head(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str]]:
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a full response head: {bytes(buffer)!r}")
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def _read_body(sock: socket.socket, buffer: bytearray, length: int) -> bytes:
    while len(buffer) < length:
        data = sock.recv(65536)
        if not data:
            break
        buffer += data
    body = bytes(buffer[:length])
    del buffer[:length]
    return body


def _head_bytes(method: str, target: str, headers: dict) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"] + [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_expect_100_continue(server, bucket):
    body = os.urandom(100_000)
    target = f"/{bucket}/expect"
    headers = signed_headers(server, "PUT", target, {"Expect": "100-continue", "Content-Length": str(len(body))}, body,
                             payload=hashlib.sha256(body).hexdigest())
    with _raw_socket(server) as sock:
        sock.sendall(_head_bytes("PUT", target, headers))
        buffer = bytearray()
        status, _ = _read_head(sock, buffer)
        assert status == 100
        sock.sendall(body)
        status, response_headers = _read_head(sock, buffer)
        assert status == 200
        assert response_headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'
        _read_body(sock, buffer, int(response_headers.get("content-length", "0")))
        # The connection stays usable.
        sock.sendall(_head_bytes("GET", target, signed_headers(server, "GET", target)))
        status, response_headers = _read_head(sock, buffer)
        assert status == 200 and _read_body(sock, buffer, int(response_headers["content-length"])) == body


def test_expect_100_continue_refused_write_answers_412_without_100(server, bucket):
    put(server, bucket, "exists", b"first")
    body = b"second" * 1000
    target = f"/{bucket}/exists"
    headers = signed_headers(server, "PUT", target, {"Expect": "100-continue", "Content-Length": str(len(body)),
                                                     "If-None-Match": "*"}, body, payload="UNSIGNED-PAYLOAD")
    with _raw_socket(server) as sock:
        sock.sendall(_head_bytes("PUT", target, headers))
        buffer = bytearray()
        status, response_headers = _read_head(sock, buffer)
        assert status == 412
        error = _read_body(sock, buffer, int(response_headers["content-length"]))
        assert b"<Code>PreconditionFailed</Code>" in error
        assert response_headers.get("connection") == "close"
    assert get(server, bucket, "exists").body == b"first"


def test_chunked_transfer_encoding_without_content_length(server, bucket):
    pieces = [os.urandom(size) for size in (1, 5000, 70_000, 3)]
    body = b"".join(pieces)
    target = f"/{bucket}/chunked"
    headers = signed_headers(server, "PUT", target, {"Transfer-Encoding": "chunked"}, payload="UNSIGNED-PAYLOAD")
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    with _raw_socket(server) as sock:
        sock.sendall(_head_bytes("PUT", target, headers) + encoded)
        buffer = bytearray()
        status, response_headers = _read_head(sock, buffer)
        assert status == 200
        assert response_headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert get(server, bucket, "chunked").body == body


def _aws_chunked(data: bytes, chunk: int, trailer: str) -> bytes:
    out = b""
    for start in range(0, len(data), chunk):
        piece = data[start:start + chunk]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\n" + trailer.encode() + b"\r\n\r\n"


def _crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_unsigned_trailer_over_plain_http(server, bucket):
    data = os.urandom(200_000)
    for key, claimed, status in (("trailer-ok", _crc32(data), 200), ("trailer-bad", _crc32(b"other"), 400)):
        body = _aws_chunked(data, 65536, f"x-amz-checksum-crc32:{claimed}")
        headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
                   "x-amz-trailer": "x-amz-checksum-crc32", "Content-Length": str(len(body))}
        answer = request(server, "PUT", f"/{bucket}/{key}", headers, body, payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        assert answer.status == status, answer
        if status == 400:
            assert answer.code == "BadDigest"
    assert get(server, bucket, "trailer-ok").body == data
    assert absent(server, bucket, "trailer-bad")


def test_aws_chunked_with_chunked_transfer_encoding_and_no_content_length(server, bucket):
    data = os.urandom(150_000)
    body = _aws_chunked(data, 65536, f"x-amz-checksum-crc32:{_crc32(data)}")
    target = f"/{bucket}/double-chunked"
    headers = signed_headers(server, "PUT", target, {"Content-Encoding": "aws-chunked", "Transfer-Encoding": "chunked",
                                                     "x-amz-decoded-content-length": str(len(data)),
                                                     "x-amz-trailer": "x-amz-checksum-crc32"},
                             payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (body[:1000], body[1000:])) + b"0\r\n\r\n"
    with _raw_socket(server) as sock:
        sock.sendall(_head_bytes("PUT", target, headers) + encoded)
        status, _ = _read_head(sock, bytearray())
        assert status == 200
    assert get(server, bucket, "double-chunked").body == data


def _signed_aws_chunked(server, target: str, data: bytes, chunk_bytes: int, trailer: tuple[str, str] | None,
                        *, tamper_chunk: int | None = None) -> tuple[dict, bytes]:
    """Headers and body of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER] upload, every chunk signed."""
    import hmac

    mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")
    pieces = [data[start:start + chunk_bytes] for start in range(0, len(data), chunk_bytes)] + [b""]

    def encode(signatures: list[str], trailer_signature: str) -> bytes:
        out = b"".join(b"%x;chunk-signature=%s\r\n%s\r\n" % (len(piece), sig.encode(), piece)
                       for piece, sig in zip(pieces[:-1], signatures))
        out += b"0;chunk-signature=%s\r\n" % signatures[-1].encode()
        if trailer:
            out += f"{trailer[0]}:{trailer[1]}\r\nx-amz-trailer-signature:{trailer_signature}\r\n".encode()
        return out + b"\r\n"

    length = len(encode(["0" * 64] * len(pieces), "0" * 64))
    headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
               "Content-Length": str(length)}
    if trailer:
        headers["x-amz-trailer"] = trailer[0]
    headers = signed_headers(server, "PUT", target, headers, payload=mode)
    seed = re.search(r"Signature=([0-9a-f]{64})", headers["Authorization"]).group(1)
    amz_date = headers["X-Amz-Date"]
    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    key = ("AWS4" + server.secret_key).encode()
    for part in (amz_date[:8], "us-east-1", "s3", "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    previous, signatures = seed, []
    empty = hashlib.sha256(b"").hexdigest()
    for index, piece in enumerate(pieces):
        signed = piece + (b"!" if index == tamper_chunk else b"")
        text = f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{empty}\n{hashlib.sha256(signed).hexdigest()}"
        previous = hmac.digest(key, text.encode(), "sha256").hex()
        signatures.append(previous)
    trailer_signature = ""
    if trailer:
        lines = f"{trailer[0]}:{trailer[1]}\n".encode()
        text = f"AWS4-HMAC-SHA256-TRAILER\n{amz_date}\n{scope}\n{previous}\n{hashlib.sha256(lines).hexdigest()}"
        trailer_signature = hmac.digest(key, text.encode(), "sha256").hex()
    body = encode(signatures, trailer_signature)
    assert len(body) == length
    return headers, body


@pytest.mark.parametrize("with_trailer", [False, True], ids=["signed-chunks", "signed-chunks-trailer"])
def test_signed_aws_chunked_upload(server, bucket, with_trailer):
    data = os.urandom(150_000)
    for key, tamper, status, code in (("good", None, 200, None), ("tampered", 1, 403, "SignatureDoesNotMatch")):
        target = f"/{bucket}/signed-{key}"
        headers, body = _signed_aws_chunked(server, target, data, 65536,
                                            ("x-amz-checksum-crc32", _crc32(data)) if with_trailer else None,
                                            tamper_chunk=tamper)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            answer = send(connection, "PUT", target, headers, body)
        finally:
            connection.close()
        assert answer.status == status and answer.code == code, answer
    assert get(server, bucket, "signed-good").body == data
    assert absent(server, bucket, "signed-tampered")
    if with_trailer:
        head = request(server, "HEAD", f"/{bucket}/signed-good", {"x-amz-checksum-mode": "ENABLED"})
        assert head.headers["x-amz-checksum-crc32"] == _crc32(data)


# -- malformed requests ------------------------------------------------------------------


def test_malformed_xml_bodies_change_nothing(server, bucket):
    for body in (b"<CreateBucketConfiguration><LocationConstraint>", b"not xml at all", b"<Wrong/>",
                 b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><CreateBucketConfiguration/>'):
        answer = request(server, "PUT", "/never-created", body=body, payload=hashlib.sha256(body).hexdigest())
        assert_error(answer, 400, "MalformedXML")
    assert request(server, "HEAD", "/never-created").status == 404
    put(server, bucket, "keep", b"keep me")
    for body in (b"<Delete><Object><Key>keep</Key></Object>", b"garbage", b"<Delete></Delete>",
                 b"<Other><Object><Key>keep</Key></Object></Other>", b"<Delete><Object><Key></Key></Object></Delete>"):
        headers = {"Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()}
        answer = request(server, "POST", f"/{bucket}?delete", headers, body, payload=hashlib.sha256(body).hexdigest())
        assert_error(answer, 400, "MalformedXML")
    assert get(server, bucket, "keep").body == b"keep me"
    answer = request(server, "POST", f"/{bucket}/mp?uploads")
    assert answer.status == 200, answer
    upload = re.search(rb"<UploadId>([^<]+)</UploadId>", answer.body).group(1).decode()
    for body in (b"<CompleteMultipartUpload><Part>", b"<CompleteMultipartUpload></CompleteMultipartUpload>",
                 b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>"):
        answer = request(server, "POST", f"/{bucket}/mp?uploadId={upload}", body=body, payload=hashlib.sha256(body).hexdigest())
        assert_error(answer, 400, "MalformedXML")
    assert request(server, "GET", f"/{bucket}/mp?uploadId={upload}").status == 200
    assert absent(server, bucket, "mp")


def test_delete_objects_needs_an_integrity_header(server, bucket):
    put(server, bucket, "keep", b"x")
    body = b"<Delete><Object><Key>keep</Key></Object></Delete>"
    answer = request(server, "POST", f"/{bucket}?delete", body=body, payload=hashlib.sha256(body).hexdigest())
    assert answer.status == 400 and answer.code in ("InvalidRequest", "MissingContentMD5"), answer
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    answer = request(server, "POST", f"/{bucket}?delete", {"Content-MD5": wrong}, body, payload=hashlib.sha256(body).hexdigest())
    assert_error(answer, 400, "BadDigest")
    assert get(server, bucket, "keep").status == 200


@pytest.mark.parametrize("authorization, code", [
    ("garbage", "InvalidArgument"),
    ("AWS AKIDEXAMPLE:c2lnbmF0dXJl", "InvalidRequest"),
    ("AWS4-HMAC-SHA256 garbage", "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential=x, SignedHeaders=host, Signature=abc", "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3/aws4_request, SignedHeaders=Host, Signature=ab",
     "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3/aws4_request,SignedHeaders=host,Signature=",
     "AuthorizationHeaderMalformed"),
    ("\u00ff\u00fe", "InvalidArgument"),
])
def test_garbage_authorization_header(server, bucket, authorization, code):
    target = f"/{bucket}/auth-garbage"
    headers = {"Host": f"127.0.0.1:{server.port}", "Authorization": authorization, "Content-Length": "4",
               "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "x-amz-date": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")}
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        answer = send(connection, "PUT", target, headers, b"data")
    finally:
        connection.close()
    assert_error(answer, 400, code)
    assert absent(server, bucket, "auth-garbage")


@pytest.mark.parametrize("path", ["/{bucket}/%FF%FE", "/{bucket}/ok%C3", "/{bucket}/%ED%A0%80", "/%FF/key"])
def test_invalid_utf8_in_path_is_invalid_uri(server, bucket, path):
    target = path.format(bucket=bucket)
    for method in ("PUT", "GET"):
        answer = request(server, method, target, body=b"x" if method == "PUT" else b"",
                         payload=hashlib.sha256(b"x" if method == "PUT" else b"").hexdigest())
        assert_error(answer, 400, "InvalidURI")
    answer = request(server, "GET", f"/{bucket}?list-type=2")
    assert answer.status == 200 and b"<KeyCount>0</KeyCount>" in answer.body, answer


def test_bad_percent_escape_in_path(server, bucket):
    # '%zz' is not an escape; S3 refuses such a URI rather than guess.
    answer = request(server, "PUT", f"/{bucket}/bad%zzescape", body=b"x", payload=hashlib.sha256(b"x").hexdigest())
    assert 400 <= answer.status < 500 and answer.code in ("InvalidURI", "SignatureDoesNotMatch"), answer
    answer = request(server, "GET", f"/{bucket}?list-type=2")
    assert b"<KeyCount>0</KeyCount>" in answer.body, answer


def test_invalid_utf8_in_query_is_4xx(server, bucket):
    answer = request(server, "GET", f"/{bucket}?list-type=2&prefix=%FF")
    assert 400 <= answer.status < 500 and answer.code in ("InvalidArgument", "InvalidURI"), answer


@pytest.mark.parametrize("header", ["bytes=abc", "bytes=5-2", "items=0-1", "bytes=0-1,3-4", "bytes=", "bytes=--1", "bytes 0-1"])
def test_bad_range_syntax_is_ignored(server, bucket, header):
    put(server, bucket, "ranged", b"0123456789")
    answer = get(server, bucket, "ranged", {"Range": header})
    assert answer.status == 200 and answer.body == b"0123456789", answer
    assert "content-range" not in answer.headers


@pytest.mark.parametrize("number", ["0", "10001", "abc", "-1", ""])
def test_part_number_out_of_range(server, bucket, number):
    put(server, bucket, "parted", b"data")
    answer = request(server, "GET", f"/{bucket}/parted?partNumber={number}")
    assert_error(answer, 400, "InvalidArgument")
    answer = request(server, "POST", f"/{bucket}/mp?uploads")
    upload = re.search(rb"<UploadId>([^<]+)</UploadId>", answer.body).group(1).decode()
    answer = request(server, "PUT", f"/{bucket}/mp?partNumber={number}&uploadId={upload}", body=b"part",
                     payload=hashlib.sha256(b"part").hexdigest())
    assert_error(answer, 400, "InvalidArgument")
    answer = request(server, "GET", f"/{bucket}/mp?uploadId={upload}")
    assert answer.status == 200 and b"<Part>" not in answer.body, answer
    answer = request(server, "GET", f"/{bucket}/parted?partNumber=2")
    assert_error(answer, 416, "InvalidPartNumber")


@pytest.mark.parametrize("method, target", [
    ("PUT", "/{bucket}/k?tagging"), ("PUT", "/{bucket}?lifecycle"), ("DELETE", "/{bucket}?cors"),
    ("PUT", "/{bucket}?policy"), ("PUT", "/{bucket}?versioning"),
    ("POST", "/{bucket}/k?select&select-type=2"), ("GET", "/{bucket}?analytics&id=a"), ("GET", "/{bucket}/k?retention"),
])
def test_unknown_subresource_is_not_implemented(server, bucket, method, target):
    put(server, bucket, "k", b"untouched")
    body = b"<Tagging><TagSet/></Tagging>" if method != "GET" else b""
    answer = request(server, method, target.format(bucket=bucket), body=body, payload=hashlib.sha256(body).hexdigest())
    assert_error(answer, 501, "NotImplemented")
    assert get(server, bucket, "k").body == b"untouched"


def test_truncated_body_stores_nothing(server, bucket):
    target = f"/{bucket}/truncated"
    headers = signed_headers(server, "PUT", target, {"Content-Length": "100000"}, payload="UNSIGNED-PAYLOAD")
    with _raw_socket(server) as sock:
        sock.sendall(_head_bytes("PUT", target, headers) + os.urandom(40_000))
        sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    if received:
        status = int(received.split(b" ", 2)[1])
        assert 400 <= status < 500 and b"<Code>IncompleteBody</Code>" in received, received
    assert absent(server, bucket, "truncated")


def test_truncated_aws_chunked_body_is_incomplete(server, bucket):
    data = os.urandom(100_000)
    body = _aws_chunked(data, 65536, f"x-amz-checksum-crc32:{_crc32(data)}")[:70_000]
    headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
               "x-amz-trailer": "x-amz-checksum-crc32", "Content-Length": str(len(body))}
    answer = request(server, "PUT", f"/{bucket}/cut", headers, body, payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert_error(answer, 400, "IncompleteBody")
    assert absent(server, bucket, "cut")


def test_body_longer_than_decoded_length_is_refused(server, bucket):
    data = os.urandom(10_000)
    body = _aws_chunked(data, 4096, f"x-amz-checksum-crc32:{_crc32(data)}")
    headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": "5000",
               "x-amz-trailer": "x-amz-checksum-crc32", "Content-Length": str(len(body))}
    answer = request(server, "PUT", f"/{bucket}/long", headers, body, payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert 400 <= answer.status < 500 and answer.code in ("IncompleteBody", "InvalidRequest"), answer
    assert absent(server, bucket, "long")


def test_malformed_aws_chunked_framing_is_4xx(server, bucket):
    for index, body in enumerate([b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXX0\r\n\r\n", b"3\nabc\r\n0\r\n\r\n"]):
        headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": "3", "Content-Length": str(len(body))}
        answer = request(server, "PUT", f"/{bucket}/framing-{index}", headers, body, payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        assert 400 <= answer.status < 500 and answer.code in ("InvalidRequest", "IncompleteBody"), answer
        assert absent(server, bucket, f"framing-{index}")


def test_wrong_content_sha256(server, bucket):
    body = b"the real body"
    answer = request(server, "PUT", f"/{bucket}/sha", body=body, payload=hashlib.sha256(b"another body").hexdigest())
    assert_error(answer, 400, "XAmzContentSHA256Mismatch")
    assert absent(server, bucket, "sha")
    answer = request(server, "PUT", f"/{bucket}/sha", body=body, payload="not-a-hash")
    assert 400 <= answer.status < 500 and answer.code == "InvalidArgument", answer
    assert absent(server, bucket, "sha")


def test_request_time_too_skewed(server, bucket):
    for hours in (1, -1):
        when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)
        answer = request(server, "PUT", f"/{bucket}/skewed", body=b"x", payload=hashlib.sha256(b"x").hexdigest(), when=when)
        assert_error(answer, 403, "RequestTimeTooSkewed")
    assert absent(server, bucket, "skewed")


def test_signature_mismatch_and_unsigned_amz_header(server, bucket):
    answer = request(server, "PUT", f"/{bucket}/forged", body=b"x", payload=hashlib.sha256(b"x").hexdigest(),
                     secret_key="definitely-not-the-secret-key-000000000")
    assert_error(answer, 403, "SignatureDoesNotMatch")
    target = f"/{bucket}/forged"
    headers = signed_headers(server, "PUT", target, body=b"x", payload=hashlib.sha256(b"x").hexdigest())
    headers["x-amz-meta-added"] = "after signing"
    headers["Content-Length"] = "1"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        answer = send(connection, "PUT", target, headers, b"x")
    finally:
        connection.close()
    assert answer.status == 403 and answer.code in ("AccessDenied", "SignatureDoesNotMatch"), answer
    assert absent(server, bucket, "forged")


def test_anonymous_request_is_denied(server, bucket):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        answer = send(connection, "GET", f"/{bucket}?list-type=2", {"Host": f"127.0.0.1:{server.port}"})
        assert_error(answer, 403, "AccessDenied")
        answer = send(connection, "PUT", f"/{bucket}/anon", {"Host": f"127.0.0.1:{server.port}", "Content-Length": "1"}, b"x")
        assert_error(answer, 403, "AccessDenied")
    finally:
        connection.close()
    assert absent(server, bucket, "anon")


def test_methods_without_an_operation(server, bucket):
    for method, target in (("POST", f"/{bucket}"), ("POST", f"/{bucket}/k"), ("PATCH", f"/{bucket}/k"), ("DELETE", "/")):
        answer = request(server, method, target)
        assert 400 <= answer.status < 500 and answer.code in ("MethodNotAllowed", "NotImplemented", "InvalidRequest"), (method, answer)


def test_invalid_bucket_name_and_key_too_long(server):
    answer = request(server, "PUT", "/Bad_Bucket")
    assert_error(answer, 400, "InvalidBucketName")
    long_key = "k" * 1025
    answer = request(server, "PUT", f"/raw-0/{long_key}", body=b"x", payload=hashlib.sha256(b"x").hexdigest())
    assert answer.status == 400 and answer.code in ("KeyTooLongError", "NoSuchBucket"), answer


@pytest.mark.parametrize("head", [
    b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /b/k HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    b"GET /b/k HTTP/9.9\r\nHost: x\r\n\r\n",
    b"PUT /b/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
])
def test_request_the_http_parser_rejects_is_s3_error_xml(server, head):
    with _raw_socket(server) as sock:
        sock.sendall(head)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400"), received
    assert b"x-amz-request-id: " in rest and b"content-type: application/xml" in rest
    assert b"<Code>BadRequest</Code>" in rest


def test_zz_server_logged_no_traceback(server):
    """Runs last in this module: no request above made the server log a traceback or a 500."""
    assert server.tracebacks() == [], server.stderr()[-5000:]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_sigterm_stops_promptly_with_idle_keep_alive_clients(server_starter, client_factory, tmp_path, tls):
    """`cairn dev` stops cleanly on SIGTERM (exit 0, cleanup ran) even while a client
    pool holds an idle keep-alive connection — over TLS too, where a graceful close
    would wait for a close_notify the idle client never sends."""
    import signal
    import time

    with server_starter(tmp_path, tls=tls) as running:
        client = client_factory(running)
        client.create_bucket(Bucket="idle")
        client.put_object(Bucket="idle", Key="k", Body=b"x")
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        code = running.process.wait(timeout=15)
        assert code == 0 and time.monotonic() - started < 5
        assert "stopped" in running.stderr()

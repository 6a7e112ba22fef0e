"""SigV4 authentication (frontend/s3/auth.py): the right requests pass, the rest are refused.

Properties and method:
- AWS's published S3 examples verify, with the documented signatures; each one with
  a byte changed (signature, method, path, query, a signed header) is refused.
- Requests signed by botocore itself (S3SigV4Auth, S3SigV4QueryAuth) over keys and
  query values with unicode, spaces, '+', '~', '=', '/', empty values verify;
  tampered variants and a wrong secret are refused.
- Time: an injected clock checks the skew window for header auth and the expiry
  window for presigned URLs, at the edges.
- Malformed credentials map to the error codes S3 uses.

Vectors (examplebucket, AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY,
20130524T000000Z, us-east-1):
- https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html
  ("Examples: Signature Calculations"): GET Object with Range (f0e8bdb8...), PUT Object
  test$file.text (98ad7217...), GET Bucket Lifecycle (fea454ca...), GET Bucket list
  objects max-keys=2&prefix=J (34b48302...).
- https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html: the
  presigned GET test.txt, 86400 s (aeeed9bb...).
- https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html: the chunked
  PUT chunkObject.txt, seed signature 4f232c43... (also asserted by awslabs/aws-crt-swift
  Test/AwsCommonRuntimeKitTests/auth/ChunkSignerTests.swift).
- https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming-trailers.html: the
  same PUT with x-amz-trailer: x-amz-checksum-crc32c, seed 106e2a8a... (the value
  used by several independent verifiers found through code search).
"""

from __future__ import annotations

import calendar
import datetime
from types import SimpleNamespace
from unittest import mock
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode

from frontend.s3 import errors
from frontend.s3.auth import Authenticator, PayloadMode, User, canonical_query, parse_query, uri_encode_path

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EXAMPLE_USER = User("example", ACCESS_KEY, SECRET_KEY)
EXAMPLE_TIME = calendar.timegm((2013, 5, 24, 0, 0, 0))
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
HOST = ("host", "examplebucket.s3.amazonaws.com")
AMZ_DATE = ("x-amz-date", "20130524T000000Z")


def authorization(signed_headers: str, signature: str, *, scope: str = "20130524/us-east-1/s3/aws4_request",
                  access_key: str = ACCESS_KEY) -> tuple[str, str]:
    return ("authorization", f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                             f"SignedHeaders={signed_headers}, Signature={signature}")


def authenticator(now: float = EXAMPLE_TIME, **options) -> Authenticator:
    return Authenticator([EXAMPLE_USER, User("other", "AKIDOTHER", "other-secret")], clock=lambda: now, **options)


# (name, method, raw_path, raw_query, headers, expected payload mode)
AWS_EXAMPLES = [
    ("get-object-range", "GET", "/test.txt", "", [
        HOST, ("range", "bytes=0-9"), ("x-amz-content-sha256", EMPTY_SHA256), AMZ_DATE,
        authorization("host;range;x-amz-content-sha256;x-amz-date",
                      "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")], PayloadMode.SIGNED),
    ("put-object", "PUT", "/test%24file.text", "", [
        HOST, ("date", "Fri, 24 May 2013 00:00:00 GMT"), AMZ_DATE, ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("x-amz-content-sha256", "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"),
        authorization("date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                      "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")], PayloadMode.SIGNED),
    ("get-bucket-lifecycle", "GET", "/", "lifecycle", [
        HOST, ("x-amz-content-sha256", EMPTY_SHA256), AMZ_DATE,
        authorization("host;x-amz-content-sha256;x-amz-date",
                      "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")], PayloadMode.SIGNED),
    ("list-objects", "GET", "/", "max-keys=2&prefix=J", [
        HOST, ("x-amz-content-sha256", EMPTY_SHA256), AMZ_DATE,
        authorization("host;x-amz-content-sha256;x-amz-date",
                      "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")], PayloadMode.SIGNED),
    ("presigned-get", "GET", "/test.txt",
     "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2F"
     "aws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature="
     "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404", [HOST], PayloadMode.UNSIGNED),
    ("streaming-put", "PUT", "/examplebucket/chunkObject.txt", "", [
        ("host", "s3.amazonaws.com"), AMZ_DATE, ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("content-encoding", "aws-chunked"), ("x-amz-decoded-content-length", "66560"),
        ("content-length", "66824"), ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        authorization("content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                      "x-amz-decoded-content-length;x-amz-storage-class",
                      "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9")],
     PayloadMode.STREAMING_SIGNED),
    ("streaming-put-trailer", "PUT", "/examplebucket/chunkObject.txt", "", [
        ("host", "s3.amazonaws.com"), AMZ_DATE, ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("content-encoding", "aws-chunked"), ("x-amz-decoded-content-length", "66560"),
        ("x-amz-trailer", "x-amz-checksum-crc32c"),
        ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"),
        authorization("content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
                      "x-amz-storage-class;x-amz-trailer",
                      "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e")],
     PayloadMode.STREAMING_SIGNED_TRAILER),
]


@pytest.mark.parametrize("name, method, path, query, headers, mode", AWS_EXAMPLES, ids=[e[0] for e in AWS_EXAMPLES])
def test_aws_published_examples_verify(name, method, path, query, headers, mode):
    result = authenticator().authenticate(method, path, query, headers)
    assert result.user == EXAMPLE_USER
    assert result.payload is mode
    assert result.amz_date == "20130524T000000Z"
    assert result.scope == "20130524/us-east-1/s3/aws4_request"
    assert result.presigned == (name == "presigned-get")
    if mode is PayloadMode.SIGNED:
        assert result.content_sha256 == dict(headers)["x-amz-content-sha256"]
    if mode.signs_chunks:
        assert result.seed_signature == dict(headers)["authorization"].rsplit("Signature=", 1)[1]
        assert result.signing_key is not None
    else:
        assert result.seed_signature is None


def _tampered(method, path, query, headers):
    """Variants of a request that must not verify: one thing changed each."""
    yield "method", ("POST" if method != "POST" else "GET"), path, query, headers
    yield "path", method, path + "x", query, headers
    yield "query-added", method, path, (query + "&" if query else "") + "versionId=1", headers
    for index, (name, value) in enumerate(headers):
        if name == "authorization":
            flipped = value[:-1] + ("0" if value[-1] != "0" else "1")
            yield "signature", method, path, query, headers[:index] + [(name, flipped)] + headers[index + 1:]
        elif name in ("host", "range", "x-amz-storage-class", "content-length"):
            yield f"header-{name}", method, path, query, headers[:index] + [(name, value + "x")] + headers[index + 1:]
    if "X-Amz-Signature=" in query:
        yield "query-signature", method, path, query[:-1] + "5", headers
        yield "query-expires", method, path, query.replace("X-Amz-Expires=86400", "X-Amz-Expires=86401"), headers


@pytest.mark.parametrize("name, method, path, query, headers, mode", AWS_EXAMPLES, ids=[e[0] for e in AWS_EXAMPLES])
def test_aws_examples_tampered_are_refused(name, method, path, query, headers, mode):
    variants = list(_tampered(method, path, query, headers))
    assert len(variants) >= 4
    for what, *request in variants:
        with pytest.raises(errors.SignatureDoesNotMatch):
            authenticator().authenticate(*request)
            pytest.fail(f"tampered {what} verified")


def test_aws_example_with_wrong_secret_is_refused():
    _, method, path, query, headers, _ = AWS_EXAMPLES[0]
    impostor = Authenticator([User("example", ACCESS_KEY, SECRET_KEY[:-1] + "X")], clock=lambda: EXAMPLE_TIME)
    with pytest.raises(errors.SignatureDoesNotMatch):
        impostor.authenticate(method, path, query, headers)


# -- requests signed by botocore ------------------------------------------------------

BOTO_USER = User("boto", "AKIDBOTO", "s3cr3t/with+plus=and~tilde")
BOTO_TIME = datetime.datetime(2024, 2, 29, 13, 45, 7, tzinfo=datetime.timezone.utc)
KEYS = ["plain.txt", "dir/sub dir/file name.txt", "ünïcödé/日本語/ключ", "a+b=c~d", "percent%20literal",
        "sym!$&'()*,;:@", "trailing/", "~user/.hidden", "emoji-\U0001F600"]
QUERIES = [
    [],
    [("uploads", "")],
    [("list-type", "2"), ("prefix", "a b+c~d=e/f"), ("delimiter", "/"), ("encoding-type", "url")],
    [("partNumber", "3"), ("uploadId", "abc+/=~")],
    [("prefix", "ünï"), ("start-after", ""), ("max-keys", "10")],
    [("b", "2"), ("a", "2"), ("a", "1")],
]


def _boto_request(method: str, key: str, params: list[tuple[str, str]], *, scheme: str = "http",
                  headers: dict[str, str] | None = None, body: bytes = b"") -> AWSRequest:
    url = f"{scheme}://s3.cairn.test:8080/bucket-1/{percent_encode(key, safe='/~')}"
    return AWSRequest(method=method, url=url, headers=dict(headers or {}), params=params, data=body)


def _to_wire(request: AWSRequest) -> tuple[str, str, str, list[tuple[str, str]]]:
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    # request.headers keeps repeated names, the prepared request's do not.
    headers = [(name.lower(), value if isinstance(value, str) else value.decode()) for name, value in
               request.headers.items()]
    headers.append(("host", parts.netloc))
    return prepared.method, parts.path, parts.query, headers


def _sign_header(request: AWSRequest, region: str = "eu-central-1") -> AWSRequest:
    credentials = Credentials(BOTO_USER.access_key, BOTO_USER.secret_key)
    with mock.patch("botocore.auth.get_current_datetime", return_value=BOTO_TIME.replace(tzinfo=None)):
        S3SigV4Auth(credentials, "s3", region).add_auth(request)
    return request


def _sign_query(request: AWSRequest, expires_s: int = 3600, region: str = "us-west-2") -> AWSRequest:
    credentials = Credentials(BOTO_USER.access_key, BOTO_USER.secret_key)
    with mock.patch("botocore.auth.get_current_datetime", return_value=BOTO_TIME.replace(tzinfo=None)):
        S3SigV4QueryAuth(credentials, "s3", region, expires=expires_s).add_auth(request)
    return request


def boto_authenticator(offset_s: float = 0, **options) -> Authenticator:
    now = BOTO_TIME.timestamp() + offset_s
    return Authenticator([BOTO_USER], clock=lambda: now, **options)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("query_index", range(len(QUERIES)))
def test_botocore_header_signed_requests_verify(key, query_index):
    method, path, query, headers = _to_wire(_sign_header(_boto_request("GET", key, QUERIES[query_index])))
    result = boto_authenticator().authenticate(method, path, query, headers)
    assert result.user == BOTO_USER and not result.presigned
    assert result.scope == "20240229/eu-central-1/s3/aws4_request" and result.region == "eu-central-1"
    assert result.payload is PayloadMode.SIGNED and result.content_sha256 == EMPTY_SHA256


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("query_index", range(len(QUERIES)))
def test_botocore_presigned_requests_verify(key, query_index):
    method, path, query, headers = _to_wire(_sign_query(_boto_request("GET", key, QUERIES[query_index])))
    result = boto_authenticator(offset_s=3600).authenticate(method, path, query, headers)
    assert result.user == BOTO_USER and result.presigned
    assert result.payload is PayloadMode.UNSIGNED and result.seed_signature is None


def test_botocore_signed_put_with_body_and_metadata_verifies():
    body = b"hello, world"
    request = _boto_request("PUT", "k", [], headers={"x-amz-meta-note": "  two   spaces  ", "content-type": "text/plain",
                                                       "x-amz-checksum-crc32": "//////8="}, body=body)
    method, path, query, headers = _to_wire(_sign_header(request))
    result = boto_authenticator().authenticate(method, path, query, headers)
    assert result.payload is PayloadMode.SIGNED
    assert result.content_sha256 == "09ca7e4eaa6e8ae9c7d261167129184883644d07dfba7cbfbc4c8a2e08360d5b"


def test_botocore_https_request_without_payload_signing_is_unsigned_payload():
    request = _boto_request("PUT", "k", [], scheme="https", body=b"x")
    request.context["client_config"] = SimpleNamespace(s3={"payload_signing_enabled": False})
    method, path, query, headers = _to_wire(_sign_header(request))
    assert ("x-amz-content-sha256", "UNSIGNED-PAYLOAD") in headers
    assert boto_authenticator().authenticate(method, path, query, headers).payload is PayloadMode.UNSIGNED


def _replace_header(headers, name, value):
    return [(n, value if n == name else v) for n, v in headers]


@pytest.mark.parametrize("key", ["plain.txt", "ünïcödé/日本語/ключ", "a+b=c~d"])
def test_botocore_signed_requests_tampered_are_refused(key):
    params = [("prefix", "a b+c"), ("uploads", "")]
    for sign in (_sign_header, _sign_query):
        method, path, query, headers = _to_wire(sign(_boto_request("GET", key, params)))
        authenticate = boto_authenticator(offset_s=1).authenticate
        authenticate(method, path, query, headers)            # the untouched request passes
        variants = [
            ("HEAD", path, query, headers),
            (method, path.replace("bucket-1", "bucket-2"), query, headers),
            (method, path + "%20", query, headers),
            (method, path, query.replace("prefix=a", "prefix=b"), headers),
            (method, path, query.replace("uploads", "uploads=x"), headers),
            (method, path, query + "&acl", headers),
            (method, path, query, _replace_header(headers, "host", "evil.test:8080")),
        ]
        if sign is _sign_header:
            variants.append((method, path, query, _replace_header(headers, "x-amz-date", "20240229T134508Z")))
        for variant in variants:
            with pytest.raises(errors.SignatureDoesNotMatch):
                authenticate(*variant)


def test_plus_in_query_decodes_as_space_and_percent_2b_as_plus():
    assert parse_query("a=x+y&b=x%2By&c") == [("a", "x y"), ("b", "x+y"), ("c", "")]
    assert canonical_query(parse_query("b=x+y&a=1&b=%2B&c")) == "a=1&b=%2B&b=x%20y&c="


def test_canonical_uri_encodes_once_without_normalising():
    assert uri_encode_path("/test$file.text") == "/test%24file.text"
    assert uri_encode_path("/test%24file.text") == "/test%24file.text"
    assert uri_encode_path("/a/./b/../c//d") == "/a/./b/../c//d"
    assert uri_encode_path("/%C3%BC%20x+y") == "/%C3%BC%20x%2By"


def test_unsigned_amz_header_is_refused():
    method, path, query, headers = _to_wire(_sign_header(_boto_request("GET", "k", [])))
    headers.append(("x-amz-copy-source", "/other/secret"))
    with pytest.raises(errors.AccessDenied) as caught:
        boto_authenticator().authenticate(method, path, query, headers)
    assert caught.value.fields["HeadersNotSigned"] == "x-amz-copy-source"


def test_repeated_headers_are_joined_with_commas():
    request = _boto_request("GET", "k", [])
    request.headers.add_header("x-amz-meta-list", "one")    # botocore signs repeated headers joined by ','
    request.headers.add_header("x-amz-meta-list", "two")
    method, path, query, headers = _to_wire(_sign_header(request))
    assert [value for name, value in headers if name == "x-amz-meta-list"] == ["one", "two"]
    boto_authenticator().authenticate(method, path, query, headers)
    joined = [(name, value) for name, value in headers if name != "x-amz-meta-list"] + [("x-amz-meta-list", "two,one")]
    with pytest.raises(errors.SignatureDoesNotMatch):
        boto_authenticator().authenticate(method, path, query, joined)


# -- time: skew and expiry --------------------------------------------------------------

def test_header_auth_skew_window():
    _, method, path, query, headers, _ = AWS_EXAMPLES[0]
    for offset_s in (-900, -1, 0, 1, 900):
        authenticator(EXAMPLE_TIME + offset_s).authenticate(method, path, query, headers)
    for offset_s in (-901, 901, 86400):
        with pytest.raises(errors.RequestTimeTooSkewed):
            authenticator(EXAMPLE_TIME + offset_s).authenticate(method, path, query, headers)
    with pytest.raises(errors.RequestTimeTooSkewed):
        authenticator(EXAMPLE_TIME + 61, max_skew_s=60).authenticate(method, path, query, headers)


def test_date_header_alone_gives_the_time():
    request = _boto_request("GET", "k", [])
    method, path, query, headers = _to_wire(_sign_header(request))
    # botocore always sends x-amz-date; without it the Date header is the request time.
    headers = [(name, value) for name, value in headers if name != "x-amz-date"]
    headers.append(("date", "Thu, 29 Feb 2024 13:45:07 GMT"))
    with pytest.raises(errors.SignatureDoesNotMatch):        # x-amz-date was signed and is now absent
        boto_authenticator().authenticate(method, path, query, headers)
    with pytest.raises(errors.RequestTimeTooSkewed):
        boto_authenticator(offset_s=901).authenticate(method, path, query, headers)
    without_any = [(name, value) for name, value in headers if name != "date"]
    with pytest.raises(errors.AccessDenied):
        boto_authenticator().authenticate(method, path, query, without_any)


def test_presigned_expiry_window():
    method, path, query, headers = _to_wire(_sign_query(_boto_request("GET", "k", []), expires_s=600))
    for offset_s in (-900, 0, 599, 600):
        boto_authenticator(offset_s).authenticate(method, path, query, headers)
    with pytest.raises(errors.AccessDenied, match="Request has expired"):
        boto_authenticator(601).authenticate(method, path, query, headers)
    with pytest.raises(errors.AccessDenied, match="not valid yet"):
        boto_authenticator(-901).authenticate(method, path, query, headers)


def test_presigned_expires_limits():
    for expires_s in (1, 604800):
        method, path, query, headers = _to_wire(_sign_query(_boto_request("GET", "k", []), expires_s=expires_s))
        boto_authenticator().authenticate(method, path, query, headers)
    method, path, query, headers = _to_wire(_sign_query(_boto_request("GET", "k", []), expires_s=604801))
    with pytest.raises(errors.AuthorizationQueryParametersError):
        boto_authenticator().authenticate(method, path, query, headers)
    method, path, query, headers = _to_wire(_sign_query(_boto_request("GET", "k", []), expires_s=3600))
    with pytest.raises(errors.AuthorizationQueryParametersError):
        boto_authenticator(max_presign_expires_s=3599).authenticate(method, path, query, headers)
    for bad in ("-1", "abc", "", "1e3"):
        with pytest.raises(errors.AuthorizationQueryParametersError):
            boto_authenticator().authenticate(method, path, query.replace("X-Amz-Expires=3600", f"X-Amz-Expires={bad}"),
                                              headers)


# -- refusals with the codes S3 uses ------------------------------------------------------

def _example(index: int = 0):
    _, method, path, query, headers, _ = AWS_EXAMPLES[index]
    return method, path, query, list(headers)


def _with_authorization(headers, value):
    return [(name, value if name == "authorization" else v) for name, v in headers]


def test_anonymous_request_is_refused():
    with pytest.raises(errors.AccessDenied):
        authenticator().authenticate("GET", "/bucket/key", "", [HOST])
    with pytest.raises(errors.AccessDenied):
        authenticator().authenticate("GET", "/bucket/key", "versionId=3", [HOST, AMZ_DATE])


def test_unknown_access_key():
    method, path, query, headers = _example()
    header = dict(headers)["authorization"].replace(ACCESS_KEY, "AKIDUNKNOWN")
    with pytest.raises(errors.InvalidAccessKeyId):
        authenticator().authenticate(method, path, query, _with_authorization(headers, header))
    presigned = AWS_EXAMPLES[4]
    with pytest.raises(errors.InvalidAccessKeyId):
        authenticator().authenticate("GET", presigned[2], presigned[3].replace(ACCESS_KEY, "AKIDUNKNOWN"), [HOST])


def test_sigv2_asks_for_sigv4():
    with pytest.raises(errors.InvalidRequest, match="AWS4-HMAC-SHA256"):
        authenticator().authenticate("GET", "/b/k", "", [HOST, ("authorization", "AWS AKIAIOSFODNN7EXAMPLE:frJIUN8=")])
    with pytest.raises(errors.InvalidRequest, match="AWS4-HMAC-SHA256"):
        authenticator().authenticate("GET", "/b/k", "AWSAccessKeyId=AKID&Expires=1&Signature=abc", [HOST])
    with pytest.raises(errors.InvalidArgument):
        authenticator().authenticate("GET", "/b/k", "", [HOST, ("authorization", "Bearer token")])


@pytest.mark.parametrize("scope, error", [
    ("20130524/us-east-1/iam/aws4_request", errors.AuthorizationHeaderMalformed),      # wrong service
    ("20130525/us-east-1/s3/aws4_request", errors.AuthorizationHeaderMalformed),       # not x-amz-date's date
    ("2013-05-24/us-east-1/s3/aws4_request", errors.AuthorizationHeaderMalformed),     # bad date
    ("20131324/us-east-1/s3/aws4_request", errors.AuthorizationHeaderMalformed),       # month 13
    ("20130524/us-east-1/s3/aws5_request", errors.AuthorizationHeaderMalformed),
    ("20130524/us-east-1/s3", errors.AuthorizationHeaderMalformed),
    ("20130524//s3/aws4_request", errors.AuthorizationHeaderMalformed),
])
def test_malformed_credential_scope(scope, error):
    method, path, query, headers = _example()
    header = authorization("host;range;x-amz-content-sha256;x-amz-date", "0" * 64, scope=scope)
    with pytest.raises(error):
        authenticator().authenticate(method, path, query, _with_authorization(headers, header[1]))


def test_any_region_is_accepted_and_signs():
    # The same request signed for another region verifies, with that region in the scope;
    # the us-east-1 signature does not verify for it.
    request = _boto_request("GET", "k", [])
    method, path, query, headers = _to_wire(_sign_header(request, region="ap-southeast-7"))
    assert boto_authenticator().authenticate(method, path, query, headers).region == "ap-southeast-7"
    forged = [(n, v.replace("ap-southeast-7", "us-east-1")) for n, v in headers]
    with pytest.raises(errors.SignatureDoesNotMatch):
        boto_authenticator().authenticate(method, path, query, forged)


@pytest.mark.parametrize("value", [
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, Signature=" + "0" * 64,
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=range;"
    "x-amz-date, Signature=" + "0" * 64,                                           # host not signed
    "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=" + "0" * 64,
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host",
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request SignedHeaders=host",
    "AWS4-HMAC-SHA256",
])
def test_malformed_authorization_header(value):
    method, path, query, headers = _example()
    with pytest.raises(errors.AuthorizationHeaderMalformed):
        authenticator().authenticate(method, path, query, _with_authorization(headers, value))


def test_presign_missing_or_bad_parameters():
    presigned = AWS_EXAMPLES[4][3]
    for name in ("X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Expires"):
        query = "&".join(part for part in presigned.split("&") if not part.startswith(name + "="))
        with pytest.raises(errors.AuthorizationQueryParametersError):
            authenticator().authenticate("GET", "/test.txt", query, [HOST])
    for old, new in [("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1"),
                     ("X-Amz-Date=20130524T000000Z", "X-Amz-Date=2013-05-24"),
                     ("X-Amz-Date=20130524T000000Z", "X-Amz-Date=20130525T000000Z"),
                     ("%2Fs3%2F", "%2Fsqs%2F")]:
        with pytest.raises(errors.AuthorizationQueryParametersError):
            authenticator().authenticate("GET", "/test.txt", presigned.replace(old, new), [HOST])


def test_both_mechanisms_at_once_is_refused():
    method, path, query, headers = _example()
    with pytest.raises(errors.InvalidArgument):
        authenticator().authenticate(method, path, AWS_EXAMPLES[4][3], headers)


def test_content_sha256_required_and_well_formed():
    method, path, query, headers = _example()
    without = [(n, v) for n, v in headers if n != "x-amz-content-sha256"]
    with pytest.raises(errors.InvalidRequest):
        authenticator().authenticate(method, path, query, without)
    bad = _replace_header(headers, "x-amz-content-sha256", "not-a-hash")
    with pytest.raises(errors.InvalidArgument):
        authenticator().authenticate(method, path, query, bad)


def test_non_ascii_signature_is_refused_not_crashed():
    method, path, query, headers = _example()
    value = dict(headers)["authorization"][:-1] + "é"
    with pytest.raises(errors.SignatureDoesNotMatch):
        authenticator().authenticate(method, path, query, _with_authorization(headers, value))


def test_signing_keys_are_cached_per_secret_date_region():
    auth = authenticator()
    _, method, path, query, headers, _ = AWS_EXAMPLES[0]
    first = auth.authenticate(method, path, query, headers).signing_key
    second = auth.authenticate(method, path, query, headers).signing_key
    assert first is second
    assert auth.signing_key(SECRET_KEY, "20130524", "eu-west-1") != first

"""S3 request authentication: AWS Signature Version 4, header and presigned query.

Pure and synchronous: the HTTP layer hands over the request line and headers as
received and gets back who signed it and how the body is to be checked, or an
S3Error. Anonymous requests are refused; every request's signature is checked.

Steps of `Authenticator.authenticate` (cited in the code):
1. Find the mechanism: `Authorization: AWS4-HMAC-SHA256 ...` or the presign query
   (`X-Amz-Algorithm=AWS4-HMAC-SHA256&...`). Neither -> AccessDenied; both ->
   InvalidArgument; SigV2 or another scheme -> InvalidRequest / InvalidArgument.
2. Parse the credential scope `AKID/yyyymmdd/region/s3/aws4_request` and the
   signed header list ('host' must be in it). Any region is accepted and signs.
3. Look the access key up (InvalidAccessKeyId), check the request time: within
   max_skew_s of the clock for header auth (RequestTimeTooSkewed); for presign
   not before X-Amz-Date (less the skew) nor after X-Amz-Date + X-Amz-Expires
   (AccessDenied "Request has expired").
4. Read the payload mode from x-amz-content-sha256 (header auth requires it;
   a presigned request is UNSIGNED-PAYLOAD unless it signed that header).
5. Build the canonical request (S3 rules: no path normalisation, the path and
   the query pairs decoded then URI-encoded once), the string to sign, and
   compare the HMAC with hmac.compare_digest (SignatureDoesNotMatch).

Invariants: the signature is compared in constant time and always computed;
derived signing keys are cached per (secret, date, region) and the cache is
bounded; x-amz-* headers that the client did not sign are refused (as S3 does),
so an intermediary cannot add e.g. x-amz-copy-source to a signed request.

Query decoding follows form rules ('+' is a space), as AWS S3, MinIO and Go's
url.ParseQuery do; the router must decode the query the same way.
"""

from __future__ import annotations

import calendar
import enum
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable, Iterable, Sequence
from urllib.parse import quote, unquote_plus, unquote_to_bytes

from common.limits import DEFAULT_LIMITS
from frontend.s3 import errors

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_SIGNING_KEY_CACHE_MAX = 4096
_CANONICAL_PATH = re.compile(r"[A-Za-z0-9\-_.~/]*").fullmatch
_CANONICAL_QUERY_PART = re.compile(r"[A-Za-z0-9\-_.~]*").fullmatch
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}").fullmatch
_DATE = re.compile(r"[0-9]{8}").fullmatch
_PRESIGN_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature",
                   "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Expires")
_USE_SIGV4 = "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."


@dataclass(frozen=True)
class User:
    name: str
    access_key: str
    secret_key: str


class PayloadMode(enum.Enum):
    UNSIGNED = "UNSIGNED-PAYLOAD"
    SIGNED = "signed"                      # x-amz-content-sha256 is the hex sha256 of the body
    STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

    @property
    def is_streaming(self) -> bool:
        return self.value.startswith("STREAMING-")

    @property
    def has_trailer(self) -> bool:
        return self.value.endswith("-TRAILER")

    @property
    def signs_chunks(self) -> bool:
        return self.value.startswith("STREAMING-AWS4-HMAC-SHA256-")


_LITERAL_MODES = {mode.value: mode for mode in PayloadMode if mode is not PayloadMode.SIGNED}


@dataclass(frozen=True)
class AuthResult:
    user: User
    payload: PayloadMode
    content_sha256: str | None      # lower-case hex, for SIGNED
    seed_signature: str | None      # for the streaming signed modes
    signing_key: bytes | None
    amz_date: str                   # e.g. 20130524T000000Z
    scope: str                      # date/region/s3/aws4_request
    presigned: bool
    region: str = ""                # the region named in the credential scope


@dataclass(frozen=True)
class _Signed:
    """What a request claims: parsed from the Authorization header or the query."""
    access_key: str
    date: str                       # yyyymmdd of the scope
    region: str
    signed_headers: tuple[str, ...]
    signed_headers_text: str
    signature: str


def uri_encode_path(raw_path: str) -> str:
    """Canonical URI: the path decoded, then URI-encoded once ('/' kept)."""
    if _CANONICAL_PATH(raw_path):
        return raw_path
    return quote(unquote_to_bytes(raw_path), safe="/")


def _encode_query_part(text: str) -> str:
    if _CANONICAL_QUERY_PART(text):
        return text
    return quote(text.encode("utf-8", "surrogateescape"), safe="")


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Query pairs, decoded ('+' is a space); a name without '=' has an empty value."""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name = unquote_plus(name, errors="surrogateescape")
            value = unquote_plus(value, errors="surrogateescape")
        pairs.append((name, value))
    return pairs


def canonical_query(pairs: Iterable[tuple[str, str]], *, exclude: str | None = None) -> str:
    encoded = sorted(
        (_encode_query_part(name), _encode_query_part(value))
        for name, value in pairs if name != exclude
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def _canonical_value(value: str) -> str:
    value = value.strip()
    if "  " in value or "\t" in value:
        value = " ".join(value.split())
    return value


def _parse_amz_date(text: str) -> float | None:
    """Seconds since the epoch of `yyyymmddThhmmssZ`, or None if malformed."""
    if len(text) != 16 or text[8] != "T" or text[15] != "Z":
        return None
    digits = text[:8] + text[9:15]
    if not digits.isascii() or not digits.isdigit():
        return None
    year, month, day = int(text[0:4]), int(text[4:6]), int(text[6:8])
    hour, minute, second = int(text[9:11]), int(text[11:13]), int(text[13:15])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second)))


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode("utf-8"), "sha256")


def derive_signing_key(secret_key: str, date: str, region: str, service: str = "s3") -> bytes:
    key = _hmac(("AWS4" + secret_key).encode("utf-8"), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


class Authenticator:
    """Checks SigV4 requests against a fixed set of users (see module steps)."""

    def __init__(self, users: Iterable[User], *, clock: Callable[[], float] = time.time,
                 max_skew_s: int = 900,
                 max_presign_expires_s: int = DEFAULT_LIMITS.MAX_PRESIGN_EXPIRES_S) -> None:
        self._users = {user.access_key: user for user in users}
        self._clock = clock
        self._max_skew_s = max_skew_s
        self._max_presign_expires_s = max_presign_expires_s
        self._signing_keys: dict[tuple[str, str, str], bytes] = {}

    def signing_key(self, secret_key: str, date: str, region: str) -> bytes:
        cache_key = (secret_key, date, region)
        key = self._signing_keys.get(cache_key)
        if key is None:
            if len(self._signing_keys) >= _SIGNING_KEY_CACHE_MAX:
                self._signing_keys.clear()
            key = self._signing_keys[cache_key] = derive_signing_key(secret_key, date, region)
        return key

    def authenticate(self, method: str, raw_path: str, raw_query: str,
                     headers: Sequence[tuple[str, str]],
                     query_pairs: list[tuple[str, str]] | None = None) -> AuthResult:
        """`query_pairs`, when the caller has them, are `parse_query(raw_query)`."""
        joined: dict[str, str] = {}
        for name, value in headers:
            if name in joined:
                joined[name] = joined[name] + "," + value.strip()
            else:
                joined[name] = value.strip() if name != "authorization" else value
        if query_pairs is None:
            query_pairs = parse_query(raw_query) if raw_query else []
        # Step 1: the mechanism.
        authorization = joined.get("authorization")
        presign = any(name == "X-Amz-Algorithm" for name, _ in query_pairs)
        if authorization is not None and presign:
            raise errors.InvalidArgument(
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be specified")
        if authorization is not None:
            return self._authenticate_header(method, raw_path, query_pairs, joined, authorization)
        if presign:
            return self._authenticate_query(method, raw_path, query_pairs, joined)
        if any(name in ("AWSAccessKeyId", "Signature") for name, _ in query_pairs):
            raise errors.InvalidRequest(_USE_SIGV4)
        raise errors.AccessDenied("Anonymous access is not allowed; sign the request with AWS4-HMAC-SHA256.")

    # -- header auth -----------------------------------------------------------------

    def _authenticate_header(self, method: str, raw_path: str, query_pairs: list[tuple[str, str]],
                             joined: dict[str, str], authorization: str) -> AuthResult:
        signed = _parse_authorization(authorization)
        # Step 3: user and time.
        user = self._user(signed.access_key)
        amz_date = joined.get("x-amz-date")
        if amz_date is not None:
            request_time = _parse_amz_date(amz_date)
        else:
            request_time = _parse_http_date(joined.get("date"))
            if request_time is not None:
                amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(request_time))
        if request_time is None or amz_date is None:
            raise errors.AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
        if signed.date != amz_date[:8]:
            raise errors.AuthorizationHeaderMalformed(
                f'The authorization header is malformed; Invalid credential date "{signed.date}". '
                f'This date is not the same as X-Amz-Date: "{amz_date[:8]}".')
        now = self._clock()
        if abs(now - request_time) > self._max_skew_s:
            raise errors.RequestTimeTooSkewed(
                RequestTime=amz_date,
                ServerTime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                MaxAllowedSkewMilliseconds=str(self._max_skew_s * 1000))
        # Step 4: payload mode.
        content_sha256 = joined.get("x-amz-content-sha256")
        if content_sha256 is None:
            raise errors.InvalidRequest("Missing required header for this request: x-amz-content-sha256")
        payload = _payload_mode(content_sha256)
        _refuse_unsigned_amz_headers(joined, signed.signed_headers)
        # Step 5.
        return self._verify(method, raw_path, canonical_query(query_pairs), joined, signed, user,
                            amz_date, content_sha256, payload, presigned=False)

    # -- presigned query ---------------------------------------------------------------

    def _authenticate_query(self, method: str, raw_path: str, query_pairs: list[tuple[str, str]],
                            joined: dict[str, str]) -> AuthResult:
        params: dict[str, str] = {}
        for name, value in query_pairs:
            if name in _PRESIGN_PARAMS:
                if name in params:
                    raise errors.AuthorizationQueryParametersError(f"{name} must appear only once")
                params[name] = value
        if len(params) != len(_PRESIGN_PARAMS):
            raise errors.AuthorizationQueryParametersError(
                "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
                "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.")
        if params["X-Amz-Algorithm"] != ALGORITHM:
            raise errors.AuthorizationQueryParametersError('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
        signed = _parse_parts(params["X-Amz-Credential"], params["X-Amz-SignedHeaders"],
                              params["X-Amz-Signature"], errors.AuthorizationQueryParametersError)
        amz_date = params["X-Amz-Date"]
        request_time = _parse_amz_date(amz_date)
        if request_time is None:
            raise errors.AuthorizationQueryParametersError(
                "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
        expires_text = params["X-Amz-Expires"]
        if not (expires_text.isascii() and expires_text.lstrip("-").isdigit()) or len(expires_text) > 12:
            raise errors.AuthorizationQueryParametersError("X-Amz-Expires should be a number")
        expires_s = int(expires_text)
        if expires_s < 0:
            raise errors.AuthorizationQueryParametersError("X-Amz-Expires must be non-negative")
        if expires_s > self._max_presign_expires_s:
            raise errors.AuthorizationQueryParametersError(
                f"X-Amz-Expires must be less than a week (in seconds) that is {self._max_presign_expires_s}")
        if signed.date != amz_date[:8]:
            raise errors.AuthorizationQueryParametersError(
                f'Invalid credential date "{signed.date}". This date is not the same as X-Amz-Date: "{amz_date[:8]}".')
        # Step 3.
        user = self._user(signed.access_key)
        now = self._clock()
        if now < request_time - self._max_skew_s:
            raise errors.AccessDenied("Request is not valid yet")
        if now > request_time + expires_s:
            raise errors.AccessDenied(
                "Request has expired", **{
                    "X-Amz-Expires": expires_text,
                    "Expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(request_time + expires_s)),
                    "ServerTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})
        # Step 4: UNSIGNED-PAYLOAD unless the client signed x-amz-content-sha256.
        content_sha256 = "UNSIGNED-PAYLOAD"
        if "x-amz-content-sha256" in signed.signed_headers and "x-amz-content-sha256" in joined:
            content_sha256 = joined["x-amz-content-sha256"]
        payload = _payload_mode(content_sha256)
        _refuse_unsigned_amz_headers(joined, signed.signed_headers)
        # Step 5.
        query = canonical_query(query_pairs, exclude="X-Amz-Signature")
        return self._verify(method, raw_path, query, joined, signed, user, amz_date, content_sha256,
                            payload, presigned=True)

    # -- shared --------------------------------------------------------------------

    def _user(self, access_key: str) -> User:
        user = self._users.get(access_key)
        if user is None:
            raise errors.InvalidAccessKeyId(AWSAccessKeyId=access_key)
        return user

    def _verify(self, method: str, raw_path: str, query: str, joined: dict[str, str], signed: _Signed,
                user: User, amz_date: str, content_sha256: str, payload: PayloadMode, *,
                presigned: bool) -> AuthResult:
        header_lines = []
        for name in signed.signed_headers:
            header_lines.append(f"{name}:{_canonical_value(joined.get(name, ''))}\n")
        canonical_request = (
            f"{method}\n{uri_encode_path(raw_path)}\n{query}\n{''.join(header_lines)}\n"
            f"{signed.signed_headers_text}\n{content_sha256}")
        scope = f"{signed.date}/{signed.region}/s3/aws4_request"
        string_to_sign = (f"{ALGORITHM}\n{amz_date}\n{scope}\n"
                          f"{hashlib.sha256(canonical_request.encode('utf-8', 'surrogateescape')).hexdigest()}")
        key = self.signing_key(user.secret_key, signed.date, signed.region)
        expected = hmac.digest(key, string_to_sign.encode("utf-8"), "sha256").hex()
        if not hmac.compare_digest(expected.encode("ascii"), signed.signature.encode("utf-8", "replace")):
            raise errors.SignatureDoesNotMatch(
                AWSAccessKeyId=signed.access_key, StringToSign=string_to_sign,
                SignatureProvided=signed.signature, CanonicalRequest=canonical_request)
        return AuthResult(
            user=user, payload=payload,
            content_sha256=content_sha256.lower() if payload is PayloadMode.SIGNED else None,
            seed_signature=expected if payload.signs_chunks else None,
            signing_key=key, amz_date=amz_date, scope=scope, presigned=presigned,
            region=signed.region)


def _parse_authorization(authorization: str) -> _Signed:
    """Step 1-2 for header auth: `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`."""
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme != ALGORITHM:
        if scheme == "AWS" or scheme.startswith("AWS4-"):
            raise errors.InvalidRequest(_USE_SIGV4)
        raise errors.InvalidArgument("Unsupported Authorization Type")
    fields: dict[str, str] = {}
    for component in rest.split(","):
        name, equals, value = component.strip().partition("=")
        if not equals or name in fields:
            raise errors.AuthorizationHeaderMalformed(
                f'The authorization header is malformed; the authorization component "{component.strip()}" '
                "is malformed.")
        fields[name] = value.strip()
    for required in ("Credential", "SignedHeaders", "Signature"):
        if required not in fields:
            raise errors.AuthorizationHeaderMalformed(
                f"The authorization header is malformed; the authorization header requires a '{required}' "
                "parameter.")
    return _parse_parts(fields["Credential"], fields["SignedHeaders"], fields["Signature"],
                        errors.AuthorizationHeaderMalformed)


def _parse_parts(credential: str, signed_headers_text: str, signature: str,
                 error: type[errors.S3Error]) -> _Signed:
    """Step 2: the credential scope and signed header list, shared by both mechanisms."""
    parts = credential.split("/")
    if len(parts) != 5 or not parts[0] or parts[4] != "aws4_request":
        raise error('The authorization header is malformed; the Credential is mal-formed; expecting '
                    '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".')
    access_key, date, region, service, _ = parts
    # Only the form here: the date must equal X-Amz-Date's, whose fields are range-checked.
    if not _DATE(date):
        raise error(f'The authorization header is malformed; Invalid credential date "{date}".')
    if not region:
        raise error("The authorization header is malformed; the region is empty.")
    if service != "s3":
        raise error(f'The authorization header is malformed; incorrect service "{service}". '
                    'This endpoint belongs to "s3".')
    signed_headers = tuple(signed_headers_text.split(";"))
    if not signed_headers_text or any(not name or name != name.lower() for name in signed_headers):
        raise error("The authorization header is malformed; SignedHeaders is malformed.")
    if "host" not in signed_headers:
        raise error("The authorization header is malformed; 'host' must be a signed header.")
    if not signature:
        raise error("The authorization header is malformed; the Signature is empty.")
    return _Signed(access_key, date, region, signed_headers, signed_headers_text, signature)


def _payload_mode(content_sha256: str) -> PayloadMode:
    mode = _LITERAL_MODES.get(content_sha256)
    if mode is not None:
        return mode
    if _SHA256_HEX(content_sha256):
        return PayloadMode.SIGNED
    raise errors.InvalidArgument(
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, STREAMING-UNSIGNED-PAYLOAD-TRAILER or a valid "
        "sha256 value.", ArgumentName="x-amz-content-sha256", ArgumentValue=content_sha256)


def _refuse_unsigned_amz_headers(joined: dict[str, str], signed_headers: tuple[str, ...]) -> None:
    """x-amz-* headers change what a request does, so S3 refuses them unsigned.

    x-amz-content-sha256 is exempt: for header auth it is bound into the canonical
    request as the payload hash anyway; a presigned request ignores it unsigned.
    """
    unsigned = [name for name in joined
                if name.startswith("x-amz-") and name != "x-amz-content-sha256" and name not in signed_headers]
    if unsigned:
        raise errors.AccessDenied("There were headers present in the request which were not signed",
                                  HeadersNotSigned=", ".join(sorted(unsigned)))


def _parse_http_date(text: str | None) -> float | None:
    if not text:
        return None
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()

"""The request and response objects handlers see, and the services they use.

A handler is `async def handler(services: Services, request: Request) -> Response`.
The request body is an async iterator over the raw bytes as they arrive;
`frontend/dataplane/body.py` turns it into the decoded, verified payload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterable, Union

from common.limits import Limits
from common.seams import BlobStore, MetadataStore
from frontend.s3.auth import AuthResult, User
from frontend.s3.router import Endpoint


class Headers:
    """Request headers: lower-case names, a name may repeat; values as received."""

    __slots__ = ("_pairs", "_first")

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._pairs = list(pairs)
        self._first: dict[str, str] = {}
        for name, value in self._pairs:
            self._first.setdefault(name, value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in self._first

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self._pairs if key == name]

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)


@dataclass
class Services:
    meta: MetadataStore
    blobs: BlobStore
    limits: Limits
    region: str
    clock_us: Callable[[], int]
    buckets: dict = field(default_factory=dict)
    """Bucket records this worker authorised with (DESIGN §3 step 1, §4 step 8): never
    an absence; a stale one is caught by the incarnation check of every object read
    and commit (NoSuchBucket), which makes the worker re-read the authority."""


@dataclass
class Request:
    method: str
    path: str
    raw_path: str
    raw_query: str
    query: dict[str, str]
    headers: Headers
    endpoint: Endpoint
    user: User
    auth: AuthResult
    request_id: str
    body: AsyncIterator[bytes]
    body_state: "BodyState"
    cached_buckets: set = field(default_factory=set)

    @property
    def bucket(self) -> str:
        return self.endpoint.bucket

    @property
    def key(self) -> str:
        return self.endpoint.key


@dataclass
class BodyState:
    """Whether the handler read the request body to its end (else: close the connection)."""

    expected: bool = False
    consumed: bool = False
    started: bool = False


ResponseBody = Union[bytes, AsyncIterator[bytes]]


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: ResponseBody = b""
    content_length: int | None = None

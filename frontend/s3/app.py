"""The S3 application: one ASGI callable, the frontend's error boundary.

Steps for every request:
1. Give it an `x-amz-request-id` (on every response, errors included).
2. Decode the path (strict UTF-8, else InvalidURI) and the query.
3. Authenticate (SigV4: header or presigned; always checked).
4. Route to a typed endpoint (frontend/s3/router.py) and dispatch from HANDLERS;
   an endpoint without a handler answers NotImplemented.
5. Map every refusal to S3 error XML with its status; anything unexpected is
   logged with the request id and answered InternalError — a malformed request
   must never reach that branch.
6. If the handler answered without reading the whole request body, the
   connection is closed after the response, so unread body bytes (or a client
   that never sends them after a final answer to `Expect: 100-continue`) cannot
   be taken for the next request.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable
from urllib.parse import unquote_to_bytes

from common.errors import StoreError
from common.ids import new_http_request_id
from frontend.s3 import errors, router
from frontend.s3.auth import Authenticator, parse_query
from frontend.s3.handlers import HANDLERS
from frontend.s3.request import BodyState, Headers, Request, Response, Services
from frontend.s3.xml import http_time

log = logging.getLogger("cairn.frontend")


class ClientDisconnected(Exception):
    """The client went away while we were reading its request body."""


class S3App:
    def __init__(self, services: Services, authenticator: Authenticator, *, domains: tuple[str, ...] = ()) -> None:
        self.services = services
        self.authenticator = authenticator
        self.domains = domains

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_id = new_http_request_id()
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw_path_text = raw_path.decode("latin-1")
        resource = raw_path_text
        body_state = BodyState()
        for name, value in scope["headers"]:
            if (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding":
                body_state.expected = True
        try:
            response = await self._handle(scope, receive, request_id, body_state)
        except ClientDisconnected:
            return
        except errors.S3Error as error:
            response = _error_response(error, resource, request_id, method)
        except StoreError as error:
            response = _error_response(errors.from_store_error(error), resource, request_id, method)
        except Exception:
            log.exception("InternalError request_id=%s method=%s path=%s", request_id, method, raw_path_text)
            response = _error_response(errors.InternalError(), resource, request_id, method)
        await self._send(send, response, request_id, method, body_state)

    async def _handle(self, scope: dict, receive, request_id: str, body_state: BodyState) -> Response:
        method = scope["method"]
        raw_path = (scope.get("raw_path") or scope["path"].encode("utf-8")).decode("latin-1")
        raw_query = scope.get("query_string", b"").decode("latin-1")
        try:
            path = unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise errors.InvalidURI() from None
        query_pairs = parse_query(raw_query) if raw_query else []
        query = _query_dict(query_pairs)
        header_pairs = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
        headers = Headers(header_pairs)
        auth = self.authenticator.authenticate(method, raw_path, raw_query, header_pairs, query_pairs)
        endpoint = router.route(
            method, path, query, headers.get("host", ""),
            copy_source="x-amz-copy-source" in headers, domains=self.domains,
        )
        handler = HANDLERS.get(type(endpoint))
        if handler is None:
            operation = getattr(endpoint, "operation", "") or type(endpoint).__name__
            raise errors.NotImplemented_(f"{operation} is not implemented by Cairn.")
        request = Request(
            method=method, path=path, raw_path=raw_path, raw_query=raw_query, query=query,
            headers=headers, endpoint=endpoint, user=auth.user, auth=auth,
            request_id=request_id, body=_body(receive, body_state), body_state=body_state,
        )
        try:
            return await handler(self.services, request)
        except (errors.S3Error, StoreError) as error:
            if not request.cached_buckets or getattr(error, "status", 400) < 400:
                raise
            if not await self._cached_buckets_were_stale(request):
                raise
            # A bucket authorised from the worker's cache was deleted or re-created
            # (DESIGN §4 step 8), so this answer may rest on it (a refusal, or which
            # check failed first): run the handler again on the authority's records —
            # safe while nothing of the body was read. Handlers that read the store
            # after their body authorise against the authority or commit through
            # commit_or_discard, which re-reads it itself.
            if request.body_state.started:
                raise
            return await handler(self.services, request)

    async def _cached_buckets_were_stale(self, request: Request) -> bool:
        """Check every cached bucket record the request used against the authority;
        drop the stale ones. Only error answers pay for this read."""
        stale = False
        for name in sorted(request.cached_buckets):
            cached = self.services.buckets.get(name)
            current = await self.services.meta.get_bucket(name)
            if current is None or cached is None or current.incarnation != cached.incarnation:
                self.services.buckets.pop(name, None)
                stale = True
        request.cached_buckets.clear()
        return stale

    async def _send(self, send, response: Response, request_id: str, method: str, body_state: BodyState) -> None:
        headers = [(b"x-amz-request-id", request_id.encode()), (b"server", b"Cairn")]
        headers.append((b"date", http_time(int(time.time() * 1e6)).encode()))
        for name, value in response.headers:
            headers.append((name.encode("latin-1"), value.encode("latin-1", "replace")))
        body = response.body
        if isinstance(body, (bytes, bytearray)):
            length = len(body) if response.content_length is None else response.content_length
        else:
            length = response.content_length
        if length is not None and response.status not in (204, 304):
            headers.append((b"content-length", str(length).encode()))
        if body_state.expected and not body_state.consumed:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if method == "HEAD" or response.status in (204, 304):
            await send({"type": "http.response.body", "body": b""})
            if not isinstance(body, (bytes, bytearray)):
                await _close_iterator(body)
            return
        if isinstance(body, (bytes, bytearray)):
            await send({"type": "http.response.body", "body": bytes(body)})
            return
        try:
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception:
            # Headers are gone: the only honest signal left is to cut the connection
            # short, so the client sees fewer bytes than Content-Length, never wrong ones.
            log.exception("ResponseStreamFailed request_id=%s", request_id)
            raise
        await send({"type": "http.response.body", "body": b""})


def _error_response(error: errors.S3Error, resource: str, request_id: str, method: str) -> Response:
    headers = list(error.headers.items())
    if error.status == 304:
        return Response(status=304, headers=headers)
    headers.append(("content-type", "application/xml"))
    body = b"" if method == "HEAD" else error.to_xml(resource, request_id)
    return Response(status=error.status, headers=headers, body=body,
                    content_length=None if method != "HEAD" else 0)


def _query_dict(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The query as handlers see it (first value of a name wins), from the pairs the
    authenticator signs over — parsed once per request. Bytes that are not UTF-8
    came back as surrogates (surrogateescape) and are refused."""
    query: dict[str, str] = {}
    for name, value in pairs:
        try:
            (name + value).encode("utf-8")
        except UnicodeEncodeError:
            raise errors.InvalidArgument("The query string is not valid UTF-8.") from None
        query.setdefault(name, value)
    return query


async def _body(receive, state: BodyState):
    state.started = True
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if not more:
            state.consumed = True
        if chunk:
            yield chunk
        if not more:
            return


async def _close_iterator(iterator: Any) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

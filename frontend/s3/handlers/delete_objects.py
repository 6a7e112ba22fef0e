"""DeleteObjects: up to MAX_DELETE_OBJECTS keys in one request.

The request must carry an integrity claim — Content-MD5 or an x-amz-checksum-*
header (what current SDKs send instead) — which is verified. Deletes commit
concurrently, at most DELETE_OBJECTS_CONCURRENCY at a time, so group commit can
batch them (DESIGN §11). Quiet mode reports only errors.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from common.errors import StoreError
from common.ids import request_id
from common.seams import DeleteObject
from frontend.s3 import errors
from frontend.s3.handlers.support import not_after_us, owned_bucket, read_small_body
from frontend.s3.request import Request, Response, Services
from frontend.s3.xml import child_text, document, element, parse


async def delete_objects(services: Services, request: Request) -> Response:
    bucket = await owned_bucket(services, request, fresh=True)
    headers = request.headers
    if "content-md5" not in headers and not any(name.startswith("x-amz-checksum-") for name, _ in headers.items()) \
            and "x-amz-sdk-checksum-algorithm" not in headers:
        raise errors.InvalidRequest("Missing required header for this request: Content-MD5")
    body, body_md5 = await read_small_body(services, request)
    tree = parse(body, "Delete", max_bytes=services.limits.MAX_REQUEST_XML_BYTES)
    quiet = (child_text(tree, "Quiet", "false") or "").strip().lower() == "true"
    keys = []
    for node in tree.findall("Object"):
        key = child_text(node, "Key")
        if key is None or key == "":
            raise errors.MalformedXML()
        if child_text(node, "VersionId") not in (None, "", "null"):
            raise errors.NotImplemented_("Deleting a specific version is not supported: this bucket is not versioned.")
        keys.append(key)
    if not keys or len(keys) > services.limits.MAX_DELETE_OBJECTS:
        raise errors.MalformedXML(f"A Delete request names 1 to {services.limits.MAX_DELETE_OBJECTS} objects.")
    encode = (lambda value: quote(value, safe="/")) if request.query.get("encoding-type") == "url" else (lambda value: value)
    limit = asyncio.Semaphore(services.limits.DELETE_OBJECTS_CONCURRENCY)
    invocation = headers.get("amz-sdk-invocation-id")

    async def delete_one(index: int, key: str) -> str | tuple[str, str]:
        if len(key.encode("utf-8")) > services.limits.MAX_KEY_BYTES:
            return ("KeyTooLongError", "Your key is too long.")
        mutation = DeleteObject(bucket=bucket.name, bucket_incarnation=bucket.incarnation, key=key)
        rid = request_id(invocation and f"{invocation}/{index}", access_key=request.user.access_key,
                         method="DELETE", bucket=bucket.name, key=key, body_md5=body_md5)
        async with limit:
            try:
                await services.meta.commit(mutation, None, rid, not_after_us(services))
            except StoreError as error:
                converted = errors.from_store_error(error)
                return (converted.code, converted.text)
        return "ok"

    results = await asyncio.gather(*(delete_one(index, key) for index, key in enumerate(keys)))
    items = []
    for key, result in zip(keys, results):
        if result == "ok":
            if not quiet:
                items.append(f"<Deleted>{element('Key', encode(key))}</Deleted>")
        else:
            code, message = result
            items.append(f"<Error>{element('Key', encode(key))}{element('Code', code)}{element('Message', message)}</Error>")
    return Response(headers=[("content-type", "application/xml")], body=document("DeleteResult", items))

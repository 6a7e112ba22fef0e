"""Copying bytes between objects (CopyObject, UploadPartCopy).

A data id is referenced by exactly one record (DESIGN §2), so a copy writes new
bytes: small results go inline, others stream from the source's blobs into a
new blob, with MD5 and checksums computed in the same pass.
"""

from __future__ import annotations

from common.checksums import Digests
from common.ids import new_data_id
from common.seams import BlobRef, Inline, ObjectRecord, Pairs
from frontend.s3.handlers.support import read_body
from frontend.s3.request import Services


async def copy_bytes(
    services: Services, source: ObjectRecord, start: int, end: int, algorithms: tuple[str, ...],
    *, allow_inline: bool = True,
) -> tuple[Inline | BlobRef, int, str, Pairs]:
    size = end - start
    if allow_inline and size <= services.limits.INLINE_MAX:
        data = b"".join([chunk async for chunk in read_body(services, source.body, source.size, start, end)])
        digests = Digests(algorithms)
        digests.update(data)
        return Inline(data), size, digests.md5_hex(), digests.checksums()
    ref = await services.blobs.write(
        new_data_id(), read_body(services, source.body, source.size, start, end), size, algorithms,
    )
    return ref, ref.size, ref.md5_hex, ref.checksums

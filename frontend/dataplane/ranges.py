"""Byte ranges: the `Range` header of GetObject and `x-amz-copy-source-range`.

Range arithmetic is pure; a range is `(start, end)` with `end` exclusive.
RFC 9110 rules as S3 applies them: `bytes=a-b`, `bytes=a-`, `bytes=-n`; a header
that does not parse, or names several ranges, is ignored (the whole object is
returned, as S3 does); a syntactically valid range that selects nothing is
InvalidRange (416).
"""

from __future__ import annotations

import re

from frontend.s3 import errors

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The `[start, end)` a Range header selects, or None for the whole object."""
    if not header:
        return None
    match = _RANGE.match(header)
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    end = size if not last else min(int(last) + 1, size)
    return start, end


def parse_copy_range(header: str, size: int) -> tuple[int, int]:
    """`x-amz-copy-source-range: bytes=first-last`, both required and inside the object."""
    match = _RANGE.match(header)
    if not match or not match.group(1) or not match.group(2):
        raise errors.InvalidArgument("The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy")
    start, last = int(match.group(1)), int(match.group(2))
    if last < start or last >= size:
        error = errors.InvalidRange("The requested range is not satisfiable")
        raise error
    return start, last + 1


def _unsatisfiable(size: int) -> errors.S3Error:
    error = errors.InvalidRange(RangeRequested="", ActualObjectSize=str(size))
    error.fields = {}
    error.headers["content-range"] = f"bytes */{size}"
    return error

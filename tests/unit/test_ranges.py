"""Range arithmetic follows RFC 9110 as S3 applies it.

Method: a table of headers and object sizes with the expected `[start, end)`,
plus a hypothesis property: any satisfiable range lies inside the object and
agrees with Python slicing of the same bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from frontend.dataplane.ranges import parse_copy_range, parse_range
from frontend.s3 import errors


@pytest.mark.parametrize("header,size,expected", [
    (None, 10, None),
    ("bytes=0-0", 10, (0, 1)),
    ("bytes=0-9", 10, (0, 10)),
    ("bytes=2-", 10, (2, 10)),
    ("bytes=-3", 10, (7, 10)),
    ("bytes=-30", 10, (0, 10)),
    ("bytes=5-100", 10, (5, 10)),
    ("bytes=0-1,3-4", 10, None),      # several ranges: S3 returns the whole object
    ("bytes=a-b", 10, None),          # unparseable: ignored
    ("items=0-1", 10, None),
    ("bytes=5-2", 10, None),          # last < first: invalid, ignored
])
def test_ranges(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header,size", [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)])
def test_unsatisfiable(header, size):
    with pytest.raises(errors.InvalidRange) as raised:
        parse_range(header, size)
    assert raised.value.status == 416
    assert raised.value.headers["content-range"] == f"bytes */{size}"


@given(st.binary(max_size=64), st.integers(0, 80), st.one_of(st.none(), st.integers(0, 80)))
def test_ranges_agree_with_slicing(data, first, last):
    header = f"bytes={first}-{'' if last is None else last}"
    try:
        selected = parse_range(header, len(data))
    except errors.InvalidRange:
        assert first >= len(data)
        return
    if selected is None:
        assert last is not None and last < first
        return
    start, end = selected
    assert 0 <= start < end <= len(data)
    assert data[start:end] == data[first: None if last is None else last + 1]


def test_copy_range_requires_both_ends_inside_the_object():
    assert parse_copy_range("bytes=0-4", 10) == (0, 5)
    with pytest.raises(errors.InvalidArgument):
        parse_copy_range("bytes=0-", 10)
    with pytest.raises(errors.InvalidRange):
        parse_copy_range("bytes=5-10", 10)

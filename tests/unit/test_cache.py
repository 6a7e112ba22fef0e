"""The record cache remembers the newest answer per key within its byte bound.

Properties: a lookup returns the stored answer with its as-of; an older answer
never replaces a newer one; another (partition, generation) never matches; the
byte bound holds after every store, evicting least recently used entries first.
"""

from __future__ import annotations

from hypothesis import given, strategies as st

from common.seams import BucketRecord, Inline, ObjectRecord, ReadResult
from index.cache import ENTRY_OVERHEAD_BYTES, RecordCache

BUCKET = BucketRecord("b", "ann", "inc", "us-east-1", 0)


def _result(size: int, seq: int) -> ReadResult:
    record = ObjectRecord(key="k", version_id="v", seq=seq, last_modified_us=1, size=size, etag="e", body=Inline(b"x" * size))
    return ReadResult(record, (0, 0, seq), BUCKET)


def test_newer_wins_and_generations_do_not_mix():
    cache = RecordCache(1 << 20)
    cache.store(("b", "k"), (0, 0, 5), _result(1, 5))
    cache.store(("b", "k"), (0, 0, 3), _result(2, 3))
    assert cache.lookup(("b", "k"), (0, 0))[0] == 5
    assert cache.lookup(("b", "k"), (0, 1)) is None
    cache.store(("b", "k"), (0, 0, 9), _result(3, 9))
    assert cache.lookup(("b", "k"), (0, 0)) == (9, _result(3, 9))


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 4096), st.integers(1, 100)), max_size=60))
def test_bound_holds(stores):
    cache = RecordCache(8 * ENTRY_OVERHEAD_BYTES)
    for key, size, seq in stores:
        cache.store(("b", str(key)), (0, 0, seq), _result(size, seq))
        assert cache.bytes <= cache.max_bytes
        assert cache.bytes == sum(weight for _, _, weight in cache.entries.values())

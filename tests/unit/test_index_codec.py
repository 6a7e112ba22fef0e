"""Every seams value survives the trip through index.proto unchanged.

Property: for generated mutations (every type, every body kind, conditions),
decode(encode(x)) == x, and records round-trip through dump/load.
"""

from __future__ import annotations

from hypothesis import given, strategies as st

from common import seams
from index import codec

pairs = st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5)), max_size=3).map(tuple)
blob = st.builds(seams.BlobRef, data_id=st.binary(min_size=16, max_size=16), size=st.integers(0, 2**40),
                 md5_hex=st.text("0123456789abcdef", min_size=32, max_size=32), checksums=pairs, placement=st.binary(max_size=8))
part_body = st.builds(seams.PartBody, part_number=st.integers(1, 10000), size=st.integers(0, 2**33),
                      offset=st.integers(0, 2**40), etag=st.text(max_size=40), checksums=pairs, blob=blob)
body = st.one_of(
    st.builds(seams.Inline, data=st.binary(max_size=64)),
    blob,
    st.builds(seams.Multipart, upload_id=st.text(max_size=16), parts=st.lists(part_body, max_size=3).map(tuple)),
)
draft = st.builds(seams.ObjectDraft, size=st.integers(0, 2**40), etag=st.text(max_size=40), body=body,
                  content_headers=pairs, user_metadata=pairs, checksums=pairs,
                  checksum_type=st.sampled_from(["", "FULL_OBJECT", "COMPOSITE"]), storage_class=st.just("STANDARD"))
names = st.text(max_size=12)
mutation = st.one_of(
    st.builds(seams.CreateBucket, bucket=names, owner=names, region=names),
    st.builds(seams.DeleteBucket, bucket=names, bucket_incarnation=names),
    st.builds(seams.PutObject, bucket=names, bucket_incarnation=names, key=names, draft=draft),
    st.builds(seams.DeleteObject, bucket=names, bucket_incarnation=names, key=names),
    st.builds(seams.CreateUpload, bucket=names, bucket_incarnation=names, key=names,
              upload=st.builds(seams.UploadDraft, owner=names, content_headers=pairs, user_metadata=pairs)),
    st.builds(seams.PutPart, bucket=names, bucket_incarnation=names, key=names, upload_id=names,
              part_number=st.integers(1, 10000), part=st.builds(seams.PartDraft, size=st.integers(0, 2**33), etag=names, blob=blob, checksums=pairs)),
    st.builds(seams.CompleteUpload, bucket=names, bucket_incarnation=names, key=names, upload_id=names,
              parts=st.lists(st.builds(seams.CompletedPart, part_number=st.integers(1, 10000), data_id=st.binary(max_size=16), etag=names), max_size=3).map(tuple),
              draft=draft),
    st.builds(seams.AbortUpload, bucket=names, bucket_incarnation=names, key=names, upload_id=names),
)
condition = st.one_of(st.none(), st.just(seams.IfNoneMatchStar()), st.builds(seams.IfMatch, etag=names))


@given(mutation, condition, st.binary(max_size=16), st.integers(0, 2**63))
def test_commands_round_trip(value, cond, request_id, not_after):
    raw = codec.encode_command(value, cond, request_id, not_after)
    assert codec.decode_command(raw) == (value, cond, request_id, not_after)


@given(draft, names, names, st.integers(0, 2**63), st.integers(0, 2**63))
def test_records_round_trip(drafted, key, version_id, seq, time_us):
    record = seams.ObjectRecord(key=key, version_id=version_id, seq=seq, last_modified_us=time_us,
                                size=drafted.size, etag=drafted.etag, body=drafted.body,
                                content_headers=drafted.content_headers, user_metadata=drafted.user_metadata,
                                checksums=drafted.checksums, checksum_type=drafted.checksum_type)
    assert codec.load_record(codec.dump_record(record), seams.ObjectRecord) == record

"""Apply and reads over the index keyspaces agree with the reference store, and
apply is deterministic.

Properties:
1. Driven by the same random sequence of commits (every mutation type, conditions,
   retries with a reused request id, refusals), `index.local.LocalIndex` — the
   journal apply (index/apply.py) and reads (index/reader.py) over the DESIGN §2
   key encoding — gives the same status for every commit and the same answer for
   every read as the in-memory reference `spec.metadata_model`, compared
   structurally (ids and times are the store's own and are not predicted).
2. I6: the journal that run produced, replayed into two fresh RocksDB replicas,
   leaves them with identical key/value pairs (iterated, not compared as files),
   equal to the state the run itself reached.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import common.errors as domain
from common.limits import Limits
from common.seams import (
    AbortUpload, BlobRef, CompletedPart, CompleteUpload, CreateBucket, CreateUpload, DeleteBucket,
    DeleteObject, IfMatch, IfNoneMatchStar, Inline, Multipart, ObjectDraft, PartBody, PartDraft,
    PutObject, PutPart, UploadDraft,
)
from index import apply, codec
from index.client import ClusterMetadataStore
from index.inprocess import InProcessTransport
from index.local import LocalIndex
from index.replica import IndexReplica
from index.rocks import RocksView
from index.state import MemoryView, Overlay
from spec.metadata_model import InMemoryMetadataStore

DEEP = os.environ.get("CAIRN_DEEP") == "1"
KEYS = ["a", "a/b", "a/c", "b", "é/x", "\U0001F600", "a b+c"]
BUCKETS = ["alpha", "beta"]
FAR_FUTURE = 2**62


def _clock():
    now = [1_700_000_000_000_000]

    def tick() -> int:
        now[0] += 1000
        return now[0]
    return tick


async def _never_called(ref) -> None:
    raise AssertionError("the reap delay is longer than any test")


def _reap_queue(view) -> set[bytes]:
    """Data ids in the index's reap queue (G)."""
    from index import index_pb2, keys

    queued = set()
    for _, raw in view.scan(keys.REAP, keys.prefix_successor(keys.REAP)):
        queued.update(blob.data_id for blob in codec.load(raw, index_pb2.ReapRecord).blobs)
    return queued


class ApplyAgreesWithReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        limits = Limits()
        self.model = InMemoryMetadataStore(blobs_delete=_never_called, limits=limits, clock_us=_clock(), reap_delay_s=1e9)
        self.view = MemoryView()
        self.index = self.make_index(limits)
        self.incarnations: dict[str, tuple[str, str]] = {}   # bucket -> (model's, index's)
        self.uploads: list[tuple[str, str, str, str]] = []   # (bucket, key, model id, index id)
        self.parts: dict[tuple[int, int], tuple[BlobRef, str]] = {}
        self.etags: dict[tuple[str, str], str] = {}
        self.history: list[tuple] = []
        self.counter = 0
        for bucket in BUCKETS:   # most steps should find their bucket; delete_bucket and create_bucket still vary it
            self.create_bucket(bucket, "ann")
        for key in ("a", "a/b", "a/c", "b"):   # so listings page and roll up from the first step
            self.put("alpha", key, 3, "none", False)

    def make_index(self, limits):
        return LocalIndex(self.view, limits=limits, clock_us=_clock())

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.model.close())
        self.loop.close()

    def blob(self, size: int, stale: bool = False) -> BlobRef:
        """A fresh data id, time-prefixed like common/ids.py's; a stale one is older than
        MAX_WRITE_AGE, which apply must refuse as WriteExpired."""
        self.counter += 1
        millis = 1_700_000_000_000 - (2 * 24 * 3600 * 1000 if stale else 0)
        data_id = millis.to_bytes(6, "big") + self.counter.to_bytes(10, "big")
        return BlobRef(data_id=data_id, size=size, md5_hex=f"{self.counter:032x}")

    def both(self, make, condition=None, request_id=None):
        """Commit the same mutation to both stores; compare the statuses."""
        request_id = request_id or os.urandom(8)
        results = []
        for store, which in ((self.model, 0), (self.index, 1)):
            try:
                outcome = self.run(store.commit(make(which), condition, request_id, FAR_FUTURE))
                results.append(("OK", outcome))
            except domain.StoreError as error:
                results.append((error.code, None))
            except domain.InvariantViolation:
                results.append(("InvariantViolation", None))
        assert results[0][0] == results[1][0], f"model {results[0][0]} != index {results[1][0]}"
        self.history.append((make, condition, request_id))
        return results

    def incarnation(self, bucket: str, which: int) -> str:
        return self.incarnations.get(bucket, ("none", "none"))[which]

    @rule(bucket=st.sampled_from(BUCKETS), owner=st.sampled_from(["ann", "bob"]))
    def create_bucket(self, bucket, owner):
        results = self.both(lambda which: CreateBucket(bucket, owner, "us-east-1"))
        if results[0][0] == "OK":
            self.incarnations[bucket] = (results[0][1].bucket_incarnation, results[1][1].bucket_incarnation)

    @rule(bucket=st.just("beta"))   # "alpha" stays, so most steps have a bucket to work in
    def delete_bucket(self, bucket):
        self.both(lambda which: DeleteBucket(bucket, self.incarnation(bucket, which)))
        # The stale incarnation stays in use, as a frontend's cached bucket would: every
        # later read with it must be NoSuchBucket, never a cached answer.

    @rule(bucket=st.sampled_from(BUCKETS), key=st.sampled_from(KEYS), size=st.sampled_from([0, 3, 4096, 5000]),
          condition=st.sampled_from(["none", "absent", "match", "mismatch"]), retry=st.booleans(),
          stale=st.sampled_from([False] * 7 + [True]))
    def put(self, bucket, key, size, condition, retry, stale=False):
        if size <= 4096:
            data = os.urandom(size)
            body, etag = Inline(data), data.hex()[:32] or "e"
        else:
            body = self.blob(size, stale)
            etag = body.md5_hex
        cond = {"none": None, "absent": IfNoneMatchStar(), "match": IfMatch(self.etags.get((bucket, key), "x")),
                "mismatch": IfMatch("nope")}[condition]
        draft = ObjectDraft(size=size, etag=etag, body=body, user_metadata=(("m", key),))
        request_id = os.urandom(8)
        make = lambda which: PutObject(bucket, self.incarnation(bucket, which), key, draft)  # noqa: E731
        results = self.both(make, cond, request_id)
        if results[0][0] == "OK":
            self.etags[(bucket, key)] = etag
        if retry:
            again = self.both(make, cond, request_id)
            assert again[0][0] == results[0][0]
            if results[0][0] == "OK":
                assert again[1][1] == results[1][1], "a retry must return the original outcome"

    @rule(bucket=st.sampled_from(BUCKETS), key=st.sampled_from(KEYS), conditional=st.booleans())
    def delete(self, bucket, key, conditional):
        cond = IfMatch(self.etags.get((bucket, key), "x")) if conditional else None
        results = self.both(lambda which: DeleteObject(bucket, self.incarnation(bucket, which), key), cond)
        if results[0][0] == "OK":
            self.etags.pop((bucket, key), None)

    @rule(bucket=st.sampled_from(BUCKETS), key=st.sampled_from(KEYS))
    def create_upload(self, bucket, key):
        results = self.both(lambda which: CreateUpload(bucket, self.incarnation(bucket, which), key, UploadDraft(owner="ann")))
        if results[0][0] == "OK":
            self.uploads.append((bucket, key, results[0][1].upload_id, results[1][1].upload_id))

    @precondition(lambda self: self.uploads)
    @rule(data=st.data(), number=st.integers(1, 3), size=st.sampled_from([0, 10, 7000]))
    def put_part(self, data, number, size):
        index = data.draw(st.integers(max(0, len(self.uploads) - 2), len(self.uploads) - 1))
        bucket, key, model_id, index_id = self.uploads[index]
        blob = self.blob(size)
        part = PartDraft(size=size, etag=blob.md5_hex, blob=blob)
        results = self.both(lambda which: PutPart(bucket, self.incarnation(bucket, which), key,
                                                  (model_id, index_id)[which], number, part))
        if results[0][0] == "OK":
            self.parts[(index, number)] = (blob, blob.md5_hex)

    @precondition(lambda self: self.uploads)
    @rule(data=st.data(), stale=st.sampled_from([False, False, True]), condition=st.sampled_from(["none", "none", "absent"]))
    def complete(self, data, stale, condition):
        index = data.draw(st.integers(max(0, len(self.uploads) - 2), len(self.uploads) - 1))
        bucket, key, model_id, index_id = self.uploads[index]
        uploaded = sorted(number for (upload, number) in self.parts if upload == index)
        numbers = data.draw(st.lists(st.sampled_from(uploaded or [1, 2, 3]), min_size=1, max_size=3, unique=True))
        numbers = sorted(numbers)
        listed, bodies, offset = [], [], 0
        for number in numbers:
            blob, etag = self.parts.get((index, number), (self.blob(1), "missing"))
            if stale and number == numbers[0]:
                etag = "stale"
            listed.append(CompletedPart(number, blob.data_id, etag))
            bodies.append(PartBody(number, blob.size, offset, etag, (), blob))
            offset += blob.size
        cond = IfNoneMatchStar() if condition == "absent" else None

        def make(which):
            upload_id = (model_id, index_id)[which]
            draft = ObjectDraft(size=offset, etag="multi-" + str(len(numbers)), body=Multipart(upload_id, tuple(bodies)))
            return CompleteUpload(bucket, self.incarnation(bucket, which), key, upload_id, tuple(listed), draft)
        results = self.both(make, cond)
        if results[0][0] == "OK":
            self.etags[(bucket, key)] = "multi-" + str(len(numbers))

    @precondition(lambda self: self.uploads)
    @rule(data=st.data())
    def abort(self, data):
        index = data.draw(st.integers(max(0, len(self.uploads) - 2), len(self.uploads) - 1))
        bucket, key, model_id, index_id = self.uploads[index]
        self.both(lambda which: AbortUpload(bucket, self.incarnation(bucket, which), key, (model_id, index_id)[which]))

    @rule(bucket=st.sampled_from(BUCKETS), prefix=st.sampled_from(["", "a", "a/", "é"]),
          delimiter=st.sampled_from(["", "/", "b"]), max_keys=st.integers(1, 4), after=st.sampled_from(["", "a", "a/", "b"]))
    def list_objects(self, bucket, prefix, delimiter, max_keys, after):
        pages = []
        for store, which in ((self.model, 0), (self.index, 1)):
            try:
                page = self.run(store.list_objects(bucket, self.incarnation(bucket, which), prefix=prefix,
                                                   delimiter=delimiter, start_after=after, max_keys=max_keys, min_seq=None))
                pages.append(([(s.key, s.size, s.etag) for s in page.summaries], page.common_prefixes,
                              page.truncated, page.next_start_key))
            except domain.StoreError as error:
                pages.append(error.code)
        assert pages[0] == pages[1]

    @rule(bucket=st.sampled_from(BUCKETS), delimiter=st.sampled_from(["", "/"]), max_uploads=st.integers(1, 3))
    def list_uploads(self, bucket, delimiter, max_uploads):
        pages = []
        for store, which in ((self.model, 0), (self.index, 1)):
            try:
                page = self.run(store.list_uploads(bucket, self.incarnation(bucket, which), prefix="", delimiter=delimiter,
                                                   key_marker="", upload_id_marker="", max_uploads=max_uploads))
                pages.append(([u.key for u in page.uploads], page.common_prefixes, page.truncated))
            except domain.StoreError as error:
                pages.append(error.code)
        assert pages[0] == pages[1]

    @invariant()
    def records_agree(self):
        for bucket in BUCKETS:
            answers = []
            for store, which in ((self.model, 0), (self.index, 1)):
                row = []
                for key in KEYS:
                    try:
                        record = self.run(store.get(bucket, self.incarnation(bucket, which), key)).record
                        row.append(None if record is None else (record.size, record.etag, record.user_metadata,
                                                                type(record.body).__name__))
                    except domain.StoreError as error:
                        row.append(error.code)
                answers.append(row)
            assert answers[0] == answers[1]

    @invariant()
    def displaced_bytes_agree(self):
        """The same data ids are queued for reaping (G) as the reference displaced."""
        assert _reap_queue(self.view) == {ref.data_id for ref in self.model.pending_reaps()}

    @invariant()
    def parts_agree(self):
        for bucket, key, model_id, index_id in self.uploads[-2:]:
            answers = []
            for store, which in ((self.model, 0), (self.index, 1)):
                try:
                    page = self.run(store.list_parts(bucket, self.incarnation(bucket, which), key, (model_id, index_id)[which],
                                                     part_number_marker=0, max_parts=10))
                    answers.append([(p.part_number, p.size, p.etag) for p in page.parts])
                except domain.StoreError as error:
                    answers.append(error.code)
            assert answers[0] == answers[1]

    def check_replay(self) -> None:
        directory = tempfile.mkdtemp(prefix="cairn-replay-")
        try:
            replicas = []
            for name in ("one", "two"):
                view = RocksView(os.path.join(directory, name))
                overlay = Overlay(view)
                apply.initial_state(overlay, partition=0, dedup_window_us=Limits().DEDUP_WINDOW_MS * 1000,
                                    max_write_age_us=Limits().MAX_WRITE_AGE_MS * 1000)
                view.write(overlay.ops())
                for entry in self.index.journal:
                    overlay = Overlay(view)
                    apply.apply_entry(overlay, entry)
                    view.write(overlay.ops())
                replicas.append(list(view.items()))
                view.close()
            assert replicas[0] == replicas[1]
            assert replicas[0] == [(key, self.view.data[key]) for key in self.view.keys]
        finally:
            shutil.rmtree(directory, ignore_errors=True)


class ThroughTheWire(ApplyAgreesWithReference):
    """The same comparison, with the index side reached the way a frontend reaches it:
    commands and answers encoded (index/client.py), applied and read by an
    IndexReplica over RocksDB (index/replica.py)."""

    def make_index(self, limits):
        self.directory = tempfile.mkdtemp(prefix="cairn-replica-")
        replica = IndexReplica(os.path.join(self.directory, "replica"), limits=limits)
        return ClusterMetadataStore(InProcessTransport(replica, clock_us=_clock()), limits=limits)

    def teardown(self) -> None:
        try:
            self.run(self.index.close())
            super().teardown()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    @invariant()
    def displaced_bytes_agree(self):
        assert _reap_queue(self.index.transport.replica.view) == {ref.data_id for ref in self.model.pending_reaps()}


class WithReplay(ApplyAgreesWithReference):
    def teardown(self) -> None:
        try:
            self.check_replay()
        finally:
            super().teardown()


settings_profile = settings(
    max_examples=400 if DEEP else 60, stateful_step_count=40 if DEEP else 25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestApplyAgreesWithReference = WithReplay.TestCase
TestApplyAgreesWithReference.settings = settings_profile
TestThroughTheWire = ThroughTheWire.TestCase
TestThroughTheWire.settings = settings(settings_profile, max_examples=200 if DEEP else 25)


def test_commands_survive_the_codec_in_the_journal():
    """The journal entry's payload decodes to exactly what was committed."""
    mutation = PutObject("alpha", "inc", "k", ObjectDraft(size=1, etag="e", body=Inline(b"x")))
    payload = codec.encode_command(mutation, IfNoneMatchStar(), b"rid", 5)
    assert codec.decode_command(payload) == (mutation, IfNoneMatchStar(), b"rid", 5)

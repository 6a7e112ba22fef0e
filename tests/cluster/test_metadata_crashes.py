"""Property: the metadata cluster behind `cairn dev` loses nothing acknowledged and shows nothing
half-done across (1) a SIGKILL of EVERY process at once — supervisor, three metadata nodes, both
frontend workers — in the middle of a boto3 write storm, restarted on the same data dir (twice:
the second kill lands while the cluster is still recovering), and (2) the tail killed by name
between commit and apply (journal/crashpoints.py, CAIRN_CRASH_AT).

Method: real processes and real boto3 (helpers of test_s3_nemesis.py).
1. Whole-cluster SIGKILL. Writers PUT unique keys (every fifth body above INLINE_MAX, so the file
   blob store is in play) and random hot-key operations (PUT, DELETE, If-None-Match *, If-Match,
   GET, HEAD, LIST) into one history; the test SIGSTOPs every process (so the kill lands at one
   instant), SIGKILLs them all, and starts `cairn dev` again on the data dir — no clean-stop
   marker exists, so all three nodes restart through the register (journal/replica.py step 12).
   Then: every acknowledged unique PUT reads back with its bytes; every unacknowledged one is
   absent or complete (its ETag is the MD5 of the body, the body is the one written); a LIST
   names only keys and ETags writes made; the hot-key history, with reads after the restart, is
   linearizable (spec/linearizability.py); each If-None-Match * key had at most one 200 and
   holds that write; 32 concurrent If-None-Match * PUTs after the restart have one winner.
2. Tail killed between commit and apply. `cairn dev` runs with
   CAIRN_CRASH_AT=tail.after_commit_before_apply:N, inherited by its metadata nodes: the tail's
   N-th Apply is skipped, its ack (committed <= N) still sent, and the process exits 137 (the
   supervisor restarts it; the marker file keeps it from firing again). Writers with boto3's
   retries PUT unique keys while one writer overwrites a counter key with ascending values and
   readers GET it. Every PUT ends with one outcome (200) and reads back with its bytes through
   both workers after the node rejoined; no reader ever sees the counter go backwards, nor
   below the value acknowledged before its read began. After a clean stop, the restarted
   tail's RocksDB holds every acknowledged key, and replicas at the same applied seq hold the
   same key/value pairs (I6 on real processes).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

from spec.linearizability import check_history
from test_s3_nemesis import (  # noqa: F401 - `dev` is the fixture
    BUCKET, Dev, History, Worker, _proc_cmdline, _proc_state, _status, check_acknowledged_present, dev, final_reads,
)

INLINE_MAX = 4096
HOT_KEYS = ["hot/a", "hot/b", "hot/c"]


def _md5(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


def _every_process(dev: Dev) -> list[int]:
    """The supervisor and every live process naming this data dir (shardstores, metanodes,
    maintenance, workers) — never a blanket match on a program name."""
    mine = str(dev.data_dir)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and any(mine in part for part in _proc_cmdline(int(entry))) \
                and _proc_state(int(entry)) not in ("Z", "?"):
            found.append(int(entry))
    return found


def _freeze_and_kill_everything(dev: Dev) -> list[int]:
    """SIGSTOP the supervisor and every child of this data dir, then SIGKILL them all: the kill
    lands at one instant, with nothing restarted in between."""
    pids = [dev.process.pid] + [pid for pid in _every_process(dev) if pid != dev.process.pid]
    for pid in pids:                                     # the supervisor first: it restarts nothing after
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    dev.process.wait(timeout=10)
    dev.process.stdout.close()
    dev.process = None
    dev.stopped.clear()
    deadline = time.monotonic() + 10
    while _every_process(dev) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


@pytest.fixture(autouse=True)
def _no_process_survives(tmp_path):
    """After the cluster fixtures' own stop (torn down before this one): SIGKILL any process
    still naming this test's data dir — shardstores too, which Dev.stop does not look for."""
    yield
    probe = Dev(tmp_path / "cairn")
    for pid in _every_process(probe):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


class UniqueWriter:
    """PUTs of fresh keys, each body unique; records acknowledged and unknown outcomes."""

    def __init__(self, dev: Dev, ident: int, retries: bool) -> None:
        self.s3 = dev.client(retries=retries, read_timeout=10.0, connect_timeout=2)
        self.ident = ident
        self.count = 0
        self.acked: dict[str, bytes] = {}
        self.unknown: dict[str, bytes] = {}
        self.unexpected: list[str] = []

    def put(self, prefix: str) -> None:
        self.count += 1
        key = f"{prefix}/w{self.ident}-{self.count}"
        body = f"{key}:".encode() * ((INLINE_MAX // len(key) + 64) if self.count % 5 == 0 else 3)
        try:
            response = self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        except Exception as error:  # noqa: BLE001 - every outcome is recorded
            status = _status(error)
            if status is None or status >= 500:
                self.unknown[key] = body
            else:
                self.unexpected.append(f"PUT {key}: {error!r}")
            return
        if response["ETag"].strip('"') != _md5(body):
            self.unexpected.append(f"PUT {key}: ETag {response['ETag']}")
        self.acked[key] = body


def _check_unique_writes(dev: Dev, writers: list[UniqueWriter], prefix: str) -> None:
    reader = dev.client(read_timeout=20.0)
    for writer in writers:
        assert not writer.unexpected, writer.unexpected[:5]
        for key, body in writer.acked.items():
            got = reader.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert got == body, f"acknowledged {key}: {len(got)} bytes back, {len(body)} written"
        for key, body in writer.unknown.items():
            try:
                response = reader.get_object(Bucket=BUCKET, Key=key)
            except botocore.exceptions.ClientError as error:
                assert _status(error) == 404, (key, error)
                continue
            got = response["Body"].read()
            assert got == body and response["ETag"].strip('"') == _md5(body), f"unacknowledged {key} half-visible"
    written = {key: _md5(body) for writer in writers for key, body in {**writer.acked, **writer.unknown}.items()}
    paginator = reader.get_paginator("list_objects_v2")
    listed = {item["Key"]: item["ETag"].strip('"')
              for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix + "/") for item in page.get("Contents", [])}
    for key, etag in listed.items():
        assert written.get(key) == etag, f"LIST shows {key} {etag}, which no write made"
    acked = {key for writer in writers for key in writer.acked}
    assert acked <= set(listed), f"acknowledged keys missing from LIST: {sorted(acked - set(listed))[:5]}"


def _storm(dev: Dev, history: History, prefix: str, seconds: float, kill_at: float | None,
           first_ident: int) -> tuple[list[UniqueWriter], list[int]]:
    """Unique-key writers and hot-key workers for `seconds`; if kill_at, kill everything then."""
    stop = threading.Event()
    writers = [UniqueWriter(dev, first_ident + index, retries=False) for index in range(4)]
    workers = [Worker(dev, history, first_ident + 10 + index, HOT_KEYS, retries=False) for index in range(4)]
    for worker in workers:
        worker.s3 = dev.client(retries=False, read_timeout=10.0, connect_timeout=2)

    def write_loop(writer: UniqueWriter) -> None:
        while not stop.is_set():
            writer.put(prefix)

    def work_loop(worker: Worker) -> None:
        while not stop.is_set():
            worker.step()

    killed: list[int] = []
    with ThreadPoolExecutor(len(writers) + len(workers)) as pool:
        futures = [pool.submit(write_loop, w) for w in writers] + [pool.submit(work_loop, w) for w in workers]
        if kill_at is not None:
            time.sleep(kill_at)
            stop.set()                           # no new operations; those in flight meet the kill
            killed = _freeze_and_kill_everything(dev)
        else:
            time.sleep(seconds)
        stop.set()
        for future in futures:
            future.result()
    return writers, killed


def test_whole_cluster_sigkill_mid_storm_keeps_every_acknowledged_write(dev):
    history = History()
    all_writers: list[UniqueWriter] = []
    # Kill 1: a storm on a settled cluster. Kill 2: right after the restart, while it recovers.
    for round_, kill_at in enumerate((4.0, 1.5)):
        writers, killed = _storm(dev, history, "storm", 0, kill_at, first_ident=100 * (round_ + 1))
        all_writers += writers
        if round_ == 0:                           # the second kill may land before recovery ends
            assert sum(len(w.acked) for w in writers) > 0, "no write was acknowledged before the kill"
        assert len(killed) >= 6, f"expected the supervisor, 3 metanodes, 2 workers (and stores): {killed}"
        assert not _every_process(dev), "a process of the data dir survived SIGKILL"
        dev.start()                               # same data dir: every node restarts uncleanly
    # The recovered cluster: writes again, then every check.
    started = time.monotonic()
    writers, _ = _storm(dev, history, "storm", 2.0, None, first_ident=900)
    timings = [f"storm after restart {time.monotonic() - started:.1f} s"]
    all_writers += writers
    assert sum(len(w.acked) for w in writers) > 0, "the recovered cluster takes no writes"
    started = time.monotonic()
    _check_unique_writes(dev, all_writers, "storm")
    timings.append(f"{sum(len(w.acked) + len(w.unknown) for w in all_writers)} unique PUTs checked in "
                   f"{time.monotonic() - started:.1f} s")
    final_reads(dev, history, HOT_KEYS)
    assert not history.unexpected, history.unexpected[:10]
    started = time.monotonic()
    result = check_history(history.operations)
    timings.append(f"{len(history.operations)} hot-key operations {history.counts} checked in "
                   f"{time.monotonic() - started:.1f} s")
    print("; ".join(timings))
    assert result.ok, result.describe()
    problems = check_acknowledged_present(history, HOT_KEYS)
    assert not problems, problems
    # If-None-Match *: at most one acknowledged 200 per key between deletes is the checker's
    # business (cas ops in the history); after recovery, 32 racers on a fresh key -> one winner.
    s3 = dev.client(max_pool_connections=32)
    key = "storm/lock"

    def attempt(index: int) -> int:
        try:
            s3.put_object(Bucket=BUCKET, Key=key, Body=f"racer-{index}".encode(), IfNoneMatch="*")
            return 200
        except botocore.exceptions.ClientError as error:
            return _status(error) or 0
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(attempt, range(32)))
    assert statuses.count(200) == 1 and statuses.count(412) == 31, statuses
    winner = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert winner.startswith(b"racer-")
    assert "InvariantViolation" not in dev.stderr(), dev.stderr()[-3000:]


# ------------------------------------------------------------ 2. the tail killed between commit and apply

@pytest.fixture
def crashing_dev(tmp_path, monkeypatch):
    monkeypatch.setenv("CAIRN_CRASH_AT", "tail.after_commit_before_apply:40")
    cluster = Dev(tmp_path / "cairn")
    try:
        cluster.start()
        cluster.client().create_bucket(Bucket=BUCKET)
        yield cluster
    finally:
        cluster.stop()
        assert not cluster.children(), "processes of this data dir survived the fixture"


def test_tail_killed_between_commit_and_apply_loses_nothing_and_reads_never_go_back(crashing_dev):
    dev = crashing_dev
    marker_paths = [dev.data_dir / "meta" / str(node) / "crash-fired-tail.after_commit_before_apply"
                    for node in range(3)]
    tail = dev.chain()[-1]
    tail_pid = dev.metanode_pid(tail)
    epoch = dev.epoch()
    stop = threading.Event()
    writers = [UniqueWriter(dev, index, retries=True) for index in range(6)]
    counter_acked: list[tuple[float, int]] = []          # (acknowledged at, value)
    backwards: list[str] = []

    def write_loop(writer: UniqueWriter) -> None:
        while not stop.is_set():
            writer.put("crash")

    def counter_loop() -> None:
        s3 = dev.client(read_timeout=20.0)
        value = 0
        while not stop.is_set():
            value += 1
            s3.put_object(Bucket=BUCKET, Key="crash-counter", Body=str(value).encode())
            counter_acked.append((time.monotonic(), value))

    def reader_loop(ident: int) -> None:
        s3 = dev.client(read_timeout=20.0)
        last = 0
        while not stop.is_set():
            started = time.monotonic()
            floor = max([v for at, v in counter_acked if at < started], default=0)
            try:
                seen = int(s3.get_object(Bucket=BUCKET, Key="crash-counter")["Body"].read())
            except botocore.exceptions.ClientError as error:
                if _status(error) == 404 and floor == 0:
                    continue
                backwards.append(f"reader {ident}: {error!r} with {floor} acknowledged")
                continue
            if seen < last or seen < floor:
                backwards.append(f"reader {ident}: saw {seen} after {last}, {floor} acknowledged before")
            last = seen

    with ThreadPoolExecutor(len(writers) + 4) as pool:
        futures = [pool.submit(write_loop, w) for w in writers] + [pool.submit(counter_loop)]
        futures += [pool.submit(reader_loop, index) for index in range(3)]
        deadline = time.monotonic() + 40
        while not any(path.exists() for path in marker_paths) and time.monotonic() < deadline:
            time.sleep(0.05)
        fired = [node for node, path in enumerate(marker_paths) if path.exists()]
        assert fired == [tail], f"the crash point fired on {fired}, the tail was {tail}:\n{dev.stderr()[-3000:]}"
        dev.wait_restarted(tail, tail_pid, epoch)
        time.sleep(2.0)                                       # keep writing and reading after the rejoin
        stop.set()
        for future in futures:
            future.result()
    assert "exited (137)" in dev.stderr(), dev.stderr()[-3000:]
    assert not backwards, backwards[:10]
    assert counter_acked, "no counter write was acknowledged"
    for writer in writers:
        assert not writer.unknown, f"with retries every PUT reaches one outcome: {list(writer.unknown)[:5]}"
    for _ in range(4):                                        # fresh connections: both workers
        _check_unique_writes(dev, writers, "crash")
    acked_keys = {key: body for writer in writers for key, body in writer.acked.items()}
    last_counter = counter_acked[-1][1]
    # After a clean stop: the restarted tail's replica holds every acknowledged write, and
    # replicas at one applied seq agree pair for pair (I6).
    time.sleep(0.5)
    assert dev.stop() == 0
    from index import apply as index_apply, keys
    from index.rocks import RocksView

    contents = {}
    for node in range(3):
        view = RocksView(str(dev.data_dir / "meta" / str(node) / "index"))
        try:
            seq = index_apply.apply_state(view).seq
            pairs = list(view.items())
            missing = [key for key in acked_keys if view.get(keys.current_key(BUCKET, key)) is None]
            if node == tail:
                assert not missing, f"the restarted tail lacks acknowledged {missing[:5]}"
                assert view.get(keys.current_key(BUCKET, "crash-counter")) is not None
        finally:
            view.close()
        contents.setdefault(seq, []).append((node, pairs))
    for seq, replicas in contents.items():
        for (node, pairs), (other, other_pairs) in zip(replicas, replicas[1:]):
            assert pairs == other_pairs, f"replicas {node} and {other} differ at applied seq {seq}"
    assert last_counter > 0

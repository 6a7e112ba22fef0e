"""Property: through `cairn dev` on the metadata cluster (three metadata node processes, two
frontend workers on one port), single-key S3 histories are linearizable (I5), a request id takes
effect at most once (I6), and no acknowledged object is lost (I7) — while a nemesis SIGKILLs and
SIGSTOPs metadata nodes, and across a whole-cluster restart.

Method: real processes and real boto3, narratives in the style of Swift's probe tests.
- Storm: concurrent boto3 clients (threads; some with botocore's standard retries as users run
  it, some with retries off) on a few hot keys doing PUT, GET, HEAD, DELETE, PUT If-None-Match *,
  PUT If-Match and prefix LIST, while a nemesis SIGKILLs (the supervisor restarts it; it rejoins
  in a new epoch) or SIGSTOPs/SIGCONTs one metadata node at a time (a fifth of the pauses outlast
  COMMIT_DEADLINE, 6 s here, so 503s and ambiguous outcomes occur). Every write's body (and its
  x-amz-meta-v) is unique, so a GET/HEAD/LIST (via the ETag) names the write it saw. Each
  operation is recorded with invoke/return times; a 5xx, timeout or connection error is an
  unknown outcome. spec/linearizability.py checks the history (LIST contributes one read per hot
  key: present with that ETag, or absent), then reads through fresh connections (both workers)
  after the storm must show, per key, the last acknowledged write or a later/concurrent one.
- Named windows: 32 concurrent If-None-Match * PUTs → one 200; the head SIGKILLed while the
  middle holds an unacknowledged entry (tail SIGSTOPped), then boto3's retry (same
  amz-sdk-invocation-id, hence same request id) → 200 and one effect; a node rejoining after
  SIGKILL with writes made while it was down → reads through both workers see them; the whole
  cluster stopped with SIGTERM and started on the same data dir → every acknowledged object.
The fixture SIGCONTs anything it stopped, SIGTERMs the supervisor and SIGKILLs any child of
this data dir still alive afterwards. CAIRN_DEEP=1 lengthens the storm.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import selectors
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import pytest

from spec.linearizability import Operation, check_history

ROOT = Path(__file__).resolve().parents[2]
CAIRN = ROOT / ".venv" / "bin" / "cairn"
DEEP = os.environ.get("CAIRN_DEEP") == "1"
SEED = int(os.environ.get("CAIRN_NEMESIS_SEED", "1"))          # vary the storm
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
BUCKET = "nemesis"
ACCESS_KEY = "NEMESISACCESSKEY0001"
SECRET_KEY = "nemesis-secret-key-000000000000000000001"


# ------------------------------------------------------------ the cluster under test

def _proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return [part.decode(errors="replace") for part in file.read().split(b"\0") if part]
    except OSError:
        return []


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


@dataclass
class Dev:
    directory: Path
    process: subprocess.Popen | None = None
    endpoint: str = ""
    stopped: set[int] = field(default_factory=set)          # pids we SIGSTOPped and not yet SIGCONTed
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def stderr_path(self) -> Path:
        return self.directory / "stderr.log"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    # --- processes of this data dir only (never a blanket match)
    def children(self) -> dict[int, list[str]]:
        mine = str(self.data_dir)
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            argv = _proc_cmdline(int(entry))
            if any(mine in part for part in argv) and any(
                    role in argv for role in ("index.metanode", "frontend.worker", "shardstore.main", "index.maintain")):
                found[int(entry)] = argv
        return found

    def metanode_pid(self, node: int) -> int | None:
        for pid, argv in self.children().items():
            if "index.metanode" in argv and argv[argv.index("--node") + 1] == str(node) \
                    and _proc_state(pid) not in ("Z", "?"):
                return pid
        return None

    def chain(self) -> tuple[int, ...]:
        """The newest chain in the nodes' "ConfigChosen ... chain=(...)" log lines; (0, 1, 2) at first."""
        best, chain = 0, (0, 1, 2)
        for match in re.finditer(r"ConfigChosen node=\d+ epoch=(\d+) chain=\(([\d, ]*)\)", self.stderr()):
            epoch = int(match.group(1))
            if epoch >= best:
                best = epoch
                chain = tuple(int(x) for x in match.group(2).split(",") if x.strip())
        return chain

    def epoch(self) -> int:
        epochs = [int(m) for m in re.findall(r"ConfigChosen node=\d+ epoch=(\d+)", self.stderr())]
        return max(epochs, default=1)

    # --- nemesis actions
    def sigkill(self, node: int) -> int:
        pid = self.metanode_pid(node)
        assert pid is not None, f"metanode {node} is not running"
        os.kill(pid, signal.SIGKILL)
        self.stopped.discard(pid)
        return pid

    def sigstop(self, node: int) -> int:
        pid = self.metanode_pid(node)
        assert pid is not None, f"metanode {node} is not running"
        self.stopped.add(pid)
        os.kill(pid, signal.SIGSTOP)
        return pid

    def sigcont(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.stopped.discard(pid)

    def wait_restarted(self, node: int, old_pid: int, old_epoch: int, timeout_s: float = 40.0) -> int:
        """The supervisor restarted `node` and it rejoined: a new pid, and a newer epoch whose chain has it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid = self.metanode_pid(node)
            if pid is not None and pid != old_pid and self.epoch() > old_epoch and node in self.chain():
                return pid
            time.sleep(0.05)
        raise AssertionError(f"metanode {node} did not rejoin within {timeout_s} s:\n{self.stderr()[-3000:]}")

    # --- lifecycle
    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "cairn.toml"
        config.write_text("\n".join([
            "[server]", 'region = "us-east-1"', 'domains = ["localhost"]', "",
            "[[users]]", 'name = "nemesis"', f'access_key = "{ACCESS_KEY}"', f'secret_key = "{SECRET_KEY}"', "",
            "[limits]", "COMMIT_DEADLINE_MS = 6000", "",
        ]))
        command = [str(CAIRN), "dev", "--port", "0", "--data-dir", str(self.data_dir), "--config", str(config)]
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr,
                                            stdin=subprocess.DEVNULL, cwd=self.directory)
        self.starts += 1
        self.endpoint = self._read_endpoint()

    def _read_endpoint(self) -> str:
        buffer = b""
        deadline = time.monotonic() + START_TIMEOUT_S
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        found: dict[str, str] = {}
        try:
            while "secret key" not in found:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"cairn dev did not start (exit {self.process.poll()}):\n{self.stderr()[-5000:]}")
                if not selector.select(timeout=0.5):
                    continue
                data = os.read(self.process.stdout.fileno(), 65536)
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    name, colon, value = line.decode(errors="replace").partition(": ")
                    if colon:
                        found[name] = value.strip()
        finally:
            selector.close()
        return found["endpoint"]

    def stop(self) -> int | None:
        """SIGCONT what we stopped, SIGTERM the supervisor, then make sure no child of this data dir lives."""
        for pid in list(self.stopped):
            self.sigcont(pid)
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    code = self.process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=STOP_TIMEOUT_S)
            else:
                code = self.process.returncode
            if self.process.stdout is not None:
                self.process.stdout.close()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.children() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        self.process = None
        return code

    def client(self, *, retries: bool = True, read_timeout: float = 20.0, max_attempts: int = 6, **extra):
        settings = {"s3": {"addressing_style": "path"}, "signature_version": "s3v4",
                    "retries": {"max_attempts": max_attempts if retries else 1, "mode": "standard"},
                    "connect_timeout": 5, "read_timeout": read_timeout, "max_pool_connections": 4}
        settings.update(extra)
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, config=botocore.config.Config(**settings))


@pytest.fixture
def dev(tmp_path):
    cluster = Dev(tmp_path / "cairn")
    try:
        cluster.start()
        cluster.client().create_bucket(Bucket=BUCKET)
        yield cluster
    finally:
        cluster.stop()
        assert not cluster.children(), "processes of this data dir survived the fixture"


# ------------------------------------------------------------ the history

def md5(value: str) -> str:
    return hashlib.md5(value.encode()).hexdigest()


def _status(error: Exception) -> int | None:
    if isinstance(error, botocore.exceptions.ClientError):
        return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return None


class History:
    """Operations with invoke/return times (time.monotonic of this process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.operations: list[Operation] = []
        self.by_etag: dict[str, str] = {}
        self.counter = 0
        self.unexpected: list[str] = []
        self.counts: dict[str, int] = {}

    def new_value(self, client: int) -> str:
        with self.lock:
            self.counter += 1
            value = f"c{client}-w{self.counter}"
            self.by_etag[md5(value)] = value
            return value

    def add(self, op: Operation) -> None:
        with self.lock:
            self.operations.append(op)
            kind = op.kind + ("?" if op.complete is None else "")
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def value_of(self, etag: str) -> str:
        value = self.by_etag.get(etag.strip('"'))
        if value is None:
            self.unexpected.append(f"an ETag no write made: {etag}")
        return value or f"?{etag}"


class Worker:
    """One boto3 client doing random operations on the hot keys."""

    def __init__(self, dev: Dev, history: History, ident: int, keys: list[str], retries: bool) -> None:
        self.s3 = dev.client(retries=retries, read_timeout=20.0)
        self.history = history
        self.ident = ident
        self.keys = keys
        self.random = random.Random(ident * 7919 + SEED)
        self.seen: dict[str, str | None] = {}           # last value this client saw per key

    def _unknown(self, error: Exception) -> bool:
        status = _status(error)
        if status is None or status >= 500:
            return True                                 # 5xx, timeout, connection error: ambiguous
        return False

    def put(self, key: str, condition: str = "") -> None:
        value = self.history.new_value(self.ident)
        arguments = {"Bucket": BUCKET, "Key": key, "Body": value.encode(), "Metadata": {"v": value}}
        expected = None
        kind = "write"
        if condition == "none-match":
            arguments["IfNoneMatch"] = "*"
            kind = "cas"
        elif condition == "match":
            expected = self.seen.get(key)
            if expected is None or expected.startswith("?"):
                return
            arguments["IfMatch"] = '"' + md5(expected) + '"'
            kind = "cas"
        invoke = time.monotonic()
        try:
            response = self.s3.put_object(**arguments)
            done, output = time.monotonic(), True
            if response["ETag"].strip('"') != md5(value):
                self.history.unexpected.append(f"PUT {key} {value}: ETag {response['ETag']}")
            self.seen[key] = value
        except Exception as error:  # noqa: BLE001 - every outcome is recorded
            if self._unknown(error):
                done, output = None, None
            elif _status(error) in (412, 404) and kind == "cas":
                done, output = time.monotonic(), False
            else:
                self.history.unexpected.append(f"PUT {key} {condition}: {error!r}")
                return
        if kind == "write":
            self.history.add(Operation(key, "write", invoke, done, value=value, client=self.ident, label=value))
        else:
            self.history.add(Operation(key, "cas", invoke, done, value=value, expected=expected, output=output,
                                       client=self.ident, label=f"{condition} {value}"))

    def delete(self, key: str) -> None:
        invoke = time.monotonic()
        try:
            self.s3.delete_object(Bucket=BUCKET, Key=key)
            done = time.monotonic()
            self.seen[key] = None
        except Exception as error:  # noqa: BLE001
            if not self._unknown(error):
                self.history.unexpected.append(f"DELETE {key}: {error!r}")
                return
            done = None
        self.history.add(Operation(key, "write", invoke, done, value=None, client=self.ident, label="delete"))

    def read(self, key: str, how: str) -> None:
        invoke = time.monotonic()
        try:
            if how == "get":
                response = self.s3.get_object(Bucket=BUCKET, Key=key)
                body = response["Body"].read().decode()
                if md5(body) != response["ETag"].strip('"'):
                    self.history.unexpected.append(f"GET {key}: body {body!r} vs ETag {response['ETag']}")
                value = body
            else:
                response = self.s3.head_object(Bucket=BUCKET, Key=key)
                value = response["Metadata"].get("v")
                if value is None or md5(value) != response["ETag"].strip('"'):
                    self.history.unexpected.append(f"HEAD {key}: metadata {value!r} vs ETag {response['ETag']}")
            done = time.monotonic()
        except Exception as error:  # noqa: BLE001
            if _status(error) == 404:
                value, done = None, time.monotonic()
            elif self._unknown(error):
                return                                   # a read of unknown outcome says nothing
            else:
                self.history.unexpected.append(f"{how.upper()} {key}: {error!r}")
                return
        self.seen[key] = value
        self.history.add(Operation(key, "read", invoke, done, output=value, client=self.ident, label=how))

    def list(self, prefix: str) -> None:
        invoke = time.monotonic()
        try:
            response = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
            done = time.monotonic()
        except Exception as error:  # noqa: BLE001
            if not self._unknown(error):
                self.history.unexpected.append(f"LIST {prefix}: {error!r}")
            return
        listed = {item["Key"]: self.history.value_of(item["ETag"]) for item in response.get("Contents", [])}
        for key in self.keys:
            if key.startswith(prefix):
                self.history.add(Operation(key, "read", invoke, done, output=listed.get(key), client=self.ident,
                                           label="list"))
        for key in listed:
            if key not in self.keys:
                self.history.unexpected.append(f"LIST {prefix}: a key nobody wrote: {key}")

    def step(self) -> None:
        key = self.random.choice(self.keys)
        roll = self.random.random()
        if roll < 0.22:
            self.put(key)
        elif roll < 0.40:
            self.read(key, "get")
        elif roll < 0.52:
            self.read(key, "head")
        elif roll < 0.62:
            self.delete(key)
        elif roll < 0.74:
            self.put(key, "none-match")
        elif roll < 0.86:
            self.put(key, "match")
        else:
            self.list("hot/")


def final_reads(dev: Dev, history: History, keys: list[str], rounds: int = 4) -> None:
    """After the storm: GETs through fresh connections (SO_REUSEPORT spreads them over both workers)."""
    for round_ in range(rounds):
        reader = Worker(dev, history, 1000 + round_, keys, retries=True)
        for key in keys:
            reader.read(key, "get")
            reader.read(key, "head")
        reader.list("hot/")


def check_acknowledged_present(history: History, keys: list[str]) -> list[str]:
    """Per key, the final reads show the last acknowledged write or one concurrent with or after it."""
    problems = []
    final_start = max(op.invoke for op in history.operations if op.client < 1000) if history.operations else 0
    for key in keys:
        writes = [op for op in history.operations if op.key == key and op.client < 1000
                  and (op.kind == "write" or op.kind == "cas") and not (op.complete is not None and op.output is False
                                                                       and op.kind == "cas")]
        acked = [op for op in writes if op.complete is not None]
        finals = [op for op in history.operations if op.key == key and op.client >= 1000 and op.kind == "read"]
        if not acked or not finals:
            continue
        last = max(acked, key=lambda op: op.complete)
        allowed = {last.value} | {op.value for op in writes if op.complete is None or op.complete > last.invoke}
        for read in finals:
            if read.output not in allowed:
                problems.append(f"{key}: final {read.label} shows {read.output!r}; last acknowledged write "
                                f"{last.value!r}, allowed {sorted(map(str, allowed))} (storm ended {final_start:g})")
    return problems


# ------------------------------------------------------------ 1. the storm

class Nemesis(threading.Thread):
    def __init__(self, dev: Dev, until: float, seed: int = 1) -> None:
        super().__init__(daemon=True)
        self.dev = dev
        self.until = until
        self.random = random.Random(seed)
        self.kills = 0
        self.pauses = 0
        self.log: list[str] = []
        self.error: BaseException | None = None

    def _wait_new_pid(self, node: int, old: int) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid = self.dev.metanode_pid(node)
            if pid is not None and pid != old:
                return pid
            time.sleep(0.01)
        raise AssertionError(f"metanode {node} was not restarted")

    def run(self) -> None:
        try:
            while time.monotonic() < self.until:
                time.sleep(self.random.uniform(0.5, 1.5))
                node = self.random.randrange(3)
                if self.random.random() < 0.5:
                    epoch = self.dev.epoch()
                    pid = self.dev.sigkill(node)
                    self.kills += 1
                    self.log.append(f"{time.monotonic():.2f} SIGKILL metanode {node} (pid {pid})")
                    if self.random.random() < 0.3:                # again, while it rejoins
                        pid = self._wait_new_pid(node, pid)
                        time.sleep(self.random.uniform(0.0, 0.4))
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                            self.kills += 1
                            self.log.append(f"{time.monotonic():.2f} SIGKILL metanode {node} (pid {pid}) rejoining")
                    new = self.dev.wait_restarted(node, pid, epoch)
                    self.log.append(f"{time.monotonic():.2f} metanode {node} back as pid {new}")
                else:
                    pid = self.dev.sigstop(node)
                    self.pauses += 1
                    self.log.append(f"{time.monotonic():.2f} SIGSTOP metanode {node} (pid {pid})")
                    long = self.random.random() < 0.2       # past COMMIT_DEADLINE: 503s, ambiguous outcomes
                    time.sleep(self.random.uniform(6.0, 8.0) if long else self.random.uniform(0.3, 2.0))
                    self.dev.sigcont(pid)
                    self.log.append(f"{time.monotonic():.2f} SIGCONT metanode {node}")
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error


def test_storm_under_kill_and_pause_is_linearizable_and_loses_nothing(dev):
    keys = ["hot/a", "hot/b", "hot/c"]
    history = History()
    storm_s = 120.0 if DEEP else 30.0
    started = time.monotonic()
    until = started + storm_s
    workers = [Worker(dev, history, ident, keys, retries=ident % 3 != 0) for ident in range(8)]
    nemesis = Nemesis(dev, until - 2.0, seed=SEED)
    stop = threading.Event()

    def run(worker: Worker) -> None:
        while time.monotonic() < until and not stop.is_set():
            worker.step()

    nemesis.start()
    with ThreadPoolExecutor(len(workers)) as pool:
        futures = [pool.submit(run, worker) for worker in workers]
        for future in futures:
            future.result()
    nemesis.join(timeout=40)
    assert nemesis.error is None, f"nemesis failed: {nemesis.error!r}\n" + "\n".join(nemesis.log)
    # Let the last killed node settle, then read everything through both workers.
    final_reads(dev, history, keys)
    summary = (f"{len(history.operations)} operations {history.counts}, {nemesis.kills} SIGKILLs, "
               f"{nemesis.pauses} SIGSTOPs, epoch {dev.epoch()}, {time.monotonic() - started:.1f} s")
    print(summary)
    assert not history.unexpected, summary + "\n" + "\n".join(history.unexpected[:20])
    completed_writes = sum(1 for op in history.operations if op.kind != "read" and op.complete is not None)
    assert completed_writes > 50, summary
    result = check_history(history.operations)
    assert result.ok, summary + "\n" + "\n".join(nemesis.log) + "\n" + result.describe()[:20000]
    problems = check_acknowledged_present(history, keys)
    assert not problems, summary + "\n" + "\n".join(problems)


# ------------------------------------------------------------ 2. the dangerous windows by name

def test_32_concurrent_if_none_match_puts_have_exactly_one_winner(dev):
    rounds = 10 if DEEP else 4
    for round_ in range(rounds):
        key = f"lock/{round_}"
        clients = [dev.client(retries=index % 2 == 0) for index in range(32)]
        barrier = threading.Barrier(32)

        def attempt(index: int):
            body = f"owner-{round_}-{index}".encode()
            barrier.wait()
            try:
                clients[index].put_object(Bucket=BUCKET, Key=key, Body=body, IfNoneMatch="*")
                return 200, body
            except botocore.exceptions.ClientError as error:
                return _status(error), body

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(attempt, range(32)))
        statuses = sorted(status for status, _ in results)
        winners = [body for status, body in results if status == 200]
        assert statuses.count(200) == 1 and statuses.count(412) == 31, f"round {round_}: {statuses}"
        for _ in range(6):                               # fresh connections: both workers
            assert dev.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == winners[0]


def test_head_killed_with_an_entry_on_the_middle_then_sdk_retry_gets_one_200(dev):
    s3 = dev.client()
    s3.put_object(Bucket=BUCKET, Key="warm", Body=b"x")          # the chain has carried traffic
    outcomes = []
    for round_ in range(2):
        chain = dev.chain()
        head, tail = chain[0], chain[-1]
        epoch = dev.epoch()
        key, body = f"terraform/{round_}.tflock", f"lock-{round_}-{time.time_ns()}".encode()
        # Retries as users have them; a short read timeout makes botocore resend the same request
        # (same amz-sdk-invocation-id → same request id) while the first attempt is stuck.
        retrying = dev.client(retries=True, max_attempts=12, read_timeout=1.5)
        tail_pid = dev.sigstop(tail)                             # acks stop at the tail: the entry
        try:                                                     # reaches head and middle, unacknowledged
            with ThreadPoolExecutor(1) as pool:
                future = pool.submit(retrying.put_object, Bucket=BUCKET, Key=key, Body=body, IfNoneMatch="*")
                time.sleep(0.4)
                assert not future.done(), "the PUT was acknowledged with the tail stopped"
                # Hold the supervisor so the head stays dead past boto3's read timeout: the SDK
                # resends while the entry sits unacknowledged on the middle.
                os.kill(dev.process.pid, signal.SIGSTOP)
                head_pid = dev.sigkill(head)
                dev.sigcont(tail_pid)
                time.sleep(3.5)
                os.kill(dev.process.pid, signal.SIGCONT)
                response = future.result(timeout=60)
        finally:
            dev.sigcont(tail_pid)
            os.kill(dev.process.pid, signal.SIGCONT)
        dev.wait_restarted(head, head_pid, epoch)
        assert response["ETag"].strip('"') == hashlib.md5(body).hexdigest()
        outcomes.append((round_, chain, response["ResponseMetadata"]["RetryAttempts"]))
        assert response["ResponseMetadata"]["RetryAttempts"] >= 1, "boto3 did not retry: the window was missed"
        for _ in range(6):
            got = dev.client().get_object(Bucket=BUCKET, Key=key)
            assert got["Body"].read() == body and got["ETag"] == response["ETag"]
        # One effect: had the entry applied twice, the second would have been refused (412) and the
        # retry answered with it; and the key is listed once.
        listed = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="terraform/")["Contents"]]
        assert listed.count(key) == 1
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"another", IfNoneMatch="*")
        assert _status(refused.value) == 412
    print("head kills (round, chain, boto3 retries):", outcomes, "epoch", dev.epoch())


def test_node_rejoining_after_sigkill_serves_the_writes_made_while_it_was_down(dev):
    keys = [f"rejoin/{index}" for index in range(12)]
    acknowledged: dict[str, bytes] = {}
    lock = threading.Lock()
    s3 = dev.client()
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"before-" + key.encode())
        acknowledged[key] = b"before-" + key.encode()
    for victim_position in (-1, 1):                              # the tail, then the middle
        chain = dev.chain()
        victim = chain[victim_position]
        epoch = dev.epoch()
        # Hold the supervisor so the node stays down while the writes are made.
        os.kill(dev.process.pid, signal.SIGSTOP)
        try:
            pid = dev.sigkill(victim)

            def writer(index: int) -> None:
                # Each key has one writer, whose puts are sequential: the last one it saw
                # acknowledged is the key's value (two writers racing on one key could
                # record their acks in the other order than their commits).
                client = dev.client(retries=True)
                for n in range(3):
                    key = keys[index + 6 * (n % 2)]
                    body = f"down-{victim}-{index}-{n}-{time.time_ns()}".encode()
                    try:
                        client.put_object(Bucket=BUCKET, Key=key, Body=body)
                    except Exception:  # noqa: BLE001 - ambiguous; this test checks acknowledged writes
                        continue
                    with lock:
                        acknowledged[key] = body

            with ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(writer, index) for index in range(6)]
                time.sleep(2.0)                                  # writes in flight while the node is dead
                os.kill(dev.process.pid, signal.SIGCONT)
                for future in futures:
                    future.result()
        finally:
            os.kill(dev.process.pid, signal.SIGCONT)
        dev.wait_restarted(victim, pid, epoch)
        # Reads through fresh connections (both workers); the rejoined node is now the tail,
        # which reads try first.
        for round_ in range(8):
            reader = dev.client()
            for key in keys:
                assert reader.get_object(Bucket=BUCKET, Key=key)["Body"].read() == acknowledged[key], \
                    f"{key} after metanode {victim} rejoined (chain {dev.chain()}), reader {round_}"
            listed = {item["Key"]: item["ETag"].strip('"')
                      for item in reader.list_objects_v2(Bucket=BUCKET, Prefix="rejoin/")["Contents"]}
            assert listed == {key: hashlib.md5(value).hexdigest() for key, value in acknowledged.items()}


def test_whole_cluster_sigterm_and_restart_keeps_every_acknowledged_object(dev):
    s3 = dev.client()
    expected: dict[str, bytes | None] = {}
    big = 300 * 1024                                             # above INLINE_MAX: the file blob store
    for index in range(40):
        key = f"durable/{index}"
        body = (f"v1-{index}-".encode() * (big // 8 if index % 5 == 0 else 1))
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        expected[key] = body
    epoch = dev.epoch()
    victim = dev.chain()[1]
    pid = dev.sigkill(victim)                                    # one unclean restart on the way
    for index in range(0, 40, 3):
        key = f"durable/{index}"
        body = f"v2-{index}".encode()
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        expected[key] = body
    for index in range(1, 40, 7):
        s3.delete_object(Bucket=BUCKET, Key=f"durable/{index}")
        expected[f"durable/{index}"] = None
    dev.wait_restarted(victim, pid, epoch)
    code = dev.stop()
    assert code == 0, f"cairn dev exited {code} on SIGTERM:\n{dev.stderr()[-3000:]}"
    assert not dev.children()
    dev.start()
    for round_ in range(4):
        reader = dev.client()
        for key, body in expected.items():
            if body is None:
                with pytest.raises(botocore.exceptions.ClientError) as missing:
                    reader.head_object(Bucket=BUCKET, Key=key)
                assert _status(missing.value) == 404, key
            else:
                assert reader.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body, key
        paginator = reader.get_paginator("list_objects_v2")
        listed = {item["Key"] for page in paginator.paginate(Bucket=BUCKET, Prefix="durable/")
                  for item in page.get("Contents", [])}
        assert listed == {key for key, body in expected.items() if body is not None}
    # And the restarted cluster takes writes.
    s3 = dev.client()
    s3.put_object(Bucket=BUCKET, Key="durable/after", Body=b"after")
    assert s3.get_object(Bucket=BUCKET, Key="durable/after")["Body"].read() == b"after"

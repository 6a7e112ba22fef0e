"""Fixtures for end-to-end tests: real `cairn dev` processes and clients for them.

Property: nothing here is simulated — every test talks HTTP(S) to a server
process started the way a user starts it, and every process a fixture starts is
stopped by that fixture (SIGTERM, then SIGKILL after STOP_TIMEOUT_S).

- `start_server(...)`: a context manager running `cairn dev --port 0` in a temp
  data dir, optionally with `--config` and a self-signed certificate (openssl);
  it parses the `endpoint:` / `access key:` / `secret key:` lines and keeps the
  server's stderr in a file, so tests can check that no request logged a traceback.
- `server`: one HTTP server per test module, default generated config.
- `two_users` (params http, https): one server per module and scheme, with a
  config holding users alice and bob.
- `s3_client(server, user, addressing)`: boto3 clients, path or virtual-host style.
  Virtual host uses the Host `<bucket>.localhost:PORT`; this machine's resolver
  does not map `*.localhost` to loopback (RFC 6761 says it should), so the tests
  resolve those names to 127.0.0.1 at connect time, like curl's --resolve: the
  request, its Host header and its signature are exactly what boto3 sends.
- `AWKWARD_TREE`, `make_tree(root)`, `assert_same_tree(left, right)`: a tree of names S3
  tools have mangled before, for round trips through a client (test_aws_cli.py,
  test_s3_tools.py).
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore.config
import pytest
import urllib3.util.connection
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
CAIRN = ROOT / ".venv" / "bin" / "cairn"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

_original_create_connection = urllib3.util.connection.create_connection


def _create_connection(address, *args, **kwargs):
    host, port = address
    if host == "localhost" or host.endswith(".localhost"):
        host = "127.0.0.1"
    return _original_create_connection((host, port), *args, **kwargs)


urllib3.util.connection.create_connection = _create_connection


@dataclass
class User:
    name: str
    access_key: str
    secret_key: str


@dataclass
class Server:
    endpoint: str
    access_key: str
    secret_key: str
    stderr_path: Path
    process: subprocess.Popen
    scheme: str = "http"
    ca_file: str | None = None
    users: dict[str, User] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    @property
    def verify(self):
        return self.ca_file if self.ca_file else None

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def tracebacks(self) -> list[str]:
        text = self.stderr()
        return [match.group(0) for match in re.finditer(r"Traceback \(most recent call last\):.*?(?=\n\S|\Z)", text, re.S)] \
            + [line for line in text.splitlines() if "InternalError" in line or "Exception in ASGI" in line]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,DNS:*.localhost,IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def write_config(path: Path, users: list[User]) -> Path:
    lines = ["[server]", 'region = "us-east-1"', 'domains = ["localhost"]', ""]
    for user in users:
        lines += ["[[users]]", f'name = "{user.name}"', f'access_key = "{user.access_key}"',
                  f'secret_key = "{user.secret_key}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _stop(process: subprocess.Popen) -> tuple[int, bool]:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; returns (exit code, whether it had to be killed)."""
    if process.poll() is not None:
        return process.returncode, False
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S), False
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=STOP_TIMEOUT_S), True


@contextlib.contextmanager
def start_server(directory: Path, *, tls: bool = False, config: Path | None = None, users: list[User] | None = None,
                 args: tuple[str, ...] = ()):
    directory.mkdir(parents=True, exist_ok=True)
    command = [str(CAIRN), "dev", "--port", "0", "--data-dir", str(directory / "data"), *args]
    if config is not None:
        command += ["--config", str(config)]
    ca_file = None
    if tls:
        cert, key = make_certificate(directory)
        command += ["--tls-cert", str(cert), "--tls-key", str(key)]
        ca_file = str(cert)
    stderr_path = directory / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, cwd=directory)
    try:
        found = _read_banner(process, stderr_path)
        server = Server(endpoint=found["endpoint"], access_key=found["access key"], secret_key=found["secret key"],
                        stderr_path=stderr_path, process=process, scheme="https" if tls else "http", ca_file=ca_file)
        for user in users or [User("admin", server.access_key, server.secret_key)]:
            server.users[user.name] = user
        yield server
        code, killed = _stop(process)
        # `cairn dev` promises to stop cleanly on SIGTERM, idle keep-alive clients or not.
        assert not killed and code == 0, f"cairn dev exited {code} (killed: {killed}):\n{server.stderr()[-3000:]}"
    finally:
        _stop(process)
        if process.stdout is not None:
            process.stdout.close()


def _read_banner(process: subprocess.Popen, stderr_path: Path) -> dict[str, str]:
    wanted = ("endpoint", "access key", "secret key")
    found: dict[str, str] = {}
    buffer = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        while not all(name in found for name in wanted):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                raise RuntimeError(f"cairn dev did not start (exit {process.poll()}):\n{stderr_path.read_text(errors='replace')}")
            if not selector.select(timeout=min(remaining, 0.5)):
                continue
            data = os.read(process.stdout.fileno(), 65536)
            if not data:
                continue
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                name, colon, value = line.decode("utf-8", "replace").partition(": ")
                if colon and name in wanted:
                    found[name] = value.strip()
    finally:
        selector.close()
    return found


def s3_client(server: Server, user: str | None = None, *, addressing: str = "path", secret_key: str | None = None,
              access_key: str | None = None, **config):
    """A boto3 S3 client for `server` as `user` (default: the server's first user)."""
    chosen = server.users[user] if user else next(iter(server.users.values()))
    endpoint = server.endpoint
    if addressing == "virtual":
        endpoint = f"{server.scheme}://localhost:{server.port}"
    settings = {"s3": {"addressing_style": addressing}, "signature_version": "s3v4", "retries": {"max_attempts": 1, "mode": "standard"},
                "connect_timeout": 10, "read_timeout": 60}
    settings.update(config)
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=access_key or chosen.access_key,
        aws_secret_access_key=secret_key or chosen.secret_key,
        verify=server.verify, config=botocore.config.Config(**settings),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("cairn")) as running:
        yield running


TWO_USERS = [
    User("alice", "ALICEACCESSKEY000001", "alice-secret-key-0000000000000000000001"),
    User("bob", "BOBACCESSKEY00000002", "bob-secret-key-00000000000000000000002"),
]


@pytest.fixture(scope="module", params=["http", "https"])
def two_users(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"cairn-{request.param}")
    config = write_config(directory / "users.toml", TWO_USERS)
    with start_server(directory, tls=request.param == "https", config=config, users=TWO_USERS) as running:
        yield running


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: runs real server processes")




@pytest.fixture(scope="session")
def client_factory():
    """`s3_client` as a fixture, so test modules need not import this conftest."""
    return s3_client


@pytest.fixture(scope="session")
def server_starter():
    """`start_server` as a fixture, for modules that need their own kind of server."""
    return start_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ShardstoreProcess:
    """One `cairn shardstore` process on one disk, gRPC only, no scrubber: started,
    SIGKILLed or stopped by the kill tests (every test stops what it started)."""

    def __init__(self, disk: str) -> None:
        self.disk = disk
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shardstore.main", "--disk", self.disk, "--listen", self.address, "--no-scrub",
             "--log-level", "WARNING"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        assert line.strip() == f"listening: {self.address}", line

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.process.returncode if self.process else 0


class FramedShardstoreProcess(ShardstoreProcess):
    """ShardstoreProcess (its kill and stop) on several disks and with the framed data
    protocol too, both on ports it picks itself; `extra` arguments go on its command
    line (`--limits FILE`, or `--no-compact` beside the `--no-scrub` it always has)."""

    LISTENING = re.compile(r"listening: grpc=(\S+) data=(\S+)")

    def __init__(self, disks: dict[str, str], extra: tuple[str, ...] = ()) -> None:
        super().__init__("")
        self.disks = disks
        self.extra = extra
        self.grpc = self.data = ""

    def start(self) -> None:
        command = [sys.executable, "-m", "deploy.cli", "shardstore"]
        for disk, path in self.disks.items():
            command += ["--disk", f"{disk}={path}"]
        command += ["--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--no-scrub", "--log-level", "WARNING",
                    *self.extra]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)
        line = self.process.stdout.readline()
        match = self.LISTENING.fullmatch(line.strip())
        assert match, line
        self.grpc, self.data = match.groups()
        assert not self.grpc.endswith(":0") and not self.data.endswith(":0")


MISSING_SHARD = 99          # range_requests: the shard number that is never put


def range_requests(sizes: list[int]):
    """Hypothesis: lists of (shard number, start, end | None) over shards numbered
    100, 101, ... (one per size in `sizes`) and MISSING_SHARD, for the batched-read
    properties (framed GET_MANY, gRPC GetShards)."""

    @st.composite
    def requests(draw):
        items = []
        for _ in range(draw(st.integers(0, 12))):
            number = draw(st.sampled_from(range(len(sizes) + 1)))
            if number == len(sizes):
                items.append((MISSING_SHARD, 0, None))
                continue
            size = sizes[number]
            start = draw(st.integers(0, size))
            end = draw(st.one_of(st.none(), st.integers(start, size)))
            items.append((100 + number, start, end))
        return items

    return requests()


AWKWARD_TREE = {
    "plain.txt": 100,
    "with space.txt": 1000,
    "plus+sign+.bin": 70_000,
    "ünïcødé ñandú.txt": 10,
    "emoji \U0001F600.txt": 5,
    "empty": 0,
    "nested/deeper/a b+c é.bin": 300_000,
    "nested/deeper/still/ключ.dat": 4097,
    "nested/100% sure.txt": 42,
    "sp ace dir/+plus dir/file": 7,
}


def make_tree(root: Path) -> None:
    for index, (name, size) in enumerate(AWKWARD_TREE.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.shake_256(f"{index}:{name}".encode()).digest(size) if size else b"")


def assert_same_tree(left: Path, right: Path) -> None:
    def walk(comparison: filecmp.dircmp) -> None:
        assert not comparison.left_only and not comparison.right_only and not comparison.funny_files, \
            (comparison.left, comparison.left_only, comparison.right_only)
        _, mismatch, errors = filecmp.cmpfiles(comparison.left, comparison.right, comparison.common_files, shallow=False)
        assert not mismatch and not errors, (mismatch, errors)
        for sub in comparison.subdirs.values():
            walk(sub)

    walk(filecmp.dircmp(left, right))
    left_files = sorted(str(path.relative_to(left)) for path in left.rglob("*") if path.is_file())
    assert left_files == sorted(AWKWARD_TREE)

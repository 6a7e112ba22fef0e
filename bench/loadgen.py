"""An efficient closed-loop HTTP/1.1 load generator for S3-like servers, shared by
bench/s3_bench.py and bench/http_candidates.py.

Why not boto3: botocore spends ~1 ms of CPU per request, so on a 2-core box the
client would be the bottleneck. Here:
- each in-flight request has its own persistent HTTP/1.1 connection, driven by an
  `asyncio.Protocol` on uvloop (no task, future or stream object per request):
  the response callback issues the next request directly (closed loop);
- requests are signed with SigV4, `x-amz-content-sha256: UNSIGNED-PAYLOAD`, once
  per key before the timed phase (`Signer.head`); the request heads and bodies
  are bytes prepared beforehand, sent with one `writelines`;
- every response is checked against what was written: the status, the
  Content-Length, the ETag of a PUT (the MD5 of the body, computed beforehand),
  and the whole content of a GET — compared byte for byte up to
  FULL_COMPARE_MAX bytes, above that by an xxh3-128 over every received byte
  against the xxh3-128 of the body written (not sampled: every byte is hashed);
- CPU is read from /proc: the server's utime+stime (all its threads) and this
  process's own, so every figure comes with CPU per op and per MiB, the stable
  measures on a shared box; `other` is the rest of the machine's busy time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import platform
import re
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import quote

import xxhash

CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024
FULL_COMPARE_MAX = 1 * MiB
"""GET bodies up to this size are compared byte for byte; larger ones by xxh3-128."""

_HEAD_END = b"\r\n\r\n"


# ------------------------------------------------------------------ CPU and machine


def _own_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    if int(handle.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def proc_cpu_s(pid: int) -> float:
    """CPU-seconds (user + system) of `pid` and every process under it: a `cairn dev`
    cluster's metadata nodes and frontend workers are children of its supervisor."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            total += _own_cpu_s(current)
        except (OSError, ValueError, IndexError):
            continue
        pending.extend(_children(current))
    return total


def box_busy_s() -> float:
    """Busy CPU-seconds of the whole machine so far (all cores, /proc/stat)."""
    with open("/proc/stat", "rb") as handle:
        fields = handle.readline().split()[1:]
    values = [int(value) for value in fields[:8]]
    idle = values[3] + values[4]          # idle + iowait
    return (sum(values) - idle) / CLK_TCK


@dataclass
class CpuSnapshot:
    wall: float
    server: float
    gen: float
    box: float

    @classmethod
    def take(cls, server_pid: int | None) -> "CpuSnapshot":
        return cls(time.perf_counter(), proc_cpu_s(server_pid) if server_pid else 0.0,
                   time.process_time(), box_busy_s())


def machine_line() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
        found = [flag for flag in ("avx2", "avx512f", "sha_ni") if re.search(rf"\b{flag}\b", text)]
        flags = "+".join(found)
    except OSError:
        pass
    memory = "?"
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal"):
                    memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                    break
    except OSError:
        pass
    try:
        import uvloop
        loop_version = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop_version = "no uvloop"
    usable = len(os.sched_getaffinity(0))
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"machine: {model} ({flags}), {os.cpu_count()} cores ({usable} usable), {memory}, "
            f"Linux {platform.release()}, Python {platform.python_version()}, {loop_version}; "
            f"load average at start {load}")


# ------------------------------------------------------------------ SigV4


def _uri_encode(text: str, safe: str) -> str:
    return quote(text, safe=safe)


class Signer:
    """AWS SigV4 for the header mechanism with UNSIGNED-PAYLOAD.

    The signing key is derived once per date; `head()` returns the complete
    request line and headers as bytes, so the timed loops only write bytes.
    Signed headers: host, x-amz-content-sha256, x-amz-date (and any extra
    x-amz-* given)."""

    def __init__(self, access_key: str, secret_key: str, region: str, host: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.host = host
        self._keys: dict[str, bytes] = {}

    def _signing_key(self, date: str) -> bytes:
        key = self._keys.get(date)
        if key is None:
            key = ("AWS4" + self.secret_key).encode()
            for part in (date, self.region, "s3", "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            self._keys[date] = key
        return key

    def head(self, method: str, path: str, query: list[tuple[str, str]] | None = None, *,
             content_length: int | None = None, amz_date: str | None = None) -> bytes:
        """`path` is the decoded path ('/bucket/key'); it is URI-encoded here."""
        if amz_date is None:
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = amz_date[:8]
        canonical_path = _uri_encode(path, "/-_.~")
        encoded_query = "&".join(
            f"{name}={value}" for name, value in sorted(
                (_uri_encode(name, "-_.~"), _uri_encode(value, "-_.~")) for name, value in (query or ())))
        canonical_headers = (f"host:{self.host}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\n"
                             f"x-amz-date:{amz_date}\n")
        signed_headers = "host;x-amz-content-sha256;x-amz-date"
        canonical_request = (f"{method}\n{canonical_path}\n{encoded_query}\n{canonical_headers}\n"
                             f"{signed_headers}\nUNSIGNED-PAYLOAD")
        scope = f"{date}/{self.region}/s3/aws4_request"
        string_to_sign = (f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
                          f"{hashlib.sha256(canonical_request.encode()).hexdigest()}")
        signature = hmac.digest(self._signing_key(date), string_to_sign.encode(), "sha256").hex()
        target = canonical_path + ("?" + encoded_query if encoded_query else "")
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self.host}",
            f"x-amz-date: {amz_date}",
            "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            f"Authorization: AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}",
        ]
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ------------------------------------------------------------------ requests and checks


class Op:
    """One prepared request and what its response must be.

    wire: the bytes to send (head, then body if any).
    status: the expected status.
    body: the expected response body (GET), or None not to check the content.
    body_hash: xxh3-128 digest of `body` (used above FULL_COMPARE_MAX).
    etag: the expected ETag header (PUT), quotes included, or None.
    keep: hand the response body to `on_body`, which returns the units done
          (e.g. keys listed) or raises on a wrong answer.
    sent_bytes / recv_bytes: payload bytes this op moves, for MiB/s.
    """

    __slots__ = ("wire", "status", "body", "body_hash", "etag", "keep", "on_body", "sent_bytes",
                 "recv_bytes", "units")

    def __init__(self, wire: list[bytes], *, status: int = 200, body: bytes | None = None,
                 etag: bytes | None = None, on_body: Callable[[bytes], int] | None = None,
                 sent_bytes: int = 0, body_hash: bytes | None = None) -> None:
        self.wire = wire
        self.status = status
        self.body = body
        self.body_hash = body_hash if body_hash is not None or body is None or len(body) <= FULL_COMPARE_MAX \
            else xxhash.xxh3_128_digest(body)
        self.etag = etag
        self.on_body = on_body
        self.keep = on_body is not None
        self.sent_bytes = sent_bytes
        self.recv_bytes = len(body) if body is not None else 0
        self.units = 1


class CheckFailed(Exception):
    pass


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    status_line = lines[0]
    if not status_line.startswith(b"HTTP/1.1 "):
        raise CheckFailed(f"bad status line {status_line[:80]!r}")
    status = int(status_line[9:12])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


class Connection(asyncio.Protocol):
    """One persistent HTTP/1.1 connection with at most one request in flight.

    Responses must carry Content-Length (every S3 response does); a chunked
    response is a check failure."""

    def __init__(self, on_done: Callable[["Connection", Op, int, int, bytes | None, Exception | None], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_done = on_done
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.slot = 0
        self._buffer = bytearray()
        self._in_body = False
        self._op: Op | None = None
        self._started = 0
        self._remaining = 0
        self._kept: bytearray | None = None
        self._hasher = None
        self._close_after = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.ready.done():
            self.ready.set_result(None)

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self._op is not None:
            op, self._op = self._op, None
            self._report(op, None, CheckFailed(f"connection lost mid-request: {exc!r}"))

    def send(self, op: Op) -> None:
        self._op = op
        self._in_body = False
        self._started = time.perf_counter_ns()
        self.transport.writelines(op.wire)

    def data_received(self, data: bytes) -> None:
        if self._in_body:
            self._body(data)
            return
        buffer = self._buffer
        buffer += data
        end = buffer.find(_HEAD_END)
        if end < 0:
            if len(buffer) > 65536:
                self._fail(CheckFailed("response head over 64 KiB"))
            return
        op = self._op
        if op is None:
            self._fail(CheckFailed("response without a request"))
            return
        try:
            status, headers = _parse_head(bytes(buffer[:end]))
            rest = bytes(buffer[end + 4:])
            buffer.clear()
            if status == 100:          # interim answer: the final one follows
                if rest:
                    self.data_received(rest)
                return
            length_text = headers.get(b"content-length")
            if length_text is None:
                raise CheckFailed(f"status {status} without Content-Length (chunked responses are not expected)")
            length = int(length_text)
            self._close_after = headers.get(b"connection", b"").lower() == b"close"
            if status != op.status:
                raise CheckFailed(f"status {status}, expected {op.status}; body {rest[:300]!r}")
            if op.etag is not None and headers.get(b"etag") != op.etag:
                raise CheckFailed(f"ETag {headers.get(b'etag')!r}, expected {op.etag!r}")
            if op.body is not None and length != len(op.body):
                raise CheckFailed(f"Content-Length {length}, expected {len(op.body)}")
        except (CheckFailed, ValueError) as error:
            self._fail(error)
            return
        self._remaining = length
        self._in_body = True
        self._kept = bytearray() if (op.keep or (op.body is not None and op.body_hash is None)) else None
        self._hasher = xxhash.xxh3_128() if op.body_hash is not None else None
        if rest or length == 0:
            self._body(rest)

    def _body(self, data: bytes) -> None:
        size = len(data)
        if size > self._remaining:
            self._fail(CheckFailed("more response bytes than Content-Length"))
            return
        self._remaining -= size
        if self._kept is not None:
            self._kept += data
        elif self._hasher is not None:
            self._hasher.update(data)
        if self._remaining:
            return
        op, self._op = self._op, None
        self._in_body = False
        error = None
        kept = None
        if op.body is not None:
            if op.body_hash is not None:
                if self._hasher.digest() != op.body_hash:
                    error = CheckFailed("GET content differs from what was written (xxh3-128)")
            elif self._kept != op.body:
                error = CheckFailed("GET content differs from what was written")
        if op.keep:
            kept = bytes(self._kept)
        self._kept = None
        self._hasher = None
        if self._close_after:
            error = error or CheckFailed("server closed the connection (Connection: close)")
        self._report(op, kept, error)

    def _fail(self, error: Exception) -> None:
        op, self._op = self._op, None
        if self.transport is not None:
            self.transport.close()
        if op is not None:
            self._report(op, None, error)

    def _report(self, op: Op, kept: bytes | None, error: Exception | None) -> None:
        latency = time.perf_counter_ns() - self._started
        if self.on_done is not None:
            self.on_done(self, op, latency, kept, error)


async def open_connections(host: str, port: int, count: int) -> list[Connection]:
    loop = asyncio.get_running_loop()
    connections = []
    for slot in range(count):
        _, protocol = await loop.create_connection(Connection, host, port)
        protocol.slot = slot
        connections.append(protocol)
    return connections


async def close_connections(connections: list[Connection]) -> None:
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    for connection in connections:
        try:
            await asyncio.wait_for(asyncio.shield(connection.closed), 2)
        except asyncio.TimeoutError:
            pass


# ------------------------------------------------------------------ the closed loop


@dataclass
class Result:
    name: str
    concurrency: int
    ops: int = 0
    units: int = 0
    sent_bytes: int = 0
    recv_bytes: int = 0
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    gen_cpu_s: float = 0.0
    box_busy_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    unit_name: str = "ops"

    @property
    def payload_mib(self) -> float:
        return (self.sent_bytes + self.recv_bytes) / MiB

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
        return ordered[index] / 1e6

    def as_dict(self) -> dict:
        wall = self.wall_s or float("nan")
        mib = self.payload_mib
        units = self.units or float("nan")
        return {
            "name": self.name, "concurrency": self.concurrency, "ops": self.ops, "units": self.units,
            "unit_name": self.unit_name, "wall_s": round(self.wall_s, 3),
            "units_per_s": round(self.units / wall, 1), "ops_per_s": round(self.ops / wall, 1),
            "mib_per_s": round(mib / wall, 1),
            "p50_ms": round(self.percentile_ms(0.50), 3), "p99_ms": round(self.percentile_ms(0.99), 3),
            "server_cpu_s": round(self.server_cpu_s, 3), "gen_cpu_s": round(self.gen_cpu_s, 3),
            "server_cpu_us_per_unit": round(self.server_cpu_s / units * 1e6, 1),
            "gen_cpu_us_per_unit": round(self.gen_cpu_s / units * 1e6, 1),
            "server_cpu_ms_per_mib": round(self.server_cpu_s / mib * 1e3, 3) if mib else None,
            "gen_cpu_ms_per_mib": round(self.gen_cpu_s / mib * 1e3, 3) if mib else None,
            "server_cores": round(self.server_cpu_s / wall, 2), "gen_cores": round(self.gen_cpu_s / wall, 2),
            "other_cores": round(max(0.0, self.box_busy_s - self.server_cpu_s - self.gen_cpu_s) / wall, 2),
            "errors": self.error_count, "first_errors": self.errors[:3],
        }


NextOp = Callable[[int, Op | None, bytes | None], Op | None]
"""next_op(slot, finished_op_or_None, kept_body_or_None) -> the next Op for this
connection, or None to stop it. Called once per slot with (slot, None, None) to start."""


async def closed_loop(connections: list[Connection], next_op: NextOp, *, duration_s: float,
                      server_pid: int | None, name: str, min_ops: int = 0, max_errors: int = 10,
                      record: bool = True, unit_name: str = "ops") -> Result:
    """Keep len(connections) requests in flight for duration_s (then let the last
    ones finish): ops, bytes, latencies and CPU between the first send and the
    last answer."""
    loop = asyncio.get_running_loop()
    result = Result(name=name, concurrency=len(connections), unit_name=unit_name)
    finished = loop.create_future()
    active = len(connections)
    deadline = time.perf_counter() + duration_s
    latencies = result.latencies_ns
    perf_counter = time.perf_counter

    def stop_one() -> None:
        nonlocal active
        active -= 1
        if active == 0 and not finished.done():
            finished.set_result(None)

    def on_done(connection: Connection, op: Op, latency_ns: int, kept: bytes | None, error: Exception | None) -> None:
        if error is None and op.keep:
            try:
                op.units = op.on_body(kept)
            except Exception as check_error:  # noqa: BLE001 - reported as a failed check
                error = check_error
        if error is not None:
            result.error_count += 1
            if len(result.errors) < 10:
                result.errors.append(f"{type(error).__name__}: {error}")
            if result.error_count >= max_errors or connection.transport is None or connection.transport.is_closing():
                stop_one()
                return
        else:
            result.ops += 1
            result.units += op.units
            result.sent_bytes += op.sent_bytes
            result.recv_bytes += op.recv_bytes
            if record:
                latencies.append(latency_ns)
        if perf_counter() < deadline or result.ops < min_ops:
            following = next_op(connection.slot, op, kept)
            if following is not None:
                connection.send(following)
                return
        stop_one()

    for connection in connections:
        connection.on_done = on_done
    before = CpuSnapshot.take(server_pid)
    for connection in connections:
        first = next_op(connection.slot, None, None)
        if first is None:
            stop_one()
        else:
            connection.send(first)
    if active:
        await finished
    after = CpuSnapshot.take(server_pid)
    result.wall_s = after.wall - before.wall
    result.server_cpu_s = after.server - before.server
    result.gen_cpu_s = after.gen - before.gen
    result.box_busy_s = after.box - before.box
    return result


def format_table(rows: list[dict]) -> str:
    """One line per result; CPU per unit (µs) and per MiB (ms), for the server
    and this generator, and how many cores each kept busy ('other' = the rest of
    the box: other people's work)."""
    header = (f"{'workload':<16}{'inflt':>6}{'units':>8}{'units/s':>11}{'MiB/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'srv µs/u':>10}{'gen µs/u':>10}{'srv ms/MiB':>11}{'gen ms/MiB':>11}"
              f"{'srv cores':>10}{'gen':>6}{'other':>7}{'err':>5}")
    lines = [header, "-" * len(header)]
    for row in rows:
        per_mib_s = f"{row['server_cpu_ms_per_mib']:.2f}" if row["server_cpu_ms_per_mib"] else "-"
        per_mib_g = f"{row['gen_cpu_ms_per_mib']:.2f}" if row["gen_cpu_ms_per_mib"] else "-"
        mib = f"{row['mib_per_s']:.1f}" if row["mib_per_s"] else "-"
        lines.append(
            f"{row['name']:<16}{row['concurrency']:>6}{row['units']:>8}{row['units_per_s']:>11,.0f}{mib:>9}"
            f"{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['server_cpu_us_per_unit']:>10.1f}{row['gen_cpu_us_per_unit']:>10.1f}{per_mib_s:>11}{per_mib_g:>11}"
            f"{row['server_cores']:>10.2f}{row['gen_cores']:>6.2f}{row['other_cores']:>7.2f}{row['errors']:>5}")
    return "\n".join(lines)

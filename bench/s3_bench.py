"""`make bench`: the S3 frontend's first benchmark, against a `cairn dev` server it starts.

    .venv/bin/python -m bench.s3_bench                       # everything, ~1.5 minutes
    .venv/bin/python -m bench.s3_bench -w put4k16,get4k16 -d 8
    .venv/bin/python -m bench.s3_bench --profile /tmp/prof   # py-spy each workload's server
    .venv/bin/python -m bench.s3_bench --cluster --process-per-disk -w put64m,put64m4,get64m,get64mdeg

Workloads (names for --workloads):
  put64m, get64m      one 64 MiB object, single stream: MiB/s
  put4k16, get4k16, put4k64, get4k64, put64k16, get64k16, put64k64, get64k64
                      4 KiB / 64 KiB objects over 1,024 keys, 16 or 64 requests in
                      flight (one persistent connection each): ops/s, p50/p99
  list                ListObjectsV2 over 10,000 keys in pages of 1,000: keys/s
  any putSIZE[N] / getSIZE[N]   SIZE 4k, 64k or 64m with N in flight (put64m4: four streams)
  get64mdeg           (--cluster --process-per-disk) GET 64 MiB with the two disks holding
                      its data slots 0 and 1 SIGKILLed: every stripe decoded

The load generator (bench/loadgen.py) runs in this process on uvloop: raw HTTP/1.1
over persistent connections, SigV4 with UNSIGNED-PAYLOAD signed before the timed
phase, bodies prepared beforehand, and every response checked against what was
written (status, Content-Length, the PUT's ETag = MD5 of the body, and the full
content of every GET: byte for byte up to 1 MiB, by xxh3-128 of every byte above).
A failed check is reported and makes the exit status non-zero.

Each workload reports its CPU — the server process's (all threads, /proc/PID/stat)
and this generator's — per op (or per listed key) and per MiB, and how many cores
each kept busy; `other` is the rest of the machine (other people's runs), which is
what makes absolute rates noisy on a shared box. Goals (issues 3, 6 and 7, on a
quiet 2-core box, generator included) are checked at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import html
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import (
    MiB, Connection, Op, Result, Signer, close_connections, closed_loop, format_table,
    machine_line, open_connections,
)
from deploy.supervisor import child_processes

BUCKET = "bench"
SMALL_KEYS = 1024
BODY_VARIANTS = 64
LIST_KEYS = 10_000
LIST_PAGE = 1000
SIZES = {"4k": 4 * 1024, "64k": 64 * 1024, "64m": 64 * MiB}

ALL_WORKLOADS = ("put64m", "get64m", "put4k16", "get4k16", "put4k64", "get4k64",
                 "put64k16", "get64k16", "put64k64", "get64k64", "list")

GOALS = {  # workload -> (minimum, unit) on a quiet 2-core box, generator included
    "put4k16": (4000, "ops/s"), "get4k16": (5000, "ops/s"),
    "put64m": (250, "MiB/s"), "get64m": (1500, "MiB/s"), "list": (100_000, "keys/s"),
}
CLUSTER_GOALS = {  # issue 6 and 7 goals through S3 on the cluster (--cluster)
    "put4k64": (2500, "ops/s"), "get4k64": (4000, "ops/s"),
    "put64m": (250, "MiB/s"), "put64m4": (350, "MiB/s"), "get64m": (900, "MiB/s"), "get64mdeg": (700, "MiB/s"),
    "put64k32": (1500, "ops/s"), "get64k32": (3500, "ops/s"), "list": (100_000, "keys/s"),
}

_WORKLOAD = re.compile(r"^(put|get)(4k|64k|64m)(\d*)(deg)?$")


# ------------------------------------------------------------------ the server


@dataclass
class Server:
    process: subprocess.Popen
    host: str
    port: int
    access_key: str
    secret_key: str
    region: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(command: list[str], data_dir: Path, timeout_s: float = 30) -> Server:
    """Start `cairn dev` (or a command printing the same lines) and read its endpoint."""
    log_path = data_dir / "server.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not {"endpoint", "access key", "secret key"} <= found.keys():
        line = process.stdout.readline()
        if not line:
            break
        name, sep, value = line.partition(": ")
        if sep:
            found[name.strip()] = value.strip()
    if not {"endpoint", "access key", "secret key"} <= found.keys():
        process.kill()
        process.wait()
        raise RuntimeError(f"server did not start: {' '.join(command)}; log:\n{log_path.read_text()[-3000:]}")
    # Keep draining stdout so the server never blocks on a full pipe.
    import threading
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    endpoint = found["endpoint"].removeprefix("http://")
    host, _, port = endpoint.rpartition(":")
    return Server(process, host, int(port), found["access key"], found["secret key"],
                  found.get("region", "us-east-1"), log_path)


# ------------------------------------------------------------------ helpers


async def one(connection: Connection, op: Op) -> bytes | None:
    """Send one op and wait for its checked answer (setup steps, not timed)."""
    future = asyncio.get_running_loop().create_future()

    def done(_connection, _op, _latency, kept, error):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(kept)

    connection.on_done = done
    connection.send(op)
    return await future


@dataclass
class Context:
    server: Server
    signer: Signer
    connections: list[Connection]
    duration_s: float
    large_duration_s: float
    warmup_s: float
    list_concurrency: int
    profile_dir: Path | None
    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    etags: dict[str, list[bytes]] = field(default_factory=dict)
    populated: set[str] = field(default_factory=set)
    results: list[Result] = field(default_factory=list)


def make_bodies(size_name: str, variants: int) -> tuple[list[bytes], list[bytes]]:
    size = SIZES[size_name]
    bodies = [os.urandom(size) for _ in range(variants)]
    etags = [f'"{hashlib.md5(body).hexdigest()}"'.encode() for body in bodies]
    return bodies, etags


def key_path(size_name: str, index: int) -> str:
    return f"/{BUCKET}/obj-{size_name}/{index:05d}"


def prepared_ops(ctx: Context, size_name: str, method: str) -> list[Op]:
    """One Op per key, signed now (valid for the server's 15-minute skew)."""
    bodies, etags = ctx.bodies[size_name], ctx.etags[size_name]
    count = 1 if size_name == "64m" else SMALL_KEYS
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    ops = []
    for index in range(count):
        body, etag = bodies[index % len(bodies)], etags[index % len(bodies)]
        path = key_path(size_name, index)
        if method == "PUT":
            head = ctx.signer.head("PUT", path, content_length=len(body), amz_date=amz_date)
            ops.append(Op([head, body], etag=etag, sent_bytes=len(body)))
        else:
            head = ctx.signer.head("GET", path, amz_date=amz_date)
            ops.append(Op([head], body=body))
    return ops


def cycling(ops: list[Op]):
    count = len(ops)
    position = 0

    def next_op(_slot: int, _done: Op | None, _kept: bytes | None) -> Op:
        nonlocal position
        op = ops[position % count]
        position += 1
        return op

    return next_op


class Profiler:
    """py-spy record on the server for the timed phase of one workload."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.process = None
        self.path = None
        if ctx.profile_dir is None:
            return
        ctx.profile_dir.mkdir(parents=True, exist_ok=True)
        self.path = ctx.profile_dir / f"{name}.txt"
        py_spy = Path(sys.executable).parent / "py-spy"
        self.process = subprocess.Popen(
            [str(py_spy), "record", "--pid", str(ctx.server.pid), "--format", "raw", "--threads",
             "--rate", "250", "-o", str(self.path), "--duration", "600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let py-spy attach before the timed phase

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def run_rw(ctx: Context, name: str, method: str, size_name: str, concurrency: int) -> Result:
    if size_name not in ctx.bodies:
        ctx.bodies[size_name], ctx.etags[size_name] = make_bodies(size_name, 1 if size_name == "64m" else BODY_VARIANTS)
    if method == "GET" and size_name not in ctx.populated:
        await closed_loop(ctx.connections[:16 if size_name != "64m" else 1], cycling(prepared_ops(ctx, size_name, "PUT")),
                          duration_s=0, min_ops=1 if size_name == "64m" else SMALL_KEYS,
                          server_pid=None, name="populate", record=False)
    ops = prepared_ops(ctx, size_name, method)
    connections = ctx.connections[:concurrency]
    large = size_name == "64m"
    warm = await closed_loop(connections, cycling(ops), duration_s=0 if large else ctx.warmup_s,
                             min_ops=1 if large else 0, server_pid=None, name="warmup", record=False)
    if warm.error_count:
        warm.name = name
        return warm
    profiler = Profiler(ctx, name)
    try:
        result = await closed_loop(connections, cycling(ops), duration_s=ctx.large_duration_s if large else ctx.duration_s,
                                   min_ops=3 if large else 0, server_pid=ctx.server.pid, name=name)
    finally:
        profiler.stop()
    if method == "PUT" and not result.error_count:
        ctx.populated.add(size_name)
    return result


async def run_list(ctx: Context) -> Result:
    # Populate LIST_KEYS empty objects under one prefix (not timed).
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    empty_etag = f'"{hashlib.md5(b"").hexdigest()}"'.encode()
    names = [f"list/{index:05d}" for index in range(LIST_KEYS)]
    puts = [Op([ctx.signer.head("PUT", f"/{BUCKET}/{name}", content_length=0, amz_date=amz_date)], etag=empty_etag)
            for name in names]
    populate = await closed_loop(ctx.connections[:32], cycling(puts), duration_s=0, min_ops=LIST_KEYS,
                                 server_pid=None, name="list-populate", record=False)
    if populate.error_count:
        populate.name = "list"
        return populate
    expected = [name.encode() for name in sorted(names)]
    state: dict[int, dict] = {}

    def page_op(slot: int) -> Op:
        slot_state = state.setdefault(slot, {"token": None, "page": 0})
        query = [("list-type", "2"), ("prefix", "list/"), ("max-keys", str(LIST_PAGE))]
        if slot_state["token"] is not None:
            query.append(("continuation-token", slot_state["token"]))
        head = ctx.signer.head("GET", f"/{BUCKET}", query)

        def check(body: bytes) -> int:
            keys = re.findall(rb"<Key>([^<]*)</Key>", body)
            page = slot_state["page"]
            want = expected[page * LIST_PAGE:(page + 1) * LIST_PAGE]
            if keys != want:
                raise ValueError(f"page {page}: {len(keys)} keys, not the {len(want)} written "
                                 f"(first {keys[:1]!r} vs {want[:1]!r})")
            truncated = b"<IsTruncated>true</IsTruncated>" in body
            if truncated != ((page + 1) * LIST_PAGE < len(expected)):
                raise ValueError(f"page {page}: IsTruncated={truncated}")
            if truncated:
                token = re.search(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>", body)
                if token is None:
                    raise ValueError("truncated page without NextContinuationToken")
                slot_state["token"] = html.unescape(token.group(1).decode())
                slot_state["page"] = page + 1
            else:
                slot_state["token"], slot_state["page"] = None, 0
            return len(keys)

        return Op([head], on_body=check)

    def next_op(slot: int, _done: Op | None, _kept: bytes | None) -> Op:
        return page_op(slot)

    connections = ctx.connections[:ctx.list_concurrency]
    await closed_loop(connections, next_op, duration_s=ctx.warmup_s, server_pid=None, name="warmup",
                      record=False, unit_name="keys")
    state.clear()
    profiler = Profiler(ctx, "list")
    try:
        return await closed_loop(connections, next_op, duration_s=ctx.duration_s, server_pid=ctx.server.pid,
                                 name="list", unit_name="keys")
    finally:
        profiler.stop()


async def run(arguments: argparse.Namespace, server: Server) -> list[Result]:
    host_header = f"{server.host}:{server.port}"
    signer = Signer(server.access_key, server.secret_key, server.region, host_header)
    workloads = arguments.workloads
    need = max([1, arguments.list_concurrency] + [int(_WORKLOAD.match(w).group(3) or 1) for w in workloads if w != "list"])
    connections = await open_connections(server.host, server.port, max(need, 32 if "list" in workloads else 16))
    ctx = Context(server, signer, connections, arguments.duration, arguments.large_duration, arguments.warmup,
                  arguments.list_concurrency, Path(arguments.profile) if arguments.profile else None)
    try:
        created = await one(connections[0], Op([signer.head("PUT", f"/{BUCKET}", content_length=0)]))
        del created
        for workload in workloads:
            if workload == "list":
                result = await run_list(ctx)
            else:
                method, size_name, depth, degraded = _WORKLOAD.match(workload).groups()
                if degraded:
                    async with TwoDataDisksDown(ctx):
                        result = await run_rw(ctx, workload, method.upper(), size_name, int(depth or 1))
                else:
                    result = await run_rw(ctx, workload, method.upper(), size_name, int(depth or 1))
            ctx.results.append(result)
            row = result.as_dict()
            print(format_table([row]).splitlines()[-1], flush=True)
            if result.error_count:
                print(f"  CHECK FAILED ({result.error_count}): {result.errors[:3]}", flush=True)
            if ctx.profile_dir is not None:
                from bench.profile_summary import summarise
                print(summarise(str(ctx.profile_dir / f"{workload}.txt"), arguments.profile_top), flush=True)
    finally:
        await close_connections(connections)
    return ctx.results


class TwoDataDisksDown:
    """`...deg` workloads (--cluster --process-per-disk): SIGKILL the shardstore processes
    holding data slots 0 and 1 of the newest 64 MiB object (found by listing every
    disk), with the supervisor SIGSTOPped so nothing restarts until the workload ends;
    then SIGCONT it and wait until every disk is back."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def __aenter__(self):
        from common.layout import load_layout
        from shardstore.client import ShardClient

        layout = load_layout(str(self.ctx.server.log_path.parent / "cluster.toml"))
        if layout is None or len(layout.stores) != len(layout.disks()):
            raise SystemExit("degraded workloads need --cluster --process-per-disk")
        width = layout.k + layout.m
        newest: dict[int, tuple[bytes, str]] = {}
        for disk in layout.disks():
            client = ShardClient(disk.data_address)
            try:
                shards, _ = await client.list(disk.id, limit=100_000, timeout_s=10)
            finally:
                await client.close()
            for info in shards:
                if info.length >= MiB:
                    slot = info.id.shard_index % width
                    if slot not in newest or info.id.data_id > newest[slot][0]:
                        newest[slot] = (info.id.data_id, disk.id)
        victims = {newest[0][1], newest[1][1]}
        supervisor = self.ctx.server.pid
        self.stores = {pid: argv for pid, argv in child_processes(supervisor).items() if "shardstore.main" in argv}
        os.kill(supervisor, signal.SIGSTOP)
        for pid, argv in self.stores.items():
            if any(part.startswith(f"{disk}=") for disk in victims for part in argv):
                os.kill(pid, signal.SIGKILL)
        print(f"  (disks {', '.join(sorted(victims))}, holding data slots 0 and 1, SIGKILLed)", flush=True)
        await asyncio.sleep(1.5)                  # the workers' Stat round marks them down
        return self

    async def __aexit__(self, *exc) -> None:
        supervisor = self.ctx.server.pid
        os.kill(supervisor, signal.SIGCONT)
        for _ in range(150):
            await asyncio.sleep(0.2)
            if len([argv for argv in child_processes(supervisor).values() if "shardstore.main" in argv]) == \
                    len(self.stores):
                break
        await asyncio.sleep(1.5)


def parse_workloads(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_WORKLOADS and not (_WORKLOAD.match(name) and name != "list")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown workloads {unknown}; choose from {', '.join(ALL_WORKLOADS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workloads", type=parse_workloads, default=list(ALL_WORKLOADS),
                        help="comma-separated workloads, in order (default: all). Any putSIZE[N]/getSIZE[N] "
                             "with SIZE in 4k, 64k, 64m and N requests in flight works, e.g. get4k32.")
    parser.add_argument("-d", "--duration", type=float, default=4.0,
                        help="seconds per small-object and LIST workload (default 4)")
    parser.add_argument("--large-duration", type=float, default=5.0,
                        help="seconds per 64 MiB workload (at least 3 objects; default 5)")
    parser.add_argument("--warmup", type=float, default=0.5, help="untimed seconds before each workload (default 0.5)")
    parser.add_argument("--list-concurrency", type=int, default=1,
                        help="concurrent ListObjectsV2 walkers (default 1)")
    parser.add_argument("--json", help="also write the results as JSON here")
    parser.add_argument("--profile", metavar="DIR",
                        help="record the server with py-spy (raw collapsed stacks, --threads) during each timed "
                             "phase into DIR/<workload>.txt and print a summary; slows the server: do not "
                             "quote rates from a profiled run")
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument("--cluster", action="store_true",
                        help="benchmark `cairn dev`, the whole cluster (3 metadata nodes, 6 disks RS 4+2, 2 frontend "
                             "workers); default: the in-memory single-process server, which isolates the S3 layer")
    parser.add_argument("--process-per-disk", action="store_true",
                        help="with --cluster: one shardstore process per disk (needed by the ...deg workloads, "
                             "which SIGKILL the processes of two data disks)")
    parser.add_argument("--server-command", help="start this instead of `cairn dev --port 0 --data-dir DIR` "
                                                 "(it must print the same endpoint/access key/secret key lines)")
    arguments = parser.parse_args(argv)

    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="cairn-bench-") as data_dir:
        if arguments.server_command:
            command = arguments.server_command.split()
        else:
            command = [str(Path(sys.executable).parent / "cairn"), "dev", "--host", "127.0.0.1", "--port", "0",
                       "--data-dir", data_dir]
            if not arguments.cluster:
                command.append("--memory")
            elif arguments.process_per_disk:
                command.append("--process-per-disk")
        server = start_server(command, Path(data_dir))
        print(f"server: {' '.join(command)} (pid {server.pid}) at {server.host}:{server.port}", flush=True)
        print("generator: this process, uvloop, one persistent HTTP/1.1 connection per request in flight, "
              "SigV4 UNSIGNED-PAYLOAD signed before the timed phase; GET content checked in full "
              "(byte compare <= 1 MiB, xxh3-128 of every byte above)", flush=True)
        print(format_table([]).splitlines()[0], flush=True)
        try:
            import uvloop
            results = uvloop.run(run(arguments, server))
        finally:
            rss = "?"
            try:
                with open(f"/proc/{server.pid}/status") as handle:
                    rss = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("VmHWM"))
            except (OSError, StopIteration):
                pass
            server.stop()
            log_tail = server.log_path.read_text(errors="replace")[-2000:]
    rows = [result.as_dict() for result in results]
    print()
    print(format_table(rows))
    print("units: ops (lists: keys); srv/gen µs/u = CPU-µs per unit of the server / this generator; "
          "ms/MiB = CPU-ms per MiB of payload; cores = CPU-s per wall-s; other = the rest of the box")
    print(f"server peak RSS: {rss}")
    failed = sum(row["errors"] for row in rows)
    print("\ngoals (quiet standard 2-core box, generator included):")
    goals = CLUSTER_GOALS if arguments.cluster else GOALS
    for row in rows:
        goal = goals.get(row["name"])
        if goal is None:
            continue
        minimum, unit = goal
        value = row["mib_per_s"] if unit == "MiB/s" else row["units_per_s"]
        verdict = "met" if value >= minimum else "MISSED"
        print(f"  {row['name']:<10} {value:>12,.0f} {unit:<7} goal >= {minimum:,}  {verdict}")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps({"machine": machine_line(), "results": rows}, indent=2))
    if failed:
        print(f"\n{failed} responses failed their checks; server log tail:\n{log_tail}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

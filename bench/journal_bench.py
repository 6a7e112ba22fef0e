"""Journal benchmark: commits/s through the real three-node chain, without HTTP (DESIGN §13).

Starts three `python -m journal.main` processes on 127.0.0.1 (fresh temp data dirs, each node
appending every batch with one fdatasync, MemoryApplier), then runs closed-loop writers in this
process, spread over CLIENTS JournalClients (one framed connection each to the head, as worker
processes would be), for each writer count. Reports per point: commits/s, entries per client
message and per head fsync batch, p50/p99 commit latency, and CPU µs per entry of every process
(node0 = head, node1, node2, and the load generator itself), from /proc/<pid>/stat; plus the machine.
A fresh cluster per point. Everything shares the machine's cores, as in MEASURED.md.

    .venv/bin/python -m bench.journal_bench [--writers 64,256] [--clients 4] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import uvloop

from journal.client import JournalClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def cpu_seconds(pid: int | str) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS          # utime + stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Chain:
    def __init__(self, directory: str, ack_wait_ms: int) -> None:
        self.directory = directory
        self.ports = {node: free_port() for node in range(3)}
        self.config = os.path.join(directory, "journal.toml")
        lines = ["[journal]", f"ack_wait_ms = {ack_wait_ms}", ""]
        for node, port in self.ports.items():
            lines += ["[[nodes]]", f"id = {node}", 'host = "127.0.0.1"', f"port = {port}",
                      f'data_dir = "{os.path.join(directory, f"node{node}")}"', ""]
        with open(self.config, "w") as file:
            file.write("\n".join(lines))
        self.processes: dict[int, subprocess.Popen] = {}

    def start(self) -> None:
        for node in self.ports:
            stderr = open(os.path.join(self.directory, f"node{node}.log"), "a")
            process = subprocess.Popen([sys.executable, "-m", "journal.main", "--node", str(node), "--config",
                                        self.config, "--log-level", "WARNING"],
                                       cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
            stderr.close()
            self.processes[node] = process
            line = process.stdout.readline()
            if not line.startswith("listening:"):
                raise RuntimeError(f"node {node} did not start: {line!r}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            process.stdout.close()

    @property
    def addresses(self) -> dict[int, tuple[str, int]]:
        return {node: ("127.0.0.1", port) for node, port in self.ports.items()}


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run_point(chain: Chain, writers: int, clients_count: int, seconds: float, warmup_s: float,
                    entry_bytes: int) -> dict:
    clients = [JournalClient(chain.addresses) for _ in range(clients_count)]
    latencies: list[float] = []
    measuring = False
    stop = False
    body = b"x" * max(0, entry_bytes - 40)

    async def writer(client: JournalClient, name: str) -> None:
        count = 0
        while not stop:
            count += 1
            request_id = f"{name}.{count}".encode()
            started = time.perf_counter()
            await client.commit(request_id, (count & 1023,), b"S" + request_id + b"\x00" + body)
            if measuring:
                latencies.append(time.perf_counter() - started)

    tasks = [asyncio.ensure_future(writer(clients[w % clients_count], f"w{w}")) for w in range(writers)]
    await asyncio.sleep(warmup_s)
    pids = {f"node{n}": p.pid for n, p in chain.processes.items()} | {"loadgen": "self"}
    status_before = await clients[0].status(0)
    messages_before = sum(c.messages_sent for c in clients)
    entries_before = sum(c.entries_sent for c in clients)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    measuring = True
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.perf_counter() - started
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    committed = len(latencies)
    status_after = await clients[0].status(0)
    messages = sum(c.messages_sent for c in clients) - messages_before
    entries = sum(c.entries_sent for c in clients) - entries_before
    stop = True
    await asyncio.gather(*tasks)
    for client in clients:
        await client.close()
    batches = status_after.persist_batches - status_before.persist_batches
    batched = status_after.persisted_entries - status_before.persisted_entries
    return {
        "writers": writers, "clients": clients_count, "commits_per_s": committed / elapsed,
        "entries_per_message": entries / max(1, messages), "entries_per_fsync": batched / max(1, batches),
        "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
        "cpu_us_per_entry": {name: (cpu_after[name] - cpu_before[name]) * 1e6 / max(1, committed) for name in pids},
        "cpu_cores": sum(cpu_after[n] - cpu_before[n] for n in pids) / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.journal_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--writers", default="64,256", help="writer counts, comma-separated (default 64,256)")
    parser.add_argument("--clients", type=int, default=4, help="journal clients (connections) to spread over")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--entry-bytes", type=int, default=300, help="payload bytes per entry (~300 in MEASURED)")
    parser.add_argument("--ack-wait-ms", type=int, default=1000)
    parser.add_argument("--dir", default=None, help="where the nodes' data dirs go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.clients < 1:
        parser.error("--clients must be at least 1")
    print(f"machine: {machine()}")
    print(f"three nodes on 127.0.0.1, each fdatasyncing every batch; {args.clients} client connections; "
          f"~{args.entry_bytes} B entries; {args.seconds:g} s per point after {args.warmup:g} s warm-up")
    results = []
    for writers in [int(w) for w in args.writers.split(",")]:
        directory = tempfile.mkdtemp(prefix="journal-bench-", dir=args.dir)
        chain = Chain(directory, args.ack_wait_ms)
        try:
            chain.start()
            result = uvloop.run(run_point(chain, writers, args.clients, args.seconds, args.warmup,
                                          args.entry_bytes))
        finally:
            chain.stop()
            shutil.rmtree(directory, ignore_errors=True)
        results.append(result)
        cpu = result["cpu_us_per_entry"]
        print(f"writers {writers:4d}: {result['commits_per_s']:9,.0f} commits/s  "
              f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
              f"entries/message {result['entries_per_message']:5.1f}  entries/fsync(head) "
              f"{result['entries_per_fsync']:5.1f}  cores busy {result['cpu_cores']:.2f}")
        print("    CPU µs per entry: " + "  ".join(f"{name} {value:5.1f}" for name, value in cpu.items())
              + f"  total {sum(cpu.values()):5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

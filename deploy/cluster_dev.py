"""`cairn dev`: the whole cluster on one machine — shardstores, metadata nodes, frontend workers.

Layout under the data dir:
    cairn.toml        users and limits (common/config.py), generated on first start
    cluster.toml      the cluster (journal/server.py for the metadata nodes,
                      common/layout.py for the shardstores and disks), rewritten at
                      each start with fresh loopback ports; disks keep their ids,
                      paths, domains and states (`cairn disk` edits them), node and
                      disk identities name the data, so data dirs carry over
    meta/<i>/         metadata node i: journal log, acceptor state, index RocksDB
    disks/<id>/       disk <id>: its shards (extents + RocksDB index)

Default layout: six disks d0..d5, RS 4+2, each disk its own failure domain, served
by two shardstore processes of three disks each (DESIGN §1's dev cluster); with
`process_per_disk` one shardstore process per disk, as production runs (a stuck or
killed disk stalls only its own). A copy of deploy/cluster.example.toml passed as
`cluster_file` replaces the generated file and is used as written.

Steps: write cluster.toml; start the shardstores, the three metadata nodes, the
maintenance process (reaper, sweep, repair) when this build has it, each ready
before the next; reserve the S3 port and start the frontend workers, each listening
on it with SO_REUSEPORT (`_reserve_port`); print endpoint and credentials; on SIGINT,
SIGTERM or SIGHUP (the terminal it ran in was closed) stop the workers and the
maintenance process, then (once they are gone) the rest (metadata nodes sync and
mark a clean stop). The supervisor restarts any process that dies, saying so.
`cairn dev` holds DATA_DIR/cairn.lock while it runs (deploy/cli.py), so a second
one on the same data dir is refused before it writes anything.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import socket
import sys
import tomllib
from pathlib import Path

from common.config import Config
from common.layout import IN, parse_layout
from deploy.supervisor import ProcessSpec, Supervisor

METADATA_NODES = 3
DEV_WORKERS = 2
DEV_DISKS = 6
DEV_STORE_PROCESSES = 2
DEV_EC = (4, 2)


class _Ports:
    """Free ports for one cluster file: each probe socket stays bound until all are
    chosen, so the kernel never hands out one port twice."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.probes: list[socket.socket] = []

    def __call__(self) -> int:
        probe = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        probe.bind((self.host, 0))
        self.probes.append(probe)
        return probe.getsockname()[1]

    def close(self) -> None:
        for probe in self.probes:
            probe.close()


def _quote(text: str) -> str:
    return json.dumps(text)   # a TOML basic string for the paths and names written here


def _previous_disks(path: Path) -> tuple[tuple[int, int], list[dict]] | None:
    """The EC parameters and disks (id, path, domain, state) of the last start, if any."""
    if not path.exists():
        return None
    with open(path, "rb") as file:
        layout = parse_layout(tomllib.load(file), str(path))
    if layout is None:
        return None
    disks = [dict(id=disk.id, path=disk.path, domain=disk.domain, state=disk.state)
             for disk in layout.disks(include_out=True)]
    return (layout.k, layout.m), disks


def write_cluster_toml(data_dir: Path, host: str = "127.0.0.1", *, process_per_disk: bool = False) -> Path:
    path = data_dir / "cluster.toml"
    previous = _previous_disks(path)
    if previous is None:
        (k, m) = DEV_EC
        disks = [dict(id=f"d{index}", path=str(data_dir / "disks" / f"d{index}"), domain=f"disk:d{index}", state=IN)
                 for index in range(DEV_DISKS)]
    else:
        (k, m), disks = previous
    next_port = _Ports(host)   # a port per call, distinct within this file
    lines = ["# Written by `cairn dev` at each start: node and disk ids name the data, ports are fresh.",
             "# `cairn disk add/remove --cluster THIS_FILE` edits the disks; they are kept across starts.",
             "[journal]", "ack_wait_ms = 1000", "resend_after_ms = 100", "read_wait_ms = 50", ""]
    for node in range(METADATA_NODES):
        directory = data_dir / "meta" / str(node)
        directory.mkdir(parents=True, exist_ok=True)
        lines += ["[[nodes]]", f"id = {node}", f'host = "{host}"', f"port = {next_port()}",
                  f"data_dir = {_quote(str(directory))}", ""]
    lines += ["[data]", f"ec_k = {k}", f"ec_m = {m}", ""]
    if process_per_disk:
        groups = [[disk] for disk in disks]
    else:
        size = -(-len(disks) // DEV_STORE_PROCESSES)
        groups = [disks[start:start + size] for start in range(0, len(disks), size)]
    for number, group in enumerate(groups):
        name = f"store-{group[0]['id']}" if process_per_disk else f"store-{number}"
        lines += ["[[shardstores]]", f"name = {_quote(name)}", f'host = "{host}"',
                  f'data_address = "{host}:{next_port()}"', f'grpc_address = "{host}:{next_port()}"', ""]
        for disk in group:
            lines += ["[[shardstores.disks]]", f"id = {_quote(disk['id'])}", f"path = {_quote(disk['path'])}",
                      f"domain = {_quote(disk['domain'])}", f"state = {_quote(disk['state'])}", ""]
    next_port.close()
    path.write_text("\n".join(lines))
    return path


def _store_specs(cluster: Path, limits_file: str | None = None) -> list[ProcessSpec]:
    with open(cluster, "rb") as file:
        layout = parse_layout(tomllib.load(file), str(cluster))
    if layout is None:
        return []
    specs = []
    for store in layout.stores:
        argv = [sys.executable, "-m", "shardstore.main", "--listen", store.grpc_address,
                "--data-listen", store.data_address]
        if limits_file is not None:
            argv += ["--limits", str(limits_file)]       # the workers' [limits]: both sides agree
        for disk in store.disks:
            Path(disk.path).mkdir(parents=True, exist_ok=True)
            argv += ["--disk", f"{disk.id}={disk.path}"]
        specs.append(ProcessSpec(f"shardstore-{store.name}", argv))
    return specs


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """The S3 port, held for this cluster's workers (DESIGN §1: SO_REUSEPORT).

    Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads new
    connections evenly over them. (One inherited listening socket let the first
    worker to wake accept nearly every connection of a burst — measured: one worker
    busy, the other idle, 64 KiB PUTs ~15 % slower and GETs ~12 % — even with libuv's
    UV_TCP_SINGLE_ACCEPT.) The price: while every worker is down at once, connections
    are refused rather than queued, and a dying worker's not yet accepted connections
    are reset; clients retry both. The supervisor first binds the port without
    SO_REUSEPORT, so a port another server listens on fails here with a clear message,
    then holds it with a bound, never-listening SO_REUSEPORT socket that this
    cluster's workers join; another `cairn dev` on the port fails its first bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # TIME_WAIT of an earlier run is fine
        probe.bind((host, port))
        port = probe.getsockname()[1]
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    return holder, port


async def _follow_layout(group: Supervisor, cluster: Path, limits_file: str, interval_s: float = 1.0) -> None:
    """`cairn disk add/remove` edits the layout: start a new shardstore, restart one whose
    disks changed (the workers and repair reload the file themselves)."""
    seen = cluster.stat().st_mtime_ns
    while True:
        await asyncio.sleep(interval_s)
        try:
            mtime = cluster.stat().st_mtime_ns
            if mtime == seen:
                continue
            seen = mtime
            specs = _store_specs(cluster, limits_file)
        except (OSError, ValueError, KeyError, tomllib.TOMLDecodeError) as error:
            print(f"cairn dev: {cluster} changed but cannot be used: {error}; keeping the running layout",
                  file=sys.stderr, flush=True)
            continue
        for spec in specs:
            try:
                await group.update(spec)
            except Exception as error:  # noqa: BLE001 - a bad new store must not stop the cluster
                print(f"cairn dev: could not start {spec.name}: {error}", file=sys.stderr, flush=True)


async def run_cluster_dev(config: Config, *, host: str, port: int, data_dir: Path, tls_cert: str | None,
                          tls_key: str | None, workers: int = DEV_WORKERS, process_per_disk: bool = False,
                          cluster_file: str | None = None) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster = Path(cluster_file) if cluster_file else write_cluster_toml(data_dir, process_per_disk=process_per_disk)
    listener, port = _reserve_port(host, port)
    python = sys.executable
    specs = _store_specs(cluster, str(config.path))
    stores = len(specs)
    specs += [ProcessSpec(f"metanode-{node}", [python, "-m", "index.metanode", "--node", str(node),
                                               "--config", str(cluster), "--limits", str(config.path)])
              for node in range(METADATA_NODES)]
    if stores and importlib.util.find_spec("index.maintain") is not None:
        specs.append(ProcessSpec("maintain", [python, "-m", "index.maintain", "--config", config.path,
                                              "--cluster", str(cluster)]))
    worker_argv = [python, "-m", "frontend.worker", "--config", config.path, "--cluster", str(cluster),
                   "--data-dir", str(data_dir), "--host", host, "--port", str(port)]
    if tls_cert:
        worker_argv += ["--tls-cert", tls_cert, "--tls-key", tls_key]
    specs += [ProcessSpec(f"frontend-{index}", worker_argv) for index in range(workers)]
    group = Supervisor(specs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(number, stop.set)
    try:
        ready = await group.start()
    except Exception as error:
        await group.stop()
        listener.close()
        print(f"cairn dev: the cluster did not start: {error}", file=sys.stderr)
        return 1
    user = config.users[0]
    print(f"endpoint: {ready['frontend-0']}")
    print(f"access key: {user.access_key}")
    print(f"secret key: {user.secret_key}")
    print(f"region: {config.region}")
    print(f"config: {config.path}")
    bytes_where = (f"object bytes erasure-coded over the disks of {stores} shardstore processes ({cluster})"
                   if stores else f"object bytes in {data_dir / 'blobs'}")
    print(f"storage: metadata cluster of {METADATA_NODES} nodes (fsynced journal, RocksDB index) under {data_dir}; "
          f"{bytes_where}; {workers} frontend workers")
    print("Stop with Ctrl-C.")
    sys.stdout.flush()
    follower = asyncio.ensure_future(_follow_layout(group, cluster, str(config.path))) if stores else None
    await stop.wait()
    if follower is not None:
        follower.cancel()
    # The clients first (workers finish their requests, maintenance its pass), so
    # none of them sees a store or metadata node vanish under it.
    await group.stop(first=[spec.name for spec in specs if spec.name.startswith("frontend-") or spec.name == "maintain"])
    listener.close()
    print("stopped", file=sys.stderr)
    return 0

"""`cairn dev` on the metadata cluster: three metadata nodes and frontend workers on one machine.

Layout under the data dir:
    cairn.toml        users and limits (common/config.py), generated on first start
    cluster.toml      the metadata cluster (journal/server.py), rewritten at each start
                      with fresh loopback ports; node identity is its id, so data
                      dirs carry over
    meta/<i>/         metadata node i: journal log, acceptor state, index RocksDB
    blobs/            the file-per-blob store shared by the workers (until the
                      erasure-coded data path lands)

Steps: write cluster.toml; start the three metadata nodes, each ready before the
next; bind the S3 port and start the frontend workers, which all accept on that one
listening socket; print endpoint and
credentials; on SIGINT/SIGTERM stop the workers, then the nodes (each syncs and
marks a clean stop, so the next start resumes without an epoch change). The
supervisor restarts any process that dies, saying so.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

from common.config import Config
from deploy.supervisor import ProcessSpec, Supervisor

METADATA_NODES = 3
DEV_WORKERS = 2


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def write_cluster_toml(data_dir: Path, host: str = "127.0.0.1") -> Path:
    lines = ["# Written by `cairn dev` at each start; node ids name the data, ports are fresh.",
             "[journal]", "ack_wait_ms = 1000", "resend_after_ms = 100", "read_wait_ms = 50", ""]
    for node in range(METADATA_NODES):
        directory = data_dir / "meta" / str(node)
        directory.mkdir(parents=True, exist_ok=True)
        lines += ["[[nodes]]", f"id = {node}", f'host = "{host}"', f"port = {_free_port(host)}",
                  f'data_dir = "{directory}"', ""]
    path = data_dir / "cluster.toml"
    path.write_text("\n".join(lines))
    return path


async def run_cluster_dev(config: Config, *, host: str, port: int, data_dir: Path, tls_cert: str | None,
                          tls_key: str | None, workers: int = DEV_WORKERS) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster = write_cluster_toml(data_dir)
    # The supervisor binds the S3 port itself and hands the listening socket to every
    # worker: a port in use fails here with a clear message, and two clusters can
    # never share a port (as SO_REUSEPORT would let them).
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    listener.set_inheritable(True)
    port = listener.getsockname()[1]
    python = sys.executable
    specs = [ProcessSpec(f"metanode-{node}", [python, "-m", "index.metanode", "--node", str(node),
                                              "--config", str(cluster)])
             for node in range(METADATA_NODES)]
    worker_argv = [python, "-m", "frontend.worker", "--config", config.path, "--cluster", str(cluster),
                   "--data-dir", str(data_dir), "--host", host, "--port", str(port), "--fd", str(listener.fileno())]
    if tls_cert:
        worker_argv += ["--tls-cert", tls_cert, "--tls-key", tls_key]
    specs += [ProcessSpec(f"frontend-{index}", worker_argv, pass_fds=(listener.fileno(),)) for index in range(workers)]
    group = Supervisor(specs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
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
    print(f"storage: metadata cluster of {METADATA_NODES} nodes (fsynced journal, RocksDB index) under {data_dir}; "
          f"object bytes in {data_dir / 'blobs'}; {workers} frontend workers")
    print("Stop with Ctrl-C.")
    sys.stdout.flush()
    await stop.wait()
    await group.stop()
    listener.close()
    print("stopped", file=sys.stderr)
    return 0

"""The `cairn` command: one entry point for every role.

    cairn dev          start a local cluster and print its endpoint and credentials
    cairn metanode     run one metadata node (journal, index replica, witness)
    cairn shardstore   run one shardstore process: a node per disk (--disk ID=PATH ...)
    cairn maintain     run the reaper, the orphan sweep and repair for a cluster
    cairn status       disks, heat, fill, metadata nodes, objects below full redundancy
    cairn disk         remove a disk for good, or add one (edits the cluster TOML)

Every subcommand has --help. Errors say what to do next and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from common import config as configuration
from deploy import admin


LOCK_FILE = "cairn.lock"


def lock_data_dir(data_dir: Path) -> int | None:
    """Hold DATA_DIR/cairn.lock (flock) for this process's life, and return its fd, or
    None when another `cairn dev` holds it. A second start on the same data dir would
    rewrite cluster.toml under the running cluster (fresh ports, which its processes
    follow) and then fail on the disks' and nodes' own locks; refused here, before
    anything is written. The kernel drops the lock when the holder dies, SIGKILL too."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder(data_dir: Path) -> str:
    try:
        pid = (data_dir / LOCK_FILE).read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _dev(arguments: argparse.Namespace) -> int:
    data_dir = Path(arguments.data_dir).expanduser().resolve()
    if lock_data_dir(data_dir) is None:
        print(f"cairn dev: {data_dir} is in use by another cairn dev{_holder(data_dir)}. Stop that one first "
              "(Ctrl-C in its terminal), or start this one with another --data-dir.", file=sys.stderr)
        return 2
    try:
        if arguments.config:
            config = configuration.load(arguments.config)
        else:
            path = data_dir / "cairn.toml"
            config = configuration.load(path) if path.exists() else configuration.write_default(path)
    except configuration.ConfigError as error:
        print(f"cairn dev: {error}", file=sys.stderr)
        return 2
    if bool(arguments.tls_cert) != bool(arguments.tls_key):
        print("cairn dev: --tls-cert and --tls-key go together: give both for HTTPS, or neither", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    extra = {}
    if arguments.memory:
        from deploy.local import run_dev as runner  # deploy may import spec/ for the in-memory mode
    else:
        from deploy.cluster_dev import run_cluster_dev as runner
        extra = dict(process_per_disk=arguments.process_per_disk, cluster_file=arguments.cluster)

    try:
        return run_on_uvloop(runner(config, host=arguments.host, port=arguments.port, data_dir=data_dir,
                                    tls_cert=arguments.tls_cert, tls_key=arguments.tls_key, **extra))
    except OSError as error:
        print(f"cairn dev: cannot listen on {arguments.host}:{arguments.port}: {error.strerror or error}. "
              "Pick another port with --port N (0 picks a free one).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def run_on_uvloop(coroutine):
    """Every event loop in Cairn is uvloop."""
    import uvloop

    return uvloop.run(coroutine)


def _shardstore(arguments: argparse.Namespace, rest: list[str]) -> int:
    from shardstore.main import main as shardstore_main

    return shardstore_main(rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cairn", description="Cairn: a strongly consistent, S3-compatible object store.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    dev = commands.add_parser(
        "dev", help="start a local server and print its endpoint and credentials",
        description=(
            "Start a local Cairn S3 server in the foreground. Once it answers requests it prints "
            "'endpoint: URL', 'access key: KEY' and 'secret key: KEY', one per line. "
            "It runs three metadata nodes (replicated, fsynced journal and RocksDB index), six disks "
            "(directories under the data dir, Reed-Solomon 4+2) in shardstore processes, the maintenance "
            "process (reaper, orphan sweep, repair) and two frontend workers, all supervised. "
            "Data survives a restart with the same --data-dir. Users come from the config file. "
            "Ctrl-C or SIGTERM stops it."
        ),
    )
    dev.add_argument("--port", type=int, default=9000, help="TCP port to listen on (default 9000; 0 picks a free port)")
    dev.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dev.add_argument("--data-dir", default=admin.DEFAULT_DATA_DIR,
                     help=f"directory for the server's files (default {admin.DEFAULT_DATA_DIR})")
    dev.add_argument("--config", help="TOML config with [[users]]; default: DATA_DIR/cairn.toml, generated on first start")
    dev.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (needs --tls-key)")
    dev.add_argument("--tls-key", help="PEM private key for --tls-cert")
    dev.add_argument("--process-per-disk", action="store_true",
                     help="run one shardstore process per disk, as production does (default: the six dev disks "
                          "share two processes)")
    dev.add_argument("--cluster", metavar="FILE",
                     help="use this cluster TOML as written (start from a copy of deploy/cluster.example.toml) "
                          "instead of generating DATA_DIR/cluster.toml")
    dev.add_argument("--memory", action="store_true",
                     help="run the single-process server over the in-memory reference stores instead of the "
                          "metadata cluster (nothing survives a stop; for tests and benchmarks of the S3 layer)")
    commands.add_parser(
        "metanode", help="run one metadata node (journal, index replica, witness)", add_help=False,
        description="Run one metadata node (see `cairn metanode --help`).",
    )
    commands.add_parser(
        "shardstore", help="run one shardstore process: a node per disk (--disk ID=PATH ...)", add_help=False,
        description="Run one shardstore process (see `cairn shardstore --help`).",
    )
    commands.add_parser(
        "maintain", help="run the reaper, the orphan sweep and repair for a cluster", add_help=False,
        description="Run the maintenance process (see `cairn maintain --help`).",
    )
    admin.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "shardstore":
        return _shardstore(argparse.Namespace(), argv[1:])
    if argv and argv[0] == "metanode":
        from index.metanode import main as metanode_main

        return metanode_main(argv[1:])
    if argv and argv[0] == "maintain":
        from index.maintain import main as maintain_main

        return maintain_main(argv[1:])
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command == "dev":
        return _dev(arguments)
    if arguments.command in ("status", "disk"):
        return admin.run(arguments)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""`cairn shardstore --disk ID=PATH ... --listen HOST:PORT [--data-listen HOST:PORT]`.

One shardstore process: a `Node` per disk (DESIGN §9; its own extents in
PATH/extents, RocksDB index in PATH/index, index flusher, scrubber and compactor),
served over gRPC on --listen (control and tools) and, with --data-listen, over the
framed data protocol (shardstore/framed.py; what frontends and repair use). Every
request names its disk id; a bare `--disk PATH` is disk "0". --limits takes the
[limits] of the frontends' TOML.

Steps: open (recover) every node, one after the other; start both listeners
(port 0 picks a free port); print the bound addresses once serving, flushed —
`listening: grpc=HOST:PORT data=HOST:PORT`, or `listening: HOST:PORT` (the gRPC
one) without --data-listen, as before; run each node's flusher, scrubber and
compactor (unless --no-scrub / --no-compact); on SIGTERM or SIGINT stop accepting,
finish in-flight gRPC calls (2 s grace), cut off unfinished framed streams, flush
every node and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
import time

from common import config as configuration
from common.limits import DEFAULT_LIMITS, Limits
from common.memory import keep_freed_memory
from shardstore.disk import RealDisk
from shardstore.framed import Disks, FramedServer
from shardstore.node import Node
from shardstore.server import serve

_DISK_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairn shardstore",
        description="Run one Cairn shardstore process: one node per disk (its shards in extents plus a RocksDB "
                    "index), served over gRPC (PutShard, PutShards, GetShard, GetShards, DeleteShard, ListShards, "
                    "Stat, Scrub, Compact) and over the framed data protocol (PUT, PUT_MANY, streamed PUT, GET, "
                    "GET_MANY, DELETE_MANY, LIST, STAT, CORRUPT). Prints 'listening: ...' once serving.")
    parser.add_argument("--disk", required=True, action="append", metavar="ID=PATH",
                        help="a disk: its id (letters, digits, _ . : -) and a directory on it (created if "
                             "missing; holds extents/ and index/). Repeat for more disks; a bare PATH is disk '0'.")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT",
                        help="address to serve gRPC on, e.g. 127.0.0.1:7000 (port 0 picks a free one)")
    parser.add_argument("--data-listen", metavar="HOST:PORT",
                        help="address to serve the framed data protocol on, e.g. 127.0.0.1:7001 (port 0 picks one)")
    parser.add_argument("--limits", metavar="FILE",
                        help="the users/limits TOML whose [limits] the nodes use (shard and extent sizes, "
                             "scrub rate, ...); the frontends' file, so both sides agree (default: built-in limits)")
    parser.add_argument("--no-scrub", action="store_true", help="do not run the background scrubbers")
    parser.add_argument("--no-compact", action="store_true",
                        help="do not run the background compactors (a gRPC Compact call still compacts)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def parse_disks(values: list[str]) -> dict[str, str]:
    """`ID=PATH` (or a bare PATH, disk "0") -> {id: path}; ValueError says what is wrong."""
    disks: dict[str, str] = {}
    for value in values:
        disk_id, separator, path = value.partition("=")
        if not separator:
            disk_id, path = "0", value
        if not _DISK_ID.fullmatch(disk_id):
            raise ValueError(f"bad disk id {disk_id!r} in --disk {value!r}: use letters, digits, _ . : - (1-64)")
        if not path:
            raise ValueError(f"--disk {value!r} names no directory")
        if disk_id in disks:
            raise ValueError(f"disk id {disk_id!r} given twice")
        if os.path.realpath(path) in {os.path.realpath(other) for other in disks.values()}:
            raise ValueError(f"directory {path!r} given for two disks")
        disks[disk_id] = path
    return disks


def _split_address(address: str) -> tuple[str, int]:
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def _run(disk_paths: dict[str, str], listen: str, data_listen: str | None, scrub: bool,
               limits: Limits = DEFAULT_LIMITS, compact: bool = True) -> int:
    log = logging.getLogger("cairn.shardstore")
    nodes: dict[str, Node] = {}
    try:
        for disk_id, path in disk_paths.items():
            started = time.monotonic()
            node = await Node.open(RealDisk(os.path.join(path, "extents")), os.path.join(path, "index"), limits)
            nodes[disk_id] = node
            log.info("Recovered disk=%s path=%s seq=%d extents=%d torn_tails=%d seconds=%.3f", disk_id, path,
                     node.seq, len(node.extent_sizes), node.recovered_torn_tails, time.monotonic() - started)
        disks = Disks(nodes)
        server, grpc_port = await serve(disks, listen)
        framed = None
        addresses = f"{_split_address(listen)[0]}:{grpc_port}"
        if data_listen is not None:
            host, port = _split_address(data_listen)
            framed = await FramedServer(disks).start(host, port)
            addresses = f"grpc={addresses} data={host}:{framed.port}"
        for node in nodes.values():
            node.spawn(node.flush_now_and_then())
            if scrub:
                node.spawn(node.scrub_forever())
            if compact:
                node.spawn(node.compact_forever())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"listening: {addresses}", flush=True)
        await stop.wait()
        await server.stop(grace=2)
        if framed is not None:
            await framed.close()
    finally:
        for node in nodes.values():
            if node.failed is None:
                await node.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        disks = parse_disks(arguments.disk)
        _split_address(arguments.listen)
        if arguments.data_listen is not None:
            _split_address(arguments.data_listen)
    except ValueError as error:
        parser.error(str(error))
    try:
        limits = configuration.load_limits(arguments.limits)
    except configuration.ConfigError as error:
        parser.error(str(error))
    logging.basicConfig(level=arguments.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    keep_freed_memory()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_run(disks, arguments.listen, arguments.data_listen, not arguments.no_scrub, limits,
                            not arguments.no_compact))


if __name__ == "__main__":
    sys.exit(main())

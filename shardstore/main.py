"""`python -m shardstore.main --disk PATH --listen HOST:PORT`: one shardstore node.

Steps: open (recover) the node on PATH (extents in PATH/extents, the index in
PATH/index), serve gRPC on HOST:PORT, print `listening: HOST:PORT` (flushed) once
serving, run the index flusher and the scrubber in the background, and on SIGTERM
or SIGINT stop accepting, finish in-flight calls (2 s grace), flush and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from common.limits import DEFAULT_LIMITS
from shardstore.disk import RealDisk
from shardstore.node import Node
from shardstore.server import serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shardstore.main",
        description="Run one Cairn shardstore node: the shards of one disk, served over gRPC "
                    "(PutShard, PutShards, GetShard, DeleteShard, ListShards, Stat, Scrub, Compact).")
    parser.add_argument("--disk", required=True, metavar="PATH",
                        help="directory on the disk to use (created if missing); holds extents/ and index/")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT",
                        help="address to serve gRPC on, e.g. 127.0.0.1:7000")
    parser.add_argument("--no-scrub", action="store_true", help="do not run the background scrubber")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


async def _run(disk_path: str, listen: str, scrub: bool) -> int:
    import time
    started = time.monotonic()
    node = await Node.open(RealDisk(os.path.join(disk_path, "extents")), os.path.join(disk_path, "index"),
                           DEFAULT_LIMITS)
    logging.getLogger("cairn.shardstore").info(
        "Recovered disk=%s seq=%d extents=%d torn_tails=%d seconds=%.3f", disk_path, node.seq,
        len(node.extent_sizes), node.recovered_torn_tails, time.monotonic() - started)
    server = await serve(node, listen)
    node.spawn(node.flush_now_and_then())
    if scrub:
        node.spawn(node.scrub_forever())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening: {listen}", flush=True)
    await stop.wait()
    await server.stop(grace=2)
    await node.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=arguments.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_run(arguments.disk, arguments.listen, not arguments.no_scrub))


if __name__ == "__main__":
    sys.exit(main())

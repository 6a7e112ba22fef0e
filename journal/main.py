"""`python -m journal.main --node I --config FILE`: run journal node I of the cluster in FILE.

Prints `listening: HOST:PORT` once it serves (the framed protocol, common/framing.py);
SIGTERM or SIGINT stops it cleanly (the log synced, connections closed, exit code 0).
The config is the journal TOML described in journal/server.py (load_config).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import uvloop

from journal.server import JournalNode, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m journal.main", description=__doc__.splitlines()[0])
    parser.add_argument("--node", type=int, required=True, help="this node's id in the config's [[nodes]]")
    parser.add_argument("--config", required=True, help="the journal cluster TOML (nodes, data dirs, limits)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


async def serve(node_id: int, config_path: str, applier_for=None) -> None:
    """Run node `node_id` until SIGTERM/SIGINT. `applier_for(cluster)` makes the
    node's Applier (the index replica, for a metadata node); default the toy one."""
    cluster = load_config(config_path)
    applier = applier_for(cluster) if applier_for is not None else None
    node = JournalNode(cluster, node_id, applier=applier)
    server = await node.start()
    print(f"listening: {server.host}:{server.port}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    logging.getLogger("cairn.journal").info("JournalNodeStop node=%d", node_id)
    await node.stop()
    close = getattr(node.applier, "close", None)
    if close is not None:
        close()                      # the replica synced before the clean-stop mark
    node.mark_clean()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    profile_path = os.environ.get("CAIRN_JOURNAL_PROFILE")     # a cProfile dump of this node, for tuning
    if profile_path:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            uvloop.run(serve(args.node, args.config))
        finally:
            profiler.disable()
            profiler.dump_stats(f"{profile_path}.node{args.node}")
        return 0
    uvloop.run(serve(args.node, args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())

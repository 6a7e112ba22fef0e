"""A metadata node (DESIGN §1): journal node i, index replica i and witness replica i in one process.

`cairn metanode --node I --config FILE` runs the journal node of journal/server.py
with the index replica (index/replica.py) as its Applier: committed entries are
applied into RocksDB from this node's own log, reads are answered from one
snapshot after the core's witness check (journal/replica.py step 11), and the
replica's durable applied seq bounds journal truncation.

The config is the journal TOML (journal/server.py `load_config`); each node keeps
its RocksDB under `<data_dir>/index`. `--limits` names the users/limits TOML
(common/config.py) whose MAX_WRITE_AGE and DEDUP_WINDOW a new replica writes into the
partition's `M` record (DESIGN §15): every node of a cluster must be given the same
file, as `cairn dev` does; an existing replica keeps the values it started with.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from common import config as configuration
from common.limits import DEFAULT_LIMITS, Limits
from common.memory import keep_freed_memory
from index.replica import IndexReplica
from journal.main import serve

SYNC_INTERVAL_S = 1.0


class IndexApplier:
    """The journal's Applier seam over an IndexReplica."""

    def __init__(self, path: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.path = path
        self.limits = limits
        self.replica: IndexReplica | None = None
        self._last_sync = 0.0

    def open(self) -> int:
        self.replica = IndexReplica(self.path, limits=self.limits)
        return self.replica.applied_seq

    def apply(self, entries) -> list[bytes]:
        return self.replica.apply(entries)

    def durable_applied_seq(self) -> int:
        now = time.monotonic()
        if now - self._last_sync >= SYNC_INTERVAL_S:
            self._last_sync = now
            self.replica.sync()
        return self.replica.durable_applied_seq

    def read(self, key: bytes) -> bytes | None:
        return None

    def answer(self, request: bytes) -> bytes:
        return self.replica.answer(request)

    def close(self) -> None:
        if self.replica is not None:
            self.replica.sync()
            self.replica.close()


def _index_applier(node_id: int, limits: Limits = DEFAULT_LIMITS):
    def make(cluster) -> IndexApplier:
        return IndexApplier(os.path.join(cluster.node(node_id).data_dir, "index"), limits)
    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cairn metanode", description=(
        "Run metadata node I: journal node, index replica and witness of the cluster in FILE. "
        "Prints 'listening: HOST:PORT' once it serves; SIGTERM stops it cleanly."))
    parser.add_argument("--node", type=int, required=True, help="this node's id in the config's [[nodes]]")
    parser.add_argument("--config", required=True, help="the metadata cluster TOML (nodes, data dirs, timings)")
    parser.add_argument("--limits", metavar="FILE",
                        help="the users/limits TOML whose [limits] a new replica's apply uses (MAX_WRITE_AGE, "
                             "DEDUP_WINDOW); the same file on every node (default: built-in limits)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    arguments = parser.parse_args(argv)
    try:
        limits = configuration.load_limits(arguments.limits)
    except configuration.ConfigError as error:
        parser.error(str(error))
    logging.basicConfig(level=arguments.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    import uvloop

    keep_freed_memory()
    uvloop.run(serve(arguments.node, arguments.config, _index_applier(arguments.node, limits)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

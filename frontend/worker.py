"""One frontend worker process on the metadata cluster: `python -m frontend.worker`.

Several workers share one port (each its own SO_REUSEPORT socket, as `cairn dev` starts them; or one
inherited listening socket with --fd) and nothing else but the cluster:
each has its own journal client, read connections and record cache
(index/client.py). Bytes above INLINE_MAX go to the shardstores the cluster TOML's
data layout names (common/layout.py), erasure-coded or copied by
shardstore/blobstore.py with this worker's own connections and disk
monitor; a cluster TOML without shardstores keeps them in the file-per-blob store
under the data dir instead. Prints `listening: URL` once it answers requests;
SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import tomllib

from common import config as configuration
from common.layout import DataLayout, LayoutWatcher, parse_layout
from common.memory import keep_freed_memory
from common.limits import Limits
from frontend.dataplane.file_blobs import FileBlobStore
from shardstore.blobstore import ShardBlobStore, disk_specs, layout_limits
from frontend.server import build_app, serve
from index.client import ClusterMetadataStore
from index.transport import JournalTransport
from journal.server import load_config


def _clock_us() -> int:
    return time.time_ns() // 1000


class LayoutFollower:
    """The cluster BlobStore over the layout's disks, kept in step with the layout file:
    one ShardClient per shardstore process (by data address), each disk in its
    failure domain, EC parameters from the layout; disks added or marked out by
    `cairn disk` reach the store within a second."""

    def __init__(self, path: str, layout: DataLayout, limits: Limits) -> None:

        self.path = path
        self.watcher = LayoutWatcher(path)
        self.limits = layout_limits(layout, limits)
        self.clients: dict[str, object] = {}          # data address -> ShardClient, kept across reloads
        self.blobs = ShardBlobStore(self._disks(layout), limits=self.limits)
        self._task: asyncio.Task | None = None

    def _disks(self, layout: DataLayout) -> dict:
        return disk_specs(layout, self.limits, self.clients)

    async def start(self) -> None:
        self.blobs.set_layout(self._disks(self.watcher.layout),
                              [disk.id for disk in self.watcher.layout.disks(include_out=True) if disk.state != "in"])
        await self.blobs.start()
        self._task = asyncio.ensure_future(self._follow())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.watcher.poll() and self.watcher.layout is not None:
                layout = self.watcher.layout
                self.blobs.set_layout(self._disks(layout),
                                      [disk.id for disk in layout.disks(include_out=True) if disk.state != "in"])
            elif self.watcher.error:
                logging.getLogger("cairn.frontend").warning("LayoutUnusable %s", self.watcher.error)
                self.watcher.error = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.blobs.close()


async def run(arguments: argparse.Namespace) -> int:
    config = configuration.load(arguments.config)
    cluster = load_config(arguments.cluster)
    with open(arguments.cluster, "rb") as file:
        layout = parse_layout(tomllib.load(file), arguments.cluster)
    nodes = {node.id: (node.host, node.port) for node in cluster.nodes}
    transport = JournalTransport(nodes, commit_deadline_s=config.limits.COMMIT_DEADLINE_MS / 1000)
    meta = ClusterMetadataStore(transport, limits=config.limits, clock_us=_clock_us)
    follower = None
    if layout is not None:
        follower = LayoutFollower(arguments.cluster, layout, config.limits)
        await follower.start()
        blobs = follower.blobs
    else:
        blobs = FileBlobStore(arguments.data_dir)
    app = build_app(config, meta, blobs, _clock_us)

    def ready(endpoint: str) -> None:
        print(f"listening: {endpoint}", flush=True)

    try:
        await serve(app, host=arguments.host, port=arguments.port, tls_cert=arguments.tls_cert,
                    tls_key=arguments.tls_key, on_ready=ready, reuse_port=arguments.fd is None,
                    listen_fd=arguments.fd)
    finally:
        await meta.close()
        await (follower.close() if follower is not None else blobs.close())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frontend.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the users/limits TOML (common/config.py)")
    parser.add_argument("--cluster", required=True, help="the metadata cluster TOML (journal/server.py)")
    parser.add_argument("--data-dir", required=True, help="where the file-per-blob store keeps bytes")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fd", type=int, help="accept on this inherited listening socket (from `cairn dev`) "
                                                  "instead of binding --port with SO_REUSEPORT")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    import uvloop

    keep_freed_memory()
    return uvloop.run(run(arguments))


if __name__ == "__main__":
    sys.exit(main())

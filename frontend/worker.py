"""One frontend worker process on the metadata cluster: `python -m frontend.worker`.

Several workers share one port (one inherited listening socket, or SO_REUSEPORT) and nothing else but the cluster:
each has its own journal client, read connections and record cache
(index/client.py). Bytes above INLINE_MAX go to the shardstores the cluster TOML's
data layout names (common/layout.py), erasure-coded or copied by
frontend/dataplane/shard_blobs.py with this worker's own connections and disk
monitor; a cluster TOML without shardstores keeps them in the file-per-blob store
under the data dir instead. Prints `listening: URL` once it answers requests;
SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import tomllib

from common import config as configuration
from common.layout import DataLayout, parse_layout
from common.limits import Limits
from frontend.dataplane.file_blobs import FileBlobStore
from frontend.server import build_app, serve
from index.client import ClusterMetadataStore
from index.transport import JournalTransport
from journal.server import load_config


def _clock_us() -> int:
    return time.time_ns() // 1000


def shard_blob_store(layout: DataLayout, limits: Limits):
    """The cluster BlobStore over the layout's disks: one ShardClient per shardstore
    process, each disk in its failure domain; EC parameters from the layout."""
    from frontend.dataplane.shard_blobs import DiskSpec, ShardBlobStore
    from shardstore.client import ShardClient

    limits = dataclasses.replace(limits, EC_K=layout.k, EC_M=layout.m)
    clients = {store.name: ShardClient(store.data_address, limits=limits) for store in layout.stores}
    disks = {disk.id: DiskSpec(clients[disk.store], disk.domain) for disk in layout.disks()}
    return ShardBlobStore(disks, limits=limits)


async def run(arguments: argparse.Namespace) -> int:
    config = configuration.load(arguments.config)
    cluster = load_config(arguments.cluster)
    with open(arguments.cluster, "rb") as file:
        layout = parse_layout(tomllib.load(file), arguments.cluster)
    nodes = {node.id: (node.host, node.port) for node in cluster.nodes}
    transport = JournalTransport(nodes, commit_deadline_s=config.limits.COMMIT_DEADLINE_MS / 1000)
    meta = ClusterMetadataStore(transport, limits=config.limits, clock_us=_clock_us)
    if layout is not None:
        blobs = shard_blob_store(layout, config.limits)
        await blobs.start()
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
        await blobs.close()
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

    return uvloop.run(run(arguments))


if __name__ == "__main__":
    sys.exit(main())

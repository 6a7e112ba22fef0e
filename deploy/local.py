"""`cairn dev --memory`: the single-process server over the in-memory reference stores.

The S3 frontend in one process over spec/'s in-memory MetadataStore and BlobStore
(DESIGN §10: only tests and deploy/ import spec/). Nothing survives a stop. It
isolates the S3 layer for tests and benchmarks (bench/s3_bench.py's default); the
default `cairn dev` runs the metadata cluster (deploy/cluster_dev.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common.config import Config
from frontend.server import build_app, serve
from spec.blob_model import InMemoryBlobStore
from spec.metadata_model import InMemoryMetadataStore

DEV_REAP_DELAY_S = 60.0
"""In memory, displaced bytes are kept only as long as the longest GET needs."""


def _clock_us() -> int:
    return time.time_ns() // 1000


async def run_dev(config: Config, *, host: str, port: int, data_dir: Path, tls_cert: str | None, tls_key: str | None) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    blobs = InMemoryBlobStore()
    meta = InMemoryMetadataStore(blobs_delete=blobs.delete, limits=config.limits, clock_us=_clock_us,
                                 reap_delay_s=DEV_REAP_DELAY_S)
    app = build_app(config, meta, blobs, _clock_us)
    user = config.users[0]

    def ready(endpoint: str) -> None:
        print(f"endpoint: {endpoint}")
        print(f"access key: {user.access_key}")
        print(f"secret key: {user.secret_key}")
        print(f"region: {config.region}")
        print(f"config: {config.path}")
        print("storage: in memory, single process (objects are lost when this server stops)")
        print("Stop with Ctrl-C.")
        sys.stdout.flush()

    try:
        await serve(app, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, on_ready=ready)
    finally:
        await meta.close()
        await blobs.close()
    print("stopped", file=sys.stderr)
    return 0

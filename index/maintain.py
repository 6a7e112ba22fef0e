"""The maintenance process (DESIGN §14 "First version"): `python -m index.maintain --config CAIRN_TOML --cluster CLUSTER_TOML`.

Runs the reaper (index/reaper.py), the orphan sweep (index/sweep.py) and repair
(index/repair.py) as three loops in one supervised process, without leases:
safety never rests on one (`Reaped` applies as a max, deleting a missing shard is
OK, the sweep is fenced by the log, repair's update is a CAS).

Steps:
1. Load the users/limits TOML (common/config.py) and the cluster TOML: its
   `[[nodes]]` give the ClusterMetadataStore (index/transport.py, as a frontend
   worker builds it), its `[[shardstores]]` the data layout (common/layout.py).
2. Build a ShardBlobStore over every disk of the layout, `out` ones included (the
   reaper and repair delete on them while they are reachable; repair never places
   on them), and run its first Stat round.
3. Print `listening: maintain` (the supervisor's readiness line), then run each loop
   every REAP_INTERVAL_MS, SWEEP_INTERVAL_MS, REPAIR_INTERVAL_MS (common/limits.py);
   a failed pass is logged and retried at the next interval.
4. Every second, reload the layout if the file changed (`cairn disk add/remove`):
   repair sees new `out` states at once; a changed set of disks gets a new
   BlobStore, the old one closed once no pass uses it.
5. SIGTERM or SIGINT: finish no new pass, cancel the running ones (each is safe to
   cut anywhere: progress is only what was committed), close the stores, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

from common import config as configuration
from common.layout import DataLayout, LayoutWatcher
from common.limits import Limits
from common.memory import keep_freed_memory
from shardstore.blobstore import ShardBlobStore, disk_specs, layout_limits
from index.client import ClusterMetadataStore
from index.reaper import Reaper
from index.repair import Repair
from index.sweep import Sweep
from index.transport import JournalTransport
from journal.server import load_config

log = logging.getLogger("cairn.maintain")
LAYOUT_POLL_S = 1.0


def _clock_us() -> int:
    return time.time_ns() // 1000


def build_blob_store(layout: DataLayout, limits: Limits, clock_us=_clock_us) -> ShardBlobStore:
    """A BlobStore over every disk of `layout` (out ones too), one client per shardstore
    process, with the layout's EC parameters."""
    limits = layout_limits(layout, limits)
    return ShardBlobStore(disk_specs(layout, limits), limits=limits, clock_us=clock_us)


class Maintainer:
    def __init__(self, meta, watcher: LayoutWatcher, limits: Limits, clock_us=_clock_us) -> None:
        self.meta = meta
        self.clock_us = clock_us
        self.watcher = watcher
        self.limits = limits
        self.store: ShardBlobStore | None = None
        self._users: dict[int, int] = {}
        self._retired: list[ShardBlobStore] = []

    async def start(self) -> None:
        self.store = build_blob_store(self.watcher.layout, self.limits, self.clock_us)
        await self.store.start()

    def _disk_set(self, layout: DataLayout) -> set[tuple[str, str]]:
        return {(disk.id, disk.data_address) for disk in layout.disks(include_out=True)}

    async def poll_layout(self) -> None:
        """Step 4."""
        before = self._disk_set(self.watcher.layout)
        if not self.watcher.poll():
            if self.watcher.error:
                log.warning("LayoutUnreadable %s (keeping the last good layout)", self.watcher.error)
            return
        log.info("LayoutReloaded disks=%d out=%d", len(self.watcher.layout.disks(include_out=True)),
                 len(self.watcher.layout.disks(include_out=True)) - len(self.watcher.layout.disks()))
        if self._disk_set(self.watcher.layout) != before:
            fresh = build_blob_store(self.watcher.layout, self.limits, self.clock_us)
            await fresh.start()
            self._retired.append(self.store)
            self.store = fresh
            await self._close_retired()

    async def _close_retired(self) -> None:
        for store in list(self._retired):
            if not self._users.get(id(store)):
                self._retired.remove(store)
                await store.close()

    async def one_pass(self, kind: str):
        store = self.store
        self._users[id(store)] = self._users.get(id(store), 0) + 1
        try:
            if kind == "reaper":
                return await Reaper(self.meta, store, limits=self.limits, clock_us=self.clock_us).run_once()
            if kind == "sweep":
                disks = {disk: spec.client for disk, spec in store.disks.items()}
                return await Sweep(self.meta, disks, limits=self.limits, clock_us=self.clock_us).run_once()
            return await Repair(self.meta, store, self.watcher.layout, limits=self.limits,
                                clock_us=self.clock_us).run_once()
        finally:
            self._users[id(store)] -= 1
            await self._close_retired()

    async def loop(self, kind: str, interval_ms: int, stop: asyncio.Event) -> None:
        """Step 3: one pass, then wait the interval (or the stop)."""
        while not stop.is_set():
            try:
                await self.one_pass(kind)
            except Exception:
                log.exception("MaintenancePassFailed kind=%s", kind)
            try:
                await asyncio.wait_for(stop.wait(), interval_ms / 1000)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        self._retired.append(self.store)
        self._users.clear()
        await self._close_retired()


async def run(arguments: argparse.Namespace) -> int:
    try:
        config = configuration.load(arguments.config)
        cluster = load_config(arguments.cluster)
        watcher = LayoutWatcher(arguments.cluster)
    except (OSError, ValueError) as error:
        print(f"maintain: {error}", file=sys.stderr)
        return 2
    if watcher.layout is None:
        print(f"maintain: {arguments.cluster} has no [[shardstores]]: there are no shards to reap, sweep or repair. "
              "Add the data layout (see common/layout.py) or do not run this process.", file=sys.stderr)
        return 2
    limits = config.limits
    nodes = {node.id: (node.host, node.port) for node in cluster.nodes}
    meta = ClusterMetadataStore(JournalTransport(nodes, commit_deadline_s=limits.COMMIT_DEADLINE_MS / 1000),
                                limits=limits, clock_us=_clock_us)
    maintainer = Maintainer(meta, watcher, limits)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    await maintainer.start()                                                        # steps 1-2
    kinds = [kind for kind in ("reaper", "sweep", "repair") if kind in arguments.only.split(",")]
    try:
        if arguments.once:
            for kind in kinds:
                print(f"{kind}: {await maintainer.one_pass(kind)}", flush=True)
            return 0
        print("listening: maintain", flush=True)                                   # step 3
        intervals = {"reaper": limits.REAP_INTERVAL_MS, "sweep": limits.SWEEP_INTERVAL_MS,
                     "repair": limits.REPAIR_INTERVAL_MS}
        tasks = [asyncio.ensure_future(maintainer.loop(kind, intervals[kind], stop)) for kind in kinds]
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), LAYOUT_POLL_S)
            except asyncio.TimeoutError:
                try:
                    await maintainer.poll_layout()                                 # step 4
                except Exception:
                    log.exception("LayoutPollFailed")
        for task in tasks:                                                          # step 5
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return 0
    finally:
        await maintainer.close()
        await meta.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cairn maintain",
        description="Run the reaper, the orphan sweep and repair (DESIGN §14) for the cluster in CLUSTER_TOML. "
                    "Prints 'listening: maintain' once running; SIGTERM stops it cleanly.")
    parser.add_argument("--config", required=True, help="the users/limits TOML (common/config.py); its [limits] "
                                                        "give REAP_DELAY_MS, MAX_WRITE_AGE_MS and the intervals")
    parser.add_argument("--cluster", required=True, help="the cluster TOML: [[nodes]] (metadata) and "
                                                         "[[shardstores]] (the data layout)")
    parser.add_argument("--only", default="reaper,sweep,repair",
                        help="comma-separated workers to run (default: reaper,sweep,repair)")
    parser.add_argument("--once", action="store_true", help="run one pass of each worker, print what it did, exit")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    arguments = parser.parse_args(argv)
    unknown = set(arguments.only.split(",")) - {"reaper", "sweep", "repair"}
    if unknown:
        parser.error(f"--only takes reaper, sweep and repair; unknown: {', '.join(sorted(unknown))}")
    logging.basicConfig(level=arguments.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    import uvloop

    keep_freed_memory()         # repair moves shard bytes a MiB at a time
    return uvloop.run(run(arguments))


if __name__ == "__main__":
    sys.exit(main())

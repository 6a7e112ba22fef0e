"""`python -m shardstore.placement_sim`: the heat-aware spreader of DESIGN §8
(`common.placement.Spreader`, the same code the frontend uses) against naive hash
placement, over thousands of simulated disks and bursty tenants.

Model, one tick = one second (the heat report interval):
1. Cluster: `hosts × disks_per_host` disks; each host is a failure domain of one
   generation (capacity 1, 2 or 4 units; older generations fuller), fill spread
   around the generation's mean, a few disks near or past the full line, and
   `down_hosts` hosts down. Capacities are scaled so the run writes
   `write_fraction` of the cluster's free space (a day compressed into a minute),
   so fill moves enough to compare.
2. Workload, drawn once from the seed and replayed to both placers: tenants switch
   between idle (a trickle) and bursts; each has its own heavy-tailed (Pareto,
   capped) object size; objects above `part_bytes` are multipart, one placement per
   part (each part has its own data id, DESIGN §7); below SMALL_OBJECT_MAX an object
   is `m+1` copies, above it `k+m` shards of `stripes × chunk` bytes (DESIGN §7
   layout). Inline objects never reach a disk and are not generated. A
   placement's bytes land on its disks within the tick.
3. Heat is `shardstore.heat.Rate`'s EWMA of bytes written (half-life
   SHARD_HEAT_HALF_LIFE_MS, decayed per tick); the spreader sees the map as of the
   start of the tick (one Stat round late) plus its own charges. `frontends`
   independent spreaders (one per frontend worker, each its own charges and RNG)
   share each tick's placements, as the frontend workers would.
4. Naive placement: the data id's hash seeds the choice of `shard_count` distinct
   live hosts, uniformly, and a disk in each (the next one in the host if full):
   what a hash ring or unweighted CRUSH does.
5. Reported, after `warmup_ticks`: peak/mean and p99/p50 of disk heat over live
   disks per tick (mean and worst tick), peak/mean of bytes written per tick, and
   the fill spread (max−min, p99/p50) at start and end, bytes written to disks
   already ≥ 90 % full, co-located and refused placements.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from common.limits import DEFAULT_LIMITS, KiB, MiB, GiB
from common.placement import FILL_WEIGHT, Disk, DiskId, DiskMap, NoEligibleDisk, Spreader

HIGH_FILL = 0.9


@dataclass(frozen=True)
class SimConfig:
    hosts: int = 500
    disks_per_host: int = 20
    down_hosts: int = 2
    tenants: int = 12
    ticks: int = 60
    warmup_ticks: int = 10
    objects_per_tick: int = 1500
    frontends: int = 8
    part_bytes: int = 16 * MiB
    max_object_bytes: int = 5 * GiB
    write_fraction: float = 0.15
    k: int = DEFAULT_LIMITS.EC_K
    m: int = DEFAULT_LIMITS.EC_M
    small_object_max_bytes: int = DEFAULT_LIMITS.SMALL_OBJECT_MAX
    chunk_max_bytes: int = DEFAULT_LIMITS.CHUNK_MAX
    half_life_s: float = DEFAULT_LIMITS.SHARD_HEAT_HALF_LIFE_MS / 1000
    reserve_fraction: float = DEFAULT_LIMITS.DISK_RESERVE_FRACTION
    fill_weight: float = FILL_WEIGHT
    seed: int = 1


@dataclass(frozen=True)
class Put:
    """One placement: an object, or one part of a multipart object."""

    frontend: int
    data_id: bytes
    shard_count: int
    shard_size_bytes: int


@dataclass
class Cluster:
    disk_ids: list[DiskId]
    hosts: list[str]                     # per disk
    host_of: np.ndarray                  # per disk: host index
    capacity_bytes: np.ndarray
    used_bytes: np.ndarray               # at the start of the run
    up: np.ndarray


@dataclass
class Result:
    name: str
    heat_peak_mean: list[float] = field(default_factory=list)     # per tick after warm-up
    heat_p99_p50: list[float] = field(default_factory=list)
    tick_peak_mean: list[float] = field(default_factory=list)
    fill_start: tuple[float, float] = (0.0, 0.0)                  # (max-min, p99/p50)
    fill_end: tuple[float, float] = (0.0, 0.0)
    bytes_to_high_fill: float = 0.0
    bytes_total: float = 0.0
    co_located: int = 0
    refused: int = 0
    seconds: float = 0.0

    @property
    def peak_mean(self) -> float:
        return float(np.mean(self.heat_peak_mean))


# ---------------------------------------------------------------- setup


def shard_layout(size_bytes: int, config: SimConfig) -> tuple[int, int]:
    """(shard count, bytes per shard) for one object or part (DESIGN §7 layout)."""
    if size_bytes < config.small_object_max_bytes:
        return config.m + 1, size_bytes
    chunk = min(config.chunk_max_bytes, -(-size_bytes // config.k))
    stripes = -(-size_bytes // (chunk * config.k))
    return config.k + config.m, stripes * chunk


def make_workload(config: SimConfig, rng: random.Random) -> list[list[Put]]:
    """Per tick, the placements the tenants ask for (step 2)."""
    p_start, p_stop = 0.1, 0.25                          # bursts of ~4 ticks, ~30 % of the time
    duty = p_start / (p_start + p_stop)
    weights = [rng.lognormvariate(0, 1) for _ in range(config.tenants)]
    burst_rate = [config.objects_per_tick * w / sum(weights) / duty for w in weights]
    size_min = [rng.choice([16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 8 * MiB]) for _ in range(config.tenants)]
    alpha = [rng.uniform(1.1, 1.6) for _ in range(config.tenants)]
    bursting = [rng.random() < duty for _ in range(config.tenants)]
    ticks: list[list[Put]] = []
    for _tick in range(config.ticks):
        puts: list[Put] = []
        for tenant in range(config.tenants):
            bursting[tenant] = (rng.random() >= p_stop) if bursting[tenant] else (rng.random() < p_start)
            rate = burst_rate[tenant] * (1.0 if bursting[tenant] else 0.05)
            count = int(rate) + (rng.random() < rate - int(rate))
            for _ in range(count):
                size = min(int(size_min[tenant] * rng.random() ** (-1 / alpha[tenant])), config.max_object_bytes)
                parts = [size] if size <= config.part_bytes else \
                    [min(config.part_bytes, size - start) for start in range(0, size, config.part_bytes)]
                for part in parts:
                    shard_count, shard_size = shard_layout(part, config)
                    puts.append(Put(rng.randrange(config.frontends), rng.randbytes(16), shard_count, shard_size))
        rng.shuffle(puts)
        ticks.append(puts)
    return ticks


def make_cluster(config: SimConfig, rng: random.Random, stored_bytes: float) -> Cluster:
    """Step 1; capacities scaled so `stored_bytes` is `write_fraction` of free space."""
    generation_units = [1.0, 2.0, 4.0]
    generation_fill = [0.7, 0.5, 0.25]
    disk_ids, hosts, host_of, units, fill = [], [], [], [], []
    down = set(rng.sample(range(config.hosts), min(config.down_hosts, config.hosts)))
    for host in range(config.hosts):
        generation = rng.randrange(3)
        for index in range(config.disks_per_host):
            disk_ids.append(DiskId(f"h{host:04d}d{index:02d}"))
            hosts.append(f"h{host:04d}")
            host_of.append(host)
            units.append(generation_units[generation])
            f = min(max(rng.gauss(generation_fill[generation], 0.08), 0.02), 0.96)
            if rng.random() < 0.005:
                f = rng.uniform(0.975, 0.995)                    # at or past the full line
            fill.append(f)
    units_array, fill_array = np.array(units), np.array(fill)
    usable = 1 - config.reserve_fraction
    free_units = float(np.sum(units_array * np.clip(usable - fill_array, 0, None)))
    unit_bytes = stored_bytes / (config.write_fraction * free_units)
    capacity = np.floor(units_array * unit_bytes)
    return Cluster(disk_ids=disk_ids, hosts=hosts, host_of=np.array(host_of), capacity_bytes=capacity,
                   used_bytes=capacity * fill_array,
                   up=np.array([host not in down for host in host_of]))


def fill_spread(fill: np.ndarray) -> tuple[float, float]:
    p50, p99 = np.percentile(fill, [50, 99])
    return float(fill.max() - fill.min()), float(p99 / p50) if p50 else math.inf


# ---------------------------------------------------------------- placers


class NaivePlacer:
    """Step 4: hash of the data id → distinct live hosts, uniformly; a disk in each."""

    def __init__(self, cluster: Cluster, config: SimConfig) -> None:
        self.cluster, self.config = cluster, config
        self.live_hosts = sorted({int(h) for h, up in zip(cluster.host_of, cluster.up) if up})
        self.usable = cluster.capacity_bytes * (1 - config.reserve_fraction)

    def place(self, put: Put, used: np.ndarray) -> list[int] | None:
        rng = random.Random(int.from_bytes(hashlib.blake2b(put.data_id, digest_size=8).digest(), "big"))
        per_host = self.config.disks_per_host
        chosen: list[int] = []
        tried: set[int] = set()
        while len(chosen) < put.shard_count and len(tried) < len(self.live_hosts):
            host = self.live_hosts[rng.randrange(len(self.live_hosts))]
            if host in tried:
                continue
            tried.add(host)
            start = rng.randrange(per_host)
            for step in range(per_host):
                disk = host * per_host + (start + step) % per_host
                if used[disk] + put.shard_size_bytes < self.usable[disk]:
                    chosen.append(disk)
                    break
        if len(chosen) < put.shard_count:
            return None              # the small configurations never get here; no co-location modelled
        return chosen


def run(config: SimConfig) -> tuple[dict[str, Result], dict]:
    """Both placers over the same workload and cluster; results and workload facts."""
    workload_rng = random.Random(config.seed)
    workload = make_workload(config, workload_rng)
    stored = float(sum(put.shard_count * put.shard_size_bytes for tick in workload for put in tick))
    cluster = make_cluster(config, workload_rng, stored)
    facts = {"placements": sum(len(tick) for tick in workload), "stored_bytes": stored,
             "disks": len(cluster.disk_ids), "live_disks": int(cluster.up.sum())}
    return {"spreader": simulate("spreader", config, cluster, workload),
            "naive": simulate("naive", config, cluster, workload)}, facts


def simulate(name: str, config: SimConfig, cluster: Cluster, workload: list[list[Put]]) -> Result:
    started = time.perf_counter()
    result = Result(name)
    used = cluster.used_bytes.copy()
    heat_value = np.zeros(len(cluster.disk_ids))           # `Rate.value` per disk
    per_second = math.log(2) / config.half_life_s          # `Rate.per_second` = value · ln2 / H
    decay = math.exp(-per_second)                           # one tick
    live = cluster.up
    capacity = cluster.capacity_bytes
    index_of = {disk_id: index for index, disk_id in enumerate(cluster.disk_ids)}
    result.fill_start = fill_spread((used / capacity)[live])
    naive = NaivePlacer(cluster, config) if name == "naive" else None
    spreaders: list[Spreader] = []
    rngs = [random.Random(config.seed * 1_000 + frontend) for frontend in range(config.frontends)]
    for tick, puts in enumerate(workload):
        tick_bytes = np.zeros(len(cluster.disk_ids))
        if naive is None:
            fill = used / capacity
            heat = heat_value * per_second
            disk_map = DiskMap((Disk(disk_id=cluster.disk_ids[i], host=cluster.hosts[i],
                                     capacity_bytes=int(capacity[i]), fill_ratio=float(fill[i]),
                                     write_bytes_per_s=float(heat[i]), up=bool(live[i]))
                                for i in range(len(cluster.disk_ids))), reserve_fraction=config.reserve_fraction)
            if not spreaders:
                spreaders = [Spreader(disk_map, k=config.k, m=config.m, fill_weight=config.fill_weight,
                                      heat_half_life_s=config.half_life_s)
                             for _ in range(config.frontends)]
            else:
                for spreader in spreaders:
                    spreader.refresh(disk_map)
        for put in puts:
            if naive is None:
                try:
                    placement = spreaders[put.frontend].place(put.shard_count, rngs[put.frontend],
                                                              shard_size_bytes=put.shard_size_bytes)
                except NoEligibleDisk:
                    result.refused += 1
                    continue
                disks = [index_of[disk_id] for disk_id in placement.disks]
                result.co_located += len(set(placement.domains)) < len(placement.domains)
            else:
                disks = naive.place(put, used)
                if disks is None:
                    result.refused += 1
                    continue
            for disk in disks:
                if used[disk] >= HIGH_FILL * capacity[disk]:
                    result.bytes_to_high_fill += put.shard_size_bytes
                used[disk] += put.shard_size_bytes
                tick_bytes[disk] += put.shard_size_bytes
            result.bytes_total += put.shard_size_bytes * len(disks)
        heat_value = heat_value * decay + tick_bytes
        if tick >= config.warmup_ticks:
            heat = (heat_value * per_second)[live]
            mean = heat.mean()
            if mean > 0:
                p50, p99 = np.percentile(heat, [50, 99])
                result.heat_peak_mean.append(float(heat.max() / mean))
                result.heat_p99_p50.append(float(p99 / p50) if p50 > 0 else math.inf)
            written = tick_bytes[live]
            if written.mean() > 0:
                result.tick_peak_mean.append(float(written.max() / written.mean()))
    result.fill_end = fill_spread((used / capacity)[live])
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        prog="python -m shardstore.placement_sim",
        description="Simulate the heat-aware spreader (common/placement.py) against naive hash placement over "
                    "many disks and bursty tenants; print peak/mean disk load and fill spread for both "
                    "(DESIGN §8). Same workload and cluster for both, from the seed.")
    parser.add_argument("--hosts", type=int, default=defaults.hosts, help="hosts (failure domains)")
    parser.add_argument("--disks-per-host", type=int, default=defaults.disks_per_host)
    parser.add_argument("--down-hosts", type=int, default=defaults.down_hosts)
    parser.add_argument("--tenants", type=int, default=defaults.tenants)
    parser.add_argument("--ticks", type=int, default=defaults.ticks, help="simulated seconds")
    parser.add_argument("--warmup-ticks", type=int, default=defaults.warmup_ticks)
    parser.add_argument("--objects-per-tick", type=int, default=defaults.objects_per_tick,
                        help="mean objects written per second over all tenants")
    parser.add_argument("--frontends", type=int, default=defaults.frontends,
                        help="independent spreaders (frontend workers), each with its own charges")
    parser.add_argument("--part-mib", type=int, default=defaults.part_bytes // MiB,
                        help="objects above this are multipart, one placement per part")
    parser.add_argument("--write-fraction", type=float, default=defaults.write_fraction,
                        help="fraction of the cluster's free space the run writes (sets the capacities)")
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--m", type=int, default=defaults.m)
    parser.add_argument("--fill-weight", type=float, default=defaults.fill_weight,
                        help="weight of the spreader's fill penalty f/(1-f) in its score")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    config = SimConfig(hosts=arguments.hosts, disks_per_host=arguments.disks_per_host,
                       down_hosts=arguments.down_hosts, tenants=arguments.tenants, ticks=arguments.ticks,
                       warmup_ticks=min(arguments.warmup_ticks, max(arguments.ticks - 1, 0)),
                       objects_per_tick=arguments.objects_per_tick, frontends=arguments.frontends,
                       part_bytes=arguments.part_mib * MiB, write_fraction=arguments.write_fraction,
                       k=arguments.k, m=arguments.m, fill_weight=arguments.fill_weight, seed=arguments.seed)
    results, facts = run(config)
    print(f"placement_sim: {config.hosts} hosts × {config.disks_per_host} disks = {facts['disks']} disks "
          f"({facts['live_disks']} live), {config.tenants} bursty tenants, {config.ticks} ticks of 1 s "
          f"({config.warmup_ticks} warm-up), ~{config.objects_per_tick} objects/s, EC {config.k}+{config.m} "
          f"({config.m + 1} copies below {config.small_object_max_bytes // KiB} KiB), parts of "
          f"{config.part_bytes // MiB} MiB, {config.frontends} frontends, seed {config.seed}")
    print(f"workload: {facts['placements']:,} placements, {facts['stored_bytes'] / GiB:,.1f} GiB stored "
          f"(= {config.write_fraction:.0%} of free space: capacities scaled to it)")
    spreader, naive = results["spreader"], results["naive"]
    rows = [
        ("peak/mean disk heat, mean of ticks", lambda r: f"{np.mean(r.heat_peak_mean):.2f}"),
        ("peak/mean disk heat, worst tick", lambda r: f"{np.max(r.heat_peak_mean):.2f}"),
        ("p99/p50 disk heat, mean of ticks", lambda r: f"{np.mean(r.heat_p99_p50):.2f}"),
        ("peak/mean bytes in a tick, mean", lambda r: f"{np.mean(r.tick_peak_mean):.2f}"),
        ("fill max-min, start -> end", lambda r: f"{r.fill_start[0]:.3f} -> {r.fill_end[0]:.3f}"),
        ("fill p99/p50, start -> end", lambda r: f"{r.fill_start[1]:.3f} -> {r.fill_end[1]:.3f}"),
        (f"bytes to disks >= {HIGH_FILL:.0%} full", lambda r: f"{r.bytes_to_high_fill / max(r.bytes_total, 1):.2%}"),
        ("co-located / refused placements", lambda r: f"{r.co_located} / {r.refused}"),
        ("placer time (s)", lambda r: f"{r.seconds:.1f}"),
    ]
    print(f"{'':38}{'spreader':>18}{'naive':>18}")
    for label, show in rows:
        print(f"{label:38}{show(spreader):>18}{show(naive):>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

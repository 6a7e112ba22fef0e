"""Placement of a new object's shards and the plan for reading them back: the
heat-aware spreader of DESIGN §8, used by the frontend and by repair.

Pure and synchronous: the caller passes a `DiskMap` (every disk's Stat figures, as
`shardstore.node.Node.stat` reports them: fill ratio, EWMA bytes/s and ops/s read and
written over SHARD_HEAT_HALF_LIFE_MS, in-flight calls) and a `random.Random`; the
same map, sequence of calls and seed give the same placements.

Placing (`Spreader.place`), for `k+m` shards (EC) or `m+1` copies (small objects):

1. Eligible disks are up and not full: a disk is full when its bytes, plus what this
   spreader has already sent it since the last map, plus the new shard, would pass
   `1 - DISK_RESERVE_FRACTION` of its capacity (the shardstore refuses there
   anyway; a refused shard costs a hedge delay and a repair, DESIGN §7).
2. Each slot, in shard order, takes the better (lower `score`) of two disks drawn
   uniformly from the eligible disks whose failure domain (the host, else the disk
   itself) has the fewest shards of this object so far, and among those, whose disk
   has the fewest. With at least as many eligible domains as shards every shard gets
   its own domain; with fewer, shards co-locate as evenly as possible (per-domain
   counts differ by at most one; within a domain, per-disk counts likewise).
3. The placement reports `survives_domain_losses`: the largest `j` such that losing
   any `j` of its domains loses at most `m` shards (= `m` when every domain holds
   one shard; less when co-located). The PUT records it (DESIGN §7, "degraded").
4. The chosen disk is charged the shard: until the next map (heat is reported once a
   second) the spreader adds the write to its view of that disk's heat and fill, so
   one tenant's burst placed between two reports still spreads.

The score (lower is better), for an eligible disk:

    score = (read + write bytes/s + charged bytes/s) / max(mean bytes/s, LOAD_FLOOR)
          + in_flight / max(mean in_flight, 1)
          + fill_weight * fill / (1 - fill)

- Bytes per second, read and written, is what queues on a disk: a new shard is
  written now and, being new, likely read soon. Normalised by the cluster mean (over
  live disks) so the terms are unitless and "1" means "an average disk"; the floor
  keeps an idle cluster's noise from outweighing fill.
- In-flight calls are the only instantaneous figure (the rates lag by about a
  half-life); normalised the same way.
- The fill penalty `f/(1-f)` grows slowly where there is room and steeply near
  full: with FILL_WEIGHT 0.3 it is 0.08 at 20 % full, 0.3 at 50 %, 1.2 at 80 %,
  2.7 at 90 %, 5.7 at 95 % (in units of an average disk's load). Its slope
  `1/(1-f)^2` makes ten points of fill worth ~0.03 of an average disk's load on
  nearly empty disks and ~3 near 90 %: fill breaks ties among equally busy disks,
  fuller disks take less and ever less towards full, with no cliff before the
  reserve. Fill is a ratio, so a big disk is favoured only while it is emptier.
  FILL_WEIGHT trades the two goals: the simulator's sweep (10,000 disks, 8
  frontends, `--ticks 20 --warmup-ticks 5`) gave peak/mean heat 1.78, 1.90, 2.09, 2.45, 2.98 and bytes sent to
  disks ≥ 90 % full 4.2 %, 1.0 %, 0.02 %, 0 %, 0 % for weights 0, 0.1, 0.3, 1, 3
  (naive: 3.37 and 5.1 %); 0.3 is the knee.
- Power of two choices, rather than the best disk overall, because every frontend
  decides from the same one-second-old heat: the single coolest disk would take
  every frontend's next shard (herding), while two random candidates keep the
  spread of random placement and still cut the peak load sharply (the simulator,
  `shardstore/placement_sim.py`, measures it).

Reading (`read_plan`): the code is systematic, so a range is served by the data
shards holding its chunks, read as stored; a wanted shard that is down, or on a disk
hotter than `hot_factor` × the median disk's bytes/s, makes the plan decode instead,
from `k` distinct live shards: the cool data shards (each one read is a chunk not to
compute), then the coolest cool parity, and a hot shard only when fewer than `k` cool
ones are live (then, if every wanted shard is among the `k`, they are read as
stored). A copies placement reads its coolest live copy.

Invariants: a placement never names a down or full disk, and a decoding plan names
exactly `k` distinct shards (both checked with `invariant()`); distinct domains
whenever enough have room, even co-location otherwise, and the reported durability
are properties of the algorithm, checked by tests/prop/test_placement.py.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NewType

from common.errors import invariant
from common.limits import DEFAULT_LIMITS

DiskId = NewType("DiskId", str)
DomainId = NewType("DomainId", str)

# DESIGN §15's HOT_FACTOR (2× the median heat). Not yet a field of common/limits.py:
# the caller passes `hot_factor` from there once it is.
HOT_FACTOR = 2.0
# Below this mean bytes/s the cluster is idle: heat differences are noise, fill decides.
LOAD_FLOOR_BYTES_PER_S = 64 * 1024
# A disk's hot threshold never drops below this many bytes/s (an idle cluster's median is ~0).
HOT_FLOOR_BYTES_PER_S = 1024 * 1024
FILL_WEIGHT = 0.3
# Rejection draws before a slot falls back to listing its candidates explicitly.
_DRAWS_MAX = 32


class NoEligibleDisk(Exception):
    """No disk is up with room for the shard: the object cannot be placed."""

    def __init__(self, shard_size_bytes: int, disks: int, up: int) -> None:
        super().__init__(f"no eligible disk for a {shard_size_bytes}-byte shard ({up} of {disks} disks up)")
        self.shard_size_bytes, self.disks, self.up = shard_size_bytes, disks, up


class NotEnoughShards(Exception):
    """Fewer live shards than the code needs: the object cannot be read now."""

    def __init__(self, need: int, live: int) -> None:
        super().__init__(f"need {need} live shards, have {live}")
        self.need, self.live = need, live


@dataclass(frozen=True)
class Disk:
    """One disk as the map knows it: identity, failure domain and its last Stat."""

    disk_id: DiskId
    host: str | None
    capacity_bytes: int
    fill_ratio: float = 0.0
    read_bytes_per_s: float = 0.0
    write_bytes_per_s: float = 0.0
    read_ops_per_s: float = 0.0
    write_ops_per_s: float = 0.0
    in_flight: int = 0
    up: bool = True

    @property
    def domain(self) -> DomainId:
        """The failure domain: the host, else the disk itself (prefixed so the two never collide)."""
        return DomainId(f"host:{self.host}" if self.host else f"disk:{self.disk_id}")

    @property
    def load_bytes_per_s(self) -> float:
        return self.read_bytes_per_s + self.write_bytes_per_s


def disk_from_stat(disk_id: DiskId, host: str | None, stat: Any, *, up: bool = True) -> Disk:
    """A `Disk` from a shardstore Stat (`shardstore.node.Stats` or the gRPC `StatResponse`:
    the same field names)."""
    return Disk(disk_id=disk_id, host=host, capacity_bytes=int(stat.capacity_bytes),
                fill_ratio=float(stat.fill_ratio),
                read_bytes_per_s=float(stat.read_bytes_per_s), write_bytes_per_s=float(stat.write_bytes_per_s),
                read_ops_per_s=float(stat.read_ops_per_s), write_ops_per_s=float(stat.write_ops_per_s),
                in_flight=int(stat.in_flight), up=up)


class DiskMap:
    """Every disk by id, plus the cluster figures the score and the read plan need
    (means and median over live disks). Immutable once built: a new Stat round is a new map."""

    def __init__(self, disks: Iterable[Disk], *, reserve_fraction: float = DEFAULT_LIMITS.DISK_RESERVE_FRACTION) -> None:
        ordered = sorted(disks, key=lambda disk: disk.disk_id)
        self.disks: dict[DiskId, Disk] = {disk.disk_id: disk for disk in ordered}
        invariant(len(self.disks) == len(ordered), "disk ids are unique in a disk map")
        invariant(0 <= reserve_fraction < 1, "reserve fraction in [0, 1)")
        self.reserve_fraction = reserve_fraction
        self.live: tuple[Disk, ...] = tuple(disk for disk in ordered if disk.up)
        loads = [disk.load_bytes_per_s for disk in self.live]
        self.mean_load_bytes_per_s = sum(loads) / len(loads) if loads else 0.0
        self.median_load_bytes_per_s = statistics.median(loads) if loads else 0.0
        self.mean_in_flight = sum(disk.in_flight for disk in self.live) / len(self.live) if self.live else 0.0

    def __len__(self) -> int:
        return len(self.disks)

    def get(self, disk_id: DiskId) -> Disk | None:
        return self.disks.get(disk_id)

    def usable_bytes(self, disk: Disk) -> float:
        """Bytes the disk may hold before it counts as full."""
        return disk.capacity_bytes * (1 - self.reserve_fraction)

    def hot_threshold_bytes_per_s(self, hot_factor: float = HOT_FACTOR) -> float:
        return hot_factor * max(self.median_load_bytes_per_s, HOT_FLOOR_BYTES_PER_S)


@dataclass(frozen=True)
class Placement:
    """Where one object's shards live: shard `i` on `disks[i]`. `needed` shards rebuild
    the object (`k` for EC, 1 for copies)."""

    disks: tuple[DiskId, ...]
    domains: tuple[DomainId, ...]
    needed: int
    copies: bool
    survives_domain_losses: int

    @property
    def full_durability(self) -> bool:
        return self.survives_domain_losses == len(self.disks) - self.needed


@dataclass(frozen=True)
class ReadPlan:
    """Shard indexes to read. `decode` False: exactly the wanted data shards (or one
    copy), used as stored. `decode` True: `needed` distinct shards, decoded."""

    shards: tuple[int, ...]
    decode: bool


def survivable_domain_losses(shards_per_domain: Iterable[int], redundancy: int) -> int:
    """The largest `j` such that losing any `j` domains loses at most `redundancy`
    shards: the worst `j` domains are the fullest, so count them greedily."""
    lost = survived = 0
    for count in sorted(shards_per_domain, reverse=True):
        if lost + count > redundancy:
            break
        lost += count
        survived += 1
    return survived


@dataclass
class _Charge:
    bytes: float = 0.0
    in_flight: int = 0


class Spreader:
    """Places objects over one `DiskMap` (see the module docstring for the steps and
    the score). Holds the charges of its own placements until `refresh` brings the
    next map, which includes them as reported heat."""

    def __init__(self, disk_map: DiskMap, *, k: int = DEFAULT_LIMITS.EC_K, m: int = DEFAULT_LIMITS.EC_M,
                 fill_weight: float = FILL_WEIGHT,
                 heat_half_life_s: float = DEFAULT_LIMITS.SHARD_HEAT_HALF_LIFE_MS / 1000) -> None:
        invariant(k >= 1 and m >= 0 and k + m <= 255, "EC parameters within GF(2^8)")
        invariant(heat_half_life_s > 0 and fill_weight >= 0, "positive half-life, non-negative fill weight")
        self.k, self.m = k, m
        self.fill_weight = fill_weight
        # A write of B bytes raises an EWMA rate with half-life H by B·ln2/H bytes/s,
        # exactly as `shardstore.heat.Rate.add` does.
        self._rate_per_byte = math.log(2) / heat_half_life_s
        self.refresh(disk_map)

    def refresh(self, disk_map: DiskMap) -> None:
        """Take a new map (a new round of Stat); charges so far are in its heat."""
        self.disk_map = disk_map
        self._charges: dict[DiskId, _Charge] = {}
        self._candidates: list[Disk] = [disk for disk in disk_map.live
                                        if disk.fill_ratio * disk.capacity_bytes < disk_map.usable_bytes(disk)]
        self._domain_count = len({disk.domain for disk in self._candidates})
        self._load_scale = max(disk_map.mean_load_bytes_per_s, LOAD_FLOOR_BYTES_PER_S)
        self._in_flight_scale = max(disk_map.mean_in_flight, 1.0)

    # ------------------------------------------------------------------ score

    def _used_bytes(self, disk: Disk) -> float:
        charge = self._charges.get(disk.disk_id)
        return disk.fill_ratio * disk.capacity_bytes + (charge.bytes if charge else 0.0)

    def has_room(self, disk: Disk, shard_size_bytes: int = 0) -> bool:
        """Up, and the shard fits below the reserve (step 1)."""
        return disk.up and self._used_bytes(disk) + shard_size_bytes < self.disk_map.usable_bytes(disk)

    def score(self, disk: Disk) -> float:
        """Lower is better; only meaningful for a disk with room (see the module docstring)."""
        charge = self._charges.get(disk.disk_id)
        charged_bytes, charged_calls = (charge.bytes, charge.in_flight) if charge else (0.0, 0)
        load = (disk.load_bytes_per_s + charged_bytes * self._rate_per_byte) / self._load_scale
        in_flight = (disk.in_flight + charged_calls) / self._in_flight_scale
        fill = min((disk.fill_ratio * disk.capacity_bytes + charged_bytes) / disk.capacity_bytes, 1 - 1e-9) \
            if disk.capacity_bytes else 1 - 1e-9
        return load + in_flight + self.fill_weight * fill / (1 - fill)

    # ------------------------------------------------------------------ place

    def place(self, shard_count: int, rng: random.Random, *, shard_size_bytes: int = 0) -> Placement:
        """Disks for a new object's `shard_count` shards: `k+m` (EC) or `m+1` (copies).
        Raises `NoEligibleDisk`, charging nothing, when the disks with room cannot
        take all the shards."""
        invariant(shard_count in (self.k + self.m, self.m + 1), "shard count is k+m or m+1")
        invariant(shard_size_bytes >= 0, "shard size is non-negative")
        copies = shard_count != self.k + self.m
        if not self._candidates:
            raise NoEligibleDisk(shard_size_bytes, len(self.disk_map), len(self.disk_map.live))
        # The fast path draws fresh domains by rejection; `_draw_even` is the general
        # rule (and the fallback), which gives distinct domains whenever enough have room.
        spread = self._domain_count >= shard_count
        chosen: list[Disk] = []
        domain_counts: dict[DomainId, int] = {}
        disk_counts: dict[DiskId, int] = {}
        try:
            for _slot in range(shard_count):
                pair = self._draw_distinct(rng, domain_counts, shard_size_bytes) if spread else None
                if pair is None:
                    pair = self._draw_even(rng, domain_counts, disk_counts, shard_size_bytes)
                first, second = pair
                pick = second if self.score(second) < self.score(first) else first
                invariant(self.has_room(pick, shard_size_bytes), "a placement never names a down or full disk")
                chosen.append(pick)
                domain_counts[pick.domain] = domain_counts.get(pick.domain, 0) + 1
                disk_counts[pick.disk_id] = disk_counts.get(pick.disk_id, 0) + 1
                self._charge(pick.disk_id, shard_size_bytes, 1)
        except NoEligibleDisk:
            for disk in chosen:          # a refused object charges nothing
                self._charge(disk.disk_id, -shard_size_bytes, -1)
            raise
        needed = 1 if copies else self.k
        return Placement(disks=tuple(disk.disk_id for disk in chosen), domains=tuple(disk.domain for disk in chosen),
                         needed=needed, copies=copies,
                         survives_domain_losses=survivable_domain_losses(domain_counts.values(), shard_count - needed))

    def _charge(self, disk_id: DiskId, size_bytes: int, calls: int) -> None:
        charge = self._charges.setdefault(disk_id, _Charge())
        charge.bytes += size_bytes
        charge.in_flight += calls

    def _draw_distinct(self, rng: random.Random, used: Mapping[DomainId, int],
                       shard_size_bytes: int) -> tuple[Disk, Disk] | None:
        """Two candidates for a slot in a fresh domain, by rejection from all eligible
        disks (the common case: few domains used, thousands free); None if the draws
        keep missing, and the slot lists its candidates explicitly."""
        candidates = self._candidates
        drawn: list[Disk] = []
        for _ in range(_DRAWS_MAX):
            disk = candidates[rng.randrange(len(candidates))]
            if disk.domain not in used and self.has_room(disk, shard_size_bytes):
                drawn.append(disk)
                if len(drawn) == 2:
                    return drawn[0], drawn[1]
        return None

    def _draw_even(self, rng: random.Random, domain_counts: Mapping[DomainId, int],
                   disk_counts: Mapping[DiskId, int], shard_size_bytes: int) -> tuple[Disk, Disk]:
        """Two candidates among the disks with room in the least-used domains, and
        among those the least-used disks (step 2): keeps co-location even."""
        pool = [disk for disk in self._candidates if self.has_room(disk, shard_size_bytes)]
        if not pool:
            raise NoEligibleDisk(shard_size_bytes, len(self.disk_map), len(self.disk_map.live))
        fewest = min(domain_counts.get(disk.domain, 0) for disk in pool)
        pool = [disk for disk in pool if domain_counts.get(disk.domain, 0) == fewest]
        fewest = min(disk_counts.get(disk.disk_id, 0) for disk in pool)
        pool = [disk for disk in pool if disk_counts.get(disk.disk_id, 0) == fewest]
        return pool[rng.randrange(len(pool))], pool[rng.randrange(len(pool))]


# ---------------------------------------------------------------------- read


def read_plan(placement: Placement, needed_chunks: Iterable[int], disk_map: DiskMap, *,
              hot_factor: float = HOT_FACTOR) -> ReadPlan:
    """The shards to read for the data chunks `needed_chunks` (indexes below `k`; for
    copies, ignored: any copy is the whole object). Raises `NotEnoughShards` when
    fewer than `needed` shards are live."""
    hot_bytes_per_s = disk_map.hot_threshold_bytes_per_s(hot_factor)

    def disk_of(index: int) -> Disk | None:
        disk = disk_map.get(placement.disks[index])
        return disk if disk is not None and disk.up else None

    live = [index for index in range(len(placement.disks)) if disk_of(index) is not None]
    if len(live) < placement.needed:
        raise NotEnoughShards(placement.needed, len(live))

    def coolness(index: int) -> tuple[bool, bool, float, int]:
        """Sort key: cool before hot, then (EC) data before parity, fewer chunks to
        compute; then cooler, then lower index. Copies are all alike."""
        load = disk_of(index).load_bytes_per_s
        return (load > hot_bytes_per_s, not placement.copies and index >= placement.needed, load, index)

    if placement.copies:
        return ReadPlan(shards=(min(live, key=coolness),), decode=False)

    wanted = sorted(set(needed_chunks))
    invariant(all(0 <= index < placement.needed for index in wanted), "wanted chunks are data shards")
    live_set = set(live)
    if all(index in live_set and not coolness(index)[0] for index in wanted):
        return ReadPlan(shards=tuple(wanted), decode=False)
    # Decode from k live shards: cool data shards, then the coolest cool parity, so a
    # hot shard is read only when fewer than k cool ones are live.
    chosen = sorted(sorted(live, key=coolness)[:placement.needed])
    if all(index in chosen for index in wanted):
        # Every wanted shard was chosen anyway (no cooler substitute): read them as stored.
        return ReadPlan(shards=tuple(wanted), decode=False)
    invariant(len(set(chosen)) == placement.needed, "a decode reads k distinct shards")
    return ReadPlan(shards=tuple(chosen), decode=True)

"""Worked examples of the spreader (common/placement.py): the score's order, the
co-location table of DESIGN §7 for RS 4+2, read plans around the hot threshold, and
`disk_from_stat` reading a shardstore's own Stat.

Method: small hand-built disk maps, one case per rule; the general properties are in
tests/prop/test_placement.py.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from common.placement import (
    Disk, DiskId, DiskMap, NotEnoughShards, Placement, Spreader, disk_from_stat, read_plan,
    survivable_domain_losses,
)
from shardstore.node import Stats

GiB = 1024 ** 3
MiB = 1024 ** 2


def cluster(hosts: int, disks_per_host: int = 1, **fields) -> list[Disk]:
    return [Disk(DiskId(f"h{h}d{d}"), f"h{h}", 100 * GiB, **fields) for h in range(hosts) for d in range(disks_per_host)]


def test_score_prefers_cool_then_empty_and_is_steep_near_full():
    disks = DiskMap([Disk(DiskId("cool"), "a", GiB, fill_ratio=0.5),
                     Disk(DiskId("hot"), "b", GiB, fill_ratio=0.5, write_bytes_per_s=50 * MiB),
                     Disk(DiskId("empty"), "c", GiB, fill_ratio=0.1),
                     Disk(DiskId("nearly_full"), "d", GiB, fill_ratio=0.96, write_bytes_per_s=0.0)])
    spreader = Spreader(disks)
    score = {disk_id: spreader.score(disk) for disk_id, disk in disks.disks.items()}
    assert score["empty"] < score["cool"] < score["hot"]
    assert score["nearly_full"] > score["hot"] / 2          # near full costs like a very busy disk
    step_low = spreader.fill_weight * (0.2 / 0.8 - 0.1 / 0.9)
    step_high = spreader.fill_weight * (0.95 / 0.05 - 0.85 / 0.15)
    assert step_high > 50 * step_low                         # ten points of fill: cheap when empty, dear near full


def test_full_and_down_disks_never_chosen():
    disks = DiskMap(cluster(6) + [Disk(DiskId("full"), "x", GiB, fill_ratio=0.99),
                                  Disk(DiskId("down"), "y", GiB, up=False)])
    spreader, rng = Spreader(disks), random.Random(1)
    for _ in range(200):
        placement = spreader.place(6, rng, shard_size_bytes=MiB)
        assert "full" not in placement.disks and "down" not in placement.disks


@pytest.mark.parametrize("hosts,expected_counts,survives", [
    (6, [1, 1, 1, 1, 1, 1], 2),
    (5, [2, 1, 1, 1, 1], 1),
    (4, [2, 2, 1, 1], 1),
    (3, [2, 2, 2], 1),
    (2, [3, 3], 0),
    (1, [6], 0),
])
def test_ec_4_2_co_location(hosts, expected_counts, survives):
    spreader = Spreader(DiskMap(cluster(hosts, disks_per_host=3)))
    placement = spreader.place(6, random.Random(7))
    assert sorted(Counter(placement.domains).values(), reverse=True) == expected_counts
    assert placement.survives_domain_losses == survives
    assert placement.full_durability == (survives == 2)
    assert len(set(placement.disks)) == min(6, hosts * 3)    # distinct disks while a host has spare ones


def test_copies_survive_m_losses_in_distinct_domains():
    placement = Spreader(DiskMap(cluster(5))).place(3, random.Random(3))
    assert placement.copies and placement.needed == 1 and placement.survives_domain_losses == 2


def test_host_less_disks_are_their_own_domain():
    disks = DiskMap([Disk(DiskId(f"d{i}"), None, GiB) for i in range(6)])
    placement = Spreader(disks).place(6, random.Random(0))
    assert len(set(placement.domains)) == 6 and placement.full_durability


def test_survivable_domain_losses():
    assert survivable_domain_losses([1] * 6, 2) == 2
    assert survivable_domain_losses([2, 2, 2], 2) == 1
    assert survivable_domain_losses([3, 3], 2) == 0


def test_charges_spread_a_burst_between_heat_reports():
    """With the same stale map, consecutive placements avoid the disks just charged."""
    spreader, rng = Spreader(DiskMap(cluster(12))), random.Random(5)
    load = Counter()
    for _ in range(120):
        load.update(spreader.place(6, rng, shard_size_bytes=64 * MiB).disks)
    assert max(load.values()) - min(load.values()) <= 3      # 60 each; random would spread ~±15


PLACEMENT = Placement(disks=tuple(DiskId(f"h{i}d0") for i in range(6)), domains=tuple(f"host:h{i}" for i in range(6)),
                      needed=4, copies=False, survives_domain_losses=2)


def heat_map(read_mib: dict[int, float], down: set[int] = frozenset()) -> DiskMap:
    return DiskMap(Disk(DiskId(f"h{i}d0"), f"h{i}", 100 * GiB, read_bytes_per_s=read_mib.get(i, 10) * MiB,
                        up=i not in down) for i in range(20))


def test_read_plan_plain_when_nothing_hot():
    assert read_plan(PLACEMENT, [1, 2], heat_map({})).shards == (1, 2)


def test_read_plan_replaces_hot_data_shard_by_cool_parity():
    plan = read_plan(PLACEMENT, [0], heat_map({0: 25, 4: 12, 5: 11}))      # median 10, threshold 20
    assert plan.decode and plan.shards == (1, 2, 3, 5)


def test_read_plan_reads_hot_shard_when_parity_is_hotter():
    plan = read_plan(PLACEMENT, [0], heat_map({0: 25, 4: 30, 5: 40}))
    assert not plan.decode and plan.shards == (0,)


def test_read_plan_decodes_around_down_disk_and_refuses_below_k():
    plan = read_plan(PLACEMENT, [0, 1], heat_map({}, down={1}))
    assert plan.decode and len(plan.shards) == 4 and 1 not in plan.shards
    with pytest.raises(NotEnoughShards):
        read_plan(PLACEMENT, [0], heat_map({}, down={0, 1, 2}))


def test_copies_read_the_coolest_live_copy():
    copies = Placement(PLACEMENT.disks[:3], PLACEMENT.domains[:3], needed=1, copies=True, survives_domain_losses=2)
    assert read_plan(copies, [0], heat_map({0: 50, 1: 30, 2: 40})).shards == (1,)
    assert read_plan(copies, [0], heat_map({0: 50, 1: 30, 2: 40}, down={1})).shards == (2,)


def test_disk_from_stat_reads_the_shardstore_figures():
    stats = Stats(capacity_bytes=1000, used_bytes=400, free_bytes=600, live_bytes=300, fill_ratio=0.4,
                  extent_count=2, read_bytes_per_s=1.5, write_bytes_per_s=2.5, read_ops_per_s=3.0,
                  write_ops_per_s=4.0, in_flight=5, corrupt_count=0, commit_batches=0, committed_records=0)
    disk = disk_from_stat(DiskId("d"), "h", stats)
    assert (disk.capacity_bytes, disk.fill_ratio, disk.load_bytes_per_s, disk.in_flight) == (1000, 0.4, 4.0, 5)
    assert disk.domain == "host:h"

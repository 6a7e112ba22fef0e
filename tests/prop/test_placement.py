"""The spreader's placements and read plans keep their promises on any disk map.

Properties (common/placement.py, DESIGN §7–§8), over hypothesis-drawn maps of hosts
and host-less disks with random fill (some full), heat, in-flight and up/down, EC
parameters `k+m` and both shard counts (`k+m`, `m+1`), several placements in a row
(so the spreader's own charges take part):
1. Never a down disk, never a disk without room for the shard; `NoEligibleDisk`
   exactly when the disks with room cannot take every shard, and then no charge.
2. Distinct failure domains whenever at least `shard_count` domains have room.
3. Otherwise co-location is even: every domain with room is used, per-domain counts
   differ by at most one, and within a domain per-disk counts differ by at most one.
4. `survives_domain_losses` equals the brute-force answer: the largest `j` such that
   every set of `j` used domains holds at most `shard_count - needed` shards.
5. Read plans: decodable (a decode names exactly `k` distinct shards; a plain read
   names exactly the wanted data shards), never a down disk, a wanted shard on a
   down disk always forces a decode, and a hot shard is avoided whenever `k` cool
   live shards exist; too few live shards raise `NotEnoughShards`.
6. Determinism: the same map, calls and seed give the same placements.
Method: hypothesis; the brute force in (4) enumerates domain subsets. 300 examples
per property by default; CAIRN_DEEP=1 runs 10x.
"""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from common.placement import (
    Disk, DiskId, DiskMap, NoEligibleDisk, NotEnoughShards, Placement, Spreader, read_plan,
)

MiB = 1024 * 1024
EXAMPLES = 3000 if os.environ.get("CAIRN_DEEP") == "1" else 300


@st.composite
def disk_maps(draw) -> DiskMap:
    hosts = draw(st.integers(0, 9))
    loners = draw(st.integers(0 if hosts else 1, 4))
    disks = []
    layout = [(f"h{h}", draw(st.integers(1, 4))) for h in range(hosts)] + [(None, 1)] * loners
    for number, (host, count) in enumerate(layout):
        for index in range(count):
            disks.append(Disk(
                disk_id=DiskId(f"d{number}.{index}"), host=host,
                capacity_bytes=draw(st.sampled_from([100 * MiB, 400 * MiB, 1000 * MiB])),
                fill_ratio=draw(st.one_of(st.floats(0, 0.97), st.sampled_from([0.0, 0.979, 0.98, 0.99, 1.0]))),
                read_bytes_per_s=draw(st.sampled_from([0.0, 1e5, 1e6, 5e6, 5e7])),
                write_bytes_per_s=draw(st.sampled_from([0.0, 1e5, 1e6, 5e6])),
                in_flight=draw(st.integers(0, 8)),
                up=draw(st.booleans().map(lambda down: not down) if draw(st.integers(0, 4)) == 0 else st.just(True))))
    return DiskMap(disks)


codes = st.tuples(st.integers(1, 6), st.integers(0, 3))


def check_placement(spreader: Spreader, placement: Placement, shard_count: int, size: int,
                    room_before: dict) -> None:
    disk_map = spreader.disk_map
    disks = [disk_map.get(disk_id) for disk_id in placement.disks]
    assert len(disks) == shard_count
    for disk_id, count in Counter(placement.disks).items():
        assert disk_map.get(disk_id).up
        assert room_before[disk_id] >= count, "chose a disk without room for the shard"
    domains = Counter(disk.domain for disk in disks)
    assert tuple(disk.domain for disk in disks) == placement.domains
    domains_with_room = {disk.domain for disk in disk_map.disks.values() if room_before[disk.disk_id] >= 1}
    if len(domains_with_room) >= shard_count:
        assert len(domains) == shard_count, "shards share a domain though enough domains had room"
    elif all(room_before[disk.disk_id] >= shard_count for disk in disk_map.disks.values()
             if room_before[disk.disk_id] >= 1):
        # Co-location forced: even over every domain with room, and over its disks.
        assert set(domains) == domains_with_room
        assert max(domains.values()) - min(domains.values()) <= 1
        per_disk = Counter(placement.disks)
        for domain in domains:
            counts = [per_disk.get(disk.disk_id, 0) for disk in disk_map.disks.values()
                      if disk.domain == domain and room_before[disk.disk_id] >= 1]
            assert max(counts) - min(counts) <= 1
    redundancy = shard_count - placement.needed
    brute = max(j for j in range(len(domains) + 1)
                if all(sum(domains[d] for d in lost) <= redundancy for lost in itertools.combinations(domains, j)))
    assert placement.survives_domain_losses == brute
    assert placement.full_durability == (brute == redundancy)


def room(spreader: Spreader, size: int, shard_count: int) -> dict:
    """How many more shards of `size` each disk can take now (capped at shard_count)."""
    answer = {}
    for disk in spreader.disk_map.disks.values():
        fits = 0
        if size == 0:
            fits = shard_count if spreader.has_room(disk, 0) else 0
        else:
            while fits < shard_count and spreader.has_room(disk, size * (fits + 1)):
                fits += 1
        answer[disk.disk_id] = fits
    return answer


@settings(max_examples=EXAMPLES, deadline=None)
@given(disk_map=disk_maps(), code=codes, copies=st.booleans(), seed=st.integers(0, 2**32),
       sizes=st.lists(st.sampled_from([0, 1, MiB, 30 * MiB]), min_size=1, max_size=4))
def test_placements(disk_map, code, copies, seed, sizes):
    k, m = code
    spreader = Spreader(disk_map, k=k, m=m)
    rng = random.Random(seed)
    shard_count = m + 1 if copies else k + m
    for size in sizes:
        room_before = room(spreader, size, shard_count)
        if sum(room_before.values()) < shard_count:
            with pytest.raises(NoEligibleDisk):
                spreader.place(shard_count, rng, shard_size_bytes=size)
            assert room(spreader, size, shard_count) == room_before, "a refused placement charged disks"
            continue
        placement = spreader.place(shard_count, rng, shard_size_bytes=size)
        check_placement(spreader, placement, shard_count, size, room_before)


@settings(max_examples=EXAMPLES, deadline=None)
@given(disk_map=disk_maps(), code=codes, copies=st.booleans(), seed=st.integers(0, 2**32), data=st.data())
def test_read_plans(disk_map, code, copies, seed, data):
    k, m = code
    try:
        placement = Spreader(disk_map, k=k, m=m).place(m + 1 if copies else k + m, random.Random(seed))
    except NoEligibleDisk:
        return
    # Heat and liveness at read time differ from placement time.
    changed = DiskMap(
        Disk(disk.disk_id, disk.host, disk.capacity_bytes, disk.fill_ratio,
             read_bytes_per_s=data.draw(st.sampled_from([0.0, 1e6, 3e6, 1e8])),
             up=data.draw(st.sampled_from([True, True, True, False])))
        for disk in disk_map.disks.values())
    wanted = data.draw(st.sets(st.integers(0, placement.needed - 1), min_size=1))
    live = [i for i, disk_id in enumerate(placement.disks) if changed.get(disk_id).up]
    if len(live) < placement.needed:
        with pytest.raises(NotEnoughShards):
            read_plan(placement, wanted, changed)
        return
    plan = read_plan(placement, wanted, changed)
    for index in plan.shards:
        assert changed.get(placement.disks[index]).up
    hot = changed.hot_threshold_bytes_per_s()
    cool_live = [i for i in live if changed.get(placement.disks[i]).load_bytes_per_s <= hot]
    if placement.copies:
        assert len(plan.shards) == 1 and not plan.decode
        return
    if plan.decode:
        assert len(set(plan.shards)) == len(plan.shards) == placement.needed
    else:
        assert set(plan.shards) == wanted
    if any(i not in live for i in wanted):
        assert plan.decode
    if len(cool_live) >= placement.needed:
        assert all(i in cool_live for i in plan.shards), "read a hot shard though k cool ones were live"


@settings(max_examples=EXAMPLES // 3, deadline=None)
@given(disk_map=disk_maps(), code=codes, seed=st.integers(0, 2**32))
def test_deterministic(disk_map, code, seed):
    k, m = code

    def run():
        spreader, rng, out = Spreader(disk_map, k=k, m=m), random.Random(seed), []
        for size in (MiB, 0, 7 * MiB, MiB):
            try:
                out.append(spreader.place(k + m, rng, shard_size_bytes=size))
            except NoEligibleDisk as error:
                out.append(str(error))
        return out

    assert run() == run()

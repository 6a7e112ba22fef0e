"""Property: on the same bursty workload and cluster, the heat-aware spreader's peak/mean
disk heat is lower than naive hash placement's, and it sends fewer bytes to nearly
full disks (DESIGN §8).

Method: a small configuration of `shardstore.placement_sim` (a few seconds), and the
command line's `--help`.
"""

from __future__ import annotations

import pytest

from shardstore import placement_sim
from shardstore.placement_sim import SimConfig, run


def test_spreader_beats_naive_on_a_small_cluster():
    config = SimConfig(hosts=60, disks_per_host=8, down_hosts=1, tenants=6, ticks=20, warmup_ticks=5,
                       objects_per_tick=150, frontends=4, seed=3)
    results, facts = run(config)
    spreader, naive = results["spreader"], results["naive"]
    assert facts["placements"] > 1000
    assert spreader.refused == naive.refused == 0 and spreader.co_located == 0
    assert spreader.peak_mean < naive.peak_mean
    assert spreader.bytes_to_high_fill <= naive.bytes_to_high_fill


def test_help(capsys):
    with pytest.raises(SystemExit) as exited:
        placement_sim.main(["--help"])
    assert exited.value.code == 0
    assert "peak/mean" in capsys.readouterr().out

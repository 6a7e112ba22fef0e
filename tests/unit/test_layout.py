"""The data layout in the cluster TOML (common/layout.py) and the one `cairn dev` writes.

- deploy/cluster.example.toml, the file users copy, parses: three metadata nodes,
  RS 4+2 over six disks in two shardstore processes;
- a broken layout is refused with a message naming the file and the problem;
- `cairn dev` regenerates cluster.toml at every start with fresh ports but keeps every
  disk's id, path, domain and state (what `cairn disk` edited), whichever process
  grouping is asked for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.layout import OUT, LayoutWatcher, load_layout, parse_layout
from deploy.cluster_dev import write_cluster_toml
from journal.server import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_layout_parses():
    path = str(ROOT / "deploy" / "cluster.example.toml")
    layout = load_layout(path)
    assert (layout.k, layout.m) == (4, 2)
    assert [disk.id for disk in layout.disks()] == [f"d{i}" for i in range(6)]
    assert len(layout.stores) == 2 and len({disk.domain for disk in layout.disks()}) == 6
    assert len(load_config(path).nodes) == 3


@pytest.mark.parametrize("table,problem", [
    ({"data": {"ec_k": 0}, "shardstores": [{"name": "s", "data_address": "h:1", "disks": [{"id": "a"}]}]}, "ec_k"),
    ({"shardstores": [{"name": "s", "data_address": "h:1", "disks": [{"id": "a"}, {"id": "a"}]}]}, "twice"),
    ({"shardstores": [{"name": "s", "data_address": "h:1", "disks": [{"id": "a", "state": "gone"}]}]}, "state"),
    ({"shardstores": [{"name": "s", "data_address": "h:1", "disks": [{"id": "a", "state": "out"}]}]}, "no disk"),
    ({"shardstores": [{"name": "s", "data_address": "h:1", "disks": [{"id": "a"}]},
                      {"name": "s", "data_address": "h:2", "disks": [{"id": "b"}]}]}, "unique"),
])
def test_broken_layouts_are_refused_with_the_reason(table, problem):
    with pytest.raises(ValueError, match=problem):
        parse_layout(table, "x.toml")


def test_cairn_dev_keeps_disks_and_their_states_across_starts(tmp_path):
    path = write_cluster_toml(tmp_path)
    first = load_layout(str(path))
    assert len(first.stores) == 2 and len(first.disks()) == 6
    text = path.read_text().replace('domain = "disk:d3"\nstate = "in"', 'domain = "disk:d3"\nstate = "out"')
    path.write_text(text)
    watcher = LayoutWatcher(str(path))
    assert watcher.layout.disk("d3").state == OUT
    again = load_layout(str(write_cluster_toml(tmp_path, process_per_disk=True)))
    assert len(again.stores) == 6
    assert [(d.id, d.path, d.domain, d.state) for d in again.disks(include_out=True)] == \
        [(d.id, d.path, d.domain, d.state) for d in watcher.layout.disks(include_out=True)]
    assert again.disk("d3").state == OUT

"""`cairn disk remove` / `cairn disk add` edit the cluster TOML's layout in place.

Properties: the edited file parses to exactly the intended layout (the disk out, or
the new disk appended to its store), keeps every other line and comment, and is
replaced atomically; refused edits (unknown disk, reused id, unknown store, the
last disk in) leave the file byte for byte unchanged and say what to do next.
Method: deploy/admin.py's functions on a temp file, checked with common/layout.py.
"""

from __future__ import annotations

import pytest

from common.layout import OUT, load_layout
from deploy import admin

CLUSTER = """# a cluster
[[nodes]]
id = 0
host = "127.0.0.1"
port = 7100
data_dir = "/srv/meta0"

[data]
ec_k = 1
ec_m = 1

[[shardstores]]
name = "store-0"
data_address = "127.0.0.1:7200"   # framed

[[shardstores.disks]]
id = "d0"   # the first disk
path = "/srv/d0"

[[shardstores.disks]]
id = "d1"
path = "/srv/d1"
state = "in"   # keep me

[[shardstores]]
name = "store-1"
data_address = "127.0.0.1:7300"

[[shardstores.disks]]
id = "d2"
path = "/srv/d2"

[limits]
REAP_DELAY_MS = 1000
"""


@pytest.fixture
def cluster(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    return path


def test_remove_marks_the_disk_out_and_keeps_the_rest(cluster):
    message = admin.remove_disk(str(cluster), "d1")
    assert "marked out" in message
    layout = load_layout(str(cluster))
    assert [(disk.id, disk.state) for disk in layout.disks(include_out=True)] == [("d0", "in"), ("d1", OUT), ("d2", "in")]
    text = cluster.read_text()
    assert 'state = "out"   # keep me' in text and "# the first disk" in text and "REAP_DELAY_MS = 1000" in text
    admin.remove_disk(str(cluster), "d0")                   # a disk without a state line gets one
    assert load_layout(str(cluster)).disk("d0").state == OUT
    assert "already out" in admin.remove_disk(str(cluster), "d0")


def test_add_appends_to_the_named_store(cluster):
    admin.add_disk(str(cluster), "d3", path_on_disk="/srv/d3", store="store-0", domain="rack-2")
    layout = load_layout(str(cluster))
    added = layout.disk("d3")
    assert (added.store, added.path, added.domain, added.state) == ("store-0", "/srv/d3", "rack-2", "in")
    assert [disk.id for disk in layout.stores[0].disks] == ["d0", "d1", "d3"]
    admin.add_disk(str(cluster), "d4", path_on_disk="/srv/d4", store="store-1")
    assert [disk.id for disk in load_layout(str(cluster)).stores[1].disks] == ["d2", "d4"]
    assert "REAP_DELAY_MS = 1000" in cluster.read_text()


@pytest.mark.parametrize("edit, hint", [
    (lambda path: admin.remove_disk(path, "d9"), "cairn status"),
    (lambda path: admin.add_disk(path, "d1", path_on_disk="/x", store="store-0"), "never reused"),
    (lambda path: admin.add_disk(path, "d5", path_on_disk="/x", store="nope"), "no shardstore"),
    (lambda path: admin.add_disk(path, "bad id", path_on_disk="/x", store="store-0"), "letters"),
])
def test_refused_edits_change_nothing_and_say_what_to_do(cluster, edit, hint):
    with pytest.raises(admin.AdminError, match=hint):
        edit(str(cluster))
    assert cluster.read_text() == CLUSTER


def test_the_last_disk_in_cannot_be_removed(cluster):
    admin.remove_disk(str(cluster), "d0")
    admin.remove_disk(str(cluster), "d1")
    before = cluster.read_text()
    with pytest.raises(admin.AdminError, match="last disk"):
        admin.remove_disk(str(cluster), "d2")
    assert cluster.read_text() == before


def test_a_missing_file_says_where_to_find_one(tmp_path):
    with pytest.raises(admin.AdminError, match="cluster.toml"):
        admin.remove_disk(str(tmp_path / "nope.toml"), "d0")

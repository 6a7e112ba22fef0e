"""The data layout: which shardstore processes serve which disks, and the erasure code (DESIGN §8, §12).

Read from the cluster TOML (the same file that names the metadata nodes) by every
role that touches shards: the frontend's BlobStore, the reaper, the sweep, repair,
`cairn status` and `cairn disk`. The file is the disk map of this first version:
`cairn disk remove` marks a disk `out` (lost for good: repair moves its shards
elsewhere, placement never picks it), `cairn disk add` appends one; readers reload
it when it changes (`LayoutWatcher`). A disk that is merely unreachable stays `in`
— reads and writes route around it at once — until an operator removes it.

    [data]
    ec_k = 4                       # data shards per stripe
    ec_m = 2                       # parity shards; small objects get ec_m + 1 copies

    [[shardstores]]                # one process; production runs one per disk
    name = "store-0"
    host = "10.0.0.5"              # the failure domain of its disks unless a disk names one
    data_address = "10.0.0.5:7200" # the framed data protocol (cairn shardstore --data-listen)
    grpc_address = "10.0.0.5:7201" # control: Stat, Scrub, Compact (--listen)

    [[shardstores.disks]]
    id = "d0"                      # unique in the cluster, never reused
    path = "/srv/disk0/cairn"
    domain = "rack1-host5"         # optional, default "host:<host>"
    state = "in"                   # "in" or "out"

Invariants (checked on load, ValueError naming the file and the problem): disk ids
and store names unique; k >= 1, m >= 0, k + m <= 255; at least one disk `in`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass

IN = "in"
OUT = "out"


@dataclass(frozen=True)
class DiskSpec:
    id: str
    store: str            # the name of the shardstore process serving it
    data_address: str     # that process's framed data address
    grpc_address: str
    path: str
    domain: str
    state: str = IN


@dataclass(frozen=True)
class StoreSpec:
    name: str
    host: str
    data_address: str
    grpc_address: str
    disks: tuple[DiskSpec, ...]


@dataclass(frozen=True)
class DataLayout:
    k: int
    m: int
    stores: tuple[StoreSpec, ...]

    def disks(self, *, include_out: bool = False) -> tuple[DiskSpec, ...]:
        return tuple(disk for store in self.stores for disk in store.disks if include_out or disk.state == IN)

    def disk(self, disk_id: str) -> DiskSpec | None:
        for disk in self.disks(include_out=True):
            if disk.id == disk_id:
                return disk
        return None


def parse_layout(table: dict, source: str = "<layout>") -> DataLayout | None:
    """The layout in a parsed cluster TOML, or None when it has no [[shardstores]]."""
    data = table.get("data", {})
    raw_stores = table.get("shardstores", [])
    if not raw_stores:
        return None
    k, m = int(data.get("ec_k", 4)), int(data.get("ec_m", 2))
    if not (k >= 1 and m >= 0 and k + m <= 255):
        raise ValueError(f"{source}: [data] needs ec_k >= 1, ec_m >= 0 and ec_k + ec_m <= 255, got {k}+{m}")
    stores = []
    seen_disks: set[str] = set()
    for raw in raw_stores:
        name, host = str(raw["name"]), str(raw.get("host", "127.0.0.1"))
        data_address, grpc_address = str(raw["data_address"]), str(raw.get("grpc_address", ""))
        disks = []
        for disk in raw.get("disks", []):
            disk_id = str(disk["id"])
            state = str(disk.get("state", IN))
            if disk_id in seen_disks:
                raise ValueError(f"{source}: disk id {disk_id!r} appears twice")
            if state not in (IN, OUT):
                raise ValueError(f"{source}: disk {disk_id!r} has state {state!r}; use \"in\" or \"out\"")
            seen_disks.add(disk_id)
            disks.append(DiskSpec(disk_id, name, data_address, grpc_address, str(disk.get("path", "")),
                                  str(disk.get("domain", f"host:{host}")), state))
        stores.append(StoreSpec(name, host, data_address, grpc_address, tuple(disks)))
    if len({store.name for store in stores}) != len(stores):
        raise ValueError(f"{source}: shardstore names must be unique")
    layout = DataLayout(k, m, tuple(stores))
    if not layout.disks():
        raise ValueError(f"{source}: no disk is \"in\"")
    return layout


def load_layout(path: str) -> DataLayout | None:
    with open(path, "rb") as file:
        return parse_layout(tomllib.load(file), path)


class LayoutWatcher:
    """Reloads a layout file when its mtime changes; `current()` never raises after the
    first load (a broken edit keeps the last good layout and is reported once)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime = os.stat(path).st_mtime_ns
        self.layout = load_layout(path)
        self.error: str | None = None

    def poll(self) -> bool:
        """True when a changed, valid layout was loaded."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime == self._mtime:
                return False
            layout = load_layout(self.path)
        except (OSError, ValueError, tomllib.TOMLDecodeError, KeyError) as error:
            self.error = f"{self.path}: {error}"
            return False
        self._mtime, self.layout, self.error = mtime, layout, None
        return True

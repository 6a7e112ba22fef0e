"""Operator commands on a running cluster: `cairn status` and `cairn disk remove|add` (DESIGN §12, §14).

    cairn status --cluster FILE
        disks (id, store, failure domain, state in/out, reachable, fill, live share, heat in
        bytes/s read and written, corrupt shards found), metadata nodes reachable,
        and objects below full redundancy: data ids `R` lists under DEGRADED plus
        those on `out` disks (each counted once).
    cairn disk remove ID --cluster FILE
        mark disk ID `out` (lost for good): repair moves its shards elsewhere and
        placement never picks it again. The id is never reused.
    cairn disk add ID --path P --store NAME [--domain D] --cluster FILE
        append disk ID to shardstore process NAME; that process must then be
        restarted with `--disk ID=P` to serve it (`cairn dev` does so itself: it
        follows the file).

The layout is the `[[shardstores]]` part of the cluster TOML (common/layout.py),
the disk map of this first version; every process that touches shards reloads it
when it changes. Edits keep the file's text and comments: the changed file is
parsed and checked (the disk's new state, or the new disk in its store) before it
replaces the old one atomically (a temp file in the same directory, fsynced, then
renamed). `deploy/cli.py` wires `add_commands` and `run` into `cairn`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import shlex
import sys
import tempfile
import tomllib
from dataclasses import dataclass

from common.layout import IN, OUT, DataLayout, parse_layout
from common.limits import DEFAULT_LIMITS

_DISK_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")   # as `cairn shardstore --disk ID=PATH` accepts
_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")


class AdminError(Exception):
    """What went wrong and what to do next; the command prints it and exits 2."""


DEFAULT_DATA_DIR = "./cairn-data"           # `cairn dev`'s, when no --data-dir is given
DEFAULT_CLUSTER_FILE = f"{DEFAULT_DATA_DIR}/cluster.toml"


def add_commands(subparsers) -> None:
    status = subparsers.add_parser(
        "status", help="show disks, metadata nodes and objects below full redundancy",
        description="Show every disk of the cluster's data layout (store, failure domain, state in/out, reachable, "
                    "fill, share of its extents' bytes still live, heat in bytes/s read and written, corrupt shards "
                    "found), whether each metadata node "
                    "answers, and how many objects are below full redundancy (awaiting repair).")
    status.add_argument("--cluster", default=DEFAULT_CLUSTER_FILE, metavar="FILE",
                        help="the cluster TOML ([[nodes]] and [[shardstores]]; `cairn dev` writes DATA_DIR/cluster.toml; "
                             f"default {DEFAULT_CLUSTER_FILE}, that of `cairn dev`'s default data dir). Exits 0 when "
                             "every disk in service and every metadata node answers, 1 otherwise")
    status.add_argument("--timeout", type=float, default=2.0, metavar="S",
                        help="seconds to wait for each disk and node (default 2)")
    disk = subparsers.add_parser(
        "disk", help="change the disk map: mark a disk out, or add one",
        description="Change the data layout in the cluster TOML in place (atomically). "
                    "`remove` marks a disk out for good: repair moves its shards elsewhere. "
                    "`add` appends a new disk to a shardstore process.")
    actions = disk.add_subparsers(dest="disk_command", metavar="ACTION")
    remove = actions.add_parser("remove", help="mark disk ID out (lost for good); repair moves its shards",
                                description="Mark disk ID out in the cluster TOML. Repair then rebuilds every shard "
                                            "it held on other disks; placement never picks it again. Irreversible "
                                            "by design: disk ids are never reused (add a new disk instead).")
    remove.add_argument("id", metavar="ID", help="the disk id, as `cairn status` lists it")
    remove.add_argument("--cluster", default=DEFAULT_CLUSTER_FILE, metavar="FILE",
                        help=f"the cluster TOML to edit (default {DEFAULT_CLUSTER_FILE})")
    add = actions.add_parser("add", help="append a new disk to a shardstore process",
                             description="Append disk ID to shardstore process NAME in the cluster TOML. Then "
                                         "restart that process with --disk ID=PATH so it serves the disk; placement "
                                         "and repair use it once it answers.")
    add.add_argument("id", metavar="ID", help="a new disk id (letters, digits, _ . : -; never one used before)")
    add.add_argument("--path", required=True, help="the directory on the disk the shardstore will use")
    add.add_argument("--store", required=True, metavar="NAME", help="the [[shardstores]] name serving it")
    add.add_argument("--domain", help="its failure domain (default: host:<the store's host>)")
    add.add_argument("--cluster", default=DEFAULT_CLUSTER_FILE, metavar="FILE",
                     help=f"the cluster TOML to edit (default {DEFAULT_CLUSTER_FILE})")


def run(arguments: argparse.Namespace) -> int:
    prog = f"cairn {arguments.command}"
    try:
        if arguments.command == "status":
            import uvloop

            report = uvloop.run(status_report(arguments.cluster, arguments.timeout))
            print(report.text)
            return 0 if report.healthy else 1
        if arguments.command == "disk":
            prog += f" {arguments.disk_command or ''}".rstrip()
            if arguments.disk_command == "remove":
                print(remove_disk(arguments.cluster, arguments.id))
                return 0
            if arguments.disk_command == "add":
                print(add_disk(arguments.cluster, arguments.id, path_on_disk=arguments.path, store=arguments.store,
                               domain=arguments.domain))
                return 0
            raise AdminError("say what to do: `cairn disk remove ID --cluster FILE` or "
                             "`cairn disk add ID --path P --store NAME --cluster FILE` (see --help)")
        raise AdminError(f"unknown command {arguments.command!r}")
    except AdminError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------- loading


def _load(path: str) -> tuple[str, DataLayout]:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise AdminError(f"{path}: no such file. Give --cluster FILE: `cairn dev` writes DATA_DIR/cluster.toml.") \
            from None
    except OSError as error:
        raise AdminError(f"{path}: cannot read it: {error.strerror or error}") from None
    layout = _parse(text, path)
    if layout is None:
        raise AdminError(f"{path} has no [[shardstores]]: it names no disks. Add the data layout "
                         f"(see common/layout.py for the format) first.")
    return text, layout


def _parse(text: str, path: str) -> DataLayout | None:
    try:
        return parse_layout(tomllib.loads(text), path)
    except tomllib.TOMLDecodeError as error:
        raise AdminError(f"{path} is not valid TOML ({error}); fix it by hand first") from None
    except (ValueError, KeyError, TypeError) as error:
        raise AdminError(f"{path}: the layout is invalid: {error}") from None


# ---------------------------------------------------------------------- disk remove / add


def _tables(lines: list[str]) -> list[tuple[int, str]]:
    """(line number, table name) of every [table] and [[array]] header."""
    found = []
    for number, line in enumerate(lines):
        match = _HEADER.match(line)
        if match and not line.lstrip().startswith("#"):
            found.append((number, match.group(1).replace(" ", "")))
    return found


def _block_end(lines: list[str], tables: list[tuple[int, str]], start: int) -> int:
    following = [number for number, _ in tables if number > start]
    return following[0] if following else len(lines)


def _value(lines: list[str], start: int, end: int, key: str) -> tuple[int, str] | None:
    pattern = re.compile(rf"^\s*{key}\s*=\s*(\"[^\"]*\"|'[^']*')\s*(#.*)?$")
    for number in range(start + 1, end):
        match = pattern.match(lines[number])
        if match:
            return number, match.group(1)[1:-1]
    return None


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o777
    descriptor, temporary = tempfile.mkstemp(prefix=".cluster-", suffix=".toml", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def remove_disk(path: str, disk_id: str) -> str:
    text, layout = _load(path)
    disk = layout.disk(disk_id)
    if disk is None:
        known = ", ".join(d.id for d in layout.disks(include_out=True))
        raise AdminError(f"{path} has no disk {disk_id!r} (it has {known}); `cairn status --cluster {path}` lists them")
    if disk.state == OUT:
        return f"disk {disk_id} is already out; repair moves its shards (see `cairn status --cluster {path}`)"
    if [d.id for d in layout.disks()] == [disk_id]:
        raise AdminError(f"{disk_id} is the last disk in; add another first (`cairn disk add`)")
    lines = text.splitlines(keepends=True)
    tables = _tables(lines)
    for start, name in tables:
        if name != "shardstores.disks":
            continue
        end = _block_end(lines, tables, start)
        found = _value(lines, start, end, "id")
        if found is None or found[1] != disk_id:
            continue
        state = _value(lines, start, end, "state")
        if state is not None:
            lines[state[0]] = re.sub(r"=\s*(\"[^\"]*\"|'[^']*')", '= "out"', lines[state[0]], count=1)
        else:
            lines.insert(found[0] + 1, 'state = "out"\n')
        break
    edited = "".join(lines)
    changed = _parse(edited, path)
    if changed is None or changed.disk(disk_id) is None or changed.disk(disk_id).state != OUT or \
            len(changed.disks(include_out=True)) != len(layout.disks(include_out=True)):
        raise AdminError(f"could not find disk {disk_id}'s [[shardstores.disks]] table in {path} to edit (inline "
                         f"tables are not edited); set state = \"out\" on it by hand")
    _write_atomically(path, edited)
    return (f"disk {disk_id} marked out in {path}. Repair (`python -m index.maintain`) now rebuilds its shards "
            f"elsewhere; `cairn status --cluster {path}` shows objects below full redundancy until it is done.")


def add_disk(path: str, disk_id: str, *, path_on_disk: str, store: str, domain: str | None = None) -> str:
    text, layout = _load(path)
    if not _DISK_ID.fullmatch(disk_id):
        raise AdminError(f"bad disk id {disk_id!r}: use 1-64 letters, digits, _ . : -")
    if layout.disk(disk_id) is not None:
        raise AdminError(f"disk id {disk_id!r} is already in {path} (state {layout.disk(disk_id).state}); disk ids are "
                         f"never reused: pick a new one")
    if not path_on_disk:
        raise AdminError("--path names no directory")
    names = [spec.name for spec in layout.stores]
    if store not in names:
        raise AdminError(f"{path} has no shardstore {store!r} (it has {', '.join(names)})")
    lines = text.splitlines(keepends=True)
    tables = _tables(lines)
    insert_at = None
    for index, (start, name) in enumerate(tables):
        if name != "shardstores":
            continue
        found = _value(lines, start, _block_end(lines, tables, start), "name")
        if found is None or found[1] != store:
            continue
        insert_at = len(lines)
        for number, following in tables[index + 1:]:
            if not following.startswith("shardstores."):
                insert_at = number
                break
        break
    if insert_at is None:
        raise AdminError(f"could not find shardstore {store}'s [[shardstores]] table in {path}; add the disk by hand")
    while insert_at > 0 and not lines[insert_at - 1].strip():
        insert_at -= 1
    if insert_at > 0 and not lines[insert_at - 1].endswith("\n"):
        lines[insert_at - 1] += "\n"
    block = ["\n", "[[shardstores.disks]]\n", f"id = {json.dumps(disk_id)}\n", f"path = {json.dumps(path_on_disk)}\n"]
    if domain:
        block.append(f"domain = {json.dumps(domain)}\n")
    block.append(f'state = "{IN}"\n')
    lines[insert_at:insert_at] = block
    edited = "".join(lines)
    changed = _parse(edited, path)
    added = changed.disk(disk_id) if changed is not None else None
    if added is None or added.store != store or added.path != path_on_disk or added.state != IN or \
            len(changed.disks(include_out=True)) != len(layout.disks(include_out=True)) + 1:
        raise AdminError(f"could not append the disk to {store} in {path} safely; add it by hand")
    _write_atomically(path, edited)
    return (f"disk {disk_id} added to {store} in {path}. Next: restart shardstore process {store} with "
            f"--disk {disk_id}={path_on_disk} (with its other disks) so it serves it; placement and repair use it "
            f"once it answers.")


# ---------------------------------------------------------------------- status


@dataclasses.dataclass
class DiskStatus:
    id: str
    store: str
    domain: str
    state: str
    up: bool
    fill_ratio: float = 0.0
    live_ratio: float = 1.0                     # of the extents' bytes, those still referenced
    read_bytes_per_s: float = 0.0
    write_bytes_per_s: float = 0.0
    corrupt: int = 0
    error: str = ""


async def disk_statuses(layout: DataLayout, timeout_s: float) -> list[DiskStatus]:
    from shardstore.client import ShardClient

    clients = {store.name: ShardClient(store.data_address, limits=DEFAULT_LIMITS, connect_timeout_s=timeout_s)
               for store in layout.stores}

    async def one(disk) -> DiskStatus:
        status = DiskStatus(disk.id, disk.store, disk.domain, disk.state, up=False)
        try:
            stat = await clients[disk.store].stat(disk.id, timeout_s=timeout_s)
        except Exception as error:
            status.error = f"{type(error).__name__}: {error}"
            return status
        status.up = True
        status.fill_ratio, status.corrupt = stat.fill_ratio, stat.corrupt_count
        status.live_ratio = stat.live_bytes / stat.used_bytes if stat.used_bytes else 1.0
        status.read_bytes_per_s, status.write_bytes_per_s = stat.read_bytes_per_s, stat.write_bytes_per_s
        return status

    try:
        return list(await asyncio.gather(*(one(disk) for disk in layout.disks(include_out=True))))
    finally:
        await asyncio.gather(*(client.close() for client in clients.values()), return_exceptions=True)


async def node_reachable(host: str, port: int, timeout_s: float) -> bool:
    from common import framing
    from journal import journal_pb2
    from journal.server import KIND_STATUS

    client = framing.Client(host, port, connect_timeout_s=timeout_s, backoff_initial_s=0.05, backoff_max_s=0.2)
    try:
        await client.call(KIND_STATUS, journal_pb2.StatusRequest().SerializeToString(), timeout_s=timeout_s)
        return True
    except Exception:
        return False
    finally:
        await client.close()


async def below_full_redundancy(meta, out_disks: list[str]) -> tuple[int, int, int]:
    """(objects below full redundancy, of them DEGRADED in R, of them on out disks); each data id once."""
    from index.keys import DEGRADED_DISK

    page = DEFAULT_LIMITS.MAINTENANCE_PAGE
    seen: dict[str, set[bytes]] = {}
    for disk in [DEGRADED_DISK] + out_disks:
        found: set[bytes] = set()
        start = b""
        while True:
            entries = await meta.placements_on(disk, start, page)
            found.update(ref.data_id for ref, displaced_seq in entries if not displaced_seq)
            if len(entries) < page:
                break
            start = entries[-1][0].data_id
        seen[disk] = found
    degraded = seen.pop(DEGRADED_DISK)
    on_out = set().union(*seen.values()) if seen else set()
    return len(degraded | on_out), len(degraded), len(on_out)


def _rate(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}/s" if unit == "B" else f"{value:.1f} {unit}/s"
        value /= 1024
    return f"{value:.1f} GiB/s"


@dataclass(frozen=True)
class StatusReport:
    text: str
    healthy: bool           # every disk in service and every metadata node answered


async def status_report(path: str, timeout_s: float) -> StatusReport:
    _, layout = _load(path)
    try:
        from journal.server import load_config

        cluster = load_config(path)
    except (ValueError, KeyError) as error:
        raise AdminError(f"{path}: its metadata [[nodes]] are unusable: {error}") from None
    disks = await disk_statuses(layout, timeout_s)
    lines = [f"disks ({layout.k}+{layout.m}):",
             f"  {'ID':<10} {'STORE':<12} {'DOMAIN':<18} {'STATE':<5} {'REACH':<5} {'FILL':>6} {'LIVE':>6} "
             f"{'READ':>12} {'WRITTEN':>12} {'CORRUPT':>7}"]
    for disk in disks:
        if disk.up:
            lines.append(f"  {disk.id:<10} {disk.store:<12} {disk.domain:<18} {disk.state:<5} {'up':<5} "
                         f"{disk.fill_ratio:>6.1%} {disk.live_ratio:>6.1%} {_rate(disk.read_bytes_per_s):>12} "
                         f"{_rate(disk.write_bytes_per_s):>12} {disk.corrupt:>7}")
        else:
            lines.append(f"  {disk.id:<10} {disk.store:<12} {disk.domain:<18} {disk.state:<5} {'DOWN':<5} "
                         f"{'-':>6} {'-':>6} {'-':>12} {'-':>12} {'-':>7}  ({disk.error})")
    lines.append("  (FILL: of the disk; LIVE: of the bytes in its extents, those still referenced — "
                 "the background compactor gives the rest back)")
    nodes = cluster.nodes
    reachable = await asyncio.gather(*(node_reachable(node.host, node.port, timeout_s) for node in nodes))
    lines.append("metadata nodes: " + ", ".join(f"{node.id} {node.host}:{node.port} {'up' if up else 'DOWN'}"
                                                 for node, up in zip(nodes, reachable)))
    out_disks = [disk.id for disk in disks if disk.state == OUT]
    if not any(reachable):
        lines.append("objects below full redundancy: unknown (no metadata node answers; start them, e.g. `cairn dev`)")
    else:
        from index.client import ClusterMetadataStore
        from index.transport import JournalTransport

        limits = dataclasses.replace(DEFAULT_LIMITS, COMMIT_DEADLINE_MS=max(1, int(timeout_s * 1000)))
        meta = ClusterMetadataStore(JournalTransport({node.id: (node.host, node.port) for node in nodes}),
                                    limits=limits)
        try:
            total, degraded, on_out = await below_full_redundancy(meta, out_disks)
            lines.append(f"objects below full redundancy: {total} (degraded writes or co-located: {degraded}; "
                         f"with shards on out disks: {on_out})" + ("; repair is working on them" if total else ""))
        except Exception as error:
            lines.append(f"objects below full redundancy: unknown ({type(error).__name__}: {error})")
        finally:
            await meta.close()
    down = [disk.id for disk in disks if not disk.up and disk.state == IN]
    if not any(reachable) and not any(disk.up for disk in disks):
        data_dir = os.path.dirname(path) or "."
        lines.append(f"nothing answers at the addresses in {path}: the cluster is not running. Start it: "
                     f"`cairn dev --data-dir {shlex.quote(data_dir)}`")
    elif down:
        lines.append(f"disks in but unreachable: {', '.join(down)} — reads and writes route around them; if one is "
                     f"lost for good, `cairn disk remove ID --cluster {shlex.quote(path)}` starts repair")
    return StatusReport("\n".join(lines), healthy=all(reachable) and not down)

"""rclone, s3cmd, DuckDB and pyarrow against a real `cairn dev`, unchanged.

These are the S3 tools Cairn promises besides boto3 and the AWS CLI
(test_aws_cli.py). Each is driven the way its users drive it; each speaks S3 its
own way (its own signing, multipart sizes, listing calls and range reads).

Property: what a tool writes, it and boto3 read back byte for byte, and the
tool's own checks agree with the server.
- **rclone** (Debian's package; `.ci/run` installs it): `copy` of the awkward-names
  tree plus a 12 MiB file sent as 5 MiB multipart parts. Then `check` (sizes and
  MD5s) finds no difference, `copy` back gives the same tree, `cat` of a byte range
  gives those bytes, `sync` deletes what the source lacks, and `purge` leaves
  no bucket.
- **s3cmd**:
  - `sync` of the tree, then `ls -r` lists every name;
  - a 12 MiB `put` goes as 5 MiB parts, and its ETag is the multipart one;
  - `info` reports the MD5 of a single-part object and the owner's ACL, and
    `setacl --acl-private` succeeds;
  - `get`, `cp` and `mv` keep the bytes;
  - `del -r` and `rb` empty and remove the bucket.
- **pyarrow's S3FileSystem** (the AWS C++ SDK): a Parquet table written through it
  reads back equal, a 12 MiB stream does too, a seek-and-read returns the right
  slice, a recursive listing names what was written, and `delete_dir` removes
  the bucket.
- **DuckDB's httpfs**: `COPY ... TO 's3://...'` as Parquet, hive-partitioned
  Parquet and CSV; queries over them return the exact aggregates; `glob` lists
  the files.
Method: each tool runs as a subprocess with a clean environment: no AWS_* from
the host, and HOME in the test's directory. pyarrow and DuckDB run in a child
Python, so the AWS C++ SDK's threads and DuckDB's extension never share this
process. The child prints JSON, and the assertions are made here. Without rclone
on PATH its test skips with what to install; under CI (`CI` set) that is a
failure instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import AWKWARD_TREE, assert_same_tree, make_tree

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
S3CMD = ROOT / ".venv" / "bin" / "s3cmd"
MiB = 1024 * 1024
BIG_BYTES = 12 * MiB
PART_BYTES = 5 * MiB


def _big(path: Path) -> bytes:
    data = hashlib.shake_256(b"tools: a file sent in parts").digest(BIG_BYTES)
    path.write_bytes(data)
    return data


def _environment(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8", **extra}


def _run(command: list[str], environment: dict[str, str], *, check: bool = True, stdin: bytes | None = None,
         timeout_s: float = 180) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=environment, capture_output=True, input=stdin, timeout=timeout_s)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout.decode(errors='replace')[-3000:]}\n"
                             f"{result.stderr.decode(errors='replace')[-3000:]}")
    return result


def _multipart_etag(data: bytes, part_bytes: int) -> str:
    parts = [data[start:start + part_bytes] for start in range(0, len(data), part_bytes)]
    return f'"{hashlib.md5(b"".join(hashlib.md5(part).digest() for part in parts)).hexdigest()}-{len(parts)}"'


# ---------------------------------------------------------------- rclone

def _rclone(server, home: Path):
    path = shutil.which("rclone")
    if path is None:
        message = "rclone is not installed (Debian: apt-get install rclone); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    environment = _environment(
        home, RCLONE_CONFIG_CAIRN_TYPE="s3", RCLONE_CONFIG_CAIRN_PROVIDER="Other",
        RCLONE_CONFIG_CAIRN_ACCESS_KEY_ID=server.access_key, RCLONE_CONFIG_CAIRN_SECRET_ACCESS_KEY=server.secret_key,
        RCLONE_CONFIG_CAIRN_ENDPOINT=server.endpoint, RCLONE_CONFIG_CAIRN_REGION="us-east-1",
        RCLONE_CONFIG=str(home / "rclone.conf"))

    def rclone(*arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run([path, *arguments], environment, check=check)
    return rclone


def test_rclone_copy_check_sync_purge(server, client_factory, tmp_path):
    rclone = _rclone(server, tmp_path)
    source, target = tmp_path / "source", tmp_path / "target"
    make_tree(source)
    big = _big(source / "big part+file.bin")
    multipart = ("--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M")
    rclone("mkdir", "cairn:rclone-bucket")
    rclone("copy", str(source), "cairn:rclone-bucket/tree", *multipart)

    s3 = client_factory(server)
    head = s3.head_object(Bucket="rclone-bucket", Key="tree/big part+file.bin")
    assert head["ContentLength"] == BIG_BYTES and head["ETag"] == _multipart_etag(big, PART_BYTES)
    checked = rclone("check", str(source), "cairn:rclone-bucket/tree")
    assert b"0 differences found" in checked.stderr, checked.stderr
    sums = dict(reversed(line.split("  ", 1)) for line in rclone("md5sum", "cairn:rclone-bucket/tree").stdout.decode().splitlines())
    assert sums["plus+sign+.bin"] == hashlib.md5((source / "plus+sign+.bin").read_bytes()).hexdigest()

    rclone("copy", "cairn:rclone-bucket/tree", str(target))
    (source / "big part+file.bin").unlink()
    assert (target / "big part+file.bin").read_bytes() == big
    (target / "big part+file.bin").unlink()
    assert_same_tree(source, target)
    piece = rclone("cat", "cairn:rclone-bucket/tree/big part+file.bin", "--offset", str(PART_BYTES - 7), "--count", "100")
    assert piece.stdout == big[PART_BYTES - 7:PART_BYTES + 93]

    rclone("sync", str(source / "nested"), "cairn:rclone-bucket/tree")
    listed = sorted(rclone("lsf", "-R", "--files-only", "cairn:rclone-bucket").stdout.decode().splitlines())
    assert listed == sorted(f"tree/{name[len('nested/'):]}" for name in AWKWARD_TREE if name.startswith("nested/"))

    rclone("purge", "cairn:rclone-bucket")
    assert "rclone-bucket" not in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]


# ---------------------------------------------------------------- s3cmd

def test_s3cmd_sync_multipart_info_copy_move(server, client_factory, tmp_path):
    host = server.endpoint.split("://", 1)[1]
    config = tmp_path / "s3cfg"
    config.write_text(f"[default]\naccess_key = {server.access_key}\nsecret_key = {server.secret_key}\n"
                      f"host_base = {host}\nhost_bucket = {host}\nuse_https = False\nsignature_v2 = False\n"
                      "bucket_location = us-east-1\n")
    environment = _environment(tmp_path)

    def s3cmd(*arguments: str) -> str:
        return _run([str(S3CMD), "-c", str(config), *arguments], environment).stdout.decode("utf-8")

    source, target = tmp_path / "source", tmp_path / "target"
    make_tree(source)
    big_path = tmp_path / "big.bin"
    big = _big(big_path)
    s3cmd("mb", "s3://s3cmd-bucket")
    s3cmd("sync", f"{source}/", "s3://s3cmd-bucket/tree/")
    listing = s3cmd("ls", "-r", "s3://s3cmd-bucket/tree/")
    assert sorted(line.split("s3://s3cmd-bucket/tree/", 1)[1] for line in listing.splitlines()) == sorted(AWKWARD_TREE)
    s3cmd("sync", "s3://s3cmd-bucket/tree/", f"{target}/")
    assert_same_tree(source, target)

    s3cmd("put", "--multipart-chunk-size-mb=5", str(big_path), "s3://s3cmd-bucket/big.bin")
    s3 = client_factory(server)
    assert s3.head_object(Bucket="s3cmd-bucket", Key="big.bin")["ETag"] == _multipart_etag(big, PART_BYTES)
    info = s3cmd("info", "s3://s3cmd-bucket/tree/plus+sign+.bin")
    assert f"MD5 sum:   {hashlib.md5((source / 'plus+sign+.bin').read_bytes()).hexdigest()}" in info, info
    assert "ACL:       admin: FULL_CONTROL" in info and "CORS:      none" in info, info
    s3cmd("setacl", "--acl-private", "s3://s3cmd-bucket/tree/plus+sign+.bin")

    s3cmd("get", "s3://s3cmd-bucket/big.bin", str(tmp_path / "big-back.bin"))
    assert (tmp_path / "big-back.bin").read_bytes() == big
    s3cmd("cp", "s3://s3cmd-bucket/big.bin", "s3://s3cmd-bucket/copy/big.bin")
    s3cmd("mv", "s3://s3cmd-bucket/copy/big.bin", "s3://s3cmd-bucket/moved/big ü.bin")
    assert s3.get_object(Bucket="s3cmd-bucket", Key="moved/big ü.bin")["Body"].read() == big
    assert "KeyCount" in s3.list_objects_v2(Bucket="s3cmd-bucket", Prefix="copy/") \
        and s3.list_objects_v2(Bucket="s3cmd-bucket", Prefix="copy/")["KeyCount"] == 0

    s3cmd("del", "-r", "--force", "s3://s3cmd-bucket")
    s3cmd("rb", "s3://s3cmd-bucket")
    assert "s3cmd-bucket" not in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]


# ---------------------------------------------------------------- pyarrow and DuckDB, each in a child Python

PYARROW_SCRIPT = r"""
import hashlib, json, os, sys
import pyarrow as pa, pyarrow.fs as pafs, pyarrow.parquet as pq
fs = pafs.S3FileSystem(access_key=os.environ["KEY"], secret_key=os.environ["SECRET"], region="us-east-1",
                       endpoint_override=os.environ["ENDPOINT"], scheme="http",
                       allow_bucket_creation=True, allow_bucket_deletion=True)
out = {}
fs.create_dir("arrow-bucket")
rows = 500_000
table = pa.table({"id": pa.array(range(rows), pa.int64()), "name": [f"n{i % 977}" for i in range(rows)]})
pq.write_table(table, "arrow-bucket/data/table.parquet", filesystem=fs, row_group_size=50_000)
out["table_equal"] = pq.read_table("arrow-bucket/data/table.parquet", filesystem=fs).equals(table)
out["last_id"] = pq.read_table("arrow-bucket/data/table.parquet", filesystem=fs, columns=["id"]).column("id").to_pylist()[-1]
blob = hashlib.shake_256(b"arrow stream").digest(int(sys.argv[1]))
with fs.open_output_stream("arrow-bucket/stream.bin") as stream:
    for start in range(0, len(blob), 1 << 20):
        stream.write(blob[start:start + (1 << 20)])
with fs.open_input_stream("arrow-bucket/stream.bin") as stream:
    out["stream_equal"] = stream.read() == blob
with fs.open_input_file("arrow-bucket/stream.bin") as handle:
    handle.seek(5 * 1024 * 1024 + 3)
    out["slice_equal"] = handle.read(1000) == blob[5 * 1024 * 1024 + 3:5 * 1024 * 1024 + 1003]
out["files"] = sorted(info.path for info in fs.get_file_info(pafs.FileSelector("arrow-bucket", recursive=True))
                      if info.type == pafs.FileType.File)
fs.delete_dir("arrow-bucket")
out["buckets_after"] = sorted(info.path for info in fs.get_file_info(pafs.FileSelector("/")))
print(json.dumps(out))
"""

DUCKDB_SCRIPT = r"""
import glob, json, os
import duckdb, duckdb_extension_httpfs
extension = glob.glob(os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), "extensions", "*", "httpfs.duckdb_extension"))[0]
con = duckdb.connect()
con.execute(f"LOAD '{extension}'")
con.execute(f"CREATE SECRET cairn (TYPE s3, KEY_ID '{os.environ['KEY']}', SECRET '{os.environ['SECRET']}', "
            f"ENDPOINT '{os.environ['ENDPOINT'].split('://', 1)[1]}', URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')")
out = {}
con.execute("COPY (SELECT range AS id, range % 7 AS g, 'x' || range AS s FROM range(2000000)) TO 's3://duck-bucket/t.parquet' (FORMAT parquet)")
out["aggregate"] = list(con.execute("SELECT count(*), sum(id), count(DISTINCT g) FROM 's3://duck-bucket/t.parquet'").fetchone())
out["point"] = con.execute("SELECT s FROM 's3://duck-bucket/t.parquet' WHERE id = 1999999").fetchone()[0]
con.execute("COPY (SELECT range AS id, range % 3 AS part FROM range(90000)) TO 's3://duck-bucket/parts' (FORMAT parquet, PARTITION_BY (part))")
out["partitions"] = [list(row) for row in con.execute(
    "SELECT part, count(*), sum(id) FROM read_parquet('s3://duck-bucket/parts/*/*.parquet', hive_partitioning=true) "
    "GROUP BY part ORDER BY part").fetchall()]
con.execute("COPY (SELECT 1 AS a, 'q, \"quoted\"' AS b) TO 's3://duck-bucket/x.csv' (HEADER)")
out["csv"] = [list(row) for row in con.execute("SELECT * FROM 's3://duck-bucket/x.csv'").fetchall()]
out["files"] = sorted(row[0] for row in con.execute("SELECT file FROM glob('s3://duck-bucket/**')").fetchall())
print(json.dumps(out))
"""


def _child_python(server, home: Path, script: str, *arguments: str) -> dict:
    environment = _environment(home, KEY=server.access_key, SECRET=server.secret_key, ENDPOINT=server.endpoint,
                               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent",
                               AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    result = _run([sys.executable, "-c", script, *arguments], environment)
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def test_pyarrow_parquet_stream_and_ranges(server, client_factory, tmp_path):
    out = _child_python(server, tmp_path, PYARROW_SCRIPT, str(BIG_BYTES))
    assert out["table_equal"] and out["stream_equal"] and out["slice_equal"], out
    assert out["last_id"] == 500_000 - 1
    assert out["files"] == ["arrow-bucket/data/table.parquet", "arrow-bucket/stream.bin"]
    assert "arrow-bucket" not in out["buckets_after"]
    assert "arrow-bucket" not in [bucket["Name"] for bucket in client_factory(server).list_buckets()["Buckets"]]


def test_duckdb_parquet_partitions_csv(server, client_factory, tmp_path):
    client_factory(server).create_bucket(Bucket="duck-bucket")
    out = _child_python(server, tmp_path, DUCKDB_SCRIPT)
    rows = 2_000_000
    assert out["aggregate"] == [rows, rows * (rows - 1) // 2, 7]
    assert out["point"] == f"x{rows - 1}"
    expected = [[part, len(range(part, 90000, 3)), sum(range(part, 90000, 3))] for part in range(3)]
    assert out["partitions"] == expected
    assert out["csv"] == [[1, 'q, "quoted"']]
    assert "s3://duck-bucket/t.parquet" in out["files"] and "s3://duck-bucket/x.csv" in out["files"]
    assert sum(1 for name in out["files"] if name.startswith("s3://duck-bucket/parts/part=")) >= 3
    listed = client_factory(server).list_objects_v2(Bucket="duck-bucket")
    assert sorted(item["Key"] for item in listed["Contents"]) == sorted(name[len("s3://duck-bucket/"):] for name in out["files"])


def test_zz_server_logged_no_traceback(server):
    assert server.tracebacks() == [], server.stderr()[-5000:]

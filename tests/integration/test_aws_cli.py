"""The AWS CLI (v1, `.venv/bin/aws`) against a real `cairn dev`.

Property: the stock CLI works unchanged — `aws s3 sync` round-trips a tree whose
names have unicode, spaces, '+' and nested directories byte for byte; a 50 MiB
`aws s3 cp` goes up as a multipart upload with the CLI's default 8 MiB parts and
comes back identical; `aws s3 ls`, `aws s3 rm --recursive` and
`aws s3api head-object` report what the server holds.
Method: subprocesses with credentials in the environment and --endpoint-url;
the sync runs over HTTP and over HTTPS (where the CLI sends aws-chunked bodies
with checksum trailers), the trees are compared with filecmp.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import AWKWARD_TREE, assert_same_tree, make_tree

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / ".venv" / "bin" / "aws"
MiB = 1024 * 1024


@pytest.fixture(scope="module", params=["http", "https"])
def cli_server(request, tmp_path_factory, server_starter):
    with server_starter(tmp_path_factory.mktemp(f"cli-{request.param}"), tls=request.param == "https") as running:
        yield running


def aws(server, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(server.stderr_path.parent),
        "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true", "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
    }
    command = [str(AWS), "--endpoint-url", server.endpoint, *arguments]
    if server.ca_file:
        command[1:1] = ["--ca-bundle", server.ca_file]
    result = subprocess.run(command, env=environment, capture_output=True, timeout=150)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout.decode(errors='replace')}\n"
                             f"{result.stderr.decode(errors='replace')}")
    return result


def test_sync_round_trip_awkward_names(cli_server, tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    make_tree(source)
    aws(cli_server, "s3", "mb", "s3://sync-bucket")
    aws(cli_server, "s3", "sync", str(source), "s3://sync-bucket/tree")
    aws(cli_server, "s3", "sync", "s3://sync-bucket/tree", str(target))
    assert_same_tree(source, target)
    # A second sync in either direction finds nothing to do.
    assert aws(cli_server, "s3", "sync", str(source), "s3://sync-bucket/tree").stdout.strip() == b""
    assert aws(cli_server, "s3", "sync", "s3://sync-bucket/tree", str(target)).stdout.strip() == b""
    listing = aws(cli_server, "s3", "ls", "--recursive", "s3://sync-bucket/tree/").stdout.decode("utf-8")
    listed = sorted(line.split(None, 3)[3][len("tree/"):] for line in listing.splitlines() if line.strip())
    assert listed == sorted(AWKWARD_TREE)
    top = aws(cli_server, "s3", "ls", "s3://sync-bucket/tree/").stdout.decode("utf-8")
    assert "PRE nested/" in top and "PRE sp ace dir/" in top and "with space.txt" in top
    head = json.loads(aws(cli_server, "s3api", "head-object", "--bucket", "sync-bucket", "--key", "tree/plus+sign+.bin").stdout)
    data = (source / "plus+sign+.bin").read_bytes()
    assert head["ContentLength"] == len(data) and head["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    aws(cli_server, "s3", "rm", "--recursive", "s3://sync-bucket/tree/nested/")
    listing = aws(cli_server, "s3", "ls", "--recursive", "s3://sync-bucket/").stdout.decode("utf-8")
    assert "nested/" not in listing and "with space.txt" in listing
    aws(cli_server, "s3", "rm", "--recursive", "s3://sync-bucket/")
    assert aws(cli_server, "s3", "ls", "--recursive", "s3://sync-bucket/").stdout.strip() == b""
    aws(cli_server, "s3", "rb", "s3://sync-bucket")
    assert "sync-bucket" not in aws(cli_server, "s3", "ls").stdout.decode()


def test_multipart_cp_50_mib(cli_server, tmp_path):
    if cli_server.scheme == "https":
        pytest.skip("the 50 MiB copy runs once, over HTTP; HTTPS multipart is covered by test_s3_boto3")
    source = tmp_path / "big file+ü.bin"
    block = os.urandom(MiB)
    with open(source, "wb") as handle:
        for index in range(50):
            handle.write(hashlib.sha256(bytes([index])).digest() + block[32:])
    aws(cli_server, "s3", "mb", "s3://big-bucket")
    aws(cli_server, "s3", "cp", str(source), "s3://big-bucket/dir/big file+ü.bin")
    head = json.loads(aws(cli_server, "s3api", "head-object", "--bucket", "big-bucket", "--key", "dir/big file+ü.bin").stdout)
    assert head["ContentLength"] == 50 * MiB
    part_size = 8 * MiB
    parts = [source.read_bytes()[start:start + part_size] for start in range(0, 50 * MiB, part_size)]
    expected = hashlib.md5(b"".join(hashlib.md5(part).digest() for part in parts)).hexdigest()
    assert head["ETag"] == f'"{expected}-{len(parts)}"' and len(parts) == 7
    target = tmp_path / "back.bin"
    aws(cli_server, "s3", "cp", "s3://big-bucket/dir/big file+ü.bin", str(target))
    assert filecmp.cmp(source, target, shallow=False)
    aws(cli_server, "s3", "rm", "s3://big-bucket/dir/big file+ü.bin")
    result = aws(cli_server, "s3api", "head-object", "--bucket", "big-bucket", "--key", "dir/big file+ü.bin", check=False)
    assert result.returncode != 0 and b"404" in result.stderr


def test_zz_server_logged_no_traceback(cli_server):
    assert cli_server.tracebacks() == [], cli_server.stderr()[-5000:]

"""One `cairn dev` per data dir, and a `cairn dev` that leaves nothing behind.

Property:
- A second `cairn dev` on a data dir in use exits at once (status 2) and names
  the holder's pid. It writes nothing: cluster.toml stays byte for byte the same.
  The running cluster goes on serving. Before this, the second start rewrote
  cluster.toml with fresh ports, and the running frontends followed it to stores
  that did not exist.
- SIGHUP (the terminal closed) stops `cairn dev` cleanly, exit 0, with no child
  left. A SIGKILLed `cairn dev` takes its children down too, through the kernel's
  parent-death signal (deploy/supervisor.py step 5). Either way the data dir is
  free again, and the next start serves what the last one stored. `cairn status`
  exits 0 while everything answers; once stopped it exits 1 and says the cluster
  is not running.
Method: real `cairn dev` processes on one data dir; the children are found
through /proc before the supervisor stops or dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CAIRN, start_server

pytestmark = pytest.mark.timeout(180)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _gone(pids: list[int], timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _status(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CAIRN), "status", "--cluster", str(directory / "data" / "cluster.toml")],
                          capture_output=True, timeout=60)


def test_a_second_cairn_dev_on_the_same_data_dir_is_refused(tmp_path, client_factory):
    with start_server(tmp_path) as running:
        s3 = client_factory(running)
        s3.create_bucket(Bucket="held")
        layout = (tmp_path / "data" / "cluster.toml").read_bytes()
        second = subprocess.run([str(CAIRN), "dev", "--port", "0", "--data-dir", str(tmp_path / "data")],
                                capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        assert second.returncode == 2, second.stderr.decode(errors="replace")
        message = second.stderr.decode()
        assert "is in use by another cairn dev" in message and f"(pid {running.process.pid})" in message, message
        assert (tmp_path / "data" / "cluster.toml").read_bytes() == layout
        s3.put_object(Bucket="held", Key="still-served", Body=b"x" * 70_000)
        assert s3.get_object(Bucket="held", Key="still-served")["Body"].read() == b"x" * 70_000


def test_sighup_and_sigkill_leave_no_process_and_free_the_data_dir(tmp_path, client_factory):
    with start_server(tmp_path) as running:
        s3 = client_factory(running)
        s3.create_bucket(Bucket="kept")
        s3.put_object(Bucket="kept", Key="k", Body=b"k" * 300_000)
        children = _children(running.process.pid)
        assert len(children) >= 7, children            # shardstores, metanodes, maintain, frontends
        assert _status(tmp_path).returncode == 0
        running.process.send_signal(signal.SIGHUP)
        assert running.process.wait(timeout=60) == 0
        assert _gone(children)
    stopped = _status(tmp_path)
    assert stopped.returncode == 1 and b"the cluster is not running" in stopped.stdout, stopped.stdout

    with pytest.raises(AssertionError, match="cairn dev exited -9"):       # start_server's own check
        with start_server(tmp_path) as running:
            s3 = client_factory(running)
            assert s3.get_object(Bucket="kept", Key="k")["Body"].read() == b"k" * 300_000
            children = _children(running.process.pid)
            os.kill(running.process.pid, signal.SIGKILL)
            running.process.wait(timeout=10)
            assert _gone(children), [pid for pid in children if Path(f"/proc/{pid}").exists()]

    with start_server(tmp_path) as running:
        assert client_factory(running).get_object(Bucket="kept", Key="k")["Body"].read() == b"k" * 300_000

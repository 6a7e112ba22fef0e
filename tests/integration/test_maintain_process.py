"""`python -m index.maintain` as the supervisor runs it.

Properties: it prints its readiness line `listening: maintain` once running, even
while metadata nodes and shardstores are unreachable (passes fail, are logged and
retried), and SIGTERM stops it cleanly (exit 0) within seconds; a cluster TOML
without a data layout is refused with exit 2 and a message saying what to do.
Method: a real subprocess on a cluster TOML whose addresses nobody listens on.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = '[[users]]\nname = "admin"\naccess_key = "admin-key"\nsecret_key = "admin-secret-key"\n'
NODES = "".join(f'[[nodes]]\nid = {node}\nhost = "127.0.0.1"\nport = {1 + node}\ndata_dir = "/tmp/none{node}"\n\n'
                for node in range(3))
LAYOUT = ('[[shardstores]]\nname = "store-0"\ndata_address = "127.0.0.1:9"\n\n'
          '[[shardstores.disks]]\nid = "d0"\npath = "/tmp/d0"\n')


def _start(tmp_path, cluster_text: str) -> subprocess.Popen:
    (tmp_path / "cairn.toml").write_text(CONFIG)
    (tmp_path / "cluster.toml").write_text(cluster_text)
    return subprocess.Popen([sys.executable, "-m", "index.maintain", "--config", str(tmp_path / "cairn.toml"),
                             "--cluster", str(tmp_path / "cluster.toml")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_ready_line_then_sigterm_stops_it_cleanly(tmp_path):
    process = _start(tmp_path, NODES + LAYOUT)
    try:
        assert process.stdout.readline().strip() == "listening: maintain"
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_cluster_without_a_layout_is_refused_with_a_hint(tmp_path):
    process = _start(tmp_path, NODES)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2 and "no [[shardstores]]" in stderr

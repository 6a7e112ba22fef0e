"""The supervisor starts children until ready, restarts the ones that die, and stops all.

Method: real child processes (tiny Python scripts) — one that prints its
readiness line and sleeps, one that dies before it is ready — and SIGKILL of a
running child, checking it is started again and becomes ready, and that stop()
leaves no child running. SIGKILL of a supervisor (a child Python running one)
must take its children down with it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from deploy import supervisor
from deploy.supervisor import ChildFailed, ProcessSpec, Supervisor

SLEEPER = "import sys, time; print('listening: 127.0.0.1:1', flush=True); time.sleep(60)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_restart_stop(monkeypatch):
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", 0.05)

    async def run():
        group = Supervisor([ProcessSpec("one", [sys.executable, "-c", SLEEPER]),
                            ProcessSpec("two", [sys.executable, "-c", SLEEPER])])
        ready = await group.start()
        assert ready == {"one": "127.0.0.1:1", "two": "127.0.0.1:1"}
        first = group.pid("one")
        os.kill(first, signal.SIGKILL)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if group.pid("one") != first and group.children[0].ready_line:
                break
        second = group.pid("one")
        assert second != first and _alive(second)
        assert group.children[0].restarts == 1
        await group.stop()
        await asyncio.sleep(0.1)
        assert not _alive(second) and not _alive(group.pid("two"))
    asyncio.run(run())


def test_stop_stops_the_clients_first_and_the_rest_once_they_are_gone(tmp_path):
    journal = tmp_path / "journal"
    script = ("import signal, sys, time\n"
              "name, linger = sys.argv[1], float(sys.argv[2])\n"
              "def term(*_):\n"
              "    open(sys.argv[3], 'a').write(name + ' term\\n')\n"
              "    time.sleep(linger)\n"
              "    open(sys.argv[3], 'a').write(name + ' exit\\n')\n"
              "    sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, term)\n"
              "print('listening: 127.0.0.1:1', flush=True)\n"
              "time.sleep(60)\n")

    async def run():
        group = Supervisor([ProcessSpec("server", [sys.executable, "-c", script, "server", "0", str(journal)]),
                            ProcessSpec("client", [sys.executable, "-c", script, "client", "0.3", str(journal)])])
        await group.start()
        await group.stop(first=["client"])
    asyncio.run(run())
    assert journal.read_text().split("\n")[:-1] == ["client term", "client exit", "server term", "server exit"]


def test_a_child_that_dies_before_ready_is_named():
    async def run():
        group = Supervisor([ProcessSpec("broken", [sys.executable, "-c", "print('cannot open disk'); raise SystemExit(3)"])])
        with pytest.raises(ChildFailed, match="broken exited with 3.*cannot open disk"):
            await group.start()
        await group.stop()
    asyncio.run(run())


def test_update_restarts_a_changed_child_and_starts_a_new_one(monkeypatch):
    """Step 4: the layout changed — one child's command line, and one more child."""
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", 0.05)
    other = SLEEPER.replace("127.0.0.1:1", "127.0.0.1:2")

    async def run():
        group = Supervisor([ProcessSpec("store", [sys.executable, "-c", SLEEPER])])
        await group.start()
        first = group.pid("store")
        await group.update(ProcessSpec("store", [sys.executable, "-c", SLEEPER]))     # unchanged: left alone
        assert group.pid("store") == first
        await group.update(ProcessSpec("store", [sys.executable, "-c", other]))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if group.pid("store") != first and group.children[0].ready_line == "127.0.0.1:2":
                break
        assert group.pid("store") != first and group.children[0].ready_line == "127.0.0.1:2"
        await group.update(ProcessSpec("new", [sys.executable, "-c", SLEEPER]))
        assert _alive(group.pid("new"))
        pids = [group.pid("store"), group.pid("new")]
        await group.stop()
        await asyncio.sleep(0.1)
        assert not any(_alive(pid) for pid in pids)
    asyncio.run(run())


def test_children_die_with_a_sigkilled_supervisor(tmp_path):
    """Step 5: no orphan outlives a killed supervisor (a killed `cairn dev`)."""
    script = (
        "import asyncio, sys\n"
        "from deploy.supervisor import ProcessSpec, Supervisor\n"
        f"SLEEPER = {SLEEPER!r}\n"
        "async def main():\n"
        "    group = Supervisor([ProcessSpec('a', [sys.executable, '-c', SLEEPER]),\n"
        "                        ProcessSpec('b', [sys.executable, '-c', SLEEPER])])\n"
        "    await group.start()\n"
        "    print(group.pid('a'), group.pid('b'), flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=root,
                              env=dict(os.environ, PYTHONPATH=root))
    try:
        pids = [int(pid) for pid in holder.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        holder.kill()
        holder.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids)
    finally:
        holder.kill()
        holder.stdout.close()

"""Supervise the processes of a local cluster: start, wait until ready, restart, stop.

`cairn dev` runs every role of the cluster as child processes of one supervisor:
1. start each child and wait for its readiness line (`listening: HOST:PORT`
   on stdout) within READY_TIMEOUT_S; a child that dies first is an error that
   names it and shows its last output lines;
2. while running, a child that exits unexpectedly is restarted after a backoff
   (doubling from RESTART_BACKOFF_S, reset once it has run for a while), with a
   log line saying so (`ProcessRestarted name=... exit=...`);
3. on stop, every child gets SIGTERM, and SIGKILL after STOP_TIMEOUT_S; the ones
   named `first` (clients of the others) go before the rest are signalled;
4. `update(spec)` runs a changed child (the cluster's layout file changed): a child
   of that name with another command line is stopped and comes back with the new
   one (step 2); a new name is started and supervised.
Children inherit stderr (their logs go where the supervisor's go); their stdout
is read for the readiness line and then relayed line by line with a name prefix.
5. A child outlives no supervisor: on Linux each child asks the kernel for SIGTERM
   when the supervisor dies (`PR_SET_PDEATHSIG`), SIGKILLed or not, so a killed
   `cairn dev` leaves no orphans holding its ports and data. Their own SIGTERM
   handling stops them as cleanly as step 3 does.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Collection

log = logging.getLogger("cairn.supervisor")

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0

_PR_SET_PDEATHSIG = 1


def _die_with_parent_hook():
    """The child-side half of step 5, run between fork and exec: only calls resolved
    here, in the parent (a fork child of a threaded process must not dlopen). None
    off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:          # the supervisor died before the request took hold
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


@dataclass
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_prefix: str = "listening: "
    pass_fds: tuple[int, ...] = ()


def child_processes(parent: int) -> dict[int, list[str]]:
    """The live children of process `parent` (from /proc), each with its command line:
    how tests and benchmarks find a cluster's processes by role."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                if int(stat.read().rsplit(b")", 1)[1].split()[1]) != parent:
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                found[int(entry)] = cmdline.read().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue
    return found


class ChildFailed(RuntimeError):
    """A child died before it was ready; the message says which and why."""


@dataclass
class _Child:
    spec: ProcessSpec
    process: asyncio.subprocess.Process | None = None
    ready_line: str = ""
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    restarts: int = 0
    started_at: float = 0.0


class Supervisor:
    def __init__(self, specs: list[ProcessSpec]) -> None:
        self.children = [_Child(spec) for spec in specs]
        self._stopping = False
        self._die_with_parent = _die_with_parent_hook()
        self._watchers: list[asyncio.Task] = []

    async def start(self) -> dict[str, str]:
        """Start every child, in order, each ready before the next; returns name → ready line."""
        for child in self.children:
            await self._spawn(child)
        self._watchers = [asyncio.ensure_future(self._watch(child)) for child in self.children]
        return {child.spec.name: child.ready_line for child in self.children}

    async def _spawn(self, child: _Child) -> None:
        environment = dict(os.environ, **child.spec.env)
        child.process = await asyncio.create_subprocess_exec(
            *child.spec.argv, stdout=asyncio.subprocess.PIPE, stderr=None, stdin=asyncio.subprocess.DEVNULL,
            env=environment, start_new_session=True, pass_fds=child.spec.pass_fds,
            preexec_fn=self._die_with_parent,
        )
        child.started_at = asyncio.get_running_loop().time()
        try:
            child.ready_line = await asyncio.wait_for(self._await_ready(child), READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            await self._kill(child)
            raise ChildFailed(f"{child.spec.name} did not become ready within {READY_TIMEOUT_S:.0f} s; "
                              f"last output: {' | '.join(child.tail) or '(none)'}") from None
        asyncio.ensure_future(self._relay(child))

    async def _await_ready(self, child: _Child) -> str:
        assert child.process is not None and child.process.stdout is not None
        while True:
            raw = await child.process.stdout.readline()
            if not raw:
                code = await child.process.wait()
                raise ChildFailed(f"{child.spec.name} exited with {code} before it was ready; "
                                  f"last output: {' | '.join(child.tail) or '(none)'} — see its log lines above")
            line = raw.decode(errors="replace").rstrip("\n")
            child.tail.append(line)
            if line.startswith(child.spec.ready_prefix):
                return line[len(child.spec.ready_prefix):]

    async def _relay(self, child: _Child) -> None:
        process = child.process
        assert process is not None and process.stdout is not None
        while True:
            raw = await process.stdout.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\n")
            child.tail.append(line)
            print(f"[{child.spec.name}] {line}", file=sys.stderr, flush=True)

    async def _watch(self, child: _Child) -> None:
        backoff = RESTART_BACKOFF_S
        loop = asyncio.get_running_loop()
        while not self._stopping:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            child.restarts += 1
            log.warning("ProcessRestarted name=%s exit=%s restarts=%d", child.spec.name, code, child.restarts)
            print(f"cairn dev: {child.spec.name} exited ({code}); restarting it", file=sys.stderr, flush=True)
            if loop.time() - child.started_at > STABLE_AFTER_S:
                backoff = RESTART_BACKOFF_S
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
            if self._stopping:
                return
            try:
                await self._spawn(child)
            except ChildFailed as error:
                log.error("RestartFailed name=%s error=%s", child.spec.name, error)

    async def update(self, spec: ProcessSpec) -> None:
        """Step 4."""
        for child in self.children:
            if child.spec.name == spec.name:
                if child.spec.argv != spec.argv:
                    log.info("ProcessChanged name=%s", spec.name)
                    child.spec = spec
                    await self._kill(child)          # its watcher starts it again with the new spec
                return
        child = _Child(spec)
        self.children.append(child)
        await self._spawn(child)
        self._watchers.append(asyncio.ensure_future(self._watch(child)))

    def pid(self, name: str) -> int | None:
        for child in self.children:
            if child.spec.name == name and child.process is not None:
                return child.process.pid
        return None

    async def stop(self, first: Collection[str] = ()) -> None:
        """Step 3. The children named in `first` (the clients of the others) are
        stopped, and gone, before the rest get their SIGTERM."""
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        for tier in ([child for child in self.children if child.spec.name in first],
                     [child for child in self.children if child.spec.name not in first]):
            await asyncio.gather(*(self._kill(child) for child in reversed(tier)), return_exceptions=True)

    async def _kill(self, child: _Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        try:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
        except ProcessLookupError:
            pass

"""Named crash points for real-process tests (a TEST HOOK, inert unless an environment variable names one).

`CAIRN_CRASH_AT=<point>:<N>` makes a journal node process end itself with
`os._exit(137)` — what a SIGKILL leaves — the N-th time it reaches `<point>`
(N >= 1; several points: comma-separated). Unset, or naming another point, it
does nothing; production never sets it. `cairn dev` hands its environment to the
metadata nodes it supervises, so a test sets it on `cairn dev`.

A point fires at most once per data dir: when it fires it first writes (and
fsyncs) `crash-fired-<point>` there, so the supervisor's restart of the node —
which inherits the same environment — does not crash again, and a test can tell
from the file that the window was really reached.

Points (named by the role and the window they cut):
- `tail.after_commit_before_apply`: the tail has appended a batch durably, so the
  batch is committed, and the core hands it to Apply. The shell does NOT apply it;
  it carries out the rest of that input's effects (the ack carrying committed <= N
  up the chain, so the head may answer the writes once it and the middle applied
  them), sends what is queued, and exits. On restart the node's replica lacks the
  entries its log holds: it must apply them before it serves a read.
"""

from __future__ import annotations

import os

ENVIRONMENT = "CAIRN_CRASH_AT"
EXIT_CODE = 137
TAIL_AFTER_COMMIT_BEFORE_APPLY = "tail.after_commit_before_apply"
POINTS = frozenset({TAIL_AFTER_COMMIT_BEFORE_APPLY})


class CrashPoints:
    def __init__(self, data_dir: str, armed: dict[str, int]) -> None:
        self.data_dir = data_dir
        self.armed = {point: n for point, n in armed.items()
                      if not os.path.exists(self.marker(point))}
        self.reached_count: dict[str, int] = {}

    @classmethod
    def from_environment(cls, data_dir: str, environment=os.environ) -> "CrashPoints":
        armed: dict[str, int] = {}
        for part in filter(None, (environment.get(ENVIRONMENT) or "").split(",")):
            point, _, count = part.strip().partition(":")
            if point not in POINTS:
                raise ValueError(f"{ENVIRONMENT}: unknown crash point {point!r} (known: {sorted(POINTS)})")
            armed[point] = int(count or "1")
            if armed[point] < 1:
                raise ValueError(f"{ENVIRONMENT}: {part!r}: the count starts at 1")
        return cls(data_dir, armed)

    def marker(self, point: str) -> str:
        return os.path.join(self.data_dir, f"crash-fired-{point}")

    def reached(self, point: str) -> bool:
        """Count one arrival at `point`; True (marker written) when this is the armed N-th one."""
        if point not in self.armed:
            return False
        count = self.reached_count.get(point, 0) + 1
        self.reached_count[point] = count
        if count != self.armed[point]:
            return False
        del self.armed[point]
        descriptor = os.open(self.marker(point), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(descriptor, b"fired\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        directory = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return True

    @staticmethod
    def exit() -> None:
        os._exit(EXIT_CODE)

"""A linearizability checker for single-key register / compare-and-set histories.

Role: the oracle for invariant I5 (DESIGN §5). The deterministic journal simulation
and the real-process nemesis tests record every client operation with its
invocation and return times and hand the history to `check_history`.

Model, per key: a register whose value is `None` (absent) or any hashable value.
Operations (`Operation.kind`):
- "write"  value v (None = delete)             -> always succeeds, state := v
- "read"   output = the value read              -> legal iff output == state
- "cas"    expected e, value v, output True     -> legal iff state == e; state := v
           expected e, value v, output False    -> legal iff state != e
  (`If-None-Match: *` is cas with expected None; `If-Match` is cas with an etag.)

Ambiguous outcomes: an operation whose outcome the client never learned (timed
out, 503) has `complete=None`. It may have taken effect at any point after its
invocation, or never: it is treated as returning at +infinity with an unknown
output (a cas of unknown outcome is legal either way; it takes effect iff state
== expected at its linearization point). Reads of unknown outcome have no effect
and are dropped.

Method: Wing & Gong's search with Lowe's memoisation, as in Porcupine:
1. Per-key partitioning: a single-key history is linearizable iff each key's is
   (linearizability is local), so keys are checked separately.
2. Events (call, return) are sorted by time; on equal times calls come first, so
   operations touching at one instant count as concurrent (the lenient reading).
3. Walk the events; at a call, try to linearize that operation now (the model
   step must be legal and the (linearized set, state) pair unseen), lifting its
   call and return out of the list; at a return whose operation is not yet
   linearized, backtrack to the last choice. Success when the list is empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable

UNKNOWN = object()      # the output of an operation whose outcome was never learned


@dataclass(frozen=True)
class Operation:
    key: Hashable
    kind: str                       # "write" | "read" | "cas"
    invoke: float
    complete: float | None          # None: outcome unknown (may or may not have happened)
    value: Any = None               # write / cas: the new value (None = absent)
    expected: Any = None            # cas: the required current value (None = absent)
    output: Any = None              # read: value read; cas: True / False
    client: int = 0
    label: str = ""                 # free text for traces (request id, seq ...)

    def __post_init__(self) -> None:
        if self.kind not in ("write", "read", "cas"):
            raise ValueError(f"unknown operation kind {self.kind!r}")
        if self.complete is not None and self.complete < self.invoke:
            raise ValueError("an operation cannot return before it is invoked")
        if self.kind == "cas" and self.complete is not None and self.output not in (True, False):
            raise ValueError("a completed cas must have output True or False")


@dataclass
class Result:
    ok: bool
    key: Hashable = None                                    # the first key that failed
    operations: list[Operation] = field(default_factory=list)  # that key's history

    def describe(self) -> str:
        if self.ok:
            return "linearizable"
        lines = [f"key {self.key!r} is not linearizable; its history:"]
        for op in sorted(self.operations, key=lambda o: o.invoke):
            end = "?" if op.complete is None else f"{op.complete:g}"
            lines.append(f"  [{op.invoke:g} .. {end}] client {op.client} {_show(op)} {op.label}")
        return "\n".join(lines)


def _show(op: Operation) -> str:
    if op.kind == "write":
        return f"write({op.value!r})"
    if op.kind == "read":
        return f"read() -> {op.output!r}"
    out = "?" if op.complete is None else op.output
    return f"cas({op.expected!r} -> {op.value!r}) -> {out}"


def _step(state: Any, op: Operation) -> tuple[bool, Any]:
    """The register model: is `op` legal in `state`, and the state after it."""
    if op.kind == "write":
        return True, op.value
    if op.kind == "read":
        return op.output == state, state
    if op.complete is None:                     # cas of unknown outcome: either way
        return True, (op.value if state == op.expected else state)
    if op.output:
        return state == op.expected, op.value
    return state != op.expected, state


def check_key(operations: list[Operation], initial: Any = None) -> bool:
    """Is one key's history linearizable, starting from `initial`?"""
    ops = [op for op in operations if not (op.kind == "read" and op.complete is None)]
    count = len(ops)
    if count == 0:
        return True
    # Step 2: events as (time, 0 = call / 1 = return, op index); call before return on ties.
    events = []
    for index, op in enumerate(ops):
        events.append((op.invoke, 0, index))
        events.append((math.inf if op.complete is None else op.complete, 1, index))
    events.sort()
    # A doubly linked list over the events, with a sentinel head at position 0.
    size = len(events) + 1
    nxt = list(range(1, size + 1))
    nxt[-1] = -1
    prv = list(range(-1, size - 1))
    is_call = [False] + [event[1] == 0 for event in events]
    op_of = [-1] + [event[2] for event in events]
    match = [0] * size                          # call position -> its return position
    where_call = {}
    for position in range(1, size):
        if is_call[position]:
            where_call[op_of[position]] = position
        else:
            match[where_call[op_of[position]]] = position

    def lift(position: int) -> None:
        for p in (position, match[position]):
            nxt[prv[p]] = nxt[p]
            if nxt[p] != -1:
                prv[nxt[p]] = prv[p]

    def unlift(position: int) -> None:
        for p in (match[position], position):
            nxt[prv[p]] = p
            if nxt[p] != -1:
                prv[nxt[p]] = p

    # Step 3: the search.
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = []
    state = initial
    linearized = 0
    entry = nxt[0]
    while nxt[0] != -1:
        if is_call[entry]:
            op_index = op_of[entry]
            legal, new_state = _step(state, ops[op_index])
            if legal:
                new_linearized = linearized | (1 << op_index)
                memo = (new_linearized, new_state)
                if memo not in cache:
                    cache.add(memo)
                    stack.append((entry, state))
                    state, linearized = new_state, new_linearized
                    lift(entry)
                    entry = nxt[0]
                    continue
            entry = nxt[entry]
        else:
            if not stack:
                return False
            entry, state = stack.pop()
            linearized &= ~(1 << op_of[entry])
            unlift(entry)
            entry = nxt[entry]
    return True


def check_history(operations: Iterable[Operation], initial: Any = None) -> Result:
    """Step 1: partition by key and check each key's history."""
    by_key: dict[Hashable, list[Operation]] = {}
    for op in operations:
        by_key.setdefault(op.key, []).append(op)
    for key in sorted(by_key, key=repr):
        if not check_key(by_key[key], initial):
            return Result(False, key, by_key[key])
    return Result(True)

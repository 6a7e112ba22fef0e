"""The linearizability checker (spec/linearizability.py) accepts exactly the
linearizable register/CAS histories.

Method: hand-written histories with a known answer — stale reads, two CAS
winners, lost writes must be rejected; overlapping operations, ambiguous
(timed-out) writes and CAS that may or may not have happened must be accepted —
plus a brute-force cross-check: on small random histories the checker agrees
with trying every total order consistent with real time.
"""

from __future__ import annotations

import itertools
import random

from spec.linearizability import Operation, _step, check_history, check_key


def W(invoke, complete, value, client=0, key="k"):
    return Operation(key, "write", invoke, complete, value=value, client=client)


def R(invoke, complete, output, client=0, key="k"):
    return Operation(key, "read", invoke, complete, output=output, client=client)


def CAS(invoke, complete, expected, value, output, client=0, key="k"):
    return Operation(key, "cas", invoke, complete, value=value, expected=expected, output=output, client=client)


# ------------------------------------------------------------ rejected

def test_stale_read_after_acknowledged_write():
    assert not check_key([W(0, 1, "a"), R(2, 3, None)])


def test_stale_read_after_a_later_read_saw_the_write():
    # The write is still in flight, but a completed read saw it: a later read must too.
    history = [W(0, 10, "a"), R(1, 2, "a"), R(3, 4, None)]
    assert not check_key(history)


def test_two_cas_winners():
    history = [CAS(0, 5, None, "a", True, client=1), CAS(0, 5, None, "b", True, client=2)]
    assert not check_key(history)


def test_two_if_none_match_winners_even_with_a_delete_between_them_absent():
    history = [CAS(0, 2, None, "a", True), CAS(3, 4, None, "b", True)]
    assert not check_key(history)


def test_read_of_a_value_never_written():
    assert not check_key([W(0, 1, "a"), R(2, 3, "z")])


def test_lost_write_seen_then_unseen_via_reads_in_order():
    history = [W(0, 1, "a"), W(2, 3, "b"), R(4, 5, "b"), R(6, 7, "a")]
    assert not check_key(history)


def test_failed_cas_when_it_must_have_succeeded():
    history = [W(0, 1, "a"), CAS(2, 3, "a", "b", False)]
    assert not check_key(history)


def test_failure_names_the_key():
    history = [W(0, 1, "x", key="good"), R(2, 3, "x", key="good"), W(0, 1, "a", key="bad"), R(2, 3, None, key="bad")]
    result = check_history(history)
    assert not result.ok and result.key == "bad"
    assert "bad" in result.describe()


def test_ambiguous_write_cannot_take_effect_before_its_invocation():
    history = [R(0, 1, "a"), W(2, None, "a")]
    assert not check_key(history)


# ------------------------------------------------------------ accepted

def test_concurrent_read_may_see_either():
    assert check_key([W(0, 10, "a"), R(1, 2, None), R(3, 4, "a")])


def test_ambiguous_write_may_have_happened():
    assert check_key([W(0, None, "a"), R(5, 6, "a")])


def test_ambiguous_write_may_not_have_happened():
    assert check_key([W(0, None, "a"), R(5, 6, None)])


def test_ambiguous_write_may_happen_late():
    # Not visible at first, then visible: it took effect between the reads.
    assert check_key([W(0, None, "a"), R(5, 6, None), R(7, 8, "a")])


def test_ambiguous_cas_either_way():
    history = [CAS(0, None, None, "a", None, client=1), CAS(1, 2, None, "b", True, client=2), R(3, 4, "b")]
    assert check_key(history)
    history = [CAS(0, None, None, "a", None, client=1), R(3, 4, "a"), CAS(5, 6, None, "b", False, client=2)]
    assert check_key(history)


def test_cas_chain_in_real_time_order():
    history = [W(0, 1, "a"), CAS(2, 3, "a", "b", True), CAS(4, 5, "a", "c", False), R(6, 7, "b")]
    assert check_key(history)


def test_concurrent_cas_one_winner():
    history = [CAS(0, 5, None, "a", True, client=1), CAS(0, 5, None, "b", False, client=2), R(6, 7, "a")]
    assert check_key(history)


def test_overlapping_writes_reorder():
    # w(b) is invoked after w(a) but both overlap; the final read sees a: order b, a.
    history = [W(0, 10, "a"), W(1, 5, "b"), R(11, 12, "a")]
    assert check_key(history)


def test_delete_then_create():
    history = [W(0, 1, "a"), W(2, 3, None), CAS(4, 5, None, "b", True), R(6, 7, "b")]
    assert check_key(history)


def test_touching_operations_count_as_concurrent():
    assert check_key([W(0, 1, "a"), R(1, 2, None)])


def test_many_concurrent_operations_stay_fast():
    rng = random.Random(7)
    history = []
    clock = 0.0
    value = None
    for index in range(400):
        # A sequential history with overlap jitter, consistent by construction.
        value = f"v{index}"
        history.append(W(clock, clock + 3, value, client=index % 8))
        history.append(R(clock + 3.5, clock + 4 + rng.random(), value, client=(index + 1) % 8))
        clock += 4
    assert check_key(history)


# ------------------------------------------------------------ brute force cross-check

def _brute_force(ops: list[Operation]) -> bool:
    ops = [op for op in ops if not (op.kind == "read" and op.complete is None)]
    done = [op for op in ops if op.complete is not None]
    pending = [op for op in ops if op.complete is None]
    # Every subset of the ambiguous operations may have taken effect.
    for mask in range(1 << len(pending)):
        chosen = done + [op for bit, op in enumerate(pending) if mask >> bit & 1]
        for order in itertools.permutations(chosen):
            if not _respects_real_time(order):
                continue
            state, legal = None, True
            for op in order:
                legal, state = _step(state, op)
                if not legal:
                    break
            if legal:
                return True
    return False


def _respects_real_time(order) -> bool:
    for i, earlier in enumerate(order):
        for later in order[i + 1:]:
            if later.complete is not None and later.complete < earlier.invoke:
                return False
    return True


def _random_history(rng: random.Random) -> list[Operation]:
    ops = []
    values = [None, "a", "b"]
    for _ in range(rng.randint(1, 5)):
        invoke = rng.randint(0, 8)
        complete = None if rng.random() < 0.2 else invoke + rng.randint(0, 4)
        kind = rng.choice(["write", "read", "cas"])
        if kind == "write":
            ops.append(W(invoke, complete, rng.choice(values)))
        elif kind == "read":
            ops.append(R(invoke, complete, rng.choice(values)))
        else:
            output = None if complete is None else rng.choice([True, False])
            ops.append(CAS(invoke, complete, rng.choice(values), rng.choice(values[1:]), output))
    return ops


def test_agrees_with_brute_force():
    rng = random.Random(2024)
    accepted = rejected = 0
    for _ in range(1500):
        ops = _random_history(rng)
        expected = _brute_force(ops)
        assert check_key(ops) == expected, ops
        accepted += expected
        rejected += not expected
    assert accepted > 100 and rejected > 100

"""The journal's protocol cores keep invariants I1, I2, I3, I6, I8 and linearizability (I5)
under a deterministic simulation of network faults, crashes and restarts.

Method: journal/simulation.py drives the pure cores (ChainReplica, Acceptor,
Proposer) and the real log store on crashing in-memory disks from one seeded
RNG: three nodes, clients doing put / delete / If-Match / If-None-Match / cached
reads on two hot keys, retrying with the same request id. Each seed replays
exactly; a failing one raises with the seed, a replay line and the trace tail.

Checks, per entry / answer / read, as the simulation runs:
- I1: a replica applies seq = applied + 1; every replica applies the same
  (epoch, request id, payload) at a seq; at the end every node's log agrees on
  (epoch, seq) over the committed prefix.
- I2: an answer's entry is committed on the head, durable in every node's log
  (unless already below retention), and applied by a majority per the head.
- I3: a read's served state (VALUE's applied seq, CURRENT's as-of) is >= every
  write to the key acknowledged, or observed by a completed read, before it began.
- I6: every replica computes the same outcome and state digest per seq; a request
  id mutates state at most once per replica (dedup returns the original outcome).
- I8: when any replica applies seq S, every serving current member's witness is
  >= S for every slot S touches.
- I5: every client history is linearizable per key (spec/linearizability.py),
  ambiguous (deadline passed) writes allowed to have happened or not.
- Liveness: all clients finish within the simulated time limit.

Fault models (journal/simulation.py): calm (random delays, lagging replicas);
lossy (+ drops, duplicates, reorders, clock skew); crashy (+ a crash after any
effect, at most one node out at a time, restart through a new epoch with
truncation and catch-up); outage (long downtimes: "retry" answers past ACK_WAIT
and writes of unknown outcome); storm (up to 8 crashes per run); double (two
nodes out at once); blackout (a crash may take all three down at one instant,
each disk losing its unsynced writes — recovery per ChainReplica step 12);
real-crashy and real-blackout (those faults with index/apply.py's real apply
behind every replica over an in-memory view: clients PUT inline, DELETE, PUT
If-None-Match * and If-Match in one bucket created at seq 1, so I6 and I5 are
checked on the real apply; replicas are compared pair for pair at the end).
- Recovery liveness: after the clients finish, with no more crashes, every node
  serves again in the latest epoch within the simulated SETTLE_US.

Seeds: 3,500 by default (+ 400 in the coverage test); CAIRN_DEEP=1 runs 20x as many.
"""

from __future__ import annotations

import collections
import os

import pytest

from journal.simulation import PROFILES, Simulation

DEEP = os.environ.get("CAIRN_DEEP") == "1"
SCALE = 20 if DEEP else 1
CHUNK = 100
SEEDS = {"calm": 300 * SCALE, "lossy": 400 * SCALE, "crashy": 600 * SCALE, "outage": 300 * SCALE,
         "storm": 200 * SCALE, "double": 600 * SCALE, "blackout": 600 * SCALE,
         "real-crashy": 300 * SCALE, "real-blackout": 200 * SCALE}
CASES = [(name, start) for name, count in SEEDS.items() for start in range(0, count, CHUNK)]


@pytest.mark.timeout(600 * SCALE)
@pytest.mark.parametrize("profile,start", CASES, ids=[f"{name}-{start}" for name, start in CASES])
def test_simulation_seeds(profile, start):
    totals = collections.Counter()
    for seed in range(start, start + CHUNK):
        simulation = Simulation(seed, PROFILES[profile]).run()     # raises with seed and trace
        totals.update(simulation.stats)
    # Every chunk of seeds really exercises its fault model.
    assert totals["read_VALUE"] > 0
    if profile != "calm" and profile != "lossy":
        assert totals["epoch_changes"] > 0 and sum(v for k, v in totals.items() if k.startswith("crash@")) > 0
    if profile == "double":
        assert totals["crash_while_another_out"] > 0     # two nodes really are out at once
    if profile.startswith("real-"):                  # the real apply refuses and dedups too
        assert totals["status_PreconditionFailed"] > 0 and totals["status_OK"] > 0
    if profile in ("blackout", "real-blackout"):
        assert totals["blackout"] > 0                    # whole-cluster crashes really happen


def test_fault_models_reach_the_dangerous_windows():
    """Coverage: over a few hundred seeds, crashes hit every kind of crash point, rejoining
    nodes truncate unreplicated suffixes, heads answer "retry", clients see ambiguous
    and Expired outcomes, caches answer CURRENT and reads fail over (TRY_OTHER)."""
    totals = collections.Counter()
    for seed in range(200):
        for profile in ("crashy", "outage"):
            totals.update(Simulation(10_000 + seed, PROFILES[profile]).run().stats)
    for point in ("Persist", "Persist.unsynced", "RaiseWitness", "Send", "Apply", "Reply", "PersistAcceptor"):
        assert totals["crash@" + point] > 0, (point, totals)
    for what in ("truncate_suffix", "answer_retry", "unknown_write", "status_Expired", "read_CURRENT",
                 "try_other", "status_PreconditionFailed"):
        assert totals[what] > 0, (what, totals)


def test_a_seed_replays_exactly():
    first = Simulation(4242, PROFILES["crashy"]).run()
    second = Simulation(4242, PROFILES["crashy"]).run()
    assert first.trace == second.trace and first.history == second.history

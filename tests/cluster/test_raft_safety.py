"""Raft under seeded faults: crashes (leaders more often), restarts from what was persisted,
partitions, loss, duplication, delay and reordering, membership changes and log compaction.

After every step the simulation checks that no term had two leaders and that every member
applied the same entry at every index (so no committed entry was lost or changed); at the end
of each run, with the faults stopped, every member must have caught up. Half of the runs go
without pre-vote, which otherwise shields the plain election paths. A failure names its seed:
``NODEDB_SEED=<seed> pytest tests/cluster/test_raft_safety.py`` replays it.
"""

import os

import pytest

from nodedb.testing.raft_sim import run

RUNS = int(os.environ.get("NODEDB_RAFT_RUNS", "200"))


def test_safety_over_many_seeded_runs():
    chosen = os.environ.get("NODEDB_SEED")
    seeds = [int(chosen)] if chosen is not None else range(RUNS)
    elections = proposals = 0
    for seed in seeds:
        outcome = run(seed, steps=500)
        elections += outcome.elections
        proposals += outcome.proposals
        assert outcome.elections >= 1
    # The runs did exercise what they claim to: many elections and many proposals.
    if chosen is None:
        assert elections >= 2 * RUNS and proposals >= 50 * RUNS


@pytest.mark.parametrize("members", [1, 3])
def test_small_groups_are_safe_too(members):
    for seed in range(20):
        run(seed, steps=300, members=members)

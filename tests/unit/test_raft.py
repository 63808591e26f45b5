"""The Raft state machine, driven by hand: elections, pre-vote, check-quorum, replication,
conflicts, membership changes one at a time, learners, compaction and snapshots."""

import random

import pytest

from nodedb.voting.raft import (
    APPEND,
    CANDIDATE,
    FOLLOWER,
    LEADER,
    PRE_CANDIDATE,
    SNAPSHOT,
    VOTE,
    ChangeInProgress,
    Config,
    Entry,
    HardState,
    Message,
    NotLeader,
    Raft,
    Snapshot,
)


class Group:
    """Members that deliver every message at once (unless cut off), persisting first."""

    def __init__(self, ids, voters=None, pre_vote=True, check_quorum=True):
        config = Config(frozenset(voters or ids), frozenset(ids) - frozenset(voters or ids))
        self.nodes = {
            i: Raft(i, random.Random(n), snapshot=Snapshot(0, 0, config), pre_vote=pre_vote, check_quorum=check_quorum)
            for n, i in enumerate(ids)
        }
        self.applied = {i: [] for i in ids}
        self.cut = set()
        self.sent = []

    def isolate(self, node_id):
        self.cut = {(node_id, o) for o in self.nodes if o != node_id} | {(o, node_id) for o in self.nodes if o != node_id}

    def stabilize(self, rounds=50):
        for _ in range(rounds):
            moved = False
            for node_id, node in self.nodes.items():
                ready = node.ready()
                if ready.empty():
                    continue
                moved = True
                for message in ready.messages:
                    self.sent.append(message)
                    if (message.source, message.target) not in self.cut and message.target in self.nodes:
                        self.nodes[message.target].step(message)
                self.applied[node_id].extend(e.data for e in ready.committed if e.kind == "normal" and e.data is not None)
                node.advance(ready)
            if not moved:
                return

    def tick(self, times=1, only=None):
        for _ in range(times):
            for node_id, node in self.nodes.items():
                if only is None or node_id in only:
                    node.tick()
            self.stabilize()

    def leader(self):
        leaders = [n for n in self.nodes.values() if n.state == LEADER]
        assert len(leaders) <= 1
        return leaders[0] if leaders else None

    def elect(self, node_id):
        self.nodes[node_id].campaign()
        self.stabilize()
        assert self.nodes[node_id].state == LEADER
        return self.nodes[node_id]


def test_a_single_voter_elects_itself_and_commits_alone():
    group = Group(["a"])
    leader = group.elect("a")
    index = leader.propose("x")
    group.stabilize()
    assert leader.commit == index and group.applied["a"] == ["x"]


def test_an_election_on_timeout_gives_one_leader_that_replicates():
    group = Group(["a", "b", "c"])
    group.tick(40)
    leader = group.leader()
    assert leader is not None
    leader.propose("x")
    leader.propose("y")
    group.stabilize()
    assert all(applied == ["x", "y"] for applied in group.applied.values())
    assert {n.leader for n in group.nodes.values()} == {leader.id}


def test_followers_refuse_proposals_and_name_the_leader():
    group = Group(["a", "b", "c"])
    group.elect("a")
    with pytest.raises(NotLeader) as error:
        group.nodes["b"].propose("x")
    assert error.value.leader == "a"


def test_pre_vote_keeps_an_isolated_member_from_raising_the_term():
    group = Group(["a", "b", "c"])
    group.elect("a")
    term = group.nodes["a"].term
    group.isolate("c")
    group.tick(100, only={"c"})
    assert group.nodes["c"].state == PRE_CANDIDATE and group.nodes["c"].term == term
    group.cut = set()
    group.tick(5)
    assert group.leader().id == "a" and group.nodes["a"].term == term


def test_a_pre_candidate_grants_the_pre_vote_of_another_once_the_leader_is_gone():
    """As in etcd, a member that started an election no longer counts itself in the old
    leader's lease: otherwise two members that time out at about the same time refuse each
    other until their timeouts happen to fall apart (seconds without a leader)."""
    group = Group(["a", "b", "c"])
    group.elect("a")
    group.isolate("a")
    group.nodes["c"].campaign()  # b still hears a's lease: refused
    group.stabilize()
    assert group.nodes["c"].state == PRE_CANDIDATE
    group.nodes["b"].campaign()  # c has given up on a: granted
    group.stabilize()
    assert group.nodes["b"].state == LEADER and group.nodes["c"].leader == "b"


def test_without_pre_vote_an_isolated_member_disrupts_on_return():
    group = Group(["a", "b", "c"], pre_vote=False, check_quorum=False)
    group.elect("a")
    term = group.nodes["a"].term
    group.isolate("c")
    group.tick(30, only={"c"})
    assert group.nodes["c"].state == CANDIDATE and group.nodes["c"].term > term


def test_check_quorum_makes_a_cut_off_leader_step_down():
    group = Group(["a", "b", "c"])
    leader = group.elect("a")
    group.isolate("a")
    group.tick(leader.election_ticks * 2, only={"a"})
    assert group.nodes["a"].state == FOLLOWER


def test_a_vote_needs_a_log_at_least_as_current():
    node = Raft("b", random.Random(1), snapshot=Snapshot(0, 0, Config(frozenset("abc"))), check_quorum=False)
    node.step(Message(APPEND, "a", "b", 2, prev_index=0, prev_term=0, entries=(Entry(2, 1),), commit=0))
    node.ready()
    node.advance(node.ready())
    node.step(Message(VOTE, "c", "b", 3, last_index=0, last_term=0))
    [reply] = node.ready().messages[-1:]
    assert not reply.granted


def test_a_follower_with_a_conflicting_tail_takes_the_leaders_log():
    group = Group(["a", "b", "c"])
    group.elect("a")
    group.nodes["a"].propose("kept")
    group.stabilize()
    # b, cut off, becomes leader of nothing in a later term and appends entries nobody sees.
    group.isolate("b")
    b = group.nodes["b"]
    b.state, b.term, b.leader = LEADER, b.term + 5, "b"
    b.tracker.progress = {}
    b.propose("lost-1")
    b.propose("lost-2")
    group.stabilize()
    group.cut = set()
    group.tick(60)  # b's term is higher: a new election follows, which b cannot win
    assert group.leader() is not None and group.leader().id != "b"
    group.leader().propose("after")
    group.stabilize()
    assert group.applied["b"] == ["kept", "after"] == group.applied["a"]
    assert all(e.data not in ("lost-1", "lost-2") for e in b.log)


def test_membership_changes_one_voter_at_a_time():
    group = Group(["a", "b", "c", "d"], voters=["a", "b", "c"])
    leader = group.elect("a")
    with pytest.raises(ValueError):
        leader.propose_config({"a"})  # two voters at once
    leader.propose_config({"a", "b", "c", "d"})
    with pytest.raises(ChangeInProgress):
        leader.propose_config({"a", "b", "c"})
    group.stabilize()
    assert all(n.config.voters == frozenset("abcd") for n in group.nodes.values())
    leader.propose_config({"a", "b", "c"}, learners={"d"})
    group.stabilize()
    assert group.nodes["d"].config.learners == frozenset("d")


def test_a_lone_voter_adds_two_voters_at_once():
    group = Group(["a", "b", "c"], voters=["a"])
    leader = group.elect("a")
    leader.propose("alone")
    group.stabilize()
    with pytest.raises(ValueError):
        leader.propose_config({"b", "c"})  # a lone voter may only grow, not swap itself out
    leader.propose_config({"a", "b", "c"})
    group.stabilize()
    assert all(n.config.voters == frozenset("abc") for n in group.nodes.values())
    with pytest.raises(ValueError):
        leader.propose_config({"a"})  # shrinking stays one voter at a time
    # The founder dies for good: the two others elect a leader that has every committed entry.
    group.isolate("a")
    group.tick(60)  # a, cut off, steps down (check-quorum)
    survivor = group.leader()
    assert survivor is not None and survivor.id in ("b", "c")
    survivor.propose("after")
    group.stabilize()
    assert group.applied[survivor.id] == ["alone", "after"]


def test_a_lone_voter_that_dies_while_growing_loses_nothing_committed():
    group = Group(["a", "b", "c"], voters=["a"])
    leader = group.elect("a")
    leader.propose("committed-alone")
    group.stabilize()
    # The change reaches b only; a dies. b cannot be elected without c's vote, and c has the
    # old configuration (a alone): nothing is committed without a, and nothing is lost.
    group.cut = {("a", "c")}
    leader.propose_config({"a", "b", "c"})
    group.stabilize()
    assert group.nodes["b"].config.voters == frozenset("abc")
    assert group.nodes["c"].config.voters == frozenset("a")
    group.isolate("a")
    group.tick(60)  # a, cut off, steps down (check-quorum)
    survivor = group.leader()
    assert survivor is not None and survivor.id == "b"  # c votes for b's longer log
    survivor.propose("after")
    group.stabilize()
    assert group.applied["b"][0] == "committed-alone" and group.applied["b"][-1] == "after"
    assert group.applied["c"] == group.applied["b"]


def test_learners_get_the_log_but_neither_vote_nor_count():
    group = Group(["a", "b", "l"], voters=["a", "b"])
    leader = group.elect("a")
    leader.propose("x")
    group.stabilize()
    assert group.applied["l"] == ["x"]
    group.tick(100, only={"l"})
    assert group.nodes["l"].state == FOLLOWER  # never campaigns
    group.isolate("b")
    leader.propose("y")
    group.stabilize()
    assert leader.commit < leader.last_index()  # the learner alone is no majority


def test_a_removed_leader_steps_down_once_the_change_commits():
    group = Group(["a", "b", "c"])
    leader = group.elect("a")
    leader.propose_config({"b", "c"}, learners={"a"})
    group.stabilize()
    assert leader.state == FOLLOWER
    group.tick(40)
    assert group.leader().id in ("b", "c")


def test_a_follower_behind_the_compaction_point_gets_a_snapshot():
    group = Group(["a", "b", "c"])
    leader = group.elect("a")
    group.isolate("c")
    for n in range(10):
        leader.propose(f"x{n}")
    group.stabilize()
    leader.compact(leader.applied, {"state": "through x9"})
    group.cut = set()
    group.sent.clear()
    group.tick(2)
    assert any(m.kind == SNAPSHOT and m.target == "c" for m in group.sent)
    c = group.nodes["c"]
    assert c.snapshot.data == {"state": "through x9"} and c.commit >= leader.snapshot.index
    leader.propose("after")
    group.stabilize()
    assert c.applied == leader.applied


def test_a_restart_resumes_from_what_was_persisted():
    config = Config(frozenset("a"))
    node = Raft("a", random.Random(1), snapshot=Snapshot(0, 0, config))
    node.campaign()
    node.propose("x")
    ready = node.ready()
    node.advance(ready)
    again = Raft("a", random.Random(2), hard_state=ready.hard_state, log=ready.entries, snapshot=Snapshot(0, 0, config))
    assert (again.term, again.vote, again.last_index()) == (node.term, node.vote, node.last_index())
    assert again.commit == node.commit == HardState(node.term, "a", 2).commit


def test_a_forced_sole_voter_leads_a_group_whose_majority_is_gone():
    group = Group(["a", "b", "c", "d"], voters=["a", "b", "c"])
    leader = group.elect("a")
    leader.propose("acknowledged")
    group.stabilize()
    group.nodes["a"].propose("not acknowledged")  # reaches no one: a and b are gone below
    for gone in ("a", "b"):
        group.isolate(gone)
        del group.nodes[gone]
    group.cut = set()
    group.tick(60)
    survivor = group.nodes["c"]
    assert group.leader() is None  # one voter of three: never a leader again
    term, last = survivor.term, survivor.last_index()
    index = survivor.force_sole_voter(learners=["d"])
    assert index == last + 1 and survivor.state == LEADER and survivor.term == term + 1
    assert survivor.config == Config(frozenset("c"), frozenset("d"))
    assert survivor.commit == survivor.last_index() == index + 1  # the config and the no-op
    survivor.propose("after")
    group.stabilize()
    assert group.applied["c"] == group.applied["d"] == ["acknowledged", "after"]
    assert group.nodes["d"].config == survivor.config


def test_a_forced_sole_voter_survives_a_restart():
    node = Raft("c", random.Random(1), snapshot=Snapshot(0, 0, Config(frozenset("abc"))))
    node.force_sole_voter()
    ready = node.ready()
    node.advance(ready)
    again = Raft("c", random.Random(2), hard_state=ready.hard_state, log=ready.entries, snapshot=Snapshot(0, 0, Config(frozenset("abc"))))
    assert again.config.voters == {"c"} and again.commit == node.commit == 2
    again.campaign()
    assert again.state == LEADER and again.term == node.term + 1

"""The behaviour every :class:`~nodedb.interfaces.IVoting` must show.

Subclass :class:`VotingContract` in a pytest module and define ``make_voting(host, on_change,
elect)``: an unstarted provider for *host* (a :class:`~nodedb.testing.peers.PeerHost`) that
keeps its group's state in ``host.storage``, calls peers through ``host.transport`` at
``host.address_of(host_id)``, runs its leader's policy on ``host.views()``, calls
``on_change(state)`` after applied decisions changed the state, and fails partitions over
through ``elect(requests, skip=(), prefer=None)`` (``{partition: (new_epoch, replicas)}``
-> Deferred of ``{partition: host}``, as :meth:`~nodedb.interfaces.ILogSync.elect`).

The suite founds a cluster of two hosts, ``a`` (the founder, the only voter) and ``b``, with
four partitions of two replicas each.
"""

from dataclasses import dataclass, field

import pytest
from twisted.internet import defer
from zope.interface.verify import verifyObject

from nodedb import errors
from nodedb.interfaces import IClusterView, IVoting
from nodedb.testing import failure_result_of
from nodedb.testing.peers import OnPeerNetwork
from nodedb.voting.formation import bootstrap_decision

IDENTITY = {"host_id": "a", "cluster_id": "c1", "partitions": 4, "replicas": 2}


@dataclass
class Member:
    """One host's provider and what it told the suite."""

    host: object
    voting: object
    changes: list = field(default_factory=list)  # snapshots of the state at each on_change
    elections: list = field(default_factory=list)  # (requests, Deferred) of each elect call

    def elect(self, requests, skip=(), prefer=None):
        d = defer.Deferred()
        self.elections.append((requests, d))
        return d


class VotingContract(OnPeerNetwork):
    def make_voting(self, host, on_change, elect):
        raise NotImplementedError

    @pytest.fixture
    def cluster(self, peers):
        """``(a, b)``: the :class:`Member` of each host, once both apply the founding state."""
        hosts = [peers.add_host("a"), peers.add_host("b")]
        a, b = (self._member(host) for host in hosts)

        def bootstrap():
            present = {"b": hosts[1].address}
            return bootstrap_decision(IDENTITY, hosts[0].address, peers.clock.seconds(), present, expect=2)

        for member, founding in ((a, bootstrap), (b, None)):
            peers.start(member.voting, member.host)
            member.voting.start(founding)
        peers.run_until(lambda: b.voting.state.cluster_id == "c1" and b.voting.leader() == "a", timeout=30)
        return a, b

    def _member(self, host):
        member = Member(host, None)
        member.voting = self.make_voting(host, lambda state: member.changes.append(state.to_snapshot()), member.elect)
        return member

    @staticmethod
    def agree(a, b):
        return a.voting.state.to_snapshot() == b.voting.state.to_snapshot()

    def test_provides_the_interface(self, cluster):
        for member in cluster:
            assert verifyObject(IVoting, member.voting)
            assert verifyObject(IClusterView, member.voting.state)

    def test_the_founder_leads_and_applies_the_first_decision(self, cluster):
        a, _b = cluster
        assert a.voting.leader() == "a" and a.voting.voters() == {"a"}
        state = a.voting.state
        assert (state.cluster_id, state.partitions, state.replicas) == ("c1", 4, 2)
        assert set(state.members) == {"a", "b"} and state.members["b"]["address"] == a.host.address_of("b")
        assert {p: assignment.replicas for p, assignment in state.assignments.items()} == {
            0: ("a", "b"), 1: ("b", "a"), 2: ("a", "b"), 3: ("b", "a")
        }
        assert state.primary_partitions("a") == {0: 0, 2: 0}
        assert state.replica_partitions("b") == [0, 1, 2, 3]
        assert state.admitted("a") and not state.admitted("nobody")
        assert state.fenced == {}
        assert a.changes and a.changes[0]["cluster"] == "c1"  # on_change saw the founding

    def test_every_member_applies_the_same_state_and_admits_the_others(self, cluster, peers):
        a, b = cluster
        peers.run_until(lambda: self.agree(a, b) and b.voting.state.admitted("b"), timeout=30)
        assert b.voting.leader() == "a" and b.voting.voters() == {"a"}
        assert b.changes[-1] == a.voting.state.to_snapshot()

    def test_a_proposal_is_applied_on_every_member(self, cluster, peers):
        a, b = cluster
        accept = {"op": "accept", "host": "c", "address": "10.0.0.9:7400", "at": peers.clock.seconds()}
        proposed = a.voting.propose(accept)
        peers.run_until(lambda: proposed.called, timeout=10)
        assert type(proposed.result) is int
        assert "c" in a.voting.state.members
        peers.run_until(lambda: "c" in b.voting.state.members, timeout=10)

    def test_only_the_leader_takes_proposals(self, cluster, peers):
        _a, b = cluster
        accept = {"op": "accept", "host": "c", "address": "10.0.0.9:7400", "at": peers.clock.seconds()}
        failure_result_of(b.voting.propose(accept), errors.Unavailable)

    def test_a_requested_election_goes_through_elect(self, cluster, peers):
        a, b = cluster
        assert a.voting.changing_primaries() == frozenset()
        b.voting.request_election(0, 0)  # a follower asks the leader
        peers.run_until(lambda: a.elections, timeout=10)
        [(requests, elected)] = a.elections
        assert requests == {0: (1, ("a", "b"))}
        assert a.voting.changing_primaries() == {0}
        elected.callback({0: "a"})  # the primary stays, at a new epoch
        peers.run_until(lambda: a.voting.state.assignments[0].epoch == 1, timeout=10)
        assert a.voting.state.assignments[0].primary == "a"
        assert a.voting.changing_primaries() == frozenset()
        peers.run_until(lambda: b.voting.state.assignments[0].epoch == 1, timeout=10)

    def test_the_leader_may_request_an_election_itself(self, cluster, peers):
        a, _b = cluster
        a.voting.request_election(3, 0)
        peers.run_until(lambda: a.elections, timeout=10)
        [(requests, elected)] = a.elections
        assert requests == {3: (1, ("b", "a"))}
        elected.callback({})  # no majority answered: nothing changes
        peers.run(2)
        assert a.voting.state.assignments[3].epoch == 0

    def test_status_tells_the_role_and_the_group(self, cluster):
        a, b = cluster
        status = a.voting.status()
        assert status.keys() >= {"leader", "term", "role", "voters", "learners", "commit", "members", "holdings"}
        assert (status["leader"], status["role"], status["voters"]) == ("a", "leader", ["a"])
        assert status["members"] == {"a": a.host.address, "b": b.host.address}
        assert status["holdings"]["a"] == {"primary": 2, "replicas": 4}
        assert b.voting.status()["role"] != "leader"

    def test_settings_cap_the_voters(self, cluster):
        for member in cluster:
            assert member.voting.settings.max_voters >= 1

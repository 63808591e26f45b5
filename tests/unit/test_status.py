"""What a host says about itself (nodedb.status): its NI entry as it starts and as the agreed map
changes, and the address of its port. The status document is checked on a running node in
test_node.py."""

from types import SimpleNamespace

from twisted.internet.address import IPv4Address, IPv6Address

from nodedb.ids import IdLayout
from nodedb.status import announce_roles, first_entry, port_address
from nodedb.voting.state import Assignment, ClusterState, sequence_range

LAYOUT = IdLayout()


def identity(held, cluster_id="c"):
    return SimpleNamespace(host_id="a", generation=3, cluster_id=cluster_id, held=held)


def test_a_host_starts_announcing_what_its_identity_holds():
    space = SimpleNamespace(announced=lambda: 1 << 30)
    entry = first_entry(identity([0, 2]), "127.0.0.1:7400", space, 2.5, LAYOUT, 100.0)
    assert (entry.host_id, entry.generation, entry.version, entry.status) == ("a", 3, 0, "write")
    assert entry.partitions == (0, 2)
    assert entry.ranges == tuple((LAYOUT.first_id(p), LAYOUT.last_id(p)) for p in (0, 2))
    assert (entry.free_bytes, entry.cpu_rating, entry.updated, entry.cluster_id) == (1 << 30, 2.5, 100.0, "c")
    joiner = first_entry(identity([], cluster_id=None), "127.0.0.1:7401", space, 1.0, LAYOUT, 0.0)
    assert (joiner.status, joiner.partitions, joiner.cluster_id) == ("proposal", (), "")


def test_a_change_of_the_agreed_map_is_announced():
    told = []
    gossip = SimpleNamespace(update_local=lambda **fields: told.append(fields))
    logsync = SimpleNamespace(syncing=lambda: [4])
    state = ClusterState()
    state.members = {"a": {"admitted": False}}
    state.assignments = {1: Assignment(("a", "b"), 2), 4: Assignment(("b", "a"), 0), 5: Assignment(("b",))}
    announce_roles(gossip, logsync, "a", LAYOUT, state)
    first, last = sequence_range(2)
    assert told == [
        {
            "status": "proposal",
            "partitions": (1, 4),
            "ranges": ((LAYOUT.make(1, first), LAYOUT.make(1, last)),),
            "syncing": (4,),
        }
    ]
    state.members["a"]["admitted"] = True
    announce_roles(gossip, logsync, "a", LAYOUT, state)
    assert told[-1]["status"] == "write"
    state.assignments[1] = Assignment(("b", "a"), 3)
    announce_roles(gossip, logsync, "a", LAYOUT, state)
    assert told[-1]["status"] == "read" and told[-1]["ranges"] == ()


def test_the_address_of_a_port_bound_to_one_address():
    def port(address):
        return SimpleNamespace(getHost=lambda: address)

    assert port_address(port(IPv4Address("TCP", "10.0.0.5", 7400))) == "10.0.0.5:7400"
    assert port_address(port(IPv6Address("TCP", "::1", 7400))) == "[::1]:7400"
    for everywhere in ("0.0.0.0", "::"):
        assert port_address(port(IPv4Address("TCP", everywhere, 7400))) is None
    assert port_address(None) is None

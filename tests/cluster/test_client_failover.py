"""A client given a single host, in the simulator: it learns the other hosts' addresses from
the cluster and, when its host crashes, goes on through one of them."""

import pytest

from nodedb import errors
from nodedb.testing.cluster import SimCluster
from nodedb.testing.simulation import seeds

pytestmark = pytest.mark.usefixtures("seed_report")


def host_id(host):
    return host.node.identity.host_id


@pytest.mark.parametrize("learn_hosts", [True, False], ids=["learning", "not-learning"])
@pytest.mark.parametrize("seed", seeds())
def test_a_client_given_one_host_goes_on_through_the_hosts_it_learned(seed, learn_hosts):
    cluster = SimCluster(seed)
    cluster.start_hosts(3)
    cluster.run_until(cluster.settled, timeout=60)
    given = next(h for h in cluster.hosts if h is not cluster.leader())
    others = {host_id(h) for h in cluster.hosts if h is not given}
    client = cluster.client(hosts=[given], timeout=20.0, learn_hosts=learn_hosts)

    async def write():
        return await client.insert("user", {"name": "ada"})

    key = cluster.wait(write())
    assert client.server["host"] == host_id(given)
    cluster.crash(given)

    async def read():
        return await client.get("user", key), client.server["host"]

    if learn_hosts:
        found, server = cluster.wait(read(), timeout=30)
        assert found[0] == {"name": "ada"}
        assert server in others
    else:
        with pytest.raises(errors.Unavailable):
            cluster.wait(read(), timeout=30)
    cluster.wait(client.close())
    cluster.stop()

"""A few hosts on the simulated network, each serving peer requests, for the contract suites
of the services that talk to other hosts (gossip, voting, log sync, transactions).

Each :class:`PeerHost` has what a node gives its services: a production
:class:`~nodedb.wire.transport.PeerTransport` over :class:`~nodedb.testing.simulation.SimNetwork`
endpoints, a :class:`~nodedb.query.api.RequestAPI` that serves the operations services
``install``, a :class:`~nodedb.reliability.service.Reliability`, and a
:class:`~nodedb.storage.memory.MemoryStorage`. A contract suite builds the service under test
from these with the factory its subclass provides, so a second implementation is tested on
the same footing as the first. Everything runs on the network's fake clock: no sleeps.

::

    peers = PeerNetwork(seed=1)
    a, b = peers.add_host("a"), peers.add_host("b")
    service = make_service(a)          # the contract subclass's factory
    peers.start(service, a)            # install on a's RequestAPI, then startService
    peers.run_until(lambda: ..., timeout=10)
"""

import random

import pytest

from nodedb.ids import IdLayout
from nodedb.query.api import RequestAPI
from nodedb.reliability.service import Reliability
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import success_result_of
from nodedb.testing.simulation import SimNetwork
from nodedb.voting.policy import HostView
from nodedb.wire.channel import PROTOCOL_VERSION, hello_request
from nodedb.wire.transport import PeerTransport

#: Sixteen partitions: small enough that scanning every partition costs nothing.
LAYOUT = IdLayout(partition_bits=4)
#: Free space every host announces: far more than any placement threshold.
_PLENTY = 1 << 40


class PeerHost:
    """One host: its id and address, and what its services are built from.

    :ivar transport: the :class:`~nodedb.interfaces.IPeerTransport` to peers.
    :ivar api: the :class:`~nodedb.query.api.RequestAPI` serving peer requests.
    :ivar reliability: this host's :class:`~nodedb.interfaces.IReliability`.
    :ivar storage: an open :class:`~nodedb.storage.memory.MemoryStorage` on :data:`LAYOUT`.
    :ivar rng: a ``random.Random`` seeded from the network's seed.
    """

    def __init__(self, network, host_id, address, rng):
        self.network = network
        self.host_id = host_id
        self.address = address
        self.clock = network.clock
        self.rng = rng
        self.storage = MemoryStorage(layout=LAYOUT)
        success_result_of(self.storage.open())
        self.reliability = Reliability(self.clock)
        self.api = RequestAPI(None, self._hello_reply, self.clock)
        self.transport = PeerTransport(
            self.clock,
            network.sim.server_endpoint(address),
            lambda peer: network.sim.client_endpoint(address, peer),
            lambda: hello_request("peer", host=host_id, cluster="", address=address),
            heartbeat_interval=None,
            rng=random.Random(rng.random()),
        )
        self.transport.serve(self.api.dispatch)
        self.transport.startService()
        success_result_of(self.transport.listen())

    def _hello_reply(self):
        return {"version": PROTOCOL_VERSION, "host": self.host_id}

    def address_of(self, host_id):
        """``"host:port"`` of *host_id* on the network, or None."""
        return self.network.address_of(host_id)

    def views(self):
        """``{host id: HostView}`` of every host of the network: available, with room, and
        holding every partition caught up (the picture a healthy cluster gives a leader)."""
        return {
            host.host_id: HostView(
                host_id=host.host_id,
                address=host.address,
                free_bytes=_PLENTY,
                partitions=frozenset(range(LAYOUT.max_partitions)),
            )
            for host in self.network.hosts.values()
        }


class PeerNetwork:
    """Hosts on one :class:`~nodedb.testing.simulation.SimNetwork`; see the module docstring.

    :param seed: seeds the network's delays and every host's ``rng``.
    """

    def __init__(self, seed=1):
        self.sim = SimNetwork(seed)
        self.clock = self.sim.clock
        self.rng = random.Random(seed)
        self.hosts = {}
        self._services = []

    def add_host(self, host_id):
        """:return: a new :class:`PeerHost` listening at an address of its own."""
        address = f"10.0.0.{len(self.hosts) + 1}:7400"
        host = self.hosts[host_id] = PeerHost(self, host_id, address, random.Random(self.rng.random()))
        return host

    def address_of(self, host_id):
        host = self.hosts.get(host_id)
        return host.address if host is not None else None

    def start(self, service, host):
        """Serve *service*'s peer operations on *host* and start it; :meth:`stop` stops it."""
        service.install(host.api)
        service.startService()
        self._services.append(service)
        return service

    def run(self, seconds):
        self.sim.run(seconds)

    def run_until(self, condition, timeout, check_every=0.05):
        """Run until ``condition()`` holds; :raise AssertionError: after *timeout* simulated
        seconds."""
        return self.sim.run_until(condition, timeout, check_every)

    def stop(self):
        """Stop every service started here, then every transport, and let them finish."""
        for service in reversed(self._services):
            if service.running:
                service.stopService()
        for host in self.hosts.values():
            host.transport.stopService()
        self.run(1.0)


class OnPeerNetwork:
    """The ``peers`` fixture of the contract suites: a seeded :class:`PeerNetwork`, stopped
    after each test."""

    @pytest.fixture
    def peers(self):
        peers = PeerNetwork(seed=1)
        yield peers
        peers.stop()

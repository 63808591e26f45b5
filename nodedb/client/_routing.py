"""Partition-aware routing: each request goes straight to the primary of its element's
partition, as Cassandra's token-aware drivers do.

Any host takes any request and forwards it to the partition's primary, so a client that
sends its requests to one host pays an extra hop for most of them (two thirds in a cluster of
three). An element id names its partition in its high bits, and the ``map`` request
(docs/protocol.md) names each partition's primary and each host's address, so the client can
pick the right host itself.

A stale map costs time, never correctness: the host it reaches forwards the request as it
would for any client. The client asks for the map again (cheaply: ``since`` the version it
holds) every :data:`MAP_INTERVAL` seconds, on each new connection, and whenever a host it
called directly could not serve a request (Unavailable: a failover or a planned move under
way; no connection; no answer in time), and meanwhile, for a second or until a newer map
comes, sends that host's requests through the any-host connection.
"""

import itertools
from dataclasses import dataclass

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from nodedb import errors

#: How often the client asks whether the map changed.
MAP_INTERVAL = 1.0
#: How long it waits for the answer.
MAP_TIMEOUT = 5.0
#: How long requests for a host that could not serve one go through the any-host connection
#: (unless a newer map comes first): a host that is no longer a partition's primary, but
#: does not know it yet, answers Unavailable for a moment, while others forward to the new one.
AVOID_FOR = 1.0
#: Consecutive inserts without ``near`` that go to the same primary before the next one's
#: turn: they travel together (fewer, fuller writes; bigger group commits on the host), and
#: a client's inserts still spread over every primary within moments.
INSERTS_PER_TURN = 200
_ID_BITS = 64
_MAX_ID = (1 << _ID_BITS) - 1


def _element_id(value):
    return type(value) is int and 0 <= value <= _MAX_ID


@dataclass(frozen=True)
class PartitionMap:
    """Which host leads each partition, and where each host listens.

    :ivar version: newer maps have higher versions (the Voting log index they reflect).
    :ivar cluster: the cluster id.
    :ivar partition_bits: the high bits of an element id that name its partition.
    :ivar addresses: ``{host id: "host:port" or None}``.
    :ivar partitions: per partition number, its replicas' host ids, primary first.
    :ivar primaries: the hosts, with an address, that lead some partition, sorted.
    """

    version: int
    cluster: str
    partition_bits: int
    addresses: dict
    partitions: tuple
    primaries: tuple

    @classmethod
    def from_wire(cls, reply):
        """:raise ValueError: if *reply* is not a well-formed full ``map`` reply."""
        if type(reply) is not dict:
            raise ValueError("not a map")
        version, cluster, bits = reply.get("version"), reply.get("cluster"), reply.get("partition_bits")
        hosts, partitions = reply.get("hosts"), reply.get("partitions")
        if type(version) is not int or type(cluster) is not str or type(bits) is not int or not 1 <= bits <= 32:
            raise ValueError("version, cluster or partition_bits missing or mistyped")
        if type(hosts) is not list or type(partitions) is not list or len(partitions) > 1 << bits:
            raise ValueError("hosts or partitions missing or mistyped")
        if not all(type(h) is list and len(h) == 2 and type(h[0]) is str and (h[1] is None or type(h[1]) is str) for h in hosts):
            raise ValueError("a host is not [id, address]")
        ids = [host_id for host_id, _address in hosts]
        if not all(type(p) is list and all(type(i) is int and 0 <= i < len(ids) for i in p) for p in partitions):
            raise ValueError("a partition names no listed host")
        addresses = {host_id: address for host_id, address in hosts}
        replicas = tuple(tuple(ids[i] for i in p) for p in partitions)
        primaries = tuple(sorted({p[0] for p in replicas if p and addresses[p[0]] is not None}))
        return cls(version, cluster, bits, addresses, replicas, primaries)

    def primary_of(self, element_id):
        """The host id that leads *element_id*'s partition, or None (no such partition, no
        primary now, or not an element id)."""
        if not _element_id(element_id):
            return None
        partition = element_id >> (_ID_BITS - self.partition_bits)
        if partition >= len(self.partitions) or not self.partitions[partition]:
            return None
        return self.partitions[partition][0]

    def target(self, op, arguments, turn, own=None):
        """The host to send request *op* to, or None for any host.

        Requests on one element go to its partition's primary. An insert without ``near`` (and
        a transaction of such inserts) goes to *own*, the host of the any-host connection, when
        it is a primary: it takes such inserts itself, with no hop, and clients connected to
        different hosts keep their load spread (when every client took every primary in turns,
        the clients moved from primary to primary together: 0.86x the inserts). Otherwise it
        goes to the primaries in turns of :data:`INSERTS_PER_TURN`. A ``replica`` read (any host with a copy answers it), a scan (every
        partition's primary takes part in each page, asked by whichever host takes it) and
        every other request go to any host.

        :param turn: an iterator of ints: 0, 1, 2...
        """
        if op == "get":
            return None if arguments.get("consistency") == "replica" else self.primary_of(arguments.get("key"))
        if op in ("update", "delete"):
            return self.primary_of(arguments.get("key"))
        if op == "insert":
            near = arguments.get("near")
            return self._any_primary(turn, own) if near is None else self.primary_of(near)
        if op == "transaction":
            # Its home is the partition of its first operation with a key or near, and the
            # home's primary coordinates it.
            for operation in arguments.get("ops", ()):
                anchor = operation.get("key", operation.get("near"))
                if anchor is not None:
                    return self.primary_of(anchor)
            return self._any_primary(turn, own)
        return None

    def _any_primary(self, turn, own):
        primaries = self.primaries
        if own in primaries:
            return own
        return primaries[next(turn) // INSERTS_PER_TURN % len(primaries)] if primaries else None


class DirectRoutes:
    """The client's connections straight to the partitions' primaries, and the map that
    names them (see the module docstring).

    :param clock: the reactor (or a Clock).
    :param main: the client's any-host :class:`~nodedb.wire.connection.PersistentConnection`,
        through which the map is asked for.
    :param connect: ``connect(address, on_greeted)`` -> a started PersistentConnection to one
        host; *on_greeted* is called with its channel after each handshake.
    """

    _log = Logger()

    def __init__(self, clock, main, connect, interval=MAP_INTERVAL):
        self.clock = clock
        self.map = None
        self._main = main
        self._connect = connect
        self._connections = {}  # host id -> (address, PersistentConnection), opened on first use
        self._retired = []  # connections to hosts the map no longer routes to, closed once idle
        self._avoid = {}  # host that failed a request -> until when it is gone around
        self._asking = False
        self._unsupported = False  # the host at the end of main serves no map
        self._stopped = False
        self._turn = itertools.count()
        self._interval = interval
        self._refresher = LoopingCall(self._tick)
        self._refresher.clock = clock

    def connection_for(self, op, arguments):
        """:return: ``(host id, connection)`` to send request *op* straight to, or ``(None,
        None)`` to send it through the any-host connection (which may be the host's own). A
        host not connected to yet is connected to now, for the requests after this one."""
        partition_map = self.map
        if partition_map is None:
            return None, None
        own = self._main.server.get("host")
        host = partition_map.target(op, arguments, self._turn, own)
        if host is None or host == own or (self._avoid and self._avoided(host)):
            return None, None  # any host, or the host of the any-host connection itself
        entry = self._connections.get(host)
        if entry is None:
            self._open(host, partition_map.addresses.get(host))
            return None, None
        connection = entry[1]
        server = connection.server
        if not connection.connected or server.get("host") != host or server.get("cluster") != partition_map.cluster:
            return None, None
        return host, connection

    def failed(self, host):
        """A request sent straight to *host* found it unable to serve it: send its requests
        through the any-host connection for :data:`AVOID_FOR` seconds or until a newer map
        comes, and ask for the map now."""
        self._avoid[host] = self.clock.seconds() + AVOID_FOR
        self.refresh()

    def _avoided(self, host):
        until = self._avoid.get(host)
        if until is None:
            return False
        if until > self.clock.seconds():
            return True
        del self._avoid[host]
        return False

    def connections(self):
        """The connections to hosts opened so far and not closed yet."""
        return [connection for _address, connection in self._connections.values()] + self._retired

    def stop(self):
        """:return: the Deferreds of closing every connection this opened."""
        self._stopped = True
        if self._refresher.running:
            self._refresher.stop()
        connections, self._connections, self._retired = self.connections(), {}, []
        return [connection.stop() for connection in connections]

    # -- the map ---------------------------------------------------------------------------

    def connected(self, channel):
        """The any-host connection was made again (perhaps to another host): ask it for the
        map, now and every interval from now on."""
        self._unsupported = False
        self.refresh()
        if not self._refresher.running and not self._stopped:
            self._refresher.start(self._interval, now=False)

    def _tick(self):
        self._close_idle()
        self.refresh()

    def refresh(self):
        """Ask the any-host connection for the map, unless an answer is awaited already."""
        if self._asking or self._unsupported or self._stopped or not self._main.connected:
            return
        self._asking = True
        arguments = None if self.map is None else {"since": self.map.version}
        d = self._main.call("map", arguments, MAP_TIMEOUT)
        d.addCallbacks(self._learn, self._not_now)
        d.addBoth(self._answered)

    def _answered(self, _result):
        self._asking = False

    def _learn(self, reply):
        if type(reply) is dict and reply.keys() == {"version"}:
            return  # the map has not changed
        try:
            new = PartitionMap.from_wire(reply)
        except ValueError as e:
            self._log.warn("ignoring a malformed partition map from {peer}: {why}", peer=self._main.address, why=e)
            return
        current = self.map
        if new.cluster != self._main.server.get("cluster"):
            return  # not the cluster this client is connected to
        if current is not None and current.cluster == new.cluster and new.version <= current.version:
            return  # a host that has not caught up with one asked before
        self.map = new
        self._avoid.clear()
        for host, (address, connection) in list(self._connections.items()):
            if host not in new.primaries or new.addresses.get(host) != address:
                # Closed once its requests in flight are answered: closing it now would fail
                # them, and a write that may have been applied is not sent again.
                del self._connections[host]
                self._retired.append(connection)
        self._close_idle()

    def _close_idle(self):
        idle = [connection for connection in self._retired if not connection.in_flight()]
        self._retired = [connection for connection in self._retired if connection.in_flight()]
        for connection in idle:
            connection.stop()

    def _not_now(self, reason):
        reason.trap(errors.NodeDBError)
        if reason.check(errors.InvalidRequest):
            # A node of an earlier version: requests go through it until the client moves on.
            self._unsupported = True
        self._log.debug("{peer} did not give the partition map: {why}", peer=self._main.address, why=reason.getErrorMessage())

    # -- connections to the primaries ------------------------------------------------------

    def _open(self, host, address):
        if address is None:
            return
        connection = self._connect(address, lambda channel: self._greeted(host, connection))
        self._connections[host] = (address, connection)

    def _greeted(self, host, connection):
        server, partition_map = connection.server, self.map
        if partition_map is not None and (server.get("host") != host or server.get("cluster") != partition_map.cluster):
            self._log.warn(
                "{address} is host {found} of cluster {cluster}, not host {host} as the partition map says",
                address=connection.address,
                found=server.get("host"),
                cluster=server.get("cluster"),
                host=host,
            )
            self.refresh()

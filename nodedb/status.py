"""What this host says about itself: its handshakes, its entry in the network information (NI),
and the status document of ``/status`` and ``nodedb status``."""

import math
import os
import time

import nodedb
from nodedb.gossip.state import HostEntry
from nodedb.health import cluster_health
from nodedb.topology.vivaldi import direction, distance
from nodedb.voting.state import sequence_range
from nodedb.wire.channel import PROTOCOL_VERSION


def partition_ranges(partitions):
    """``[[first, last], ...]`` covering the sorted partition numbers *partitions*."""
    ranges = []
    for partition in partitions:
        if ranges and ranges[-1][1] == partition - 1:
            ranges[-1][1] = partition
        else:
            ranges.append([partition, partition])
    return ranges


def measure_cpu_rating():
    """A rough CPU rating for placement: cores times single-core speed (1.0 is a core that
    runs the reference loop in 10 ms)."""
    start = time.perf_counter()
    total = 0
    for i in range(200_000):
        total += i * i
    elapsed = max(time.perf_counter() - start, 1e-6)
    return round((os.cpu_count() or 1) * 0.010 / elapsed, 2)


def port_address(port):
    """``host:port`` of a listening *port* bound to one address (None: bound to every one)."""
    if port is None:
        return None
    address = port.getHost()
    host = getattr(address, "host", None)
    if host in (None, "", "0.0.0.0", "::"):
        return None
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


# -- handshakes ---------------------------------------------------------------------------------


def hello(identity, config):
    """The ``hello`` reply: who this node is."""
    return {
        "version": PROTOCOL_VERSION,
        "host": identity.host_id,
        "cluster": identity.cluster_id,
        "max_frame": config.max_frame_size,
        "max_document": config.max_document_size,
    }


def peer_hello(identity, address):
    """The handshake this host sends to its peers."""
    return {
        "version": PROTOCOL_VERSION,
        "role": "peer",
        "host": identity.host_id,
        "cluster": identity.cluster_id or "",
        "address": address,
    }


# -- this host's NI entry -----------------------------------------------------------------------


def first_entry(identity, address, space, cpu_rating, layout, now):
    """This host's NI entry as it starts (*space*: its :class:`~nodedb.placement.LocalSpace`)."""
    held = identity.held
    return HostEntry(
        host_id=identity.host_id,
        generation=identity.generation,
        version=0,
        address=address,
        status="write" if held else "proposal",
        updated=now,
        cluster_id=identity.cluster_id or "",
        partitions=tuple(held),
        ranges=tuple((layout.first_id(p), layout.last_id(p)) for p in held),
        free_bytes=space.announced(),
        cpu_rating=cpu_rating,
    )


def announce_roles(gossip, logsync, host_id, layout, state):
    """The agreed *state* changed: tell the network this host's status (``proposal``, ``read``
    or ``write``), the partitions it holds, the id ranges it allocates in and those it has not
    caught up on."""
    primaries = state.primary_partitions(host_id)
    ranges = []
    for partition, epoch in sorted(primaries.items()):
        first, last = sequence_range(epoch)
        ranges.append((layout.make(partition, first), layout.make(partition, last)))
    gossip.update_local(
        status=("write" if primaries else "read") if state.admitted(host_id) else "proposal",
        partitions=tuple(state.replica_partitions(host_id)),
        ranges=tuple(ranges),
        syncing=tuple(logsync.syncing()),
    )


# -- the status document ------------------------------------------------------------------------


class NodeStatus:
    """The status document of a node, from its services as they are now.

    :param placement: the :class:`~nodedb.placement.Placement` (the hosts as the
        Voting policy weighs them, for the health summary).
    :param scans: the :class:`~nodedb.query.scans.ScanService` of the scans this host
        coordinates.
    :param started: when the node started (the clock's seconds).
    """

    def __init__(
        self, identity, storage, ids, gossip, reliability, placement, voting, logsync, scans, transport, fence, started
    ):
        self.identity = identity
        self.storage = storage
        self.ids = ids
        self.gossip = gossip
        self.reliability = reliability
        self.placement = placement
        self.voting = voting
        self.logsync = logsync
        self.scans = scans
        self.transport = transport
        self.fence = fence
        self.started = started

    def describe(self, entry):
        """An NI *entry* as the status document shows a host: with its health seen from here."""
        me = self.gossip.coordinate
        own = entry.host_id == self.identity.host_id
        coordinate = me if own else entry.coordinate
        health = (
            {"unreliability": 0.0, "available": True, "since": self.started, "phi": 0.0, "rtt": None}
            if own
            else self.reliability.describe(entry.host_id)
        )
        return {
            "id": entry.host_id,
            "address": entry.address,
            "status": entry.status,
            "generation": entry.generation,
            "updated": entry.updated,
            "partitions": partition_ranges(entry.partitions),
            "inactive": partition_ranges(entry.syncing),
            "ranges": [list(r) for r in entry.ranges],
            "partition_count": len(entry.partitions),
            "free_bytes": entry.free_bytes,
            "cpu_rating": entry.cpu_rating,
            "coordinate": {"x": coordinate.x, "y": coordinate.y, "height": coordinate.height, "error": coordinate.error},
            "distance_ms": None if own else round(distance(me, entry.coordinate) * 1000, 3),
            "direction": None if own else round(math.degrees(direction(me, entry.coordinate)), 1),
            **health,
        }

    def host_entry(self):
        """This host as ``/status`` shows it: its NI entry plus local storage figures."""
        stats = self.storage.stats()
        last_commits = {}
        for partition in self.ids.partitions():
            last = self.storage.partition_state(partition).last_commit_id
            if last:
                last_commits[str(partition)] = last
        return {
            **self.describe(self.gossip.local_entry()),
            "free_bytes": stats["free_bytes"],
            "size_bytes": stats["size_bytes"],
            "last_commit_ids": last_commits,
            "started": self.started,
            "version": nodedb.__version__,
        }

    def document(self, member):
        """The status document; *member*: whether this host has joined its cluster (Voting
        and LogSync run), else they are left out."""
        host = self.host_entry()
        others = [self.describe(entry) for entry in self.gossip.hosts()[1:]]
        ni = self.gossip.ni
        guard = getattr(self.transport, "guard", None)
        return {
            "host": host,
            "hosts": [host, *others],
            "cluster": {
                "id": self.identity.cluster_id,
                "partitions": self.identity.partitions,
                "replicas": self.identity.replicas,
            },
            "ni": {"size": ni.size, "checksum": f"{ni.checksum:016x}", "rounds": self.gossip.rounds},
            "voting": self.voting.status() if member else None,
            "health": cluster_health(self.voting, self.placement.host_views()) if member else None,
            "fenced": self.fence.reason,
            "replication": self.logsync.status() if member else None,
            "scans": self.scans.status(),
            "connections": guard.status() if guard else None,
        }

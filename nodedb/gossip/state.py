"""The network information (NI) and the gossip that spreads it: pure state, no I/O, no clock.

Every host owns exactly one NI entry, its own, versioned by ``(generation, version)``:
the generation grows at every restart (so a restarted host's entry supersedes the old one,
whatever the old version), the version at every change the host makes. Merging keeps the
entry with the larger pair, so merges commute and every host converges on the same NI
(Cassandra-style versioned state).

Spreading has two parts:

- *Rumours*: an entry that changed is hot for a number of rounds, its ``decay``. Each round a
  host pushes its hot entries to ``fanout`` random peers, with the decay they have left; a
  receiver that learns something new keeps it hot with one less. Rumours therefore reach
  everyone in O(log N) rounds and then die out.
- *Anti-entropy*: every push carries the sender's NI ``checksum`` and ``size``. A receiver
  whose NI still differs after merging a push that taught it nothing answers with its digest
  (``host -> [generation, version]``), and the pusher then sends what the receiver lacks and
  asks for what it lacks itself. That pull repairs whatever rumours missed.

The checksum is the XOR of a 64-bit hash of each entry's ``(host, generation, version)``:
independent of order and updated in O(1) per merge.
"""

import hashlib
import math
from dataclasses import dataclass, field, replace

from nodedb.topology.vivaldi import Coordinate

STATUSES = ("write", "read", "inactive", "proposal")
MAX_HOST_ID = 64
MAX_ADDRESS = 300
MAX_PARTITION_LIST = 65536


class EntryError(ValueError):
    """A peer sent an NI entry that is malformed."""


def _check(condition, message):
    if not condition:
        raise EntryError(message)


def _nonnegative_int(value, name):
    _check(type(value) is int and 0 <= value < 1 << 63, f"{name} must be a non-negative integer")
    return value


def _number(value, name):
    _check(type(value) in (int, float) and math.isfinite(value), f"{name} must be a finite number")
    return float(value)


@dataclass(frozen=True)
class HostEntry:
    """What the network knows of one host; only that host ever changes it."""

    host_id: str
    generation: int
    version: int
    address: str
    status: str = "proposal"
    #: The owner's clock when it made this version (seconds since the epoch).
    updated: float = 0.0
    cluster_id: str = ""
    partitions: tuple = ()
    #: Identifier ranges the host allocates in: ``((first_id, last_id), ...)``.
    ranges: tuple = ()
    free_bytes: int = 0
    cpu_rating: float = 1.0
    coordinate: Coordinate = field(default_factory=Coordinate)
    #: Partitions the host holds a copy of that is not caught up yet (``inactive`` for them).
    syncing: tuple = ()

    @property
    def stamp(self):
        return (self.generation, self.version)

    def to_wire(self):
        return {
            "host": self.host_id,
            "gen": self.generation,
            "ver": self.version,
            "address": self.address,
            "status": self.status,
            "updated": self.updated,
            "cluster": self.cluster_id,
            "partitions": list(self.partitions),
            "ranges": [list(r) for r in self.ranges],
            "free": self.free_bytes,
            "cpu": self.cpu_rating,
            "coord": self.coordinate.to_wire(),
            "syncing": list(self.syncing),
        }

    @classmethod
    def from_wire(cls, value):
        """:raise EntryError: if *value* is not a well-formed entry."""
        _check(type(value) is dict, "an NI entry is a map")
        host_id = value.get("host")
        _check(type(host_id) is str and 0 < len(host_id) <= MAX_HOST_ID, "bad host id")
        address = value.get("address")
        _check(type(address) is str and 0 < len(address) <= MAX_ADDRESS, "bad address")
        status = value.get("status")
        _check(status in STATUSES, "bad status")
        cluster_id = value.get("cluster", "")
        _check(type(cluster_id) is str and len(cluster_id) <= MAX_HOST_ID, "bad cluster id")
        partitions = value.get("partitions", [])
        _check(type(partitions) is list and len(partitions) <= MAX_PARTITION_LIST, "bad partitions")
        for partition in partitions:
            _nonnegative_int(partition, "partition")
        syncing = value.get("syncing", [])
        _check(type(syncing) is list and len(syncing) <= MAX_PARTITION_LIST, "bad syncing partitions")
        for partition in syncing:
            _nonnegative_int(partition, "partition")
        ranges = value.get("ranges", [])
        _check(type(ranges) is list and len(ranges) <= MAX_PARTITION_LIST, "bad ranges")
        for item in ranges:
            _check(type(item) is list and len(item) == 2, "a range is [first, last]")
            _check(all(type(i) is int and 0 <= i < 1 << 64 for i in item) and item[0] <= item[1], "bad range")
        try:
            coordinate = Coordinate.from_wire(value.get("coord", Coordinate().to_wire()))
        except ValueError as e:
            raise EntryError(str(e)) from None
        return cls(
            host_id=host_id,
            generation=_nonnegative_int(value.get("gen"), "gen"),
            version=_nonnegative_int(value.get("ver"), "ver"),
            address=address,
            status=status,
            updated=_number(value.get("updated", 0.0), "updated"),
            cluster_id=cluster_id,
            partitions=tuple(partitions),
            ranges=tuple(tuple(r) for r in ranges),
            free_bytes=_nonnegative_int(value.get("free", 0), "free"),
            cpu_rating=_number(value.get("cpu", 1.0), "cpu"),
            coordinate=coordinate,
            syncing=tuple(syncing),
        )


def _entry_hash(host_id, generation, version):
    digest = hashlib.blake2b(f"{host_id}\0{generation}\0{version}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class NetworkInformation:
    """Every host entry this host knows, with the NI's size and checksum."""

    def __init__(self):
        self.entries = {}
        self.checksum = 0

    @property
    def size(self):
        return len(self.entries)

    def merge(self, entry):
        """Keep *entry* if it is newer than what is known of its host.

        :return: True if the NI changed.
        """
        current = self.entries.get(entry.host_id)
        if current is not None:
            if entry.stamp <= current.stamp:
                return False
            self.checksum ^= _entry_hash(current.host_id, *current.stamp)
        self.entries[entry.host_id] = entry
        self.checksum ^= _entry_hash(entry.host_id, *entry.stamp)
        return True

    def digest(self):
        """``{host: [generation, version]}`` of every entry."""
        return {host: [e.generation, e.version] for host, e in self.entries.items()}

    def compare(self, digest):
        """What differs from a peer's *digest*.

        :return: ``(newer_here, newer_there)``: the entries this NI has that the digest lacks
            or has older, and the host ids the digest has newer or that are unknown here.
        """
        newer_here = [e for host, e in self.entries.items() if tuple(digest.get(host, (-1, -1))) < e.stamp]
        newer_there = [
            host
            for host, stamp in digest.items()
            if host not in self.entries or self.entries[host].stamp < tuple(stamp)
        ]
        return newer_here, newer_there


@dataclass(frozen=True)
class GossipSettings:
    fanout: int = 3
    #: Rounds a fresh change stays hot; None: ``ceil(log2(hosts)) + 3``.
    decay: int | None = None
    #: Most rumours carried by one push (the hottest first).
    max_rumours: int = 64


def check_digest(value):
    """A peer's digest, checked. :raise EntryError: if malformed."""
    _check(type(value) is dict and len(value) <= 1_000_000, "a digest is a map")
    for host, stamp in value.items():
        _check(type(host) is str and 0 < len(host) <= MAX_HOST_ID, "bad host id in digest")
        _check(type(stamp) is list and len(stamp) == 2, "a digest stamp is [generation, version]")
        _nonnegative_int(stamp[0], "gen")
        _nonnegative_int(stamp[1], "ver")
    return value


def check_entries(value, limit=100_000):
    """A list of entries from a peer, checked. :raise EntryError: if malformed."""
    _check(type(value) is list and len(value) <= limit, "entries must be a list")
    return [HostEntry.from_wire(item) for item in value]


class Gossip:
    """One host's gossip: its NI, its hot rumours, and what to send each round.

    :param local: this host's own entry.
    :param rng: a ``random.Random`` for choosing peers (seeded in the simulator).
    """

    def __init__(self, local, rng, settings=GossipSettings(), on_change=None):
        """
        :param on_change: ``on_change(entry, previous)`` whenever a peer's entry is replaced
            by a newer one (*previous* is None for a host seen for the first time).
        """
        self.settings = settings
        self.on_change = on_change
        self.rng = rng
        self.ni = NetworkInformation()
        self.host_id = local.host_id
        self.rumours = {}  # host id -> rounds left hot
        self.ni.merge(local)
        self._heat(local.host_id, self.initial_decay())

    @property
    def local(self):
        return self.ni.entries[self.host_id]

    def initial_decay(self):
        if self.settings.decay is not None:
            return self.settings.decay
        return math.ceil(math.log2(max(2, self.ni.size))) + 3

    def _heat(self, host_id, decay):
        if decay > 0 and decay > self.rumours.get(host_id, 0):
            self.rumours[host_id] = decay

    def update_local(self, now, **fields):
        """Change this host's own entry (a new version) and start a rumour of it."""
        entry = replace(self.local, version=self.local.version + 1, updated=now, **fields)
        self.ni.merge(entry)
        self._heat(self.host_id, self.initial_decay())
        return entry

    def peers(self):
        return [host for host in self.ni.entries if host != self.host_id]

    def round(self, exclude=()):
        """One gossip round.

        :param exclude: host ids not to push to this round (known to be unreachable).
        :return: ``[(host_id, push message), ...]``; the rumours sent lose one round of decay.
        """
        candidates = [host for host in self.peers() if host not in exclude]
        if not candidates:
            return []
        targets = self.rng.sample(candidates, min(self.settings.fanout, len(candidates)))
        message = self.push_message()
        for host in list(self.rumours):
            self.rumours[host] -= 1
            if self.rumours[host] <= 0:
                del self.rumours[host]
        return [(host, message) for host in targets]

    def push_message(self):
        hottest = sorted(self.rumours.items(), key=lambda item: -item[1])[: self.settings.max_rumours]
        return {
            "source": self.host_id,
            "rumours": [[self.ni.entries[host].to_wire(), decay] for host, decay in hottest],
            "checksum": self.ni.checksum,
            "size": self.ni.size,
        }

    def receive_push(self, message):
        """Merge a push from a peer.

        :return: the reply: this NI's checksum and size, plus its digest when the NIs still
            differ and the push brought nothing new (so the pusher starts a pull).
        :raise EntryError: if the message is malformed (nothing is merged then).
        """
        _check(type(message) is dict, "a push is a map")
        rumours = message.get("rumours")
        _check(type(rumours) is list and len(rumours) <= 10_000, "rumours must be a list")
        parsed = []
        for item in rumours:
            _check(type(item) is list and len(item) == 2, "a rumour is [entry, decay]")
            decay = _nonnegative_int(item[1], "decay")
            parsed.append((HostEntry.from_wire(item[0]), decay))
        checksum, size = message.get("checksum"), message.get("size")
        _check(type(checksum) is int and type(size) is int, "checksum and size are integers")
        learned = False
        for entry, decay in parsed:
            if self._merge(entry):
                learned = True
                self._heat(entry.host_id, decay - 1)
        reply = {"checksum": self.ni.checksum, "size": self.ni.size}
        if not learned and (checksum, size) != (self.ni.checksum, self.ni.size):
            reply["digest"] = self.ni.digest()
        return reply

    def plan_sync(self, reply):
        """After a push, what to send in a pull (sync) request, if the reply asks for one.

        :return: None, or the sync request ``{"entries": [...], "want": [...]}``.
        """
        _check(type(reply) is dict, "a push reply is a map")
        if "digest" not in reply:
            return None
        newer_here, newer_there = self.ni.compare(check_digest(reply["digest"]))
        if not newer_here and not newer_there:
            return None
        return {"entries": [e.to_wire() for e in newer_here], "want": newer_there}

    def receive_sync(self, request):
        """Merge a sync request's entries; :return: the entries it asked for."""
        _check(type(request) is dict, "a sync is a map")
        want = request.get("want", [])
        _check(type(want) is list and len(want) <= 1_000_000, "want must be a list")
        self.merge_entries(check_entries(request.get("entries", [])), decay=1)
        return {"entries": [self.ni.entries[h].to_wire() for h in want if type(h) is str and h in self.ni.entries]}

    def merge_entries(self, entries, decay=None):
        """Merge entries learned outside a rumour (a join or a sync); new ones become rumours."""
        decay = self.initial_decay() if decay is None else decay
        for entry in entries:
            if self._merge(entry):
                self._heat(entry.host_id, decay)

    def _merge(self, entry):
        """Merge a peer's entry; an entry claiming to be this host's and newer than the real
        one (stale from a crash, or forged) is refuted by a newer version of our own."""
        if entry.host_id != self.host_id:
            previous = self.ni.entries.get(entry.host_id)
            if not self.ni.merge(entry):
                return False
            if self.on_change is not None:
                self.on_change(entry, previous)
            return True
        if entry.stamp > self.local.stamp:
            refuted = replace(self.local, generation=entry.generation, version=entry.version + 1)
            self.ni.merge(refuted)
            self._heat(self.host_id, self.initial_decay())
            return True
        return False

    def converged_with(self, other):
        return self.ni.checksum == other.ni.checksum and self.ni.size == other.ni.size

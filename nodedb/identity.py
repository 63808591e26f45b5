"""Who this host is and which cluster it belongs to, as its store keeps them (meta keys).

A host with an empty store and no seeds founds a new cluster; with seeds it gets a host id at
once and learns its cluster when it joins (:meth:`Identity.adopt`). The partitions it holds
follow the agreed map (:meth:`Identity.hold`, a subscriber of the cluster's changes).
"""

from twisted.logger import Logger

from nodedb import errors
from nodedb.config import DEFAULT_PARTITIONS, ConfigError
from nodedb.security.tls import check_peer_identity
from nodedb.voting.formation import bootstrap_decision

#: The meta keys of an identity, and its attributes.
KEYS = ("host_id", "cluster_id", "partitions", "replicas", "partition_bits", "created", "held", "expect")


class Identity:
    """This host's identity, the shape of its cluster, and its restart count.

    :ivar generation: how many times this store has started (this start included); gossip
        tells a restarted host from its earlier self by it.
    """

    _log = Logger()

    def __init__(self, storage, fields, generation, saved=True):
        self._storage = storage
        for key in KEYS:
            setattr(self, key, fields[key])
        self.generation = generation
        self._saved = saved

    @classmethod
    async def load(cls, storage, config, rng, clock):
        """Read this host's identity from the open *storage* and count this start; on an empty
        store, found a new cluster (no seeds: written by :meth:`save_new`) or prepare to join
        one (seeds).

        :raise ConfigError: if a recovery removed this host, or the store's id layout is not
            the one of this build.
        """
        stored = {key: storage.get_meta(key) for key in KEYS}
        layout = storage.layout
        if storage.get_meta("fenced"):
            raise ConfigError(f"{storage.get_meta('fenced')}; this host does not start on its old data")
        saved = True
        if stored["host_id"] is not None and stored["cluster_id"] is not None:
            if config.partitions not in (stored["partitions"], DEFAULT_PARTITIONS):
                cls._log.warn(
                    "--partitions is read only when bootstrapping; this cluster has {partitions}",
                    partitions=stored["partitions"],
                )
            if stored["held"] is None:  # written before hosts held partitions selectively
                stored["held"] = list(range(stored["partitions"]))
            cls._log.info("restarting node {host_id} from {data_dir}", host_id=stored["host_id"], data_dir=config.data_dir)
            fields = stored
        elif config.seeds:
            host_id = stored["host_id"] or f"{rng.getrandbits(48):012x}"
            await storage.set_meta({"host_id": host_id})
            fields = {**stored, "host_id": host_id, "held": [], "expect": 0, "partition_bits": layout.partition_bits}
        else:
            expect = config.bootstrap_expect
            fields = {
                "host_id": stored["host_id"] or f"{rng.getrandbits(48):012x}",
                "cluster_id": f"{rng.getrandbits(64):016x}",
                "partitions": config.partitions,
                "replicas": config.replicas,
                "partition_bits": layout.partition_bits,
                "created": clock.seconds(),
                # Founding alone, the host holds every partition from the start; waiting for
                # --bootstrap-expect hosts, it holds what the founding decision gives it.
                "held": list(range(config.partitions)) if expect <= 1 else [],
                "expect": expect,
            }
            # Written only once the node listens (save_new): a start that fails creates nothing.
            saved = False
        generation = (storage.get_meta("generation") or 0) + 1
        await storage.set_meta({"generation": generation})
        if fields["partition_bits"] != layout.partition_bits:
            raise ConfigError(f"this store uses {fields['partition_bits']}-bit partition numbers; expected 16")
        return cls(storage, fields, generation, saved)

    @property
    def joined(self):
        """Whether this host knows its cluster (a joiner learns it from a seed)."""
        return self.cluster_id is not None

    def fields(self):
        """``{key: value}`` of every meta key of the identity."""
        return {key: getattr(self, key) for key in KEYS}

    async def save_new(self):
        """Write the identity of a cluster this start founded (once the node listens)."""
        if self._saved:
            return
        await self._storage.set_meta(self.fields())
        self._saved = True
        self._log.info(
            "bootstrapped cluster {cluster_id} with {partitions} partitions; this is host {host_id}{waiting}",
            cluster_id=self.cluster_id,
            partitions=self.partitions,
            host_id=self.host_id,
            waiting=f"; it forms once {self.expect} hosts are present (--bootstrap-expect)" if self.expect > 1 else "",
        )

    async def adopt(self, cluster, now):
        """Take the identity of the cluster a seed described (``gossip.join``'s ``cluster``)."""
        try:
            fields = {
                "cluster_id": _checked(cluster.get("id"), str),
                "partitions": _checked(cluster.get("partitions"), int),
                "replicas": _checked(cluster.get("replicas"), int),
                "partition_bits": _checked(cluster.get("partition_bits"), int),
                "created": now,
                "held": [],
                "expect": 0,
            }
        except errors.InvalidRequest as e:
            raise ConfigError(f"the seed described its cluster badly: {e}") from None
        if fields["partition_bits"] != self._storage.layout.partition_bits:
            raise ConfigError("the seed's cluster uses another id layout")
        await self._storage.set_meta(fields)
        for key, value in fields.items():
            setattr(self, key, value)

    def describe_cluster(self):
        """What a host joining through this one learns about the cluster."""
        return {
            "id": self.cluster_id,
            "partitions": self.partitions,
            "replicas": self.replicas,
            "partition_bits": self.partition_bits,
        }

    def founding(self, address, clock, present_hosts):
        """Voting's ``bootstrap`` (see :mod:`nodedb.voting.formation`): on the host that
        founds the cluster (or a host from before voting existed), ``bootstrap()`` -> its first
        decision, recording the cluster as it is, once the hosts it expects are present. None
        on every other host.

        :param address: ``address()`` -> this host's address.
        :param present_hosts: ``present_hosts(cluster_id)`` -> ``{host id: address}`` of the
            hosts of the cluster this host sees now.
        """
        expect = self.expect
        if expect is None:  # a host from before --bootstrap-expect existed
            expect = 1 if self.held else 0
        if not expect:
            return None

        def bootstrap():
            return bootstrap_decision(self.fields(), address(), clock.seconds(), present_hosts(self.cluster_id), expect)

        return bootstrap

    def hold(self, state):
        """The agreed cluster *state* changed: remember the partitions this host is primary of."""
        held = sorted(state.primary_partitions(self.host_id))
        if held != self.held:
            self.held = held
            self._storage.set_meta({"held": held})

    def remove(self, reason, data_dir):
        """A recovery removed this host from its cluster: it never starts on this store again
        (:meth:`load` refuses it)."""
        self._log.warn(
            "{reason} (data directory {data_dir}); this host stops serving", reason=reason, data_dir=data_dir
        )
        self._storage.set_meta({"fenced": reason}).addErrback(
            lambda failure: self._log.failure("could not record that this host was fenced", failure)
        )

    # -- the handshake ----------------------------------------------------------------------

    def admit_peer(self, request, channel, tls):
        """Judge a peer's handshake: with *tls*, its certificate must name the address it
        advertises; and it must not belong to another cluster.

        :raise ProtocolError: to refuse it.
        """
        if tls:
            try:
                check_peer_identity(channel.transport, request.get("address"))
            except errors.ProtocolError as e:
                self._log.warn("refusing peer {host} at {peer}: {why}", host=request.get("host"), peer=channel.peer, why=e)
                raise
        cluster = request.get("cluster") or ""
        if cluster and self.cluster_id and cluster != self.cluster_id:
            self._log.warn(
                "refusing peer {host} at {peer}: it belongs to cluster {theirs}, this is {ours}",
                host=request.get("host"),
                peer=channel.peer,
                theirs=cluster,
                ours=self.cluster_id,
            )
            raise errors.ProtocolError(f"this node belongs to cluster {self.cluster_id}, not {cluster}")


def _checked(value, kind):
    if type(value) is not kind:
        raise errors.InvalidRequest(f"expected {kind.__name__}, got {type(value).__name__}")
    return value

"""Every service of a nodedb node, as a zope interface.

A node is assembled from one provider of each interface (see :func:`nodedb.node.make_node`).
Tests swap in fakes, and plugins swap in other storage engines, transports or id allocators,
without touching the rest. Each interface declares exactly what the rest of nodedb uses of
its provider, and nothing else: a second implementation that provides it (``verifyObject``)
and passes its contract suite in :mod:`nodedb.testing` can take the first one's place.

Conventions: methods that may wait on disk or network return a ``Deferred``; methods that only
read local state answer synchronously. Element ids are unsigned 64-bit ints, record types are
``[a-z0-9_]{1,64}`` strings, documents travel between services as CBOR-encoded ``bytes``.
"""

from twisted.application.service import IService
from zope.interface import Attribute, Interface


class IStorageBackend(Interface):
    """Durable local storage: elements per record type, a commit log per partition, metadata.

    Writes are grouped: :meth:`commit` calls that arrive while a durable transaction is under
    way share the next one, and each call is applied all-or-nothing. Reads are synchronous and
    see every commit whose Deferred has fired.

    The contract suite in :mod:`nodedb.testing.storage_contract` states the behaviour
    precisely; any backend must pass it (``tests/contract/test_storage.py`` runs it against the
    shipped backends; ``docs/plugins.md`` shows how to run it against a plugin).
    """

    name = Attribute("Short name of the backend, as chosen with ``--storage``.")

    layout = Attribute(
        "The :class:`nodedb.ids.IdLayout` that maps element ids to partitions; the node "
        "allocates ids with it, so it must be the one the backend's commit log uses."
    )

    def open():
        """Open or create the store.

        :return: a Deferred that fires with None once the store is ready, or fails with
            :class:`nodedb.errors.Unavailable` if it cannot be opened (for example a store
            written by a newer schema version).
        """

    def close():
        """Finish the writes under way, then release the store.

        :return: a Deferred that fires once everything is released.
        """

    def commit(operations, timestamp, epochs=None):
        """Apply *operations* atomically: all of them or none.

        :param operations: a sequence of :class:`nodedb.storage.Insert`,
            :class:`~nodedb.storage.Update` and :class:`~nodedb.storage.Delete`; they may span
            record types and partitions.
        :param timestamp: seconds since the epoch, recorded in each commit log entry.
        :return: a Deferred that fires, once the change is durable, with a list holding
            ``(element_id, version)`` for each operation in order (the version of a delete
            is the commit id of the delete), or fails with
            :class:`~nodedb.errors.Conflict` (an ``if_version`` did not match, or an insert's
            id exists), :class:`~nodedb.errors.NotFound` (update or delete of a missing
            element) or :class:`~nodedb.errors.Unavailable` (the store is full or closed,
            or a partition is not at the epoch *epochs* names); on failure nothing was
            applied.
        :param epochs: None, or ``{partition: epoch}``: then every partition written must
            be one of these and be followed at exactly that epoch, not under a full resync
            (the primary of a partition writes only while it still leads it).
        """

    def replicate(units):
        """Apply replication units, each on its own, in one durable transaction:
        :class:`nodedb.storage.Promise`, :class:`~nodedb.storage.Append`,
        :class:`~nodedb.storage.Reset`, :class:`~nodedb.storage.Load`,
        :class:`~nodedb.storage.Truncate` (their rules: :func:`nodedb.storage.apply.apply_replication`).

        :return: a Deferred that fires with ``[(accepted, PartitionState), ...]`` per unit.
        """

    def record_types():
        """:return: the sorted names of the record types the store has (a full resync copies
            each of them)."""

    def get(record_type, element_id):
        """The stored element.

        :return: ``(data, version)`` with *data* the CBOR bytes of the document, or None if
            there is no such element.
        """

    def scan(record_type, after_id, limit):
        """Elements of *record_type* in id order.

        :param after_id: return ids strictly greater than this (-1 for the first).
        :param limit: the most elements to return.
        :return: a list of ``(element_id, data, version)``, fewer than *limit* only at the end.
        """

    def read_log(partition, after_commit_id, limit):
        """Commit log entries of *partition* with commit ids greater than *after_commit_id*.

        :return: a list of :class:`nodedb.storage.LogEntry` in commit order, at most *limit*.
        """

    def partition_state(partition):
        """:return: the :class:`nodedb.storage.PartitionState` of *partition* (zeros if the
            partition has never been written)."""

    def get_meta(key):
        """:return: the value stored under the text *key* in the meta store, or None."""

    def set_meta(items):
        """Durably store ``{text key: CBOR-serialisable value}``, all or none; a value of
        None deletes the key.

        :return: a Deferred that fires once the values are durable.
        """

    def stats():
        """:return: a dict with at least ``size_bytes`` (space used by the store) and
            ``free_bytes`` (space left for it), for status and placement."""


class IStorageBackendPlugin(Interface):
    """A storage engine that ``--storage NAME`` can select.

    Plugins are found with :func:`twisted.plugin.getPlugins` in the ``nodedb.plugins``
    package (and any ``nodedb/plugins/`` directory on ``sys.path``).
    """

    name = Attribute("The name given to ``--storage``.")

    def make_backend(data_dir, options, reactor):
        """:return: a new, unopened :class:`IStorageBackend` that keeps its files in
            *data_dir*; *options* is the node's :class:`nodedb.config.NodeConfig`, *reactor*
            the reactor it runs under (for threads and timers)."""


class IIdAllocator(Interface):
    """Hands out element ids inside the partitions this host is primary for.

    Every id is new: never handed out before in its partition, not even by an earlier run of
    the node (the node passes each partition's stored ``max_sequence``, the highest sequence
    ever used there, as its high-water mark). The contract suite in
    :mod:`nodedb.testing.allocator_contract` states the behaviour precisely.
    """

    def set_partitions(high_water_marks, limits=None):
        """Allocate in these partitions from now on (the partition map changed).

        :param high_water_marks: ``{partition: highest sequence ever used}``; a partition
            already held keeps its own mark when that is higher (ids handed out for writes
            still on their way to storage are not in storage yet).
        :param limits: ``{partition: (first, last)}``, the sequence range each partition may
            use (that of its current epoch); the whole sequence space when a partition is
            not named.
        """

    def partitions():
        """:return: the sorted partition numbers this host may allocate ids in."""

    def choose_partition(near=None):
        """The partition for a new element: that of the element id *near* when given, else
        one chosen to spread inserts over the partitions held.

        :raise nodedb.errors.InvalidRequest: if *near* is not an element id.
        :raise nodedb.errors.Unavailable: if this host may not allocate there, or holds
            no partition.
        """

    def allocate(partition):
        """:return: a fresh id in *partition*, higher than any id handed out there before,
            within the partition's range.

        :raise nodedb.errors.Unavailable: if the partition is not held or its range is used up.
        """


class IIdAllocatorPlugin(Interface):
    """An id allocator that ``--id-allocator NAME`` can select (found as storage plugins are)."""

    name = Attribute("The name given to ``--id-allocator``.")

    def make_allocator(layout, high_water_marks, options, clock):
        """:return: a new :class:`IIdAllocator` for the cluster's :class:`nodedb.ids.IdLayout`,
            allocating in the partitions of *high_water_marks* (see
            :meth:`IIdAllocator.set_partitions`); *options* is the node's
            :class:`nodedb.config.NodeConfig`, *clock* the reactor (``seconds()``)."""


class IPeerTransport(IService):
    """Moves request/response messages between hosts, and from clients to hosts.

    Messages are CBOR maps (see ``docs/protocol.md``). A transport is a Twisted service: the
    node makes it a child of its own, so that it starts and stops with the node. The TCP
    transport listens on the node's ``--listen`` endpoint; the Unix one on a socket in
    ``--socket-dir``. The contract suite in :mod:`nodedb.testing.transport_contract` states
    the behaviour precisely.
    """

    guard = Attribute(
        "The :class:`nodedb.wire.limits.ConnectionGuard` that holds accepted connections to "
        "the node's limits (its status is in ``/status``), or None if there is none."
    )

    def serve(dispatch):
        """Serve every incoming request with ``dispatch(request, channel)``; called before
        :meth:`listen`.

        *request* is the request map (``op``, ``id`` and the arguments), *channel* the
        :class:`nodedb.wire.channel.Channel` it came on. The first request on every
        connection is ``hello``. *dispatch* returns the reply value or a Deferred of it;
        raising a :class:`nodedb.errors.NodeDBError` sends that error to the caller.
        """

    def listen():
        """:return: a Deferred that fires with the listening port once requests are served."""

    def call(address, op, arguments, timeout):
        """Send a request to the host at *address* (``"host:port"``), over a connection
        that is made on first use, opened with a ``hello`` request carrying the transport's
        handshake arguments, kept up and made again when it drops.

        :return: a Deferred that fires with the reply value, or fails with the error the
            remote handler raised, :class:`~nodedb.errors.Timeout` after *timeout* seconds,
            or :class:`~nodedb.errors.Unavailable` if the host cannot be reached. A local
            Unavailable means the request was never sent; its subclass
            :class:`~nodedb.errors.ConnectionLost` and Timeout mean it may have been.
        :raise ValueError: if *timeout* is not a positive number of seconds (every remote
            call has a deadline).
        """

    def reachable(address):
        """:return: False when the connection to *address* is known to be down, True while
            it is up or has not been tried yet."""

    def forget(address):
        """Close the connection to *address* (a host that left or moved).

        :return: a Deferred that fires once it is closed.
        """

    def peer_addresses():
        """:return: the sorted addresses this transport keeps connections to."""


class IPeerTransportPlugin(Interface):
    """A peer transport that ``--transport NAME`` can select (found as storage plugins are)."""

    name = Attribute("The name given to ``--transport``.")

    def make_transport(options, reactor, hello, on_heartbeat, heartbeat_op):
        """:return: a new, unstarted :class:`IPeerTransport`.

        :param options: the node's :class:`nodedb.config.NodeConfig`.
        :param hello: ``hello()`` -> the arguments of the handshake sent to peers.
        :param on_heartbeat: ``on_heartbeat(address, rtt, reply)`` after each heartbeat to
            a connected peer, every ``options.heartbeat_interval`` seconds (``rtt`` and
            ``reply`` are None when it was not answered in time).
        :param heartbeat_op: the request each heartbeat sends.
        :raise nodedb.config.ConfigError: if the options do not suit this transport.
        """


class IPeerService(Interface):
    """A service that answers requests from other hosts."""

    def install(api):
        """Serve this service's peer operations: ``api.register(op, handler)`` for each (see
        :meth:`nodedb.query.api.RequestAPI.register`)."""


class INetworkInformation(Interface):
    """The network information (NI) one host holds, read-only for everyone but Gossip."""

    entries = Attribute(
        "``{host id: HostEntry}`` of every host known (a :class:`nodedb.gossip.state.HostEntry` "
        "each, this host's own included)."
    )
    size = Attribute("How many hosts the NI holds.")
    checksum = Attribute(
        "A 64-bit checksum of every entry's host id and stamp: two hosts whose NI has the same "
        "size and checksum know the same network."
    )


class IGossip(IService, IPeerService):
    """Spreads the network information (NI) to every host, and keeps this host's network
    coordinate (docs/network.md)."""

    ni = Attribute("The :class:`INetworkInformation` this host holds now.")
    coordinate = Attribute(
        "This host's current :class:`nodedb.topology.vivaldi.Coordinate` (its own NI entry "
        "carries the one last announced)."
    )
    rounds = Attribute("How many gossip rounds this host has run.")

    def local_entry():
        """:return: this host's own NI entry."""

    def update_local(**fields):
        """Change fields of this host's own entry (a new version of it); the change spreads
        with the next rounds, and at once for ``status``, ``partitions``, ``syncing`` and
        ``cluster_id``.

        :return: the new entry.
        """

    def hosts():
        """:return: every NI host entry this host knows, its own first, then by host id."""

    def join(seeds):
        """Ask each of *seeds* (``"host:port"`` addresses) in turn for the NI, until one
        answers that belongs to a cluster; try again (with a growing pause) while none does.

        :return: a Deferred that fires with the cluster description the seed gave (``{"id",
            "partitions", "replicas", "partition_bits"}``) once this host knows the network.
        """

    def host_at(address):
        """:return: the id of the host the NI places at *address*, or None."""

    def observe_heartbeat(address, rtt, reply):
        """A heartbeat to the host at *address* took *rtt* seconds and was answered with
        *reply* (both None: it went unanswered). Feeds reliability and the coordinate."""


class IClusterView(Interface):
    """The committed cluster state every host agrees on (members and the partition map),
    read-only: only Voting's decisions change it (:class:`nodedb.voting.state.ClusterState`)."""

    cluster_id = Attribute("The cluster's id, or None before the first decision is applied.")
    partitions = Attribute("How many partitions the cluster has.")
    replicas = Attribute("The replication factor: copies wanted of each partition.")
    members = Attribute(
        "``{host id: {'address', 'accepted', 'admitted'}}`` of the members; a member is "
        "admitted once the cluster has fully taken it in."
    )
    assignments = Attribute(
        "``{partition: Assignment}``: each partition's replica set (``replicas``, primary "
        "first; ``primary``) and ``epoch`` (:class:`nodedb.voting.state.Assignment`)."
    )
    fenced = Attribute(
        "``{host id: {'recovery', 'by', 'at'}}`` of the hosts a recovery removed for good."
    )

    def primary_partitions(host_id):
        """:return: ``{partition: epoch}`` of the partitions *host_id* is primary of."""

    def replica_partitions(host_id):
        """:return: the sorted partitions whose replica set holds *host_id*."""

    def admitted(host_id):
        """:return: whether *host_id* is a member the cluster has fully taken in."""

    def to_snapshot():
        """:return: the whole state as plain data; equal on every host that applied the same
        decisions."""


class IVoting(IService, IPeerService):
    """Consensus among a few voter hosts on membership, the partition map and id ranges; every
    other member follows as a learner (docs/voting.md)."""

    state = Attribute("The :class:`IClusterView` of the decisions applied here.")
    settings = Attribute(
        "The :class:`nodedb.voting.policy.VotingSettings` the leader's policy runs with."
    )

    def start(bootstrap=None):
        """Load the persisted group (or start a new one) and begin taking part.

        :param bootstrap: on the host that founds the cluster only: ``bootstrap()`` -> the
            cluster's first decision once it can be made (:mod:`nodedb.voting.formation`), or
            None until then.
        """

    def propose(decision):
        """:return: a Deferred that fires with the decision's log index once it is applied
            here, or fails with :class:`~nodedb.errors.Unavailable` on a host that does not
            lead."""

    def leader():
        """:return: the host id of the current leader, or None while there is none."""

    def voters():
        """:return: the frozenset of the group's voters, as this host knows them."""

    def changing_primaries():
        """:return: the frozenset of partitions whose primary this host, as leader, is
            changing now (a failover election or a planned move under way)."""

    def request_election(partition, epoch):
        """The primary of *partition* at *epoch* was fenced by an election that did not
        finish: have the leader hold one (it keeps the primary if that is still the best)."""

    def status():
        """:return: the ``voting`` object of ``/status``: ``leader``, ``term``, ``role``,
            ``voters``, ``learners``, ``commit``, ``members``, ``holdings``."""


class IReplication(Interface):
    """What local writes and reads ask of log shipping: the epoch to commit at, and when a
    commit or a read may be answered (docs/replication.md)."""

    def epochs(partitions):
        """:return: ``{partition: epoch}`` to commit local writes with.

        :raise nodedb.errors.Unavailable: if this host is not the ready primary of one of
            *partitions*, or is handing it over (nothing was applied; the client may retry).
        """

    def begin(partitions):
        """:meth:`epochs` for a local commit about to start; a planned handoff of these
        partitions waits until :meth:`landed` or :meth:`acknowledge` says it is over."""

    def landed(epochs):
        """The commit :meth:`begin` returned *epochs* for failed (nothing to acknowledge)."""

    def acknowledge(results, epochs=None):
        """A local commit of ``[(element_id, version), ...]`` is durable here.

        :return: None if a majority of every partition's replica set has it already, else a
            Deferred that fires once it does, or fails with Timeout (outcome unknown).
        """

    def read_barrier(partitions):
        """Called after reading *partitions* locally.

        :return: None if the read may be answered now, else a Deferred that fires once it may
            (linearizably), or fails with Unavailable.
        :raise nodedb.errors.Unavailable: if this host is not their ready primary.
        """


class ILogSync(IReplication, IService, IPeerService):
    """Ships each partition's commit log from its primary to the replicas (docs/replication.md)."""

    def update(state):
        """The agreed partition map (an :class:`IClusterView`) changed: take up, keep or leave
        the primary and follower roles it gives this host."""

    def is_primary(partition):
        """:return: whether this host is the ready primary of *partition* (it takes writes)."""

    def syncing():
        """:return: the sorted partitions this host follows but has not caught up on."""

    def elect(requests, skip=(), prefer=None):
        """Fence replicas at new epochs and pick new primaries (for the Voting leader).

        :param requests: ``{partition: (new_epoch, replicas)}``.
        :param skip: hosts not to ask (known to be down).
        :param prefer: ``{partition: host}`` to pick when it is among the most complete.
        :return: a Deferred of ``{partition: host}`` for the partitions a majority of whose
            replicas answered.
        """

    def handoff(partition, epoch, follower):
        """As primary of *partition* at *epoch*, stop taking writes there until *follower*
        holds everything, so that an election at the next epoch can pick it.

        :return: a Deferred that fires with ``{"last": commit id}`` once *follower* has it
            all, or fails with Unavailable (and writes resume).
        """

    def status():
        """:return: the ``replication`` object of ``/status``: ``primary``, ``following``,
            ``inactive``, ``resyncs``."""


class IReliability(Interface):
    """Unreliability scores from timeouts and successes, and host availability."""

    settings = Attribute(
        "The :class:`nodedb.reliability.service.ReliabilitySettings`: ``call_timeout`` (seconds "
        "a peer call may take) and ``retries`` (more tries of an idempotent call)."
    )

    def record_success(host_id, rtt):
        """A call to *host_id* succeeded (after *rtt* seconds, or None if not measured)."""

    def record_timeout(host_id):
        """A call to *host_id* timed out or failed to reach it."""

    def new_generation(host_id, generation):
        """*host_id* runs as *generation*: a higher one than known means it restarted, and
        what its previous life did is forgotten."""

    def check():
        """Look again at every host as time passes (one that fell silent becomes suspect);
        called every gossip round."""

    def is_available(host_id):
        """:return: False once the host counts as unavailable (True for a host never seen)."""

    def score(host_id):
        """:return: the host's current unreliability score (0 is perfect)."""

    def describe(host_id):
        """:return: what ``/status`` shows of the host: ``unreliability``, ``available``,
            ``since``, ``phi``, ``rtt``."""


class IQuery(Interface):
    """Runs the client operations (``docs/protocol.md``).

    Documents here are plain dicts (already checked by the wire layer); results are the
    values of the client API. A result is a Deferred or, when known at once, the value.
    """

    def insert(record_type, doc, near=None):
        """:return: the new element's id.

        :param near: an element id: the new element goes in the same partition."""

    def get(record_type, element_id, consistency=None):
        """:return: ``[doc, version]``; fails with NotFound.

        :param consistency: None (linearizable) or ``"replica"`` (the nearest caught-up
            copy, possibly stale)."""

    def update(record_type, element_id, doc, if_version=None):
        """:return: the new version; fails with NotFound, or Conflict if *if_version* is not
            the current one."""

    def delete(record_type, element_id, if_version=None):
        """:return: the version of the delete; fails as :meth:`update` does."""

    def scan(record_type, where=None, limit=None, cursor=None):
        """:return: ``{"items": [[id, doc, version], ...], "cursor": str or None}``: a page
            in id order, *cursor* (None at the end) resuming after it."""

    def transaction(operations):
        """Apply *operations* (``{"op": "insert"|"update"|"delete", ...}`` maps) all or none.

        :return: the list of results in order (ids of inserts, versions otherwise).
        """

    def status():
        """:return: the status document served at ``/status``."""


class IQueryRouter(IQuery, IPeerService):
    """The node's query service: routes each client operation to the host that can answer it
    (docs/architecture.md). Where partitions are comes from :mod:`nodedb.placement`, and
    other hosts are called through :class:`nodedb.query.calls.HostCalls`, as the
    transactions call them."""

    scans = Attribute(
        "The scans this host coordinates (:class:`nodedb.query.scans.ScanService`): "
        "``status()`` for ``/status``, ``stop()`` when the node stops."
    )


class ITransactions(IService, IPeerService):
    """Coordinates the transactions that span partitions: two-phase commit through the
    partitions' own logs (``nodedb/transactions/``, docs/query.md). The router hands it each
    such transaction whose home partition this host leads; the query layer reaches it only
    through this interface.
    """

    def run(operations):
        """Apply checked *operations* all or none; this host must be the primary of their home
        partition.

        :param operations: ``{"op": "insert"|"update"|"delete", "type": ..., ...}`` maps, as
            :func:`nodedb.wire.transaction.parse_transaction` returns them (``id`` for the element).
        :return: a Deferred that fires with the results in order (each insert's new id, each
            update's and delete's version). It fails with Conflict, NotFound, InvalidRequest or
            Unavailable when nothing was applied, and with Timeout when the outcome is not
            known yet (the partitions settle it).
        """

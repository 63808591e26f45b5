"""This host as the primary of its partitions: the I/O around the pure cores.

Each partition this host leads is a :class:`~nodedb.logsync.lead.Lead` (its lifecycle, the
writes and reads waiting on it), and each follower host a
:class:`~nodedb.logsync.pipeline.Link` (the stream of append messages to it). :class:`Primaries`
feeds them what happens (local commits, answers, lost messages, the time) and does what they
decide: it fires the waiting Deferreds, writes the lead promises, packs messages from the
store (:class:`~nodedb.logsync.packer.Packer`) and sends them.
"""

from twisted.internet import defer
from twisted.logger import Logger

from nodedb import errors
from nodedb.logsync.lead import NEWER_EPOCH, STRANGER, Lead
from nodedb.logsync.packer import Packer
from nodedb.logsync.pipeline import Link
from nodedb.logsync.state import NEEDS_RESYNC, RESYNCED
from nodedb.storage import Promise, Truncate


class Primaries:
    """
    :param clock: an ``IReactorTime``.
    :param storage: the :class:`~nodedb.interfaces.IStorageBackend`.
    :param transport: the :class:`~nodedb.interfaces.IPeerTransport`.
    :param address_of: ``address_of(host_id)`` -> ``"host:port"`` or None.
    :param timing: a :class:`~nodedb.logsync.service.LogSyncTiming`.
    :param on_fenced: ``on_fenced(partition, epoch)`` when a replica refused this host as
        primary because it promised a newer epoch (and again every ``election_retry``).
    """

    _log = Logger()

    def __init__(self, clock, storage, transport, address_of, timing, on_fenced=None):
        self.clock = clock
        self.storage = storage
        self.transport = transport
        self.address_of = address_of
        self.timing = timing
        self.on_fenced = on_fenced
        self.packer = Packer(storage, timing)
        self.leads = {}  # partition -> Lead
        self._links = {}  # follower host -> Link
        self._pumping = None
        self._running = False

    def start(self):
        self._running = True

    def stop(self):
        """Give up every partition: their waiting writes fail with Timeout (outcome unknown)."""
        self._running = False
        for partition in list(self.leads):
            self._step_down(partition, errors.Timeout("the node stopped before the write was acknowledged; "
                                                      "it may or may not be applied"))

    # -- roles ------------------------------------------------------------------------------

    def step_down_from(self, leading):
        """Leave the partitions the map no longer has this host lead at the same epoch
        (*leading*: ``{partition: assignment}`` it does)."""
        for partition in list(self.leads):
            assignment = leading.get(partition)
            if assignment is None or assignment.epoch != self.leads[partition].epoch:
                self._step_down(partition)

    def take_up(self, leading):
        """Lead the partitions of *leading* this host does not lead yet (once the promise to
        lead is durable), and follow changes of their replica sets."""
        new = []
        for partition, assignment in leading.items():
            lead = self.leads.get(partition)
            if lead is None:
                lead = self.leads[partition] = Lead(partition, assignment.epoch, assignment.replicas[1:])
                new.append(lead)
            elif lead.followers != assignment.replicas[1:] and lead.change_followers(assignment.replicas[1:]):
                self._want(lead, urgent=True)
                self._settle(lead.settle(self.clock.seconds()))
        if new:
            units = [Promise(lead.partition, lead.epoch, lead=True) for lead in new]
            self.storage.replicate(units).addCallbacks(self._led, self.storage_failed, (new,))
        self._schedule_pump()

    def _led(self, results, leads):
        for lead, (accepted, state) in zip(leads, results):
            if self.leads.get(lead.partition) is not lead:
                continue
            if not accepted:
                self.fence(lead)
                continue
            lead.promised(state.last_commit_id)
            self._want(lead, urgent=True)
            self._log.debug("primary of partition {p} at epoch {e}", p=lead.partition, e=lead.epoch)
        self._schedule_pump()

    def _step_down(self, partition, write_error=None):
        lead = self.leads.pop(partition)
        self._settle(lead.abandon(write_error) + lead.give_up_handoff())

    def fence(self, lead):
        """A replica promised an epoch newer than *lead*'s: stop taking writes, ask for the
        election, fail what waits."""
        if not lead.fence(self.clock.seconds()):
            return
        self._ask_election(lead)
        self._settle(lead.abandon())
        self._log.info("partition {p}: a replica promised a newer epoch than {e}; this host stops taking writes",
                       p=lead.partition, e=lead.epoch)

    def fence_older(self, partition, epoch):
        """This host promised *epoch* for *partition*: fence its lead of an older epoch."""
        lead = self.leads.get(partition)
        if lead is not None and epoch > lead.epoch:
            self.fence(lead)

    def _ask_election(self, lead):
        if self.on_fenced is not None:
            self.on_fenced(lead.partition, lead.epoch)

    def storage_failed(self, failure):
        self._log.failure("replication could not write to storage", failure)

    @staticmethod
    def _settle(settled):
        """Fire the waiters a lead released."""
        for outcome in settled:
            if outcome.waiter.called:
                continue  # a handoff its caller cancelled
            if outcome.error is None:
                outcome.waiter.callback(outcome.result)
            else:
                outcome.waiter.errback(outcome.error)

    # -- what the query layer asks ----------------------------------------------------------

    def _ready(self, partition):
        lead = self.leads.get(partition)
        if lead is None or not lead.ready:
            raise errors.Unavailable(f"this host is not the primary of partition {partition} now")
        return lead

    def is_primary(self, partition):
        lead = self.leads.get(partition)
        return lead is not None and lead.ready

    def epochs(self, partitions):
        epochs = {}
        for partition in partitions:
            lead = self._ready(partition)
            if not lead.takes_writes:
                raise errors.Unavailable(f"partition {partition} is moving to another host; try again")
            epochs[partition] = lead.epoch
        return epochs

    def begin(self, partitions):
        epochs = self.epochs(partitions)
        for partition in epochs:
            self.leads[partition].begin()
        return epochs

    def landed(self, epochs):
        for partition, epoch in epochs.items():
            lead = self.leads.get(partition)
            if lead is not None and lead.epoch == epoch and lead.landed():
                self._settle(lead.settle(self.clock.seconds()))

    def acknowledge(self, results, epochs=None):
        newest = {}
        layout = self.storage.layout
        for element_id, version in results:
            partition = layout.partition_of(element_id)
            newest[partition] = max(newest.get(partition, 0), version)
        waits = []
        deadline = self.clock.seconds() + self.timing.write_timeout
        for partition, commit_id in newest.items():
            lead = self.leads.get(partition)
            if lead is None or lead.progress is None:
                return defer.fail(errors.Timeout(f"partition {partition} changed primary during the write; "
                                                 "it may or may not be applied"))
            progress = lead.progress
            progress.appended(commit_id)
            if not progress.progress:
                continue  # a replica set of one: nothing to ship, nothing to wait for
            self._want(lead)
            if progress.committed() >= commit_id:
                continue
            d = defer.Deferred()
            lead.wait_write(commit_id, deadline, d)
            waits.append(d)
        if epochs:
            self.landed(epochs)
        if not waits:
            return None
        self._schedule_pump()
        return _all(waits)

    def read_barrier(self, partitions):
        waits = []
        deadline = self.clock.seconds() + self.timing.read_timeout
        for partition in partitions:
            lead = self._ready(partition)
            progress = lead.progress
            if not progress.progress:
                continue  # a replica set of one
            sent = {}
            for host in progress.progress:
                link = self._link(host)
                sent[host] = link.sequence
                link.want(partition, urgent=True)
            # Everything the store holds now (a commit is visible there a moment before its
            # Deferred tells us) must be on a majority before the read may answer.
            last = max(progress.last, self.storage.partition_state(partition).last_commit_id)
            d = defer.Deferred()
            lead.wait_read(sent, last, deadline, d)
            waits.append(d)
        if not waits:
            return None
        self._schedule_pump()
        return _all(waits)

    def handoff(self, partition, epoch, follower):
        lead = self.leads.get(partition)
        if lead is None or lead.epoch != epoch or follower not in lead.followers:
            return defer.fail(errors.Unavailable(f"not the primary of partition {partition} at epoch {epoch}"))
        d = defer.Deferred()
        try:
            lead.hand_over(follower, d, self.clock.seconds(), self.timing.handoff_timeout)
        except errors.Unavailable as refused:
            return defer.fail(refused)
        self._want(lead, [follower], urgent=True)
        self._log.info("handing partition {p} over to {host}", p=partition, host=follower)
        self._settle(lead.settle(self.clock.seconds()))
        self._schedule_pump()
        return d

    # -- shipping ---------------------------------------------------------------------------

    def _link(self, host):
        link = self._links.get(host)
        if link is None:
            link = self._links[host] = Link(host)
        return link

    def _want(self, lead, hosts=None, urgent=False):
        """Ship *lead*'s partition to *hosts* (its followers by default) soon."""
        for host in lead.progress.progress if hosts is None else hosts:
            self._link(host).want(lead.partition, urgent)
        self._schedule_pump()

    def _schedule_pump(self):
        if self._pumping is None and self._running:
            self._pumping = self.clock.callLater(0, self._pump)

    def _pump(self):
        """Send to every follower host whose next message is due."""
        self._pumping = None
        for link in list(self._links.values()):
            if link.due(self.timing.pipeline, self.timing.pipeline_batch, lambda link=link: self._backlog(link)):
                self._send(link)

    def _backlog(self, link):
        """How many entries wait to be shipped to *link*'s host."""
        waiting = 0
        for partition in link.wanted:
            lead = self.leads.get(partition)
            if lead is not None and lead.ready:
                waiting += lead.progress.waiting(link.host)
        return waiting

    def _send(self, link):
        address = self.address_of(link.host)
        if address is None:
            return  # nothing packed (so nothing marked in flight): the next beat tries again
        parts, sent = self.packer.pack(link, self.leads, self.clock.seconds())
        if not parts:
            link.idle()
            return
        sequence = link.sending(lead.partition for lead, _kind in sent)
        d = self.transport.call(address, "logsync.append", {"parts": parts}, self.timing.call_timeout)
        d.addCallbacks(self._replied, self._lost, (link, sequence, sent), None, (link, sent))

    def _replied(self, reply, link, sequence, sent):
        link.answered()
        answers = reply.get("parts") if type(reply) is dict else None
        if type(answers) is not list or len(answers) != len(sent):
            self._log.warn("malformed logsync.append reply from {host}", host=link.host)
            self._schedule_pump()
            return
        for (lead, kind), answer in zip(sent, answers):
            if self.leads.get(lead.partition) is not lead or not lead.ready:
                continue
            try:
                accepted, last, last_epoch, epoch, syncing = answer
            except (TypeError, ValueError):
                continue
            self._answer(lead, link, kind, sequence, bool(accepted), last, last_epoch, epoch, bool(syncing))
        self._schedule_pump()

    def _answer(self, lead, link, kind, sequence, accepted, last, last_epoch, epoch, syncing):
        host = link.host
        verdict = lead.answered(host, kind, sequence, accepted, last, last_epoch, epoch, syncing,
                                lambda commit_id: self.packer.epoch_at(lead.partition, commit_id))
        if verdict == STRANGER:
            return
        if verdict == NEWER_EPOCH:
            self.fence(lead)
            return
        if verdict == NEEDS_RESYNC:
            self.packer.start_resync(lead, host)
        elif verdict == RESYNCED:
            self._log.info("partition {p}: full resync of {host} done", p=lead.partition, host=host)
        self._settle(lead.settle(self.clock.seconds()))
        if lead.ready and lead.progress.has_more(host):
            link.want(lead.partition)

    def _lost(self, failure, link, sent):
        link.answered()
        for lead, kind in sent:
            lead.lost(link.host, kind)
        # Sent again at the next heartbeat, not at once: the follower may be down.

    # -- time -------------------------------------------------------------------------------

    def beat(self):
        """A heartbeat: expire handoffs, writes and reads past their deadline, ask again for
        elections, and probe every follower."""
        now = self.clock.seconds()
        for lead in self.leads.values():
            self._settle(lead.expire_handoff(now))
        for link in self._links.values():
            link.heartbeat()
        for lead in self.leads.values():
            if lead.ask_again(now, self.timing.election_retry):
                self._ask_election(lead)
            self._settle(lead.expire(now))
        self._schedule_pump()

    def truncations(self):
        """:return: Truncate units for the logs this host leads: up to what every replica
        has, and past a replica that lags more than ``max_log_entries`` (it will get a full
        resync)."""
        units = []
        for lead in self.leads.values():
            if not lead.ready:
                continue
            stored = self.storage.partition_state(lead.partition)
            upto = max(lead.progress.fully_replicated(), lead.progress.last - self.timing.max_log_entries)
            if upto > stored.truncated:
                units.append(Truncate(lead.partition, upto))
        return units

    def status(self):
        """``primary`` and ``resyncs`` of ``/status`` (docs/replication.md)."""
        leads = sorted(self.leads.items())
        return {
            "primary": {str(partition): lead.status() for partition, lead in leads},
            "resyncs": sum(1 for _p, lead in leads if lead.progress is not None
                           for state in lead.progress.progress.values() if state.resync is not None),
        }


def _all(waits):
    """One Deferred for *waits*: the first failure, else None once all fired."""
    if len(waits) == 1:
        return waits[0]
    return defer.gatherResults(waits, consumeErrors=True).addErrback(_first_error)


def _first_error(failure):
    failure.trap(defer.FirstError)
    return failure.value.subFailure

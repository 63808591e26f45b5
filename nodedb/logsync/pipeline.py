"""The stream of ``logsync.append`` messages from this host to one follower host: pure.

One stream per follower host carries every partition that host follows, with up to
``window`` messages on their way at once (pipelining: the follower's disk syncs one batch
while the next travels). :class:`Link` remembers which partitions have something to send and
decides when the next message is due.
"""


class Link:
    """The stream of append messages to one follower *host*."""

    def __init__(self, host):
        self.host = host
        self.sequence = 0  # of the last message sent
        self.in_flight = 0  # messages sent and not answered yet
        self.force = True  # probe every partition, even those with nothing new
        self.wanted = set()  # partitions with something to ship, or a read waiting on them
        self.urgent = set()  # of those, the ones that may not wait for a fuller message

    def want(self, partition, urgent=False):
        """Ship *partition* soon (*urgent*: without waiting for a fuller message)."""
        self.wanted.add(partition)
        if urgent:
            self.urgent.add(partition)

    def heartbeat(self):
        """Probe every partition with the next message."""
        self.force = True

    def due(self, window, batch, backlog):
        """Whether to send a message now: there is something to send and the window of
        *window* messages is not full. New entries alone wait while another message is on its
        way, until there are *batch* of them (fewer, fuller messages cost less CPU on both
        ends); reads, handoffs and probes go at once.

        :param backlog: ``backlog()`` -> how many entries wait (asked only when it matters).
        """
        if self.in_flight >= window or not (self.force or self.wanted):
            return False
        return not self.in_flight or self.force or bool(self.urgent) or backlog() >= batch

    def partitions(self):
        """:return: the partitions the next message considers, in order: None for all of
        them (a probe of every partition), else those with something to ship."""
        return None if self.force else sorted(self.wanted)

    def idle(self):
        """Nothing turned out to be worth sending."""
        self.force = False
        self.wanted.clear()
        self.urgent.clear()

    def sending(self, partitions):
        """A message carrying *partitions* goes out: :return: its sequence number."""
        self.force = False
        self.wanted.difference_update(partitions)
        self.urgent.intersection_update(self.wanted)
        self.in_flight += 1
        self.sequence += 1
        return self.sequence

    def answered(self):
        """A message got its answer, or is lost."""
        self.in_flight -= 1

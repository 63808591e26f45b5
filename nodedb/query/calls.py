"""Calls to other hosts, directly or through a relay, and this host's side of relaying.

When this host cannot reach another directly (its connection to it is down, or that host is
unavailable from here) the call goes through a third host that relays it once
(``query.relay``), by the rules of :mod:`nodedb.query.relay`. Routing forwards requests
through here, and so does the two-phase commit coordinator.
"""

from twisted.internet import defer
from twisted.logger import Logger

from nodedb import errors
from nodedb.query import relay
from nodedb.wire.schema import Field, Kind, Schema, of_type


def _seconds(value):
    if type(value) not in (int, float) or not value > 0:
        raise errors.InvalidRequest("query.relay: timeout is a positive number of seconds")
    return value


_RELAY_FIELDS = "query.relay: to and call are text, args a map"
_RELAY = Schema(
    "query.relay",
    (
        Field("to", of_type(str, "text", _RELAY_FIELDS), required=True, check_missing=True),
        Field("call", of_type(str, "text", _RELAY_FIELDS), required=True, check_missing=True),
        Field("args", of_type(dict, "map", _RELAY_FIELDS), argument="arguments"),
        Field("timeout", Kind("seconds", _seconds), required=True, check_missing=True),
    ),
    ignore_unknown=True,
)
#: The longest a relay waits for the target (``--peer-timeout`` is at most 300 s).
_MAX_RELAY_TIMEOUT = 300.0


class HostCalls:
    """Calls peer operations on other hosts by host id.

    :param transport: the :class:`~nodedb.interfaces.IPeerTransport` to call through.
    :param directory: a :class:`~nodedb.placement.Directory`: the addresses of hosts,
        whether this host reaches them directly, and the hosts that could relay to them.
    :param clock: for the deadlines of calls.
    :param timeout: seconds a call to another host may take, relays included.
    """

    _log = Logger()

    def __init__(self, host_id, transport, directory, clock, timeout=10.0):
        self.host_id = host_id
        self.transport = transport
        self.directory = directory
        self.clock = clock
        self.timeout = timeout
        #: Calls this host sent through a relay, and calls it relayed for others.
        self.relayed = 0
        self.relays_served = 0

    def install(self, api):
        api.register("query.relay", self._serve_relay, schema=_RELAY)

    def call_host(self, host, op, arguments, write, timeout=None):
        """Call the peer operation *op* on *host*: over this host's own connection to it, or,
        when this host cannot reach it, through another host that relays the call once
        (``query.relay``; the rules are in :mod:`nodedb.query.relay`).

        :param write: True if the call may change state. It then goes through a relay only
            while no earlier attempt can have reached *host*, and fails with Timeout (the
            outcome unknown) once one may have; a read tries every way while time lasts.
        :param timeout: seconds for the whole call, every attempt included (by default
            ``timeout``).
        :return: a Deferred of the reply. An error *host* answered passes through unchanged
            (``remote``); otherwise the call fails with Timeout (a write that may have been
            applied) or Unavailable (nothing was applied: it may be sent again).
        """
        timeout = self.timeout if timeout is None else timeout
        return defer.ensureDeferred(self._call_host(host, op, arguments, write, timeout))

    async def _call_host(self, host, op, arguments, write, timeout):
        deadline = self.clock.seconds() + timeout
        address = self.directory.address_of(host)
        why = f"the address of host {host} is not known"
        relays = self.directory.relays(host) if address is None or not self.directory.reachable(host) else []
        if address is not None and not relays:
            try:
                return await self.transport.call(address, op, arguments, timeout)
            except errors.NodeDBError as e:
                outcome = relay.classify(e)
                if outcome == relay.FINAL:
                    raise
                if outcome == relay.UNKNOWN and write:
                    raise _outcome_unknown(host) from None
                why = str(e)
            relays = self.directory.relays(host)
        for via in relays[: relay.MAX_RELAYS]:
            remaining = deadline - self.clock.seconds()
            if remaining < relay.MIN_ATTEMPT:
                break
            via_address = self.directory.address_of(via)
            if via_address is None:
                continue
            self.relayed += 1
            self._log.debug("calling {op} on {host} through {via}", op=op, host=host, via=via)
            arguments_through = {"to": host, "call": op, "args": arguments, "timeout": remaining * relay.RELAY_SHARE}
            try:
                reply = await self.transport.call(via_address, "query.relay", arguments_through, remaining)
            except errors.NodeDBError as e:
                # The relay's own refusal (it answered before calling anyone) sent nothing on.
                outcome, detail = (relay.UNSENT if e.remote else relay.classify(e)), str(e)
                if outcome == relay.FINAL:
                    raise
            else:
                outcome, detail = relay.read_relay_reply(reply)
                if outcome == relay.FINAL:
                    if isinstance(detail, errors.NodeDBError):
                        raise detail  # the target's own answer, remote
                    return detail
            if outcome == relay.UNKNOWN and write:
                raise _outcome_unknown(host)
            why = f"through {via}: {detail}"
        raise errors.Unavailable(f"cannot reach host {host} ({why})")

    def _serve_relay(self, to, call, arguments, timeout):
        """Pass a call on to its target, once, over this host's own connection: never
        through another relay, so that relayed calls cannot loop. The reply tells the
        target's answer apart from this host's failure to get one
        (:func:`nodedb.query.relay.relay_reply`)."""
        if call == "query.relay":
            raise errors.InvalidRequest("query.relay: a relayed call is not relayed again")
        if to == self.host_id:
            return {relay.UNSENT: "the relay is the target itself"}
        address = self.directory.address_of(to)
        if address is None:
            return {relay.UNSENT: f"the address of host {to} is not known here"}
        if not self.transport.reachable(address):
            return {relay.UNSENT: f"host {to} is not reachable from here either"}
        self.relays_served += 1
        d = self.transport.call(address, call, arguments, min(timeout, _MAX_RELAY_TIMEOUT))
        return d.addCallbacks(lambda value: {"ok": value}, self._relay_failed)

    def _relay_failed(self, failure):
        if not failure.check(errors.NodeDBError):
            self._log.failure("relaying a call failed", failure)
        return relay.relay_reply(failure.value)


def _outcome_unknown(host):
    return errors.Timeout(f"host {host} did not answer in time; the write may or may not be applied")

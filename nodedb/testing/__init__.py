"""Public helpers for testing nodedb and the plugins written for it.

- :func:`success_result_of` and :func:`failure_result_of` read the outcome of a Deferred that
  has already fired, as Twisted's ``SynchronousTestCase`` methods of the same purpose do, but
  usable from plain pytest tests.
- :mod:`nodedb.testing.network` joins protocols over in-memory connections.
- :mod:`nodedb.testing.storage_contract`, :mod:`~nodedb.testing.transport_contract` and
  :mod:`~nodedb.testing.allocator_contract` hold the behaviour every storage backend, peer
  transport and id allocator must show; see ``docs/plugins.md``.
- The other ``*_contract`` modules hold the behaviour every provider of a service interface
  (:mod:`nodedb.interfaces`) must show: :mod:`~nodedb.testing.gossip_contract`,
  :mod:`~nodedb.testing.voting_contract`, :mod:`~nodedb.testing.logsync_contract`,
  :mod:`~nodedb.testing.reliability_contract`, :mod:`~nodedb.testing.query_contract` and
  :mod:`~nodedb.testing.transactions_contract`; ``tests/contract/test_service_contracts.py``
  runs them against nodedb's own providers. Those of services that talk to peers run on
  :mod:`nodedb.testing.peers`, a few hosts on the simulated network.

Nothing here touches the global reactor, but for the transport contract, whose tests run
over real connections inside it.
"""

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure


def _outcome(d):
    """:return: ``[result]`` with the result the Deferred *d* holds now (``[]`` if none yet),
    without changing what later callbacks see."""
    if not isinstance(d, defer.Deferred):
        raise TypeError(f"expected a Deferred, got {d!r}")
    seen = []

    def record(result):
        seen.append(result)
        return result

    d.addBoth(record)
    if seen:
        # Consume the result so that a failure we looked at is not reported as unhandled when
        # the Deferred is garbage collected; the caller decides what it means.
        d.addErrback(lambda _failure: None)
    return seen


def success_result_of(d):
    """:return: the result of the already-fired Deferred *d*.

    :raise AssertionError: if *d* has not fired yet, or failed (the failure's traceback is in
        the message).
    """
    seen = _outcome(d)
    if not seen:
        raise AssertionError(f"{d!r} has not fired yet; expected a result")
    result = seen[0]
    if isinstance(result, Failure):
        raise AssertionError(f"{d!r} failed; expected a result:\n{result.getTraceback()}")
    return result


def failure_result_of(d, *types):
    """:return: the :class:`~twisted.python.failure.Failure` of the already-fired Deferred *d*.

    :param types: if given, the failure must wrap one of these exception types.
    :raise AssertionError: if *d* has not fired yet, succeeded, or failed with another type.
    """
    seen = _outcome(d)
    if not seen:
        raise AssertionError(f"{d!r} has not fired yet; expected a failure")
    result = seen[0]
    if not isinstance(result, Failure):
        raise AssertionError(f"{d!r} succeeded with {result!r}; expected a failure")
    if types and not result.check(*types):
        names = ", ".join(t.__name__ for t in types)
        raise AssertionError(f"{d!r} failed with {result.type.__name__}, not one of {names}:\n{result.getTraceback()}")
    return result


def no_result(d):
    """Assert that the Deferred *d* has not fired yet."""
    seen = _outcome(d)
    if seen:
        raise AssertionError(f"{d!r} has already fired with {seen[0]!r}; expected no result yet")


__all__ = ["success_result_of", "failure_result_of", "no_result"]


class Recorder(Protocol):
    """A protocol that keeps what it received and why its connection was lost."""

    def __init__(self):
        self.received = b""
        self.lost = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


def written_frames(transport):
    """Decode every nodedb frame written to *transport* (a ``StringTransport``) so far, and
    clear it."""
    from nodedb import codec

    data, out = transport.value(), []
    transport.clear()
    while data:
        length = int.from_bytes(data[:4], "big")
        out.append(codec.decode(data[4 : 4 + length]))
        data = data[4 + length :]
    return out


async def failure_of(d, *types):
    """Wait for the Deferred *d* and return the exception it failed with.

    :raise AssertionError: if it succeeds, or fails with a type other than *types*.
    """
    try:
        result = await d
    except types as e:
        return e
    raise AssertionError(f"expected a failure with {', '.join(t.__name__ for t in types)}, got {result!r}")

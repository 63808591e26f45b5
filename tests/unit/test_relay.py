"""Routing around a host this one cannot reach: the relay rules, HostCalls.call_host and the
relay's own side, the transport's reachability and deadlines, and timeouts that raise a
peer's unreliability."""

from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from nodedb import errors
from nodedb.query import relay
from nodedb.query.api import RequestAPI
from nodedb.query.calls import HostCalls
from nodedb.query.router import Router
from nodedb.reliability.service import Reliability, ReportingTransport
from nodedb.testing import failure_result_of, no_result, success_result_of
from nodedb.testing.network import MemoryEndpoint
from nodedb.testing.peers import PeerNetwork
from nodedb.voting.state import Assignment
from nodedb.wire.channel import hello_request
from nodedb.wire.connection import ChannelFactory, PersistentConnection
from nodedb.wire.transport import PeerTransport


def remote(error_class, message="from the target"):
    return errors.from_wire({"type": error_class.wire_name, "message": message})


# -- the rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, outcome",
    [
        (remote(errors.Unavailable), relay.FINAL),
        (remote(errors.Timeout), relay.FINAL),
        (remote(errors.NotFound), relay.FINAL),
        (errors.Unavailable("no connection came up"), relay.UNSENT),
        (errors.ConnectionLost("dropped in flight"), relay.UNKNOWN),
        (errors.Timeout("no reply in time"), relay.UNKNOWN),
        (errors.InvalidRequest("refused here"), relay.FINAL),
        (ValueError("a bug"), relay.FINAL),
    ],
)
def test_a_failed_call_is_final_unsent_or_unknown(error, outcome):
    assert relay.classify(error) == outcome


def test_a_relay_reply_keeps_the_targets_answer_apart_from_its_own_failure():
    assert relay.relay_reply(remote(errors.Conflict, "version 3")) == {
        "error": {"type": "Conflict", "message": "version 3"}
    }
    assert relay.relay_reply(errors.Unavailable("not connected")) == {"unsent": "not connected"}
    assert relay.relay_reply(errors.Timeout("late")) == {"unknown": "late"}
    assert relay.relay_reply(errors.ConnectionLost("gone")) == {"unknown": "gone"}
    assert relay.relay_reply(KeyError("bug")) == {"unknown": "internal error"}


def test_reading_a_relay_reply():
    assert relay.read_relay_reply({"ok": [1, 2]}) == (relay.FINAL, [1, 2])
    kind, error = relay.read_relay_reply({"error": {"type": "NotFound", "message": "gone"}})
    assert kind == relay.FINAL and isinstance(error, errors.NotFound) and error.remote
    assert relay.read_relay_reply({"unsent": "down"}) == (relay.UNSENT, "down")
    assert relay.read_relay_reply({"unknown": "late"}) == (relay.UNKNOWN, "late")
    # Anything else may hide a call that reached the target.
    for odd in (None, {}, {"ok": 1, "unsent": "x"}, {"unsent": 5}, {"what": 1}, [1]):
        assert relay.read_relay_reply(odd)[0] == relay.UNKNOWN


def test_relays_that_share_a_replica_set_with_the_target_come_first_then_by_score():
    assignments = {0: Assignment(("b", "c", "d"), 1), 1: Assignment(("e", "f", "g"), 1)}
    scores = {"c": 2.0, "d": 0.0, "e": 0.0, "f": 1.0, "g": 0.0}
    ranked = relay.rank_relays("b", ["c", "d", "e", "f", "g"], assignments, scores.get)
    assert ranked == ["d", "c", "e", "g", "f"]


# -- HostCalls.call_host --------------------------------------------------------------------


class FakeTransport:
    """Records calls; each gets a Deferred the test fires."""

    def __init__(self):
        self.calls = []
        self.down = set()

    def call(self, address, op, arguments, timeout):
        d = defer.Deferred()
        self.calls.append(SimpleNamespace(address=address, op=op, arguments=arguments, timeout=timeout, d=d))
        return d

    def reachable(self, address):
        return address not in self.down

    def take(self):
        calls, self.calls = self.calls, []
        return calls


def host_calls(reachable=("b", "c", "d"), relays=("c", "d"), timeout=4.0, host_id="a"):
    """The calls *host_id* makes to other hosts; :return: them, their transport, the clock."""
    clock = Clock()
    transport = FakeTransport()
    directory = SimpleNamespace(
        address_of=lambda host: f"{host}:7400" if host != "nowhere" else None,
        reachable=lambda host: host in reachable,
        relays=lambda host: [h for h in relays if h != host],
    )
    return HostCalls(host_id, transport, directory, clock, timeout=timeout), transport, clock


def test_a_reachable_host_is_called_directly():
    r, transport, _clock = host_calls()
    d = r.call_host("b", "query.forward", {"request": {"op": "get"}}, write=False)
    (call,) = transport.take()
    assert (call.address, call.op, call.timeout) == ("b:7400", "query.forward", 4.0)
    call.d.callback({"doc": 1})
    assert success_result_of(d) == {"doc": 1}
    assert r.relayed == 0


@pytest.mark.parametrize("write", [False, True])
def test_an_error_the_target_answered_passes_through_unchanged(write):
    r, transport, _clock = host_calls()
    d = r.call_host("b", "query.forward", {}, write=write)
    transport.take()[0].d.errback(remote(errors.Unavailable, "not the primary"))
    error = failure_result_of(d, errors.Unavailable).value
    assert error.remote and error.message == "not the primary"
    assert transport.take() == []


def test_an_unreachable_host_is_called_through_the_best_relay():
    r, transport, clock = host_calls(reachable=("c", "d"))
    clock.advance(1.0)
    d = r.call_host("b", "query.forward", {"request": {"op": "update"}}, write=True)
    (call,) = transport.take()
    assert (call.address, call.op, call.timeout) == ("c:7400", "query.relay", 4.0)
    assert call.arguments == {
        "to": "b",
        "call": "query.forward",
        "args": {"request": {"op": "update"}},
        "timeout": 4.0 * relay.RELAY_SHARE,
    }
    call.d.callback({"ok": 7})
    assert success_result_of(d) == 7
    assert r.relayed == 1


def test_the_targets_error_through_a_relay_passes_through():
    r, transport, _clock = host_calls(reachable=("c", "d"))
    d = r.call_host("b", "query.forward", {}, write=True)
    transport.take()[0].d.callback({"error": {"type": "Conflict", "message": "version 2"}})
    error = failure_result_of(d, errors.Conflict).value
    assert error.remote and error.message == "version 2"


def test_a_write_the_relay_never_sent_on_tries_the_next_relay_with_the_time_left():
    r, transport, clock = host_calls(reachable=("c", "d"))
    d = r.call_host("b", "query.forward", {}, write=True)
    clock.advance(1.0)
    transport.take()[0].d.callback({"unsent": "b is down from here too"})
    (second,) = transport.take()
    assert second.address == "d:7400" and second.timeout == pytest.approx(3.0)
    assert second.arguments["timeout"] == pytest.approx(3.0 * relay.RELAY_SHARE)
    second.d.callback({"ok": 1})
    assert success_result_of(d) == 1


@pytest.mark.parametrize("failure", [errors.Timeout("late"), errors.ConnectionLost("dropped")])
def test_a_write_that_may_have_gone_through_a_relay_is_not_sent_again(failure):
    r, transport, _clock = host_calls(reachable=("c", "d"))
    d = r.call_host("b", "query.forward", {}, write=True)
    transport.take()[0].d.errback(failure)
    failure_result_of(d, errors.Timeout)
    assert transport.take() == []


def test_a_write_the_relay_reports_unknown_is_not_sent_again():
    r, transport, _clock = host_calls(reachable=("c", "d"))
    d = r.call_host("b", "query.forward", {}, write=True)
    transport.take()[0].d.callback({"unknown": "b did not answer in time"})
    failure_result_of(d, errors.Timeout)
    assert transport.take() == []


def test_a_read_tries_the_next_relay_whatever_the_first_did():
    r, transport, _clock = host_calls(reachable=("c", "d"))
    d = r.call_host("b", "query.forward", {}, write=False)
    transport.take()[0].d.callback({"unknown": "b did not answer in time"})
    transport.take()[0].d.callback({"ok": "doc"})
    assert success_result_of(d) == "doc"


def test_a_relay_that_refuses_the_call_sent_nothing_on():
    r, transport, _clock = host_calls(reachable=("c", "d"))
    d = r.call_host("b", "query.forward", {}, write=True)
    transport.take()[0].d.errback(remote(errors.InvalidRequest, "unknown op 'query.relay'"))
    (second,) = transport.take()
    assert second.address == "d:7400"
    second.d.errback(errors.Unavailable("cannot reach a node"))
    error = failure_result_of(d, errors.Unavailable).value
    assert not error.remote and "cannot reach host b" in error.message


def test_a_write_whose_direct_call_never_went_out_goes_through_a_relay():
    r, transport, _clock = host_calls()
    d = r.call_host("b", "query.forward", {}, write=True)
    transport.take()[0].d.errback(errors.Unavailable("not connected"))
    (through,) = transport.take()
    assert through.op == "query.relay" and through.address == "c:7400"
    through.d.callback({"ok": 3})
    assert success_result_of(d) == 3


def test_a_write_whose_direct_call_timed_out_fails_with_timeout_and_no_relay():
    r, transport, clock = host_calls()
    d = r.call_host("b", "query.forward", {}, write=True)
    clock.advance(4.0)
    transport.take()[0].d.errback(errors.Timeout("no reply"))
    assert "may or may not be applied" in failure_result_of(d, errors.Timeout).value.message
    assert transport.take() == []


def test_a_read_whose_direct_call_used_all_its_time_is_unavailable():
    r, transport, clock = host_calls()
    d = r.call_host("b", "query.forward", {}, write=False)
    clock.advance(4.0)
    transport.take()[0].d.errback(errors.Timeout("no reply"))
    failure_result_of(d, errors.Unavailable)
    assert transport.take() == []


def test_without_relays_an_unreachable_host_is_still_called_directly():
    r, transport, _clock = host_calls(reachable=(), relays=())
    d = r.call_host("b", "query.forward", {}, write=True)
    (call,) = transport.take()
    assert call.address == "b:7400"
    call.d.errback(errors.Unavailable("cannot reach a node"))
    failure_result_of(d, errors.Unavailable)


def test_a_host_without_a_known_address_is_reached_through_a_relay_or_not_at_all():
    r, transport, _clock = host_calls(relays=("c",))
    d = r.call_host("nowhere", "query.forward", {}, write=False)
    transport.take()[0].d.callback({"ok": 1})
    assert success_result_of(d) == 1
    r, transport, _clock = host_calls(relays=())
    failure_result_of(r.call_host("nowhere", "query.forward", {}, write=False), errors.Unavailable)
    assert transport.take() == []


def test_relays_are_tried_only_while_time_lasts_and_at_most_a_few():
    r, transport, clock = host_calls(reachable=(), relays=("c", "d", "e", "f", "g"))
    d = r.call_host("b", "query.forward", {}, write=False)
    for _ in range(relay.MAX_RELAYS):
        transport.take()[0].d.callback({"unsent": "no"})
    failure_result_of(d, errors.Unavailable)
    assert r.relayed == relay.MAX_RELAYS
    r, transport, clock = host_calls(reachable=(), relays=("c", "d"))
    d = r.call_host("b", "query.forward", {}, write=False, timeout=1.0)
    clock.advance(0.99)
    transport.take()[0].d.callback({"unsent": "no"})
    failure_result_of(d, errors.Unavailable)
    assert transport.take() == []


def test_forwarding_a_client_request_knows_writes_from_reads():
    calls, transport, clock = host_calls(reachable=("c",), relays=("c",))
    local = SimpleNamespace(storage=SimpleNamespace(layout=None), clock=clock)
    r = Router(local, "a", SimpleNamespace(partitions=lambda: 1), calls)
    d = r._forward("b", {"op": "delete", "type": "t", "key": 5})
    call = transport.take()[0]
    assert call.arguments["args"] == {"request": {"op": "delete", "type": "t", "key": 5}}
    call.d.errback(errors.Timeout("late"))
    failure_result_of(d, errors.Timeout)
    d = r._forward("b", {"op": "get", "type": "t", "key": 5})
    transport.take()[0].d.errback(errors.Timeout("late"))
    failure_result_of(d, errors.Unavailable)



def test_calls_reach_another_host_over_the_network():
    peers = PeerNetwork(seed=1)
    a, _b = peers.add_host("a"), peers.add_host("b")
    directory = SimpleNamespace(address_of=a.address_of, reachable=lambda host: True, relays=lambda host: [])
    calls = HostCalls("a", a.transport, directory, a.clock)
    try:
        d = calls.call_host("b", "ping", {}, write=False)
        peers.run_until(lambda: d.called, timeout=10)
        assert success_result_of(d) == "pong"
        failed = calls.call_host("nobody", "ping", {}, write=False)
        peers.run_until(lambda: failed.called, timeout=10)
        failure_result_of(failed, errors.Unavailable)
    finally:
        peers.stop()


# -- the relay's side -----------------------------------------------------------------------


def relay_request(**fields):
    return {"id": 1, "op": "query.relay", "to": "b", "call": "query.forward", "args": {"x": 1}, "timeout": 2.0, **fields}


def serve_relay(r, request):
    """Dispatch *request* to *r* (a host's :class:`HostCalls`) as a peer's request reaches it."""
    api = RequestAPI(None, dict, Clock())
    r.install(api)
    return api.dispatch(request, SimpleNamespace(greeted=True, role="peer"))


def test_a_relay_calls_the_target_once_itself_and_wraps_the_answer():
    r, transport, _clock = host_calls(host_id="c")
    d = serve_relay(r, relay_request())
    (call,) = transport.take()
    assert (call.address, call.op, call.arguments, call.timeout) == ("b:7400", "query.forward", {"x": 1}, 2.0)
    call.d.callback([1, 2])
    assert success_result_of(d) == {"ok": [1, 2]}
    assert r.relays_served == 1


@pytest.mark.parametrize(
    "failure, reply",
    [
        (remote(errors.NotFound, "gone"), {"error": {"type": "NotFound", "message": "gone"}}),
        (errors.Unavailable("not connected"), {"unsent": "not connected"}),
        (errors.Timeout("late"), {"unknown": "late"}),
    ],
)
def test_a_relay_reports_how_its_call_failed(failure, reply):
    r, transport, _clock = host_calls(host_id="c")
    d = serve_relay(r, relay_request())
    transport.take()[0].d.errback(failure)
    assert success_result_of(d) == reply


def test_a_relay_that_cannot_reach_the_target_says_so_at_once():
    r, transport, _clock = host_calls(host_id="c")
    transport.down.add("b:7400")
    assert serve_relay(r, relay_request()) == {"unsent": "host b is not reachable from here either"}
    assert serve_relay(r, relay_request(to="c"))["unsent"]
    assert serve_relay(r, relay_request(to="nowhere"))["unsent"]
    assert transport.take() == []


@pytest.mark.parametrize(
    "fields",
    [{"call": "query.relay"}, {"to": 5}, {"call": None}, {"args": [1]}, {"timeout": 0}, {"timeout": "1"}, {"timeout": None}],
)
def test_a_relay_refuses_bad_requests_and_never_relays_again(fields):
    r, transport, _clock = host_calls(host_id="c")
    with pytest.raises(errors.InvalidRequest):
        serve_relay(r, relay_request(**fields))
    assert transport.take() == []


def test_a_relay_caps_the_time_it_waits():
    r, transport, _clock = host_calls(host_id="c")
    serve_relay(r, relay_request(timeout=10_000))
    assert transport.take()[0].timeout == 300.0


# -- the transport ----------------------------------------------------------------------------


def peer_transport(clock):
    server = ChannelFactory(lambda request, channel: {"version": 1} if request["op"] == "hello" else "pong")
    endpoint = MemoryEndpoint(server)
    transport = PeerTransport(clock, None, lambda address: endpoint, lambda: hello_request("peer"), heartbeat_interval=None)
    return transport, endpoint


def test_every_peer_call_needs_a_timeout():
    transport, _endpoint = peer_transport(Clock())
    for timeout in (None, 0, -1.0):
        with pytest.raises(ValueError):
            transport.call("b:7400", "ping", None, timeout)


def test_a_connection_is_down_once_it_dropped_or_failed_not_while_first_made():
    clock = Clock()
    transport, endpoint = peer_transport(clock)
    assert transport.reachable("b:7400")  # never tried
    endpoint.refuse = True
    d = transport.call("b:7400", "ping", None, 1.0)
    assert not transport.reachable("b:7400")  # the attempt failed
    failure_result_of_after(clock, d, errors.Unavailable)
    endpoint.refuse = False
    clock.advance(10)
    endpoint.pump()
    assert transport.reachable("b:7400") and transport.peer("b:7400").connected
    d = transport.call("b:7400", "ping", None, 1.0)
    endpoint.pump()
    assert success_result_of(d) == "pong"
    endpoint.refuse = True
    endpoint.open_connections()[0].close()
    assert not transport.reachable("b:7400")


def failure_result_of_after(clock, d, error_class):
    no_result(d)
    clock.advance(1.1)
    return failure_result_of(d, error_class)


def test_a_first_connection_being_made_is_not_down():
    connection = PersistentConnection(Clock(), [("b:7400", _Pending())], hello_request("peer"))
    connection.start()
    assert not connection.connected and not connection.down


class _Pending:
    def connect(self, factory):
        return defer.Deferred()


# -- timeouts raise the peer's unreliability ------------------------------------------------


def test_a_timed_out_call_raises_the_peers_unreliability_once_per_burst():
    clock = Clock()
    reliability = Reliability(clock)
    transport = FakeTransport()
    reporting = ReportingTransport(transport, reliability, {"b:7400": "b"}.get, clock, burst_gap=1.0)
    calls = [reporting.call("b:7400", "logsync.append", {}, 2.0) for _ in range(4)]
    for call in transport.take():
        call.d.errback(errors.Timeout("late"))
    for d in calls:
        failure_result_of(d, errors.Timeout)
    assert reliability.score("b") == 1.0  # four calls in flight together: one silence
    clock.advance(1.0)
    d = reporting.call("b:7400", "raft.message", {}, 1.0)
    transport.take()[0].d.errback(errors.Timeout("late"))
    failure_result_of(d, errors.Timeout)
    assert reliability.score("b") == 2.0


def test_only_local_timeouts_count_against_a_peer():
    clock = Clock()
    reliability = Reliability(clock)
    transport = FakeTransport()
    reporting = ReportingTransport(transport, reliability, {"b:7400": "b"}.get, clock)
    for error in (remote(errors.Timeout), errors.Unavailable("not connected"), remote(errors.NotFound)):
        d = reporting.call("b:7400", "query.forward", {}, 2.0)
        transport.take()[0].d.errback(error)
        assert failure_result_of(d).value is error
    d = reporting.call("b:7400", "query.forward", {}, 2.0)
    transport.take()[0].d.callback("fine")
    assert success_result_of(d) == "fine"
    assert reliability.score("b") == 0.0
    # A timeout from an address the NI does not know counts against nobody.
    d = reporting.call("x:1", "gossip.join", {}, 2.0)
    transport.take()[0].d.errback(errors.Timeout("late"))
    failure_result_of(d, errors.Timeout)
    assert reporting.reachable("b:7400") and reporting.down == set()

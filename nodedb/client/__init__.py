"""The Twisted client of nodedb.

::

    from nodedb.client import connect

    client = await connect(reactor, ["127.0.0.1:7400"])
    user_id = await client.insert("user", {"name": "ada"})
    doc, version = await client.get("user", user_id)
    await client.update("user", user_id, {"name": "ada", "age": 36}, if_version=version)
    page = await client.scan("user", where={"age": {">=": 18}}, limit=100)
    tx = client.transaction()
    tx.insert("order", {"user": user_id}, near=user_id)
    tx.update("user", user_id, {"name": "ada", "orders": 1})
    new_order_id, new_version = await tx.commit()
    await client.close()

Every method returns a Deferred. Failures are :class:`nodedb.errors.NodeDBError` subclasses.
:func:`connect` takes ``host:port`` addresses, Twisted client endpoint descriptions
(``unix:/path``, ``tls:host:port``, ...) or endpoint objects. The client keeps one
connection up, to the first reachable of them, and moves to the next by itself when that one
goes away; it also learns the addresses of the cluster's other hosts and tries those after the
ones it was given. It sends each request on an element straight to its partition's primary,
over a connection of its own, as the cluster's partition map names it (``partition_aware``;
see :mod:`nodedb.client._routing`). A request that certainly was not applied (the node
answered Unavailable, as it does for a partition that is changing primary, or the request
never left) is retried with backoff until its timeout; reads are also retried when the
connection dropped under them. A write whose connection dropped while it was in flight is
not retried (it may have been applied) and fails with :class:`~nodedb.errors.Unavailable`; a
write the cluster could not confirm in time fails with :class:`~nodedb.errors.Timeout` (it
may or may not be applied).

A Twisted program that makes its own connections uses :class:`NodeDBClientFactory` with any
endpoint; each connection is a :class:`NodeDBProtocol` with the same operations, without
failover or retries.

This package imports nothing of the server's code, configuration included.
"""

from nodedb.client._client import HEARTBEAT_INTERVAL, Client, connect
from nodedb.client._operations import Page, Transaction
from nodedb.client._protocol import CLIENT_NAME, DEFAULT_TIMEOUT, NodeDBClientFactory, NodeDBProtocol

__all__ = [
    "CLIENT_NAME",
    "DEFAULT_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "Client",
    "NodeDBClientFactory",
    "NodeDBProtocol",
    "Page",
    "Transaction",
    "connect",
]

"""nodedb: a distributed record store on Twisted.

The public pieces are :mod:`nodedb.client` (the Twisted client: ``connect``, and the
``NodeDBProtocol`` and ``NodeDBClientFactory`` for any Twisted endpoint), :mod:`nodedb.errors`
(the failures it raises) and :mod:`nodedb.interfaces` (what a plugin implements).
"""

__version__ = "0.1.0"

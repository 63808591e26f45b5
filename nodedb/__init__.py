"""nodedb: a distributed record store on Twisted.

The public pieces are :mod:`nodedb.client` (the Twisted client), :mod:`nodedb.errors`
(the failures it raises) and :mod:`nodedb.interfaces` (what a plugin implements).
"""

__version__ = "0.1.0"

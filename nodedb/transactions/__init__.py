"""Transactions that span partitions: two-phase commit through the partitions' own logs.

See :mod:`nodedb.transactions.service` for the protocol and docs/query.md for the user's view.
"""

"""Transactions that span partitions: two-phase commit whose prepare and decision records go
through the partitions' own logs (docs/query.md has the user's view).

A transaction's *home* is the partition of its first operation that names an id; the home's
primary coordinates, and its inserts without ``near`` go there. The protocol:

1. **Prepare.** The coordinator sends each other partition (a *participant*) its operations
   (``tx.prepare``). The participant's primary locks the elements, allocates the ids of its
   inserts and commits a prepare record (an element of the internal type ``nodedb.prepared``
   holding the changes) through its replicated log. Once durable here it checks the changes
   against the store, which then holds every write submitted before the prepare, and answers
   once a majority has the record. A lock held by another transaction is a Conflict at once:
   transactions never wait for each other, so they never deadlock.
2. **Decision.** With every participant prepared, the coordinator commits, in one unit of the
   home partition, the home's own changes and the decision record (``nodedb.decision``, keyed
   by the transaction id). That commit is the transaction's commit point. A failed prepare
   aborts instead.
3. **Completion.** Each participant applies its prepared changes and deletes its prepare
   record in one commit (``tx.commit``), or only deletes it (``tx.abort``). The decision record
   is dropped once every participant has confirmed.

**Recovery.** A participant whose prepare is older than ``resolve_after`` asks the home's
primary (``tx.resolve``). That primary answers from the decision record (read-index, so only a
committed decision counts) or, when there is none, writes an abort decision. Both decisions
are inserts of the same element, so whichever commits first wins and the coordinator's commit
then fails. So a transaction is decided exactly once, by a replicated write, whatever host
dies: the participants finish it on their own.

Locks live in memory (:class:`~nodedb.transactions.locks.LockTable`), rebuilt from the prepare
records whenever a partition's epoch changes, so a new primary holds its predecessor's locks.

Where it lives: :mod:`~nodedb.transactions.coordinator` decides the coordinator's steps (a pure
automat machine), :mod:`~nodedb.transactions.participant` the participant's and the recovery's
(pure functions), :mod:`~nodedb.transactions.locks` keeps the locks, and
:class:`~nodedb.transactions.service.TransactionService` does the I/O for all of them.
"""

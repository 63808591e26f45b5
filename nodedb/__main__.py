"""``python -m nodedb``: the same as the ``nodedb`` command (see :mod:`nodedb.cli`)."""

from nodedb.cli import main

if __name__ == "__main__":
    main()

"""Topology: where hosts are relative to each other, from measured round-trip times."""

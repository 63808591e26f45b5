"""Reliability: how far each peer can be trusted to answer, from this host's point of view."""

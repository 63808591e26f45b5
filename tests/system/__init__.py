"""System tests: real twistd nodedb processes on loopback addresses."""

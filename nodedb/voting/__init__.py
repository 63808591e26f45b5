"""Voting: agreement on membership, the partition map and id ranges, by Raft."""

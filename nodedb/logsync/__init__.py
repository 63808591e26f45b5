"""LogSync: shipping each partition's commit log from its primary to its replicas."""

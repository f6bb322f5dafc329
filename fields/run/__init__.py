"""Run folders: the config that rebuilds a run, atomic checkpoints, creating and loading run folders."""

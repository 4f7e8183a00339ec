"""Run plumbing shared by the search and train loops: RNG state, DDP, the train step, the run context."""

"""Training engine: the loop, optimisation helpers and checkpoints."""

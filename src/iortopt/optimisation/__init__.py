"""Optimisation: objective terms, the optax loop with checkpoints, shield placement."""

"""Compute: runtime and device set-up, the memory model, sharding over devices, progress."""

"""Dose physics: source data, table interpolation and dose kernels."""

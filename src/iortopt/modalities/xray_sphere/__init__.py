"""50 kV X-ray spherical applicators (size, time and position)."""

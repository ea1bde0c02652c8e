"""HDR brachytherapy with flap applicators (TG-43 dwell-time optimisation)."""

"""iortopt: planning and optimisation for intraoperative radiotherapy (IORT)."""

__version__ = "0.1.0"

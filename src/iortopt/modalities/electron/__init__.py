"""Electron IORT with cones and a protective disc."""

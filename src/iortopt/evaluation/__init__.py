"""Evaluation: DVHs, dose metrics, clinical goals and radiobiology."""

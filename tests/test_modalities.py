"""Every modality implements the one interface of ``iortopt.modalities``, the config accepts
exactly the registered ones, and the pipeline switches on no modality name."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from iortopt import modalities
from iortopt.config import PlanSection

SRC = Path(__file__).resolve().parents[1] / "src" / "iortopt"


@pytest.mark.parametrize("name", sorted(modalities.REGISTRY))
def test_modality_implements_the_interface(name):
    module = modalities.get(name)
    missing = [attr for attr in modalities.INTERFACE if not hasattr(module, attr)]
    assert missing == []
    assert module.NAME == name
    for attr in ("prepare", "run", "print_result", "memory_sizes", "memory_estimate"):
        assert callable(getattr(module, attr))


def test_config_accepts_the_registered_modalities():
    allowed = typing.get_args(PlanSection.model_fields["modality"].annotation)
    assert set(allowed) == set(modalities.REGISTRY)


def test_no_string_switch_on_the_modality_outside_the_registry():
    switch = re.compile(r"modality\s*(==|!=|in\s*\()")
    offenders = [
        f"{path.relative_to(SRC)}:{n}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "config.py"  # validation rules of the config file (issue 14: to declare
        # as modality capabilities)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if switch.search(line)
    ]
    assert offenders == []

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


@pytest.mark.parametrize("name", sorted(modalities.REGISTRY))
def test_prepare_takes_the_builtin_case_side(name):
    import inspect

    params = inspect.signature(modalities.get(name).prepare).parameters
    assert list(params)[:3] == ["cfg", "dtype", "builtin"]
    assert params["builtin"].default is None


def test_every_phantom_adapter_builds_for_a_registered_modality():
    import importlib

    from iortopt import phantoms
    from iortopt.cases.capabilities import BUILTIN

    assert set(phantoms.REGISTRY) == set(BUILTIN)
    for adapters in phantoms.REGISTRY.values():
        for modality, module in adapters.items():
            assert modality in modalities.REGISTRY
            assert callable(importlib.import_module(module).build)


BUILTIN_KINDS = [
    ("hdr_flap", "builtin_flap", "CTV"),
    ("xray_sphere", "builtin_breast", "PTV_shell"),
    ("electron", "builtin_eliot", "PTV_gland"),
]


@pytest.mark.parametrize(("modality", "kind", "structure"), BUILTIN_KINDS)
def test_a_builtin_case_needs_its_adapter(modality, kind, structure):
    """A modality's prepare does not build a phantom itself: without the adapter's case side it
    says where the case comes from."""
    import jax.numpy as jnp

    from iortopt.config import parse_config
    from iortopt.errors import ConfigError

    cfg = parse_config(
        {
            "plan": {"name": "x", "modality": modality},
            "case": {"kind": kind},
            "prescription": {"structure": structure},
        }
    )
    with pytest.raises(ConfigError, match=r"iortopt\.phantoms"):
        modalities.get(modality).prepare(cfg, jnp.float32)


def test_config_accepts_the_registered_modalities():
    allowed = typing.get_args(PlanSection.model_fields["modality"].annotation)
    assert set(allowed) == set(modalities.REGISTRY)


def test_no_string_switch_on_the_modality_outside_the_registry():
    switch = re.compile(r"modality\s*(==|!=|in\s*\()")
    offenders = [
        f"{path.relative_to(SRC)}:{n}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "config.py"  # its shield rule (no [[shields]] on electron plans); which
        # case fits which modality is declared as capabilities (iortopt.cases.capabilities)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if switch.search(line)
    ]
    assert offenders == []


UNUSED = [
    ("xray_sphere", "builtin_breast", '[[objectives]]\ntype = "modulation"\n', "[objectives]"),
    ("xray_sphere", "builtin_breast", "[optimizer]\nmax_iterations = 5\n", "[optimizer]"),
    ("xray_sphere", "builtin_breast", "[source]\nair_kerma_strength_U = 1000.0\n", "[source]"),
    ("electron", "builtin_eliot", "[applicator]\nstep_mm = 10.0\n", "[applicator]"),
    ("electron", "builtin_eliot", "[xray]\nmin_skin_distance_mm = 2.0\n", "[xray]"),
    ("hdr_flap", "builtin_flap", "[electron]\niterations = 5\n", "[electron]"),
]


@pytest.mark.parametrize(("modality", "kind", "section", "named"), UNUSED)
def test_a_section_the_modality_ignores_is_refused(tmp_path, modality, kind, section, named):
    from typer.testing import CliRunner

    from iortopt.cli import app

    structure = {"hdr_flap": "CTV", "xray_sphere": "PTV_shell", "electron": "PTV_gland"}[modality]
    text = (
        f'[plan]\nname = "x"\nmodality = "{modality}"\n[case]\nkind = "{kind}"\n'
        f'[prescription]\nstructure = "{structure}"\n{section}'
    )
    (tmp_path / "plan.toml").write_text(text)
    result = CliRunner().invoke(app, ["memory", str(tmp_path / "plan.toml")])
    assert result.exit_code == 2, result.output
    message = result.output.replace("\n", "")
    assert named in message and "plan.toml" in message and modality in message
    result = CliRunner().invoke(
        app, ["run", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and not (tmp_path / "o").exists()


def test_a_case_section_of_another_kind_is_refused():
    from iortopt.config import parse_config
    from iortopt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[case.breast\]: not used by case.kind 'builtin_flap'"):
        parse_config({"case": {"kind": "builtin_flap", "breast": {"spacing_mm": 2.0}}})


def test_a_config_dumped_with_every_default_still_loads():
    from iortopt.config import load_config, non_default_sections, parse_config

    cfg = parse_config(load_config().model_dump(mode="json"))
    assert "xray" not in non_default_sections(cfg) and "objectives" in non_default_sections(cfg)

"""Every modality x case kind: a case that provides what the modality needs (``NEEDS``,
iortopt.cases.capabilities) validates, one that lacks it is refused with the capability named."""

from __future__ import annotations

import itertools
from pathlib import Path

import jax.numpy as jnp
import pytest

from iortopt import modalities
from iortopt.cases import capabilities
from iortopt.config import ElectronSection, load_config, parse_config
from iortopt.errors import ConfigError
from iortopt.pipeline import check_config, prepare

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODALITIES = ("hdr_flap", "xray_sphere", "electron")
KINDS = ("builtin_flap", "builtin_breast", "builtin_eliot", "dicom")
#: The electron DICOM fields (issue 14 item 5); where this version lacks them no DICOM case can
#: give an electron plan its cone pose.
CONE_FIELDS = {"cone_end_mm": [0.0, 0.0, 30.0], "cone_axis": [0.0, 0.0, -1.0]}
HAS_CONE_FIELDS = set(CONE_FIELDS) <= set(ElectronSection.model_fields)
#: The rules of issue 14, written out independently of the code.
ALLOWED = {
    ("hdr_flap", "builtin_flap"),
    ("xray_sphere", "builtin_breast"),
    ("electron", "builtin_eliot"),
    ("hdr_flap", "dicom"),
    ("xray_sphere", "dicom"),
} | ({("electron", "dicom")} if HAS_CONE_FIELDS else set())
MISSING = {"hdr_flap": "catheters", "xray_sphere": "a cavity", "electron": "a cone pose"}
CATHETER = [[[0.0, -30.0, 0.0], [0.0, 30.0, 0.0]]]


def _doc(modality: str, kind: str, provide: bool = True, ct_folder: str = "ct") -> dict:
    """A config of ``modality`` on a ``kind`` case; for DICOM, with the fields that provide what
    the modality needs (``provide``) where this version has them."""
    doc = {"plan": {"modality": modality}, "case": {"kind": kind}}
    if kind != "dicom":
        return doc
    structures = {"CTV": {"roi": "GTV", "role": "target"}}
    if provide and modality == "xray_sphere":
        structures["cavity"] = {"roi": "Ring", "role": "cavity"}
    doc["case"]["dicom"] = {"ct_folder": ct_folder, "structures": structures}
    if provide and modality == "hdr_flap":
        doc["applicator"] = {"catheters_mm": CATHETER}
    if provide and modality == "electron" and HAS_CONE_FIELDS:
        doc["electron"] = dict(CONE_FIELDS)
    return doc


@pytest.mark.parametrize(("modality", "kind"), list(itertools.product(MODALITIES, KINDS)))
def test_capabilities_decide_which_case_fits(modality, kind):
    cfg = parse_config(_doc(modality, kind))
    if (modality, kind) in ALLOWED:
        check_config(cfg)
        return
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    message = str(info.value)
    assert f'plan.modality "{modality}" needs {MISSING[modality]}' in message
    assert f'case.kind "{kind}" has none' in message
    assert 'case.kind "dicom"' in message  # how to provide it


@pytest.mark.parametrize("modality", MODALITIES)
def test_a_dicom_case_without_the_fields_is_refused_naming_them(modality):
    hint = {
        "hdr_flap": "applicator.catheters_mm",
        "xray_sphere": 'role "cavity"',
        "electron": "electron.cone_end_mm and electron.cone_axis",
    }[modality]
    with pytest.raises(ConfigError, match=f"needs {MISSING[modality]}.*{hint}"):
        check_config(parse_config(_doc(modality, "dicom", provide=False)))


def test_the_cavity_can_also_be_given_by_centre_and_radius():
    doc = _doc("xray_sphere", "dicom", provide=False)
    doc["xray"] = {"centre_mm": [0.0, 0.0, 0.0], "cavity_radius_mm": 15.0}
    check_config(parse_config(doc))


def test_every_modality_needs_known_capabilities_and_each_phantom_serves_one():
    for name in modalities.REGISTRY:
        assert modalities.get(name).NEEDS <= capabilities.ALL, name
    served = {
        name
        for name in modalities.REGISTRY
        for caps in capabilities.BUILTIN.values()
        if modalities.get(name).NEEDS <= caps
    }
    assert served == set(modalities.REGISTRY)


def _coarse(path: str, section: str, spacing_mm: float) -> dict:
    doc = load_config(CONFIGS / path).model_dump(mode="python", exclude_none=True)
    doc["case"][section]["spacing_mm"] = spacing_mm
    return doc


@pytest.mark.parametrize(
    ("path", "section"),
    [
        ("flap_default.toml", "flap"),
        ("breast_xray.toml", "breast"),
        ("breast_electron.toml", "eliot"),
    ],
)
def test_each_phantom_prepares_for_its_modality(path, section):
    prepared = prepare(parse_config(_coarse(path, section, 4.0)), jnp.float32)
    assert prepared.config.case.kind == f"builtin_{section}"


def test_an_hdr_plan_on_a_dicom_case_with_catheters_prepares(tmp_path):
    from iortopt.dicom.synthetic import write_synthetic_study

    study = write_synthetic_study(tmp_path, n_pixels=40, pixel_mm=2.5, n_slices=20, slice_mm=4.0)
    doc = _doc("hdr_flap", "dicom", ct_folder=str(study.ct_folder))
    doc["case"]["dicom"] |= {"rtstruct": str(study.rtstruct), "spacing_mm": 4.0}
    doc["objectives"] = [{"type": "underdose", "structure": "CTV", "dose_gy": 10.0}]
    prepared = prepare(parse_config(doc), jnp.float32)
    assert len(prepared.dwells) > 0

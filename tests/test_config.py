"""Plan configs: the shipped files are valid, bad ones are rejected with the field named."""

from pathlib import Path

import pytest

from iortopt.config import builtin_config_text, load_config, parse_config
from iortopt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_config_loads_and_matches_configs_folder():
    cfg = load_config()
    assert cfg.plan.name == "flap_default"
    assert (ROOT / "configs" / "flap_default.toml").read_text() == builtin_config_text()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    load_config(path)


@pytest.mark.parametrize(
    "doc, field",
    [
        ({"prescription": {"dose_gy": -1}}, "prescription.dose_gy"),
        ({"source": {"air_kerma_strength_U": "strong"}}, "source.air_kerma_strength_U"),
        ({"optimizer": {"method": "newton"}}, "optimizer.method"),
        ({"objectives": [{"type": "underdose", "structure": "CTV"}]}, "objectives.0"),
        ({"objectives": [{"type": "dvh_min", "structure": "CTV", "dose_gy": 10}]}, "objectives.0"),
        ({"plan": {"nmae": "typo"}}, "plan.nmae"),
        ({"source": {"calibration": 2026}}, "source.calibration"),
    ],
)
def test_bad_values_name_the_field(doc, field):
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "test.toml")
    assert field in str(info.value)
    assert "test.toml" in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[plan\nname = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_binary_file_is_not_toml(tmp_path):
    bad = tmp_path / "binary.toml"
    bad.write_bytes(b"\xff\xfe\x00plan")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)

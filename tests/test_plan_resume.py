"""A plan run resumes from the checkpoint an interrupted run of the same config left behind."""

import jax.numpy as jnp
import numpy as np

from iortopt.config import load_config, parse_config
from iortopt.modalities.hdr_flap.pipeline import (
    checkpoint_key,
    checkpoint_path_for,
    optimise_and_write,
)
from iortopt.optimisation.optax_loop import save_checkpoint
from iortopt.pipeline import prepare_modality


def small_config():
    doc = load_config().model_dump(mode="python")
    doc["case"]["flap"].update(spacing_mm=4.0, supersampling=2, n_catheters=4)
    doc["optimizer"]["max_iterations"] = 5
    return parse_config(doc)


def test_resume_from_matching_checkpoint_only(tmp_path):
    cfg = small_config()
    prepared = prepare_modality(cfg, jnp.float32)
    n = len(prepared.dwells)
    out = tmp_path / "plan"
    ckpt = checkpoint_path_for(out)
    save_checkpoint(ckpt, np.full(n, 3.0), 50, checkpoint_key(cfg, n))
    result = optimise_and_write(prepared, out)
    assert any(
        "resumed from checkpoint at iteration 50" in note for note in result.summary["notes"]
    )
    assert not ckpt.exists()  # removed once the outputs are complete

    save_checkpoint(ckpt, np.full(n, 3.0), 50, "another-config")
    other = optimise_and_write(prepare_modality(cfg, jnp.float32), tmp_path / "plan")
    assert not any("resumed" in note for note in other.summary["notes"])

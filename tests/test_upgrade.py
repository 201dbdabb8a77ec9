"""Run folders of earlier versions read in today's form (:mod:`discrete_vae.upgrade`): their configs (train
and SOP), their checkpoints' configs and model states. Whole old run folders evaluating and resuming:
``tests/test_run_folder.py``."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from discrete_vae.checkpoint import load_checkpoint, save_checkpoint
from discrete_vae.config import TrainConfig, options_of
from discrete_vae.errors import ConfigError
from discrete_vae.sop import SOPConfig
from discrete_vae.upgrade import (
    OLD_POSTERIOR_FIELDS,
    OLD_PRIOR_FIELDS,
    upgrade_checkpoint,
    upgrade_config,
    upgrade_model_state,
)


def test_an_old_train_config_reads_as_today():
    """``samples`` is ``k``; the old posterior fields at their old defaults go, except those the posterior or
    estimator in force takes (which stay its options, as before)."""
    old = {"model": "gs", "latent": "4x3", "hidden": [8], "samples": 2, **OLD_POSTERIOR_FIELDS}
    upgraded = upgrade_config(old)
    assert upgraded == {"model": "gs", "latent": "4x3", "hidden": [8], "k": 2, "prior_temperature": None}
    assert list(upgraded)[:4] == ["model", "latent", "hidden", "k"]  # renamed in place
    assert old["samples"] == 2 and "k" not in old  # the mapping read is left as it is
    config = TrainConfig.from_dict(upgraded)
    assert (config.model.k, asdict(config.model.posterior_options)) == (2, {"prior_temperature": None})

    planar = upgrade_config({"model": "igr-planar", "samples": 1, **OLD_POSTERIOR_FIELDS})
    planar = TrainConfig.from_dict(planar)
    own = options_of({"posterior": "igr-planar"})["posterior"]
    options = asdict(planar.model.posterior_options)
    assert options == {k: v for k, v in OLD_POSTERIOR_FIELDS.items() if k in own}
    assert set(options) == {"delta", "prior_scale", "flow_layers", "mc_samples"}


def test_an_old_posterior_field_off_its_default_is_kept_for_the_checks_to_reject():
    old = {"model": "gs", "samples": 1, "delta": 2.0, "levels": 1}
    assert upgrade_config(old) == {"model": "gs", "k": 1, "delta": 2.0}
    with pytest.raises(ConfigError, match="--delta is not an option of posterior categorical"):
        TrainConfig.from_dict(upgrade_config(old))
    unknown = {"model": "no-such-model", "levels": 1}  # the posterior in force is unknown: nothing is dropped
    assert upgrade_config(unknown) == unknown
    with pytest.raises(ConfigError, match="no-such-model"):
        TrainConfig.from_dict(upgrade_config(unknown))


def test_old_rbm_fields_become_the_prior_options_they_were():
    """The RBM's sampler and log Z fields of an old config: dropped at their old defaults and wherever the
    prior in force is not the RBM (they were ignored there); kept off their defaults for an RBM prior, whose
    options they become. A stored config of today (``prior_options`` present) is left alone."""
    old = {"model": "dvaes-power", "latent": "8x2", "samples": 1, **OLD_PRIOR_FIELDS, "chains": 100,
           "sweeps": 10}
    upgraded = upgrade_config(old)
    assert upgraded == {"model": "dvaes-power", "latent": "8x2", "k": 1, "chains": 100, "sweeps": 10}
    config = TrainConfig.from_dict(upgraded)
    assert config.to_dict()["model"]["prior_options"] == {"chains": 100, "sweeps": 10}
    options = {"chains": 100, "sweeps": 10}
    assert config == TrainConfig.of(model="dvaes-power", latent="8x2", prior_options=options)

    gs = upgrade_config({"model": "gs", "samples": 1, **OLD_PRIOR_FIELDS, "chains": 7})
    assert gs == {"model": "gs", "k": 1}
    assert TrainConfig.from_dict(gs).to_dict()["model"]["prior_options"] == {}
    today = TrainConfig.of(model="dvaes-power", latent="8x2", prior_options={"chains": 1000}).to_dict()
    assert upgrade_config(today) == today


def test_an_old_sop_config_reads_as_today():
    today = SOPConfig.of(model="igr-i", units=16, k=3).to_dict()
    old = {("samples" if key == "k" else key): value for key, value in today.items()}
    assert upgrade_config(old) == today and list(upgrade_config(old)) == list(today)
    assert SOPConfig.from_dict(upgrade_config(old)) == SOPConfig.of(model="igr-i", units=16, k=3)


@pytest.mark.parametrize("config", [
    TrainConfig.of(), TrainConfig.of(model="igr-planar", k=4),
    TrainConfig.of(model="dvaes-power", latent="8x2"),
    TrainConfig.of(model="gs", estimator="rloo", posterior_options={"prior_temperature": 0.5}),
    SOPConfig.of(),
], ids=["gs", "igr-planar", "dvaes-power", "rloo", "sop"])
def test_a_config_of_today_is_left_as_it_is(config):
    stored = config.to_dict()
    assert upgrade_config(stored) == stored and list(upgrade_config(stored)) == list(stored)
    assert type(config).from_dict(upgrade_config(stored)) == config


def test_samples_beside_k_is_no_form_dvae_wrote():
    assert upgrade_config({"samples": 2, "k": 3}) == {"samples": 2, "k": 3}
    with pytest.raises(ConfigError, match="unknown config keys: samples"):
        TrainConfig.from_dict(upgrade_config({"samples": 2, "k": 3}))


def test_old_model_state_names_are_renamed_in_order():
    tensors = {"encoder.0.weight": torch.zeros(1), "family.flow.0.w": torch.ones(2),
               "decoder.family.bias": torch.zeros(3), "posterior.x": torch.ones(1)}
    upgraded = upgrade_model_state(tensors)
    assert list(upgraded) == ["encoder.0.weight", "posterior.flow.0.w", "decoder.family.bias", "posterior.x"]
    assert all(upgraded[new] is tensors[old] for new, old in zip(upgraded, tensors, strict=True))


def test_load_checkpoint_reads_an_old_checkpoint_in_todays_form(tmp_path):
    path = tmp_path / "old.safetensors"
    save_checkpoint(path, {"model": {"family.w": torch.arange(3.0)}, "config": {"model": "gs", "samples": 2},
                           "step": 7, "optimizer": {"state": {"0": {"family.x": torch.ones(1)}}}})
    state = load_checkpoint(path)
    assert list(state["model"]) == ["posterior.w"] and torch.equal(state["model"]["posterior.w"],
                                                                   torch.arange(3.0))
    assert state["config"] == {"model": "gs", "k": 2} and state["step"] == 7
    assert list(state["optimizer"]["state"]["0"]) == ["family.x"]  # only the model's tensors were renamed
    for crafted in ([1, 2], {"model": [1], "config": "gs"}):  # not what dvae writes: left for the checks
        assert upgrade_checkpoint(crafted) == crafted
    assert list(upgrade_config({"model": "gs", "delta": torch.ones(2)})) == ["model", "delta"]  # no tensor ==

"""What a :class:`~discrete_vae.config.TrainConfig` means: the model it builds (the method's posterior,
estimator and prior, or those ``--posterior`` / ``--estimator`` name), the objective it trains, and the
schedules of its step (temperature, learning rate, KL weight); and a run folder's model, loaded back.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from .checkpoint import check_model_state, load_checkpoint, load_module_state, run_checkpoint
from .config import TrainConfig, method_names
from .data import DataSplits
from .errors import ConfigError, DataError, MissingDataError, UserError
from .estimators import build_estimator
from .methods import METHODS
from .models import DiscreteVAE
from .networks import MLPConfig
from .posteriors import POSTERIORS, build_posterior
from .posteriors.mixed import Mixed
from .priors import GaussianPrior, ProductPrior, build_prior
from .schedules import Schedule, constant, exponential_decay


def build_model(config: TrainConfig, data_dim: int) -> DiscreteVAE:
    """The model a config describes (weights drawn from the current RNG state): the method's posterior and
    estimator, or those ``--posterior`` / ``--estimator`` name."""
    spec = config.latent_spec()
    method = METHODS.get(config.model)
    method.check(config.model, config)
    posterior_name, estimator_name = method_names(config.model, config.posterior, config.estimator)
    encoder = MLPConfig(tuple(config.hidden), config.activation, config.batch_norm)
    defaults = method.defaults if posterior_name == method.posterior else {}
    own = {f.name for f in dataclasses.fields(POSTERIORS.get(posterior_name).Options)}
    options = {**{k: v for k, v in defaults.items() if k in own}, **config.posterior_options}
    posterior = build_posterior(
        posterior_name,
        spec,
        **options,
        kl=defaults.get("kl", "auto") if config.kl == "auto" else config.kl,
        dataset=config.dataset,
        struct=config.struct,
        context_dim=data_dim,
        level_mlp=encoder,
    )
    estimator = build_estimator(estimator_name, **config.estimator_options)
    prior_name = config.methods()["prior"]
    prior = build_prior(prior_name, spec.n, spec.k, not posterior.one_hot, **config.prior_options)
    posterior.check_prior(prior)
    if config.continuous:
        if not prior.normalized:
            raise ConfigError(f"--continuous needs a normalised discrete prior, not {prior_name}")
        posterior = Mixed(config.continuous, posterior, config.kl)
        prior = ProductPrior([GaussianPrior(config.continuous), prior])
    model = DiscreteVAE(
        data_dim,
        posterior,
        prior,
        encoder,
        encoder.mirrored(),
        estimator=estimator,
        learnable_temperature=config.temperature if config.learn_temperature else None,
        center_input=config.center_input,
    )
    model.train_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    return model


def temperature_schedule(config: TrainConfig) -> Schedule:
    if config.learn_temperature or config.anneal_rate == 0:
        return constant(config.temperature)
    return exponential_decay(
        config.temperature, config.anneal_rate, config.min_temperature, config.anneal_every
    )


PIECEWISE = ((0.02, 0.1), (0.6, 1.0), (0.75, 1 / 3), (0.95, 0.1), (math.inf, 1 / 33))


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Constant; piecewise (the DVAE code's: ``lr`` times 1/10, 1, 1/3, 1/10, 1/33 before 2, 60, 75, 95,
    100 % of the steps); or cosine from ``lr`` at step 0 to ``lr_final`` at the last step."""
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "piecewise":
        return config.lr * next(f for end, f in PIECEWISE if end == math.inf or step < int(end * total))
    progress = min(1.0, step / max(1, total))
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (
        1 + math.cos(math.pi * progress)
    )


def kl_weight(config: TrainConfig, step: int, total: int) -> float:
    """KL warm-up: ``min(1, step / (kl_warmup * total))``; 1 without warm-up."""
    if config.kl_warmup == 0:
        return 1.0
    return min(1.0, step / (config.kl_warmup * total))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported --device {name!r}; use cpu, cuda, cuda:N or auto")
    return device


def model_from_run(
    run_dir: Path, which: str = "best", device: str = "cpu"
) -> tuple[DiscreteVAE, TrainConfig, dict]:
    """Load the model of a run folder (``best`` or ``last`` checkpoint) for eval/sample/reconstruct."""
    path = run_checkpoint(run_dir, which)
    state = load_checkpoint(path)
    check_model_state(path, state)
    try:
        config = TrainConfig.from_dict(state["config"])
    except UserError as e:
        raise UserError(f"{path}: the config it holds is not valid: {e}") from None
    model = build_model(config, state["data_dim"])
    load_module_state(path, model, state["model"], f"the model its config builds (latent {config.latent})")
    return model.to(device).eval(), config, state


def run_dataset(config: Any, data_dir: str | None = None, data_dim: int | None = None) -> DataSplits:
    """The dataset of a run (``config``: a run's :class:`TrainConfig` or SOP config), to evaluate it.

    From ``data_dir`` (``--data-dir``) if given; else from the folder the run was trained with, when it still
    holds the files (read only: nothing is created or downloaded there, whatever the run folder names);
    else from ``$DVAE_DATA_DIR`` or the user cache, as :func:`~discrete_vae.data.load_dataset` finds them.
    Its images must have ``data_dim`` pixels, as the run's model has.
    """
    from .data import load_dataset

    data = None
    if data_dir is None and config.data_dir and Path(config.data_dir).expanduser().is_dir():
        try:
            data = load_dataset(config.dataset, config.data_dir, download=False, seed=config.seed)
        except MissingDataError:
            pass
    if data is None:
        data = load_dataset(config.dataset, data_dir, seed=config.seed)
    if data_dim is not None and data.dim != data_dim:
        raise DataError(f"{config.dataset} has {data.dim} pixels per image here, the run's model {data_dim}")
    return data

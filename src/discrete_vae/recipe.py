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
from .config import TrainConfig
from .data import DataSplits
from .errors import ConfigError, DataError, MissingDataError, UserError
from .estimators import build_estimator
from .models import DiscreteVAE
from .networks import MLPConfig
from .posteriors import build_posterior
from .posteriors.mixed import Mixed
from .priors import GaussianPrior, ProductPrior, build_prior
from .schedules import Schedule, constant, exponential_decay


def build_model(config: TrainConfig, data_dim: int) -> DiscreteVAE:
    """The model a config describes (weights drawn from the current RNG state): the posterior, estimator and
    prior in force with their typed options."""
    m = config.model
    spec = m.latent_spec()
    encoder = MLPConfig(tuple(m.hidden), m.activation, m.batch_norm)
    posterior = build_posterior(m.posterior, spec, **dataclasses.asdict(m.posterior_options), kl=m.kl,
                                dataset=config.run.dataset, struct=m.struct, context_dim=data_dim,
                                level_mlp=encoder)
    estimator = build_estimator(m.estimator, **dataclasses.asdict(m.estimator_options))
    prior = build_prior(m.prior, spec.n, spec.k, not posterior.one_hot, **dataclasses.asdict(m.prior_options))
    posterior.check_prior(prior)
    if m.continuous:
        if not prior.normalized:
            raise ConfigError(f"--continuous needs a normalised discrete prior, not {m.prior}")
        posterior = Mixed(m.continuous, posterior, m.kl)
        prior = ProductPrior([GaussianPrior(m.continuous), prior])
    model = DiscreteVAE(
        data_dim,
        posterior,
        prior,
        encoder,
        encoder.mirrored(),
        estimator=estimator,
        learnable_temperature=config.schedule.temperature if config.schedule.learn_temperature else None,
        center_input=m.center_input,
    )
    model.train_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.run.precision)
    return model


def temperature_schedule(config: TrainConfig) -> Schedule:
    s = config.schedule
    if s.learn_temperature or s.anneal_rate == 0:
        return constant(s.temperature)
    return exponential_decay(s.temperature, s.anneal_rate, s.min_temperature, s.anneal_every)


PIECEWISE = ((0.02, 0.1), (0.6, 1.0), (0.75, 1 / 3), (0.95, 0.1), (math.inf, 1 / 33))


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Constant; piecewise (the DVAE code's: ``lr`` times 1/10, 1, 1/3, 1/10, 1/33 before 2, 60, 75, 95,
    100 % of the steps); or cosine from ``lr`` at step 0 to ``lr_final`` at the last step."""
    o = config.optim
    if o.lr_schedule == "constant":
        return o.lr
    if o.lr_schedule == "piecewise":
        return o.lr * next(f for end, f in PIECEWISE if end == math.inf or step < int(end * total))
    progress = min(1.0, step / max(1, total))
    return o.lr_final + 0.5 * (o.lr - o.lr_final) * (1 + math.cos(math.pi * progress))


def kl_weight(config: TrainConfig, step: int, total: int) -> float:
    """KL warm-up: ``min(1, step / (kl_warmup * total))``; 1 without warm-up."""
    if config.schedule.kl_warmup == 0:
        return 1.0
    return min(1.0, step / (config.schedule.kl_warmup * total))


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
    built = f"the model its config builds (latent {config.model.latent})"
    load_module_state(path, model, state["model"], built)
    return model.to(device).eval(), config, state


def run_dataset(config: Any, data_dir: str | None = None, data_dim: int | None = None) -> DataSplits:
    """The dataset of a run (``config``: a training run's :class:`~discrete_vae.config.RunConfig` or an SOP
    run's config), to evaluate it.

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

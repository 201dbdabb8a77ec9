"""``dvae gradients``: which estimators are measured and how they are seeded, the report, and the command.

:func:`gradient_report` measures each estimator (by default :func:`default_estimators`; ``NAME:K`` gives one
its own ``K`` samples per estimate) against the reference of its target (:func:`target`: the ELBO, or the
``S``-sample bound for vimco), one reference per target, with the statistics of
:mod:`~discrete_vae.gradients`. The draws of each estimator and of each reference come from their own seed
(:func:`estimator_seed`), whatever else is measured. :func:`gradients_command` is the command: the model of
a run folder or a fresh one, one batch of a split, the table on stdout, ``gradients.json`` and
``gradients.png``.

The model is copied and put in eval mode: batch norm takes its running statistics and estimator state is
frozen (a moving-average baseline stays where the checkpoint has it, zero when fresh), so the draws are
independent and the caller's model is unchanged; learned baselines are evaluated at their current values.
"""

from __future__ import annotations

import copy
import math
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError, UserError
from .estimators import ESTIMATORS, Latents
from .estimators.exact import n_states
from .gradients import (
    REFERENCE_BLOCKS,
    Reference,
    adapt_estimator,
    discrete_terms,
    measure,
    q_parameters,
    reference_gradient,
    use_estimator,
)
from .models import DiscreteVAE
from .progress import Progress


def default_estimators(model: DiscreteVAE) -> list[str]:
    """The posterior's relaxations, then (factorial posteriors) every registered estimator of its kind but
    vimco, whose target is another objective (ask for it by name)."""
    names = list(model.posterior.relaxations)
    if model.posterior.factorial:
        kind = "categorical" if model.posterior.one_hot else "binary"
        names += [n for n in ESTIMATORS.names() if n not in names and not ESTIMATORS.get(n).trains_iw_bound
                  and kind in ESTIMATORS.get(n).supports]
    return names


def parse_estimators(names: list[str]) -> dict[str, tuple[str, int | None]]:
    """``NAME`` or ``NAME:K`` (``K`` samples per estimate for that estimator) -> ``{label: (name, K)}``, in
    order; the label is what was given. One :class:`ConfigError` line for a bad ``K`` (below the estimator's
    minimum included) or a repeat."""
    parsed: dict[str, tuple[str, int | None]] = {}
    for given in names:
        name, colon, k = given.partition(":")
        if colon and not (k.isdigit() and int(k) >= 1):
            raise ConfigError(f"--estimators takes NAME or NAME:K with K a positive number of samples, "
                              f"got {given!r}")
        least = ESTIMATORS.get(name).min_samples  # an unknown name: the registry's one line
        if colon and int(k) < least:  # a plain NAME is raised to its minimum; an explicit K is not
            raise ConfigError(f"--estimators: {name} needs at least {least} samples per estimate, "
                              f"got {given!r}")
        if given in parsed:
            raise ConfigError(f"--estimators names {given} twice")
        parsed[given] = (name, int(k) if colon else None)
    return parsed


def estimator_seed(seed: int, name: str) -> int:
    """The seed of one estimator's draws, whatever else is measured."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def check_measurement(draws: int, k: int, reference_samples: int, tau: float | None) -> None:
    """One :class:`ConfigError` line for counts out of range or a temperature that is not finite and
    positive (``None``: the run's schedule gives it)."""
    if draws < 2 or k < 1 or reference_samples < 2 * REFERENCE_BLOCKS:
        raise ConfigError(f"--draws must be at least 2, --k at least 1 and --reference-samples at least "
                          f"{2 * REFERENCE_BLOCKS}")
    if tau is not None and not 0 < tau < math.inf:
        raise ConfigError(f"--tau must be a finite positive temperature, got {tau}")


def gradient_report(model: DiscreteVAE, x: Tensor, estimators: list[str] | None = None, *, k: int = 1,
                    draws: int = 200, tau: float = 1.0, seed: int = 0, reference_samples: int = 10_000,
                    options: dict[str, Any] | None = None, objective: str = "auto",
                    learned_tau: bool = True, adapt: int = 0, adapt_data: Tensor | None = None,
                    adapt_lr: float = 1e-3, progress: Progress | None = None) -> dict[str, Any]:
    """Measure ``estimators`` (default :func:`default_estimators`; ``NAME:K`` gives one its own ``K``) on
    the batch ``x``, ``k`` samples each.

    ``options`` go to the fresh estimators that have them (the model's own estimator keeps its state and
    options); ``objective`` is the relaxations' training objective (``elbo``, ``iw``, or ``auto``: iw for
    posteriors that train with it when k > 1); with ``learned_tau`` a learned temperature wins over ``tau``.
    With ``adapt``, each fresh estimator with learned parts first trains them for that many steps
    (:func:`adapt_estimator`, on batches of ``adapt_data``, default ``x``), the model frozen. ``progress``
    counts the estimators measured. The caller's model and RNG state are left as they were."""
    check_measurement(draws, k, reference_samples, tau)
    if adapt < 0:
        raise ConfigError(f"--adapt must be 0 or more steps, got {adapt}")
    own, options = model.estimator, options or {}
    model = copy.deepcopy(model).eval()
    if not learned_tau:
        model.temperature = None
    tau = float(model.tau(tau).detach())
    with torch.no_grad():
        latents = Latents.of(discrete_terms(model, x[:1], iw=False)[0])
    m, shape = n_states(latents), tuple(latents.logits.shape[1:])
    wanted = parse_estimators(list(dict.fromkeys(estimators or default_estimators(model))))
    references: dict[int, Reference] = {}
    results: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        samples = {label: use_estimator(model, name, options, own, k if n is None else n, x)
                   for label, (name, n) in wanted.items()}  # bad input first
        for label, n in samples.items():
            name, given = wanted[label]
            iw = n if ESTIMATORS.get(name).trains_iw_bound else 1
            if iw not in references:
                references[iw] = reference_gradient(model, x, iw, m, reference_samples,
                                                     estimator_seed(seed, f"reference-{iw}"))
            torch.manual_seed(estimator_seed(seed, label))
            use_estimator(model, name, options, own, k if given is None else given, x)
            relaxation = model.straight_through is not None
            mode = model.training_objective(objective, n) if relaxation else "iw" if iw > 1 else "elbo"
            held = [*model.estimator.parameters(), *model.estimator.buffers()]
            state = "stateless" if not held else "own" if own.name == name else "fresh"
            adapted = 0
            if state == "fresh" and adapt:
                adapted = adapt_estimator(model, x if adapt_data is None else adapt_data, tau, n, mode, adapt,
                                          adapt_lr, estimator_seed(seed, f"adapt-{label}"))
                state = "adapted" if adapted else state
            evaluations = n if relaxation else model.estimator.evaluations(n, latents.kind, shape)
            unbiased = ESTIMATORS.get(name).unbiased
            results[label] = {"estimator": name, "k": n, "evaluations": evaluations, "reference": target(iw),
                              "objective": mode, "state": state, "adapted": adapted,
                              **measure(model, x, tau, n, mode, draws, references[iw], unbiased)}
            if progress is not None:
                progress.update(len(results), last=label)
    refs = {target(iw): {"kind": r.kind, "detail": r.detail, "value": r.value, "norm": float(r.grad.norm()),
                         "se": None if r.var_of_mean is None else math.sqrt(float(r.var_of_mean.sum()))}
            for iw, r in references.items()}
    size = sum(p.numel() for p in q_parameters(model))
    return {"tau": tau, "k": k, "draws": draws, "adapt": adapt, "states": m, "parameters": size,
            "references": refs, "estimators": results}


def target(iw: int) -> str:
    """A reference's name: ``elbo``, or ``iw5`` for the 5-sample importance-weighted bound."""
    return "elbo" if iw == 1 else f"iw{iw}"


def gradients_command(run_dir: Path | None, config: Any, *, checkpoint: str = "best", seed: int = 0,
                      k: int = 1, device: str = "auto", data_dir: str | None = None, split: str = "valid",
                      batch: int = 20, batch_seed: int = 0, estimators: list[str] | None = None,
                      draws: int = 200, tau: float | None = None, reference_samples: int = 10_000,
                      options: dict[str, Any] | None = None, out: Path | None = None,
                      adapt: int = 0, progress: bool | None = None) -> dict[str, Any]:
    """``dvae gradients``: the model of ``run_dir`` (its ``checkpoint``) or a fresh one from ``config`` (a
    :class:`~discrete_vae.config.TrainConfig`; weights from its seed), ``batch`` examples of ``split`` drawn
    with ``batch_seed``; prints the table, writes ``gradients.json`` (with where it was measured: date,
    commit, machine) and ``gradients.png`` into ``out``.
    ``progress``: a bar over the estimators (True), nothing (False), or a bar on a terminal and otherwise a
    line every 30 s (None)."""
    from .checkpoint import atomic_write_bytes, run_checkpoint
    from .data import load_dataset
    from .provenance import provenance
    from .recipe import build_model, model_from_run, resolve_device, run_dataset, temperature_schedule
    from .runs import dumps, refuse_links
    from .viz.gradients import gradient_figure, gradient_table

    check_measurement(draws, k, reference_samples, tau)
    where = resolve_device(device)
    made = provenance(where)  # the code this process loaded, though the checkout may move on meanwhile
    if run_dir is not None:
        model, config, state = model_from_run(run_dir, checkpoint, str(where))
        step, source = int(state["step"]), {"run_dir": str(run_dir),
                                            "checkpoint": run_checkpoint(run_dir, checkpoint).stem}
        data = run_dataset(config.run, data_dir, model.data_dim)
    else:
        torch.manual_seed(config.run.seed)  # as `dvae train` draws its initial weights
        data = load_dataset(config.run.dataset, config.run.data_dir, seed=config.run.seed)
        model = build_model(config, data.dim)
        model.init_decoder_bias(data.train_mean)
        model, step, source = model.to(where), 0, {"fresh": True, "weights_seed": config.run.seed}
    pool = data.split(split)
    if not 1 <= batch <= pool.shape[0]:
        raise UserError(f"--batch must be between 1 and the {pool.shape[0]} examples of the {split} split, "
                        f"got {batch}")
    if out is None and run_dir is not None:
        refuse_links(Path(run_dir), ("gradients",))  # RUN_DIR/gradients: written inside the run folder only
        out = Path(run_dir) / "gradients"
    elif out is None:
        out = Path(time.strftime("gradients-%Y%m%d-%H%M%S"))
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    generator = torch.Generator().manual_seed(batch_seed)
    indices = torch.randperm(pool.shape[0], generator=generator)[:batch].sort().values  # (B,)
    x = pool[indices]
    if split == "train" and data.dynamic_binarization:  # grey levels: one fixed draw, as training draws
        x = torch.bernoulli(x, generator=generator)
    wanted = estimators or default_estimators(model)
    bar = Progress(len(dict.fromkeys(wanted)), mode=Progress.mode_for(progress), desc="gradients",
                   unit="estimator")
    try:
        report = gradient_report(
            model, x.to(where), wanted, k=k, draws=draws, seed=seed, options=options,
            tau=temperature_schedule(config)(step) if tau is None else tau, learned_tau=tau is None,
            reference_samples=reference_samples, objective=config.model.objective, adapt=adapt,
            adapt_data=data.split("train").to(where) if adapt else None, adapt_lr=config.optim.lr,
            progress=bar)
    finally:
        bar.close()
    m = config.model
    result = {**source, "step": step, "model": m.method, "latent": str(m.latent_spec()),
              "dataset": config.run.dataset, "split": split, "batch": batch, "batch_seed": batch_seed,
              "indices": indices.tolist(), "seed": seed, **report, "provenance": made,
              "files": {"json": str(out / "gradients.json"), "png": str(out / "gradients.png")}}
    caption = (f"{source.get('run_dir', 'fresh model')}, step {step}, {m.method} {m.latent}, tau "
               f"{report['tau']:.3g}, {split} batch of {batch}, {draws} draws")
    print(f"{caption}; examples {result['indices']}\n{gradient_table(result)}")
    atomic_write_bytes(out / "gradients.json", (dumps(result) + "\n").encode())
    atomic_write_bytes(out / "gradients.png", gradient_figure(result, caption))
    return result

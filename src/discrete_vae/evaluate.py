"""Evaluation of the *discrete* model: the importance-weighted bound with hard samples.

For each example, ``S`` hard samples ``z_s ~ q(z|x)`` from the discrete posterior give
``log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x)``; the bound is
``log (1/S) sum_s w_s`` (Burda et al. 2016), reported as ``nll`` = minus its mean over the split.
The same weights give the discrete ELBO (their mean). For estimators that train through the
posterior's relaxation the relaxed training objective is reported beside them because it is what training
optimised, but it is no bound on the discrete likelihood.
Reported as positive nats to minimise: ``nll``, ``neg_elbo`` and (relaxations only) ``neg_relaxed_objective``.

Samples are drawn in chunks so that memory stays bounded for any ``S`` (5000 and more), and the
logsumexp is accumulated across chunks. Evaluation runs under a forked RNG seeded by ``seed``: it
is deterministic and leaves the caller's random state untouched.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .models import DiscreteVAE
from .networks import evaluating
from .priors import Prior

MAX_ROWS = 1 << 13  # decoder rows (samples x examples) per chunk: cache-sized, measured fastest


@torch.no_grad()
def iw_log_likelihood(
    model: DiscreteVAE, x: Tensor, samples: int, max_rows: int = MAX_ROWS
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example IW bound, discrete ELBO estimate and ``log mean_s p(x|z_s)`` (each (B,)) from
    ``samples`` hard draws ``z_s ~ q(z|x)``."""
    s_chunk = max(1, min(samples, max_rows // max(1, x.shape[0])))
    lse = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=torch.float64)
    lse_px = lse.clone()
    total = torch.zeros(x.shape[0], device=x.device, dtype=torch.float64)
    done = 0
    while done < samples:
        n = min(s_chunk, samples - done)
        log_w, log_px = model.discrete_log_weights(x, n)  # (n, B) each
        lse = torch.logaddexp(lse, log_w.double().logsumexp(0))
        lse_px = torch.logaddexp(lse_px, log_px.double().logsumexp(0))
        total += log_w.double().sum(0)
        done += n
    return lse - math.log(samples), total / samples, lse_px - math.log(samples)


def estimate_log_partition(prior: Prior, n_betas: int = 1000, n_samples: int = 1024, seed: int = 0,
                           method: str = "auto") -> dict[str, float | str]:
    """``{"log_z", "log_z_stderr", "log_z_method"}`` for a prior that is not normalised, else ``{}``.

    ``method``: ``exact`` (enumeration, when a half has at most 20 units), ``ais`` (``n_betas`` inverse
    temperatures, ``n_samples`` chains), ``pa`` (population annealing, same budget), ``auto`` (exact if
    possible, else AIS). Runs under a forked RNG seeded by ``seed``.
    """
    if prior.normalized:
        return {}
    device = next(prior.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        used, est = prior.log_partition(method, n_betas=n_betas, n_samples=n_samples)
    return {"log_z": est.log_z, "log_z_stderr": est.stderr, "log_z_method": used}


@torch.no_grad()
def evaluate(
    model: DiscreteVAE,
    data: Tensor,
    *,
    samples: int,
    tau: float,
    seed: int = 0,
    max_rows: int = MAX_ROWS,
    log_partition: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Score ``data`` (N, D): ``nll`` (-IW bound), ``neg_elbo``, ``neg_relaxed_objective``, in nats.

    ``nll_stderr`` (N > 1) is the standard error of ``nll`` over the examples scored. For models trained
    through a relaxation, ``igr_metric`` is the test metric of the IGR paper's code (Potapczynski et al.
    2020, ``compute_loss`` with ``run_iwae`` and one-hot decoding): ``KL - log mean_s p(x|z_s)`` with the
    training objective's KL term and the same hard draws ``z_s ~ q``. The KL sits outside the average
    over samples, so it is no bound: it can fall below the true ``nll``.

    ``log_partition`` is subtracted from every log weight for priors that are not normalised.
    ``progress(examples done)`` is called after each chunk of examples.
    """
    device = next(model.parameters()).device
    examples = max(1, max_rows // max(1, min(samples, max_rows)))
    iw_sum = iw_sq = elbo_sum = relaxed_sum = igr_sum = 0.0
    relaxation = model.straight_through is not None
    with evaluating(model, device, seed):
        for start in range(0, data.shape[0], examples):
            x = data[start : start + examples].to(device)
            iw, elbo, log_mean_px = iw_log_likelihood(model, x, samples, max_rows)
            iw_sum += float(iw.sum())
            iw_sq += float(iw.square().sum())
            elbo_sum += float(elbo.sum())
            if relaxation:
                with torch.no_grad():
                    terms = model(x, tau, 1)
                relaxed_sum += float(terms.objective.sum())
                igr_sum += float((terms.kl.double() - log_mean_px).sum())
            if progress is not None:
                progress(min(start + examples, data.shape[0]))
    n = data.shape[0]
    metrics = {  # every per-example log weight is short of -log Z: subtract it once from the means
        "nll": log_partition - iw_sum / n,
        "neg_elbo": log_partition - elbo_sum / n,
        "samples": samples,
        "examples": n,
    }
    if relaxation:
        metrics["neg_relaxed_objective"] = log_partition - relaxed_sum / n
        if log_partition == 0.0:  # the paper's code has no RBM priors
            metrics["igr_metric"] = igr_sum / n
    if n > 1:  # the standard error of the mean over examples (how far another draw of data could move it)
        var = max(0.0, (iw_sq - iw_sum * iw_sum / n) / (n - 1))
        metrics["nll_stderr"] = math.sqrt(var / n)
    return metrics


def trivial_nll(train_mean: Tensor, data: Tensor) -> float:
    """NLL in nats of ``data`` (N, D) under independent pixels at the training marginals ``train_mean`` (D,)
    (clamped to [1e-3, 1 - 1e-3], the decoder's initial output): the model every VAE should beat."""
    p = train_mean.double().clamp(1e-3, 1 - 1e-3).to(data.device)
    x = data.double()
    return float(-(x @ p.log() + (1 - x) @ (1 - p).log()).mean())


def evaluate_run(run_dir: Path, *, samples: int, split: str = "test", seed: int = 0, checkpoint: str = "best",
                 device: str = "auto", data_dir: str | None = None, limit: int | None = None,
                 log_z: str = "auto", log_z_betas: int = 1000, log_z_samples: int = 1024,
                 progress: bool | None = None) -> dict[str, Any]:
    """``dvae eval``: score a run folder's ``checkpoint`` (``best``, else ``last``) on ``split``.

    The result names the checkpoint it scored and is written, as strict JSON, to
    ``eval_SPLIT_S{samples}[_subsetN]_seed{seed}_{checkpoint}.json`` in the run folder when the folder is
    writable (checked first, so a read-only folder is said at once; the result is returned either way).
    Denormal floats are flushed to zero while it computes (:mod:`discrete_vae.denormals`).
    """
    from .checkpoint import atomic_write_bytes, run_checkpoint
    from .denormals import flush_denormals
    from .errors import UserError
    from .progress import Progress
    from .recipe import model_from_run, resolve_device, run_dataset, temperature_schedule
    from .runs import dumps, note

    if samples < 1:
        raise UserError("--samples must be at least 1")
    if log_z_betas < 2 or log_z_samples < 1:
        raise UserError("--log-z-betas must be at least 2 and --log-z-samples at least 1")
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    run_dir = Path(run_dir)
    torch_device = resolve_device(device)
    scored = run_checkpoint(run_dir, checkpoint).stem  # "last" when a run has no best
    if scored != checkpoint:
        note(f"dvae eval: {run_dir} has no {checkpoint}.safetensors; scoring {scored}.safetensors")
    subset = f"_subset{limit}" if limit else ""
    out = run_dir / f"eval_{split}_S{samples}{subset}_seed{seed}_{scored}.json"
    if not os.access(run_dir, os.W_OK):  # say so now, not after minutes of work
        note(f"dvae eval: {run_dir} is not writable; the result goes to stdout only, not to {out.name}")
    model, config, state = model_from_run(run_dir, scored, str(torch_device))
    data = run_dataset(config.run, data_dir, model.data_dim)
    x = data.subset(split, limit).to(torch_device)
    start = time.perf_counter()
    tau = temperature_schedule(config)(int(state["step"]))
    with flush_denormals():
        try:
            partition = estimate_log_partition(model.prior, log_z_betas, log_z_samples, seed, log_z)
        except ValueError as e:  # e.g. exact enumeration of a half too large
            raise UserError(str(e)) from None
        bar = Progress(x.shape[0], mode=Progress.mode_for(progress), desc="eval", unit="example")
        try:
            metrics = evaluate(model, x, samples=samples, tau=tau, seed=seed,
                               log_partition=partition.get("log_z", 0.0), progress=bar.update)
        finally:
            bar.close()
    seconds = time.perf_counter() - start
    if partition:
        note(f"log Z = {partition['log_z']:.3f} ± {partition['log_z_stderr']:.3f} "
             f"({partition['log_z_method']})")
    result = {**metrics, **partition, "split": split, "seed": seed, "step": int(state["step"]),
              "checkpoint": scored, "seconds": round(seconds, 3)}
    spread = (f" ± {metrics['nll_stderr']:.2f} (standard error over examples)"
              if "nll_stderr" in metrics else "")
    relaxed = (f"-relaxed objective {metrics['neg_relaxed_objective']:.2f} (not a bound); "
               if "neg_relaxed_objective" in metrics else "")
    total = data.split(split).shape[0]
    counted = (f"{metrics['examples']:,} examples" if metrics["examples"] == total
               else f"{metrics['examples']:,} of the {total:,} examples (--limit)")
    note(f"{split}: NLL <= {metrics['nll']:.2f} nats on {counted} (importance-weighted bound, S={samples}, "
         f"{scored}.safetensors at step {result['step']}){spread}; -ELBO {metrics['neg_elbo']:.2f}; "
         f"{relaxed}{seconds:.1f} s")
    try:
        atomic_write_bytes(out, (dumps(result) + "\n").encode())
    except OSError as e:
        note(f"dvae eval: could not write {out}: {e.strerror}; the result is only printed")
    return result

"""Evaluation of the *discrete* model: the importance-weighted bound with hard samples.

For each example, ``S`` hard samples ``z_s ~ q(z|x)`` from the discrete posterior the latent family
implies give ``log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x)``; the bound is
``log (1/S) sum_s w_s`` (Burda et al. 2016), reported as ``nll`` = minus its mean over the split.
The same weights give the discrete ELBO (their mean). The relaxed training objective is reported
beside them because it is what training optimised, but it is no bound on the discrete likelihood.

Samples are drawn in chunks so that memory stays bounded for any ``S`` (5000 and more), and the
logsumexp is accumulated across chunks. Evaluation runs under a forked RNG seeded by ``seed``: it
is deterministic and leaves the caller's random state untouched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .models import DiscreteVAE
from .objectives import relaxed_elbo
from .priors import Prior

MAX_ROWS = 1 << 13  # decoder rows (samples x examples) per chunk: cache-sized, measured fastest


@torch.no_grad()
def iw_log_likelihood(
    model: DiscreteVAE, x: Tensor, samples: int, max_rows: int = MAX_ROWS
) -> tuple[Tensor, Tensor]:
    """Per-example IW bound and discrete ELBO estimate (both (B,)) from ``samples`` hard draws."""
    s_chunk = max(1, min(samples, max_rows // max(1, x.shape[0])))
    lse = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=torch.float64)
    total = torch.zeros(x.shape[0], device=x.device, dtype=torch.float64)
    done = 0
    while done < samples:
        n = min(s_chunk, samples - done)
        log_w = model.discrete_log_weights(x, n).double()  # (n, B)
        lse = torch.logaddexp(lse, log_w.logsumexp(0))
        total += log_w.sum(0)
        done += n
    return lse - math.log(samples), total / samples


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
) -> dict[str, float]:
    """Score ``data`` (N, D): ``nll`` (-IW bound), ``elbo``, ``relaxed_objective``, in nats.

    ``nll_stderr`` (N > 1) is the standard error of ``nll`` over the examples scored.

    ``log_partition`` is subtracted from every log weight for priors that are not normalised.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    examples = max(1, max_rows // max(1, min(samples, max_rows)))
    iw_sum = iw_sq = elbo_sum = relaxed_sum = 0.0
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, data.shape[0], examples):
            x = data[start : start + examples].to(device)
            iw, elbo = iw_log_likelihood(model, x, samples, max_rows)
            iw_sum += float(iw.sum())
            iw_sq += float(iw.square().sum())
            elbo_sum += float(elbo.sum())
            out = model(x, tau, 1)
            relaxed_sum += float(relaxed_elbo(out.log_px, out.latent).objective.sum())
    model.train(was_training)
    n = data.shape[0]
    metrics = {  # every per-example log weight is short of -log Z: subtract it once from the means
        "nll": log_partition - iw_sum / n,
        "elbo": elbo_sum / n - log_partition,
        "relaxed_objective": relaxed_sum / n - log_partition,
        "samples": samples,
        "examples": n,
    }
    if n > 1:  # the standard error of the mean over examples (how far another draw of data could move it)
        var = max(0.0, (iw_sq - iw_sum * iw_sum / n) / (n - 1))
        metrics["nll_stderr"] = math.sqrt(var / n)
    return metrics

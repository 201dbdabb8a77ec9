r"""The measurement behind ``dvae gradients``: the true gradient, and an estimator's bias, variance and cost.

Each estimator gives ``R`` independent estimates :math:`\hat g_r` of the gradient of the batch-mean training
objective with respect to the parameters of :math:`q_\phi(z|x)` (the encoder's, and any posterior networks'),
each from ``k`` draws per example through ``DiscreteVAE.forward`` as in training. The truth :math:`g` is the
gradient of the discrete ELBO :math:`\frac1B\sum_b \mathbb{E}_{q(z|x_b)}[\log p(x_b|z)] - \mathrm{KL}(q\|p)`
(analytic KL where the pair is registered, else :math:`\log p(z) - \log q(z|x)` inside the expectation), for
``vimco`` that of its own target, the ``S``-sample bound
:math:`\mathbb{E}[\log\frac1S\sum_s p(x,z_s)/q(z_s|x)]`.
Relaxed estimators (``gs``, ``st-gs``, ``reinmax``, ...) are measured against the same discrete gradient.

- **Exact** when one example has at most ``MAX_STATES`` states (``M^S`` joint draws for vimco): a sum over
  the states, through the decoder in chunks of at most ``CHUNK_ROWS`` floats.
- **Sampled** otherwise: REINFORCE with the leave-one-out baseline (RLOO; over ``S``-tuples for vimco), an
  unbiased estimate from ``reference_samples`` draws per example in ``REFERENCE_BLOCKS`` blocks, whose
  spread gives its standard error; the bias test then adds the reference's own noise.

Per estimator: ``bias`` :math:`\|\bar g - g\|` (``relative_bias`` over :math:`\|g\|`), ``bias_z`` :math:`=
\|\bar g - g\|/\mathrm{se}` with :math:`\mathrm{se}^2 = \mathrm{tr\,Cov}(\hat g)/R` (+ the reference's),
``variance`` :math:`\mathrm{tr\,Cov}(\hat g)`, ``mse`` :math:`\frac1R\sum_r\|\hat g_r - g\|^2`, ``cosine``
(mean over draws) and ``cosine_of_mean`` with :math:`g`, and ``seconds``, the median wall time of one
estimate (forward and gradient). A declared-unbiased estimator with ``bias_z > 4`` gets a warning (for
Gaussian noise along one direction a false alarm has probability 6e-5, less with more directions).

The estimator under test is frozen (:func:`use_estimator`: a moving-average baseline stays where the
checkpoint has it, zero when fresh), so the draws are independent; learned baselines are evaluated at
their current values, or first trained on the model with :func:`adapt_estimator`. Which estimators are
measured, their seeds, the report and the command are in :mod:`.gradient_report`.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .estimators import ESTIMATORS, Estimator, Latents, build_estimator
from .estimators.base import call_f
from .estimators.exact import MAX_STATES, exact_iw_expectation, states
from .estimators.reinforce import score_surrogate
from .estimators.rloo import leave_one_out_mean
from .models import DiscreteVAE

CHUNK_ROWS = 2**22  # states x examples x widest decoder layer, per chunk of the enumeration
REFERENCE_BLOCKS = 50
BIAS_Z_WARNING = 4.0


class Reference(NamedTuple):
    """The true gradient (P,) and objective; for a sampled one, the variance of its mean (P,)."""

    grad: Tensor
    value: float
    var_of_mean: Tensor | None
    kind: str  # exact or sampled
    detail: str


def q_parameters(model: DiscreteVAE) -> list[nn.Parameter]:
    """The parameters ``q(z|x)`` depends on: the encoder's and the posterior's own networks'."""
    return [p for m in (model.encoder, model.posterior) for p in m.parameters() if p.requires_grad]


def flat_grad(output: Tensor, params: list[nn.Parameter]) -> Tensor:
    """``d output / d params`` as one vector (P,), zeros where unused."""
    grads = torch.autograd.grad(output, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads,
                                                                                          strict=True)])


def cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0, eps=1e-30))


def discrete_terms(model: DiscreteVAE, x: Tensor, iw: bool) -> tuple[Any, Any, Tensor | None]:
    """``(q, f, kl)`` of the discrete objective (:meth:`DiscreteVAE.discrete_terms`; ``iw``: the KL inside
    ``f``), for a posterior whose discrete ``q(z|x)`` is a factorial Bernoulli or categorical."""
    q, f, kl, _ = model.discrete_terms(x, sampled=iw)
    try:
        Latents.of(q)
    except ConfigError:
        raise ConfigError("dvae gradients needs a posterior whose discrete q(z|x) is a factorial Bernoulli "
                          f"or categorical, not {type(q).__name__}") from None
    return q, f, kl


def exact_gradient(model: DiscreteVAE, x: Tensor, params: list[nn.Parameter],
                   chunk_rows: int = CHUNK_ROWS) -> tuple[Tensor, float]:
    r"""The discrete ELBO's gradient :math:`\sum_z \nabla q(z) f(z)` (+ the KL's) by enumeration, and its
    value: the gradient with respect to ``q``'s logits is summed over chunks of states, then taken back
    through the encoder once."""
    q, _, kl = discrete_terms(model, x, iw=False)  # f inline: log p(x|z) without a graph
    latents = Latents.of(q)
    z_all, batch = states(latents), x.shape[0]  # (M, *event)
    widths = [m.out_features for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    chunk = max(1, chunk_rows // (batch * max([latents.logits[0].numel(), *widths])))
    grad_logits, value = torch.zeros_like(latents.logits), 0.0
    for start in range(0, z_all.shape[0], chunk):
        z = z_all[start : start + chunk]
        z = z.unsqueeze(1).expand(z.shape[0], batch, *z.shape[1:])  # (C, B, ...)
        with torch.no_grad():  # log p(x|z) does not depend on q's parameters
            fz = model.log_likelihood(x, z)  # (C, B)
        log_q = latents.log_prob(z)  # (C, B)
        if kl is None:
            fz = fz + model.prior.log_prob(z) - log_q
        part = (log_q.exp() * fz).sum()  # summed over the chunk and the batch
        value += float(part.detach())
        grad_logits += torch.autograd.grad(part, latents.logits)[0]
    surrogate = (latents.logits * grad_logits).sum() / batch  # gradient: grad_logits / B
    if kl is not None:
        surrogate, value = surrogate - kl.mean(), value - float(kl.detach().sum())
    return flat_grad(surrogate, params), value / batch


def sampled_block(model: DiscreteVAE, x: Tensor, params: list[nn.Parameter], iw: int,
                  n: int) -> tuple[Tensor, float]:
    r"""One unbiased estimate from ``n`` draws (``iw``-tuples) per example: RLOO on the tuples' bounds
    :math:`\log\frac1S\sum_s e^{f(z_s)}` (``f`` itself for ``iw = 1``) scored by the tuples' joint
    :math:`\log q`, plus the pathwise term and the analytic KL's gradient."""
    q, f, kl = discrete_terms(model, x, iw=iw > 1)
    latents = Latents.of(q)
    z = latents.sample(n * iw)  # (n S, B, ...)
    bound = call_f(f, z).view(n, iw, -1).logsumexp(1) - math.log(iw)  # (n, B)
    signal = bound.detach() - leave_one_out_mean(bound.detach())  # (n, B)
    objective = score_surrogate(bound, signal, latents.log_prob(z).view(n, iw, -1).sum(1))  # (B,)
    if kl is not None:
        objective = objective - kl
    return flat_grad(objective.mean(), params), float(objective.detach().mean())


def reference_gradient(model: DiscreteVAE, x: Tensor, iw: int, m: int, samples: int, seed: int) -> Reference:
    """Exact when the ``m`` states per example (``m^iw`` joint draws) can be enumerated, else the mean of
    :data:`REFERENCE_BLOCKS` sampled blocks (``samples`` draws per example in all) and its variance."""
    params = q_parameters(model)
    if m**iw <= MAX_STATES:
        if iw == 1:
            grad, value = exact_gradient(model, x, params)
        else:
            q, f, _ = discrete_terms(model, x, iw=True)
            bound = exact_iw_expectation(q, f, iw, limit=MAX_STATES)  # (B,)
            grad, value = flat_grad(bound.mean(), params), float(bound.detach().mean())
        what = f"{m} states" if iw == 1 else f"{m}^{iw} joint draws"
        return Reference(grad.double(), value, None, "exact", f"enumeration of {what} per example")
    per_block = max(2, samples // REFERENCE_BLOCKS)
    torch.manual_seed(seed)
    blocks = [sampled_block(model, x, params, iw, per_block) for _ in range(REFERENCE_BLOCKS)]
    grads = torch.stack([g for g, _ in blocks]).double()  # (blocks, P)
    tuples = f" of {iw}-tuples" if iw > 1 else ""
    return Reference(grads.mean(0), statistics.fmean(v for _, v in blocks), grads.var(0) / len(blocks),
                     "sampled", f"{m} states per example, too many to enumerate: RLOO over "
                     f"{per_block * REFERENCE_BLOCKS} draws{tuples} per example in {REFERENCE_BLOCKS} blocks")


def adapt_estimator(model: DiscreteVAE, batches: Tensor, tau: float, n: int, objective: str, steps: int,
                    lr: float, seed: int) -> int:
    """Train the estimator's own parameters (learned baselines and control variates: ``aux_loss``) for
    ``steps`` Adam steps at ``lr`` on batches drawn with ``seed`` from ``batches`` (N, D), the model frozen,
    as training would have adapted them to this model; returns the steps taken (0 without parameters)."""
    from .loop import estimator_gradients

    params = [p for p in model.estimator.parameters() if p.is_floating_point()]
    if not params or steps == 0:
        return 0
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    size = min(batches.shape[0], 100)
    taken = 0
    for _ in range(steps):
        x = batches[torch.randint(batches.shape[0], (size,), generator=generator)]
        aux = model(x, tau, n, 1.0, objective).aux_loss
        if aux is None:
            break
        for p, g in zip(params, estimator_gradients(params, aux), strict=True):  # as training steps them
            p.grad = g
        optimizer.step()
        taken += 1
    for p in params:
        p.requires_grad_(False)
    return taken


def use_estimator(model: DiscreteVAE, name: str, options: dict[str, Any], own: Estimator, k: int,
                  x: Tensor) -> int:
    """Put estimator ``name`` into ``model`` (a copy of ``own``, the model's trained one, if so named, else a
    fresh one with the ``options`` it has), frozen and checked against the posterior; returns its samples
    per estimate, ``k`` or its minimum."""
    cls = ESTIMATORS.get(name)
    if own.name == name:
        model.estimator = copy.deepcopy(own)
    else:
        model.estimator = build_estimator(name, **{o: v for o, v in options.items()
                                                   if o in cls.Options.__dataclass_fields__})
    model.estimator.eval()  # frozen state: independent draws
    model.check_estimator()
    n = max(k, cls.min_samples)
    if model.straight_through is None:
        model.estimator.check("categorical" if model.posterior.one_hot else "binary", n)
    model.prepare(x)
    model.estimator.requires_grad_(False)  # only q's gradient is measured
    return n


def measure(model: DiscreteVAE, x: Tensor, tau: float, n: int, objective: str, draws: int,
            ref: Reference, unbiased: bool) -> dict[str, Any]:
    """``draws`` estimates of the gradient of the batch-mean objective, summarised against ``ref``."""
    params, truth = q_parameters(model), ref.grad
    mean, m2, cos_sum, sq_err, seconds = torch.zeros_like(truth), torch.zeros_like(truth), 0.0, 0.0, []
    for r in range(1, draws + 1):
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        g = flat_grad(-model(x, tau, n, 1.0, objective).loss, params)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        seconds.append(time.perf_counter() - start)
        g = g.to(truth)
        delta = g - mean  # Welford, in float64
        mean += delta / r
        m2 += delta * (g - mean)
        cos_sum += cosine(g, truth)
        sq_err += float((g - truth).square().sum())
    variance = float(m2.sum()) / (draws - 1)
    bias, norm = float((mean - truth).norm()), float(truth.norm())
    se = math.sqrt(variance / draws + (0.0 if ref.var_of_mean is None else float(ref.var_of_mean.sum())))
    out = {"unbiased": unbiased, "bias": bias, "relative_bias": bias / norm if norm > 0 else math.inf,
           "bias_se": se, "bias_z": bias / se if se > 0 else math.inf, "variance": variance,
           "mse": sq_err / draws, "cosine": cos_sum / draws, "cosine_of_mean": cosine(mean, truth),
           "seconds": statistics.median(seconds)}
    if unbiased and out["bias_z"] > BIAS_Z_WARNING:
        out["warning"] = (f"declared unbiased, but its bias is {out['bias_z']:.1f} standard errors from the "
                          f"reference (threshold {BIAS_Z_WARNING:g})")
    return out

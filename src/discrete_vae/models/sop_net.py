"""The network of structured output prediction (SOP): layers of stochastic binary units.

``x_upper -> z_1 -> ... -> z_L -> p(x_lower)`` with layers of stochastic binary units ``z in {-1, +1}``
(the task, its objectives and papers: :mod:`discrete_vae.sop`), the multi-sample objective
``log (1/m) sum_i p(x_lower | z_i)`` and its chunked evaluation with hard samples.

Each binary unit with layer output ``a`` is one posterior of the toolkit, differentiated by a per-unit
(pathwise) estimator of :mod:`discrete_vae.estimators`:

- ``gs``: ``Bernoulli(sigmoid(a))``, drawn by the ``--estimator`` (default ``gs``, the binary Concrete
  ``sigmoid((a + L) / tau)``; also ``st-gs``, ``st``, ``reinmax``, ``gumbel-rao``, ``zgr``).
- ``igr-i`` / ``igr-sb`` (identical for one binary unit): the two-class IGR-SB distribution
  (:class:`~discrete_vae.distributions.ExpIGRSB`, ``kappa ~ N(a, 1)``, relaxed ``sigmoid(kappa / tau)``,
  hard ``1[kappa > 0]``, i.e. ``Bernoulli(Phi(a))``), through its own relaxation (``relaxed``).
- ``igr-planar``: the same with a learned one-dimensional planar flow ``f`` per unit on ``kappa``;
  relaxed ``sigmoid(f(kappa) / tau)``, hard ``1[f(kappa) > 0]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions import ExpIGRSB, PlanarFlow
from ..estimators import Latents, Pathwise, build_estimator

MODELS = ("gs", "igr-i", "igr-sb", "igr-planar")
# arch -> (stochastic layers, deterministic maps are Linear-tanh-Linear)
ARCHS = {"double_linear": (2, False), "triple_linear": (3, False), "nonlinear": (2, True)}
EVAL_ROWS = 8192  # decoder rows per chunk in evaluation: bounded memory for any number of samples


def split_halves(x: Tensor, image_shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``(n, H*W)`` images -> upper ``H // 2`` rows and the rest, each flattened (392/392 for MNIST)."""
    cut = (image_shape[0] // 2) * image_shape[1]
    return x[:, :cut], x[:, cut:]


class StochasticBinaryLayer(nn.Module):
    """One layer of ``units`` stochastic binary units in {-1, +1}, relaxed or hard.

    ``model`` picks the posterior of a unit and ``estimator`` how its draw is differentiated (module
    docstring); only ``igr-planar`` has parameters (the per-unit planar flow of Potapczynski et al. 2020,
    sec. 3.3, with two layers).
    """

    def __init__(self, model: str, units: int, estimator: Pathwise | None = None):
        super().__init__()
        self.model = model
        self.estimator = estimator if model == "gs" else None
        if model == "gs" and estimator is None:
            self.estimator = build_estimator("gs")
        self.flow = PlanarFlow(variables=units, dim=1, layers=2) if model == "igr-planar" else None

    def preimage(self, a: Tensor) -> Tensor:
        """IGR: ``kappa ~ N(a, 1)``, pushed through the planar flow for ``igr-planar``: (..., units, 1)."""
        loc = a.unsqueeze(-1)  # the unit's two-class IGR-SB pre-image (its temperature plays no part)
        kappa = ExpIGRSB(loc.new_ones(()), loc, torch.ones_like(loc), validate_args=False).rsample_preimage()
        return kappa if self.flow is None else self.flow(kappa, log_det=False)[0]

    def relaxed(self, a: Tensor, tau: float) -> Tensor:
        """A differentiable sample in [-1, 1] given the layer output ``a``."""
        if self.estimator is not None:
            z = self.estimator.rsample(Latents("binary", a), 1, tau)[0]
        else:  # ExpIGRSB's two-class stick-breaking map: pi_1 = sigmoid(kappa / tau), one fused op
            z = torch.sigmoid(self.preimage(a)[..., 0] / tau)
        return 2 * z - 1

    @torch.no_grad()
    def hard(self, a: Tensor) -> Tensor:
        """A hard sample in {-1, +1} from the discrete model the relaxation converges to."""
        if self.model == "gs":
            b = torch.bernoulli(torch.sigmoid(a))
        else:
            b = (self.preimage(a)[..., 0] > 0).to(a.dtype)
        return 2 * b - 1

    @torch.no_grad()
    def prob_one(self, a: Tensor) -> Tensor:
        """``P(z = +1)`` of the hard unit: ``sigmoid(a)``, ``Phi(a)``, or ``Phi(a - f^{-1}(0))``."""
        if self.model == "gs":
            return torch.sigmoid(a)
        shift = 0.0
        if self.flow is not None:  # f is increasing, so f(kappa) > 0 iff kappa > f^{-1}(0)
            zero = torch.zeros(self.flow.b.shape[1], 1, dtype=a.dtype, device=a.device)
            shift = self.flow.inverse(zero).squeeze(-1)
        return torch.special.ndtr(a - shift)


def deterministic_map(n_in: int, n_out: int, nonlinear: bool, hidden: int) -> nn.Module:
    """``Linear``, or ``Linear-tanh-Linear`` (Maddison et al. 2017, Appendix D.2 "nonlinear")."""
    if not nonlinear:
        return nn.Linear(n_in, n_out)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


class SOPNet(nn.Module):
    """``x_upper -> [map -> binary layer] x L -> map -> Bernoulli logits of x_lower``."""

    def __init__(self, in_dim: int, out_dim: int, arch: str, model: str, units: int = 240,
                 estimator: Pathwise | None = None):
        super().__init__()
        depth, nonlinear = ARCHS[arch]
        widths = [in_dim] + [units] * depth + [out_dim]
        self.maps = nn.ModuleList(
            deterministic_map(a, b, nonlinear, units) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.layers = nn.ModuleList(StochasticBinaryLayer(model, units, estimator) for _ in range(depth))

    def init_output_bias(self, mean_lower: Tensor) -> None:
        """Start the output logits at the training mean of ``x_lower`` (a common initialisation)."""
        last = self.maps[-1] if isinstance(self.maps[-1], nn.Linear) else self.maps[-1][-1]
        with torch.no_grad():
            last.bias.copy_(torch.logit(mean_lower.clamp(1e-3, 1 - 1e-3)))

    def log_likelihood(self, upper: Tensor, lower: Tensor, samples: int, tau: float, hard: bool) -> Tensor:
        """``log p(x_lower | z_i)`` (samples, B) for ``samples`` ancestral draws per example.

        All draws go through one batched pass: the first layer's output is computed once and
        expanded to ``(samples, B, units)`` before its noise is drawn.
        """
        h = self.maps[0](upper).expand(samples, *upper.shape[:-1], -1)
        for layer, next_map in zip(self.layers, self.maps[1:], strict=True):
            z = layer.hard(h) if hard else layer.relaxed(h, tau)
            h = next_map(z)
        return -F.binary_cross_entropy_with_logits(h, lower.expand_as(h), reduction="none").sum(-1)


def multisample_objective(log_px: Tensor) -> Tensor:
    """``log (1/m) sum_i p(x | z_i)`` per example from ``log_px`` (m, B) (Raiko et al. 2014, eq. 4)."""
    return torch.logsumexp(log_px, 0) - math.log(log_px.shape[0])


@torch.no_grad()
def sop_bound(net: SOPNet, upper: Tensor, lower: Tensor, samples: int, tau: float, hard: bool,
              rows: int = EVAL_ROWS) -> Tensor:
    """``L^SP_S`` per example (n,), chunked over examples and samples so memory stays bounded."""
    per_chunk = max(1, rows // samples)
    sample_chunk = min(samples, rows)
    out = []
    for start in range(0, upper.shape[0], per_chunk):
        up, low = upper[start : start + per_chunk], lower[start : start + per_chunk]
        parts = [
            torch.logsumexp(net.log_likelihood(up, low, min(sample_chunk, samples - s), tau, hard), 0)
            for s in range(0, samples, sample_chunk)
        ]
        out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(samples))
    return torch.cat(out)


def evaluate(net: SOPNet, x: Tensor, image_shape: tuple[int, int], samples: int, tau: float,
             seed: int) -> dict[str, float]:
    """``nll = -L^SP_S`` with hard samples and ``relaxed_nll = -L^S`` at ``tau``, seeded, RNG restored;
    ``nll_stderr`` (more than one example) is the standard error of ``nll`` over the examples."""
    upper, lower = split_halves(x, image_shape)
    was_training = net.training
    net.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        hard = sop_bound(net, upper, lower, samples, tau, hard=True)
        relaxed = sop_bound(net, upper, lower, samples, tau, hard=False)
    net.train(was_training)
    metrics = {"nll": -float(hard.mean()), "relaxed_nll": -float(relaxed.mean()),
               "samples": samples, "examples": int(x.shape[0])}
    if hard.numel() > 1:
        metrics["nll_stderr"] = float(hard.double().std()) / math.sqrt(hard.numel())
    return metrics

"""The network of structured output prediction (SOP): layers of stochastic binary units.

``x_upper -> z_1 -> ... -> z_L -> p(x_lower)`` with layers of stochastic binary units ``z in {-1, +1}``
(the task, its objectives and papers: :mod:`discrete_vae.sop`), the multi-sample objective
``log (1/m) sum_i p(x_lower | z_i)`` and its chunked evaluation with hard samples.

Each binary unit with layer output ``a`` is one posterior of the toolkit; a layer is one unit family,
a small class with the layer's three draws (``relaxed``, ``hard``, ``prob_one``) and the estimators
it trains with (:meth:`StochasticBinaryLayer.estimators`):

- :class:`BernoulliUnits`: ``Bernoulli(sigmoid(a))``, drawn by a per-unit (pathwise) estimator of
  :mod:`discrete_vae.estimators` (default ``gs``, the binary Concrete ``sigmoid((a + L) / tau)``; also
  ``st-gs``, ``st``, ``reinmax``, ``gumbel-rao``, ``zgr``).
- :class:`IGRUnits`: the two-class IGR-SB distribution (:class:`~discrete_vae.distributions.ExpIGRSB`,
  ``kappa ~ N(a, 1)``, relaxed ``sigmoid(kappa / tau)``, hard ``1[kappa > 0]``, i.e.
  ``Bernoulli(Phi(a))``), through its own relaxation (``relaxed``); with ``flow_layers`` a learned
  one-dimensional planar flow ``f`` per unit on ``kappa``: relaxed ``sigmoid(f(kappa) / tau)``, hard
  ``1[f(kappa) > 0]``.

:data:`UNITS` maps each ``--model`` to its family and settings: ``gs`` the Bernoulli units, ``igr-i``
and ``igr-sb`` (identical for one binary unit) the IGR units, ``igr-planar`` those with the flow.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions import ExpIGRSB, PlanarFlow
from ..distributions.hard import bernoulli_draws
from ..estimators import ESTIMATORS, Latents, Pathwise, build_estimator
from ..networks import evaluating

# arch -> (stochastic layers, deterministic maps are Linear-tanh-Linear)
ARCHS = {"double_linear": (2, False), "triple_linear": (3, False), "nonlinear": (2, True)}
EVAL_ROWS = 8192  # decoder rows per chunk in evaluation: bounded memory for any number of samples


def split_halves(x: Tensor, image_shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``(n, H*W)`` images -> upper ``H // 2`` rows and the rest, each flattened (392/392 for MNIST)."""
    cut = (image_shape[0] // 2) * image_shape[1]
    return x[:, :cut], x[:, cut:]


class StochasticBinaryLayer(nn.Module):
    """One layer of ``units`` stochastic binary units in {-1, +1}, relaxed or hard: the base of the unit
    families (module docstring), which implement the three draws and say which ``--estimator`` they take."""

    default_estimator: ClassVar[str]  # what --estimator auto means

    @classmethod
    def estimators(cls) -> tuple[str, ...]:
        """The ``--estimator`` names the family trains with."""
        raise NotImplementedError

    @classmethod
    def build_estimator(cls, name: str) -> Pathwise | None:
        """The estimator module that draws the units for ``--estimator name`` (``auto``: the default),
        shared by the layers of a net; None for a family that draws through its own relaxation."""
        raise NotImplementedError

    def relaxed(self, a: Tensor, tau: float) -> Tensor:
        """A differentiable sample in [-1, 1] given the layer output ``a``."""
        raise NotImplementedError

    def hard(self, a: Tensor) -> Tensor:
        """A hard sample in {-1, +1} from the discrete model the relaxation converges to."""
        raise NotImplementedError

    def prob_one(self, a: Tensor) -> Tensor:
        """``P(z = +1)`` of the hard unit given the layer output ``a``."""
        raise NotImplementedError


class BernoulliUnits(StochasticBinaryLayer):
    """``Bernoulli(sigmoid(a))`` units drawn by a per-unit (pathwise) estimator (default a fresh ``gs``)."""

    default_estimator = "gs"

    def __init__(self, units: int, estimator: Pathwise | None = None):
        super().__init__()
        self.estimator = build_estimator(self.default_estimator) if estimator is None else estimator

    @classmethod
    def estimators(cls) -> tuple[str, ...]:
        """The estimators that draw each unit on its own (the pathwise ones), from the registry."""
        return tuple(n for n in ESTIMATORS.names() if issubclass(ESTIMATORS.get(n), Pathwise))

    @classmethod
    def build_estimator(cls, name: str) -> Pathwise:
        return build_estimator(cls.default_estimator if name == "auto" else name)

    def relaxed(self, a: Tensor, tau: float) -> Tensor:
        z = self.estimator.rsample(Latents("binary", a), 1, tau)[0]
        return 2 * z - 1

    def hard(self, a: Tensor) -> Tensor:
        return 2 * bernoulli_draws(a) - 1

    @torch.no_grad()
    def prob_one(self, a: Tensor) -> Tensor:
        """``sigmoid(a)``."""
        return torch.sigmoid(a)


class IGRUnits(StochasticBinaryLayer):
    """Two-class IGR-SB units through their own relaxation; ``flow_layers > 0`` adds the per-unit planar
    flow of Potapczynski et al. (2020, sec. 3.3), the family's only parameters."""

    default_estimator = "relaxed"

    def __init__(self, units: int, estimator: Pathwise | None = None, flow_layers: int = 0):
        super().__init__()
        if estimator is not None:
            raise ValueError("IGR units are drawn through their own relaxation, not by an estimator")
        self.flow = PlanarFlow(variables=units, dim=1, layers=flow_layers) if flow_layers else None

    @classmethod
    def estimators(cls) -> tuple[str, ...]:
        return (cls.default_estimator,)

    @classmethod
    def build_estimator(cls, name: str) -> None:
        return None

    def preimage(self, a: Tensor) -> Tensor:
        """``kappa ~ N(a, 1)``, pushed through the planar flow where there is one: (..., units, 1)."""
        loc = a.unsqueeze(-1)  # the unit's two-class IGR-SB pre-image (its temperature plays no part)
        kappa = ExpIGRSB(loc.new_ones(()), loc, torch.ones_like(loc), validate_args=False).rsample_preimage()
        return kappa if self.flow is None else self.flow(kappa, log_det=False)[0]

    def relaxed(self, a: Tensor, tau: float) -> Tensor:
        # ExpIGRSB's two-class stick-breaking map: pi_1 = sigmoid(kappa / tau), one fused op
        z = torch.sigmoid(self.preimage(a)[..., 0] / tau)
        return 2 * z - 1

    @torch.no_grad()
    def hard(self, a: Tensor) -> Tensor:
        b = (self.preimage(a)[..., 0] > 0).to(a.dtype)
        return 2 * b - 1

    @torch.no_grad()
    def prob_one(self, a: Tensor) -> Tensor:
        """``Phi(a)``, or ``Phi(a - f^{-1}(0))`` with the flow ``f``."""
        shift = 0.0
        if self.flow is not None:  # f is increasing, so f(kappa) > 0 iff kappa > f^{-1}(0)
            zero = torch.zeros(self.flow.b.shape[1], 1, dtype=a.dtype, device=a.device)
            shift = self.flow.inverse(zero).squeeze(-1)
        return torch.special.ndtr(a - shift)


# --model -> the unit family of its layers and the family's settings: the one place the names appear
UNITS: dict[str, tuple[type[StochasticBinaryLayer], dict[str, Any]]] = {
    "gs": (BernoulliUnits, {}),
    "igr-i": (IGRUnits, {}),
    "igr-sb": (IGRUnits, {}),
    "igr-planar": (IGRUnits, {"flow_layers": 2}),
}
MODELS = tuple(UNITS)


def unit_family(model: str) -> type[StochasticBinaryLayer]:
    """The unit family of ``--model model``."""
    return UNITS[model][0]


def binary_layer(model: str, units: int, estimator: Pathwise | None = None) -> StochasticBinaryLayer:
    """A layer of ``units`` binary units of ``--model model`` (``estimator``: the module that draws them,
    for a family that takes one; None: the family's default)."""
    family, settings = UNITS[model]
    return family(units, estimator, **settings)


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
        self.layers = nn.ModuleList(binary_layer(model, units, estimator) for _ in range(depth))

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
    with evaluating(net, x.device, seed):
        hard = sop_bound(net, upper, lower, samples, tau, hard=True)
        relaxed = sop_bound(net, upper, lower, samples, tau, hard=False)
    metrics = {"nll": -float(hard.mean()), "relaxed_nll": -float(relaxed.mean()),
               "samples": samples, "examples": int(x.shape[0])}
    if hard.numel() > 1:
        metrics["nll_stderr"] = float(hard.double().std()) / math.sqrt(hard.numel())
    return metrics

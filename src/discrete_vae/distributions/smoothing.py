r"""Smoothing transformations of DVAE, DVAE++ and DVAE#: a binary ``z`` relaxed to a continuous ``ζ``.

Papers:

- Rolfe (2017), *Discrete Variational Autoencoders*, https://arxiv.org/abs/1609.02200 (spike-and-exp, §2.1).
- Vahdat, Macready, Bian, Khoshaman, Andriyash (2018), *DVAE++*, https://arxiv.org/abs/1802.04920
  (overlapping exponential smoothing, analytic inverse CDF of the mixture; power-function smoothing).
- Vahdat, Andriyash, Macready (2018), *DVAE#*, https://arxiv.org/abs/1805.07445 (Gaussian,
  uniform+exp and power smoothings sampled with the implicit gradient of §3.4; Gaussian integral trick §4).

A unit with ``q = P(z = 1) = σ(logit)`` is smoothed by ``ζ ~ r(ζ|z)``; the posterior over ``ζ`` is the
mixture :math:`q(ζ) = (1-q)\,r(ζ|0) + q\,r(ζ|1)` with CDF :math:`F(ζ) = (1-q)R(ζ|0) + qR(ζ|1)`.
``ζ = F^{-1}(ρ)``, ``ρ ~ U(0, 1)``, is reparameterised either by a closed-form ``F^{-1}`` (spike-exp, exp)
or by the implicit gradient (DVAE# eq. 5) :math:`∂ζ/∂q = (R(ζ|0) - R(ζ|1)) / (q r(ζ|1) + (1-q) r(ζ|0))`
(:class:`_ImplicitMixtureSample`). That gradient is a function of the sample alone, and it is the
derivative of ``E_q[f(ζ)]`` for a ``ζ`` drawn from ``q`` in any way (implicit reparameterisation, Figurnov,
Mohamed, Mnih 2018, https://arxiv.org/abs/1805.08498): :meth:`Smoothing.rsample` therefore draws ``ζ``
ancestrally (``z ~ Bernoulli(q)``, then ``ζ ~ r(ζ|z)`` from the component's closed form), which gives the
same ``(ζ, ∂ζ/∂q)`` in distribution as ``F^{-1}(ρ)`` at a fraction of the cost. :meth:`Smoothing.icdf`
with ``implicit=True`` solves ``F(ζ) = ρ`` for a given ``ρ`` by bisection in float64, with the same
backward. Every smoothing accepts ``implicit=True``, so the closed forms can be checked against it.
``BASELINES`` records which gradient each configuration of the original code (github.com/QuadrantAI/dvae)
uses.

This module holds the contract (:class:`Smoothing`), its implicit gradient, the registry, and the original
code's baselines and β. The smoothings of DVAE and DVAE++ (spike-and-exp, exponential, power function) are
in :mod:`.dvae_pp`, those DVAE# introduced (uniform+exponential, Gaussian, the Gaussian integral trick) in
:mod:`.dvae_sharp`; the mixture as a ``torch.distributions`` object is :mod:`.smoothed_bernoulli`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["BASELINES", "SMOOTHINGS", "Smoothing", "get_smoothing", "smoothing_type"]

SMOOTHINGS: Registry[type[Smoothing]] = Registry("smoothing")

# baseline of the original code -> (smoothing name, sampled through the implicit gradient?). The original
# code uses the implicit gradient for every overlapping smoothing; DVAE++ itself used the closed form for exp.
BASELINES: dict[str, tuple[str, bool]] = {
    "dvae_spike_exp": ("spike-exp", False), "dvaepp_exp": ("exp", False), "dvaepp_power": ("power", True),
    "dvaes_gi": ("gi", True), "dvaes_gauss": ("gauss", True), "dvaes_exp": ("exp", True),
    "dvaes_unexp": ("unexp", True), "dvaes_power": ("power", True),
}
_NAMES = ("dvae_spike_exp", "dvaepp_exp", "dvaepp_power", "dvaes_gi", "dvaes_gauss", "dvaes_exp",
          "dvaes_unexp", "dvaes_power")
_ROWS = {  # β per (dataset, struct) in the order of _NAMES: run.py `get_config` of QuadrantAI/dvae
    ("binarized_mnist", "1-layer-lin"): (5, 12, 40, 40, 40, 12, 40, 40),
    ("binarized_mnist", "1-layer-nonlin"): (5, 14, 30, 30, 30, 12, 30, 40),
    ("binarized_mnist", "2-layer-nonlin"): (4, 10, 30, 30, 25, 10, 16, 30),
    ("omniglot", "1-layer-lin"): (4, 14, 40, 40, 40, 12, 40, 40),
    ("omniglot", "1-layer-nonlin"): (4, 12, 40, 30, 25, 10, 16, 30),
    ("omniglot", "2-layer-nonlin"): (4, 10, 30, 25, 25, 8, 16, 20),
}
_ROWS.update({(d, "4-layer-nonlin"): _ROWS[(d, "2-layer-nonlin")] for d in ("binarized_mnist", "omniglot")})
DEFAULT_BETA: dict[tuple[str, str], dict[str, float]] = {
    k: {n: float(b) for n, b in zip(_NAMES, v, strict=True)} for k, v in _ROWS.items()
}


def _param(value: float | Tensor) -> Tensor:
    """A Python number as a float64 scalar (a 0-dim tensor does not promote float32 batches)."""
    return value if isinstance(value, Tensor) else torch.tensor(float(value), dtype=torch.float64)


def _check_positive(name: str, what: str, value: float | Tensor) -> None:
    v = torch.as_tensor(value)
    if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
        raise ValueError(f"smoothing {name!r}: {what} must be finite and > 0, got {value}")


class Smoothing:
    r"""A smoothing ``r(ζ|z)`` of a binary unit with sharpness ``β`` and its mixture ``q(ζ)``.

    Subclasses give ``log_r0``/``cdf0`` (and ``log_r1``/``cdf1`` unless ``r(ζ|1) = r(1-ζ|0)``), the component
    means and, where it exists, the closed-form mixture inverse CDF ``_icdf_analytic``.
    """

    name: ClassVar[str]
    baselines: ClassVar[tuple[str, ...]]  # the original code's --baseline names using this smoothing
    analytic: ClassVar[bool] = False  # closed-form mixture inverse CDF available
    point_mass: ClassVar[bool] = False  # r(ζ|0) has an atom: no density with respect to Lebesgue measure
    symmetric: bool = True  # r(ζ|1) = r(1-ζ|0)
    support: constraints.Constraint = constraints.unit_interval
    iterations: ClassVar[int] = 64  # bisection steps: bracket width / 2^64

    def __init__(self, beta: float | Tensor):
        _check_positive(self.name, "beta (the sharpness)", beta)
        self.beta = _param(beta)

    # --- the two components -------------------------------------------------------------------------
    def log_r0(self, zeta: Tensor) -> Tensor:
        raise NotImplementedError

    def cdf0(self, zeta: Tensor) -> Tensor:
        raise NotImplementedError

    def log_r1(self, zeta: Tensor) -> Tensor:
        return self.log_r0(1 - zeta)

    def cdf1(self, zeta: Tensor) -> Tensor:
        return 1 - self.cdf0(1 - zeta)

    def icdf0(self, rho: Tensor) -> Tensor | None:
        """Quantile of ``r(ζ|0)`` if closed-form (used to bracket the bisection), else ``None``."""
        return None

    def mean0(self) -> Tensor:
        raise NotImplementedError

    def mean1(self) -> Tensor:
        return 1 - self.mean0()

    def log_r(self, zeta: Tensor, z: Tensor) -> Tensor:
        """``log r(ζ|z)`` for ``z ∈ {0, 1}``; ``-inf`` outside the support."""
        return torch.where(z.bool(), self.log_r1(zeta), self.log_r0(zeta))

    def _on_atom(self, zeta: Tensor) -> Tensor:
        """Where ``ζ`` sits on a point mass of ``q(ζ)`` (there ``∂ζ/∂q = 0``)."""
        return torch.zeros_like(zeta, dtype=torch.bool)

    def _inside(self, zeta: Tensor, value: Tensor, outside: float = -math.inf) -> Tensor:
        return torch.where((zeta >= 0) & (zeta <= 1), value, torch.full_like(value, outside))

    def _cdf_gap(self, zeta: Tensor) -> Tensor:
        """``R(ζ|0) - R(ζ|1)``, the numerator of the implicit gradient."""
        return self.cdf0(zeta) - self.cdf1(zeta)

    def tensor_params(self) -> tuple[Tensor, ...]:
        """Parameters that require grad; the implicit gradient reaches them through ``-∂F/∂θ / q(ζ)``."""
        return tuple(p for p in (self.beta,) if isinstance(p, Tensor) and p.requires_grad)

    # --- the mixture q(ζ) = (1-q) r(ζ|0) + q r(ζ|1) -------------------------------------------------------
    def cdf(self, zeta: Tensor, logits: Tensor) -> Tensor:
        """Mixture CDF :math:`F(ζ) = (1-q)R(ζ|0) + qR(ζ|1)`."""
        return self._mixture_cdf(zeta, torch.sigmoid(-logits), torch.sigmoid(logits))

    def _mixture_cdf(self, zeta: Tensor, p0: Tensor, p1: Tensor) -> Tensor:
        """:meth:`cdf` with the weights ``p0 = 1 - q``, ``p1 = q`` given (computed once per solve)."""
        return p0 * self.cdf0(zeta) + p1 * self.cdf1(zeta)

    def log_prob(self, zeta: Tensor, logits: Tensor) -> Tensor:
        """:math:`\\log q(ζ) = \\mathrm{logaddexp}(\\log(1-q) + \\log r(ζ|0), \\log q + \\log r(ζ|1))`."""
        log_0 = F.logsigmoid(-logits) + self.log_r0(zeta)
        return torch.logaddexp(log_0, F.logsigmoid(logits) + self.log_r1(zeta))

    def mean(self, logits: Tensor) -> Tensor:
        """:math:`E_{q(ζ)}[ζ] = (1-q)E_{r(ζ|0)}[ζ] + q E_{r(ζ|1)}[ζ]` (for the DVAE++ objective)."""
        return torch.sigmoid(-logits) * self.mean0() + torch.sigmoid(logits) * self.mean1()

    def _implicit(self, implicit: bool | None) -> bool:
        if implicit is None:
            return not self.analytic
        if not implicit and not self.analytic:
            raise ValueError(f"smoothing {self.name!r} has no closed-form inverse CDF; use implicit=True")
        return implicit

    def icdf(self, rho: Tensor, logits: Tensor, implicit: bool | None = None) -> Tensor:
        """``ζ = F^{-1}(ρ)``, differentiable in ``logits`` (closed form unless ``implicit``: bisection)."""
        implicit = self._implicit(implicit)
        rho, logits = torch.broadcast_tensors(rho, logits)
        if implicit:
            return _ImplicitMixtureSample.apply(logits, rho, self, *self.tensor_params())
        return self._icdf_analytic(rho, logits)

    def rsample(self, logits: Tensor, sample_shape: torch.Size | tuple[int, ...] = torch.Size(),
                implicit: bool | None = None) -> Tensor:
        """Reparameterised ``ζ ~ q(ζ)`` of shape ``sample_shape + logits.shape``.

        Closed form: ``F^{-1}(ρ)``. Implicit: an ancestral draw with the implicit gradient (module docstring).
        """
        shape = torch.Size(sample_shape) + logits.shape
        if self._implicit(implicit):
            return _ImplicitMixtureSample.apply(logits.expand(shape), None, self, *self.tensor_params())
        tiny = torch.finfo(logits.dtype).tiny
        rho = torch.rand(shape, dtype=logits.dtype, device=logits.device).clamp_(tiny, 1 - tiny)
        return self._icdf_analytic(rho, logits.expand(shape))

    def sample_component(self, one: Tensor) -> Tensor:
        """``ζ ~ r(ζ|z)`` elementwise for ``z = one`` (a bool tensor), in float64.

        A draw from ``r(ζ|0)`` (:meth:`_sample0`), mirrored where ``z = 1`` (``r(ζ|1) = r(1-ζ|0)``);
        smoothings that are not symmetric override it.
        """
        if not self.symmetric:
            raise NotImplementedError(f"smoothing {self.name!r} needs its own sample_component")
        x = self._sample0(one.shape, one.device)
        return torch.where(one, 1 - x, x)

    def _sample0(self, shape: torch.Size, device: torch.device) -> Tensor:
        """``ζ ~ r(ζ|0)`` in float64 by the closed-form quantile ``icdf0``; others override it."""
        x = self.icdf0(torch.rand(shape, dtype=torch.float64, device=device))
        if x is None:
            raise NotImplementedError(f"smoothing {self.name!r} needs its own _sample0")
        return x

    def _draw(self, logits: Tensor) -> Tensor:
        """Ancestral ``ζ ~ q(ζ)`` in float64, in the range the bisection of :meth:`_solve` returns."""
        one = torch.rand(logits.shape, dtype=torch.float64, device=logits.device) < torch.sigmoid(logits)
        zeta = self.sample_component(one)
        if self.support is constraints.unit_interval:  # as _solve: 1 - 2^-53 stands for the roots above it
            zeta = torch.where(self._on_atom(zeta), zeta, zeta.clamp(1e-300, 1 - 2**-53))
        return zeta

    def _icdf_analytic(self, rho: Tensor, logits: Tensor) -> Tensor:
        raise NotImplementedError

    def _bracket(self, rho: Tensor) -> tuple[Tensor, Tensor]:
        """An interval holding ``F^{-1}(ρ)``: between the component quantiles, else the unit interval."""
        lo0 = self.icdf0(rho)
        if lo0 is None:
            return torch.zeros_like(rho), torch.ones_like(rho)
        hi1 = 1 - self.icdf0(1 - rho) if self.symmetric else self._icdf1(rho)
        return torch.minimum(lo0, hi1), torch.maximum(lo0, hi1)

    def _solve(self, rho: Tensor, logits: Tensor) -> Tensor:
        """Vectorised bisection for ``F(ζ) = ρ`` (float64); a point mass at the lower end is hit exactly.

        On ``[0, 1]`` it bisects ``t = logit(ζ)`` in ``[logit(1e-300), logit(1 - 2^-53)]``, so that roots
        near 0 are resolved to relative precision (the power law puts mass at ``ζ ~ 1e-40``); roots above
        ``1 - 2^-53`` are not representable in float64 and come back as ``1 - 2^-53``, the last double below 1
        (β = 40: about 40% of ``r(ζ|1)``'s mass).
        """
        start, end = self._bracket(rho)
        unit = self.support is constraints.unit_interval
        to, back = (torch.logit, torch.sigmoid) if unit else (lambda x: x, lambda x: x)
        lo, hi = (to(x.clamp(1e-300, 1 - 2**-53)) for x in (start, end)) if unit else (start, end)
        p0, p1 = torch.sigmoid(-logits), torch.sigmoid(logits)  # the mixture weights, once

        def cdf(zeta: Tensor) -> Tensor:
            return self._mixture_cdf(zeta, p0, p1)

        for _ in range(self.iterations):
            mid = 0.5 * (lo + hi)
            below = cdf(back(mid)) < rho
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        zeta, inf = back(hi), torch.full_like(hi, math.inf)
        up = torch.nextafter(zeta, inf)  # polish to the smallest double with F >= ρ (ζ < 1 on [0, 1])
        zeta = torch.where((cdf(zeta) < rho) & ~(unit & (up >= 1)), up, zeta)
        down = torch.nextafter(zeta, -inf)
        zeta = torch.where(cdf(down) >= rho, down, zeta)
        return torch.where(cdf(start) >= rho, start, zeta)

    @classmethod
    def default_beta(cls, dataset: str = "binarized_mnist", struct: str = "1-layer-lin",
                     baseline: str | None = None) -> float:
        """β of the original code (``run.py``); ``baseline`` picks the paper where two share a smoothing."""
        baseline = cls.baselines[0] if baseline is None else baseline
        if baseline not in cls.baselines:
            used = ", ".join(cls.baselines)
            raise ConfigError(f"smoothing {cls.name!r} is used by {used}, not by {baseline!r}")
        if (dataset, struct) not in DEFAULT_BETA:
            known = ", ".join(f"{d}/{s}" for d, s in DEFAULT_BETA)
            raise ConfigError(f"no default beta for {dataset}/{struct}; known: {known}")
        return DEFAULT_BETA[(dataset, struct)][baseline]


class _ImplicitMixtureSample(torch.autograd.Function):
    """``ζ = F^{-1}(ρ)`` by bisection, or an ancestral draw when ``rho`` is None; backward by the implicit
    function theorem (DVAE# §3.4, eq. 5)."""

    @staticmethod
    def forward(ctx, logits: Tensor, rho: Tensor | None, smoothing: Smoothing, *params: Tensor) -> Tensor:
        with torch.no_grad():
            l64 = logits.double()
            zeta = smoothing._draw(l64) if rho is None else smoothing._solve(rho.double(), l64)  # float64
        ctx.smoothing, ctx.zeta = smoothing, zeta
        ctx.save_for_backward(logits)
        return zeta.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (logits,) = ctx.saved_tensors
        s, zeta, l64 = ctx.smoothing, ctx.zeta.detach(), logits.double()  # the output itself in float64
        q, p0 = torch.sigmoid(l64), torch.sigmoid(-l64)
        density = q * s.log_r1(zeta).exp() + p0 * s.log_r0(zeta).exp()  # q(ζ)
        ok = torch.isfinite(density) & (density > 0) & ~s._on_atom(zeta)
        inv = torch.where(ok, 1 / torch.where(ok, density, 1.0), 0.0)
        dzeta_dlogit = s._cdf_gap(zeta) * inv * q * p0  # (R0 - R1) / q(ζ) · dq/dlogit
        grads = [(grad.double() * dzeta_dlogit).to(logits.dtype), None, None]
        params = ctx.needs_input_grad[3:]
        if any(params):
            with torch.enable_grad():  # ∂ζ/∂θ = -∂F/∂θ / q(ζ)
                cdf = s.cdf(zeta, l64)
                grads += torch.autograd.grad(cdf, s.tensor_params(), -grad.double() * inv, allow_unused=True)
        return tuple(grads)


class _Exponential(Smoothing):
    def _log_exp(self, zeta: Tensor) -> Tensor:  # β e^{-βζ} / (1 - e^{-β})
        return self.beta.log() - self.beta * zeta - torch.log(-torch.expm1(-self.beta))

    def _cdf_exp(self, zeta: Tensor) -> Tensor:
        return torch.expm1(-self.beta * zeta.clamp(0, 1)) / torch.expm1(-self.beta)

    def _mean_exp(self) -> Tensor:
        return 1 / self.beta - 1 / torch.expm1(self.beta)

    def _icdf_exp(self, rho: Tensor) -> Tensor:
        return -torch.log1p(rho * torch.expm1(-self.beta)) / self.beta


def smoothing_type(name: str) -> type[Smoothing]:
    """The class of a registered smoothing (or of an original-code baseline name)."""
    return SMOOTHINGS.get(BASELINES[name][0] if name in BASELINES else name)


def get_smoothing(name: str, beta: float | Tensor | None = None, dataset: str = "binarized_mnist",
                  struct: str = "1-layer-lin", **kwargs) -> Smoothing:
    """Build a registered smoothing (or an original-code baseline name); ``beta=None`` takes the default."""
    baseline = name if name in BASELINES else None
    cls = smoothing_type(name)
    beta = cls.default_beta(dataset, struct, baseline) if beta is None else beta
    return cls(beta, **kwargs)

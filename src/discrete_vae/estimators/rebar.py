r"""``rebar``: REINFORCE on the hard sample, with the Concrete relaxation as a learned control variate.

Paper: Tucker, Mnih, Maddison, Lawson, Sohl-Dickstein (2017), *REBAR: Low-variance, unbiased gradient
estimates for discrete latent variable models*, https://arxiv.org/abs/1703.07370 (sec. 3);
the conditional draws as written in Grathwohl et al. (2018), https://arxiv.org/abs/1711.00123, Appendix B.

.. math::
    \hat g = \big[f(b) - \eta f(\sigma_\lambda(\tilde z))\big]\,\nabla_\theta \log q(b)
             + \eta\,\nabla_\theta f(\sigma_\lambda(z)) - \eta\,\nabla_\theta f(\sigma_\lambda(\tilde z)),
    \qquad z \sim p(z|\theta),\ b = H(z),\ \tilde z \sim p(z|b, \theta)

with :math:`\theta` the logits and both :math:`z` and :math:`\tilde z` reparameterized (``b`` held fixed
in :math:`\tilde z`). :math:`\mathbb{E}[\hat g] = \nabla_\theta \mathbb{E}_q[f]` for every :math:`\eta` and
:math:`\lambda`: the last two terms and the control variate in the first cancel in expectation, because
:math:`\tilde z` given :math:`b \sim q` is distributed as :math:`z`.

- Binary: :math:`z = l + \log u - \log(1-u)`, :math:`H(z) = \mathbb 1[z > 0]`,
  :math:`\sigma_\lambda(z) = \mathrm{sigmoid}(z/\lambda)`, and with :math:`s = 2b - 1`,
  :math:`\tilde z = s\,[\mathrm{softplus}(s\,l + \log v) - \log(1 - v)]`, the paper's
  :math:`l + \log\frac{v'}{1-v'}` (:math:`v' = v(1-\theta)` or :math:`1 - \theta + v\theta`) rewritten so
  that it stays finite for any logit.
- Categorical: :math:`z = \log\pi + g` (Gumbel-max), :math:`H(z) = \mathrm{one\_hot}(\arg\max z)`,
  :math:`\sigma_\lambda(z) = \mathrm{softmax}(z/\lambda)`, :math:`\tilde z_b = -\log(-\log v_b)` and
  :math:`\tilde z_i = -\log(-\log v_i / \pi_i - \log v_b)` for :math:`i \ne b` (Gumbels truncated below
  the maximum).

:math:`\eta` and :math:`\lambda = e^{\log\lambda}` are learned by minimising
``aux_loss`` :math:`= \sum \hat g^2` (over examples and logits): since :math:`\mathbb{E}[\hat g]` does not
depend on them, its gradient is a single-sample unbiased estimate of the gradient of the variance
(Tucker et al., sec. 3; Grathwohl et al., sec. 3.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions.utils import clamp_probs

from ..errors import ConfigError
from .base import Estimate, Estimator, Latents, Objective, call_f, positive_temperature, register


@dataclass(frozen=True)
class RebarOptions:
    temperature: float = field(default=0.5, metadata={"help": "initial temperature lambda of the "
                                                      "control variate's relaxation (learned, in log space)"})
    eta: float = field(default=1.0, metadata={"help": "initial scale eta of the control variate (learned)"})

    def __post_init__(self) -> None:
        positive_temperature(self)
        if not math.isfinite(self.eta):
            raise ConfigError(f"--eta must be a finite number, got {self.eta}")


def _uniform(shape: torch.Size, like: Tensor) -> Tensor:
    return clamp_probs(torch.rand(shape, dtype=like.dtype, device=like.device))


def perturbed(latents: Latents, n: int) -> Tensor:
    """``n`` draws of ``z ~ p(z|theta)`` per example, pathwise in the logits: (n, B, ...)."""
    logits = latents.logits
    u = _uniform(torch.Size((n, *logits.shape)), logits)
    if latents.kind == "binary":
        return logits + u.log() - (-u).log1p()  # logistic with location l
    return logits.log_softmax(-1) - (-u.log()).log()  # log pi + Gumbel


def harden(kind: str, z: Tensor) -> Tensor:
    """``b = H(z)``: ``1[z > 0]`` or ``one_hot(argmax z)``, a constant of the shape of ``z``."""
    if kind == "binary":
        return (z > 0).to(z.dtype)
    return torch.zeros_like(z).scatter_(-1, z.argmax(-1, keepdim=True), 1.0)


def conditional(latents: Latents, b: Tensor) -> Tensor:
    """A draw of ``z~ ~ p(z | b, theta)`` for each hard ``b`` (S, B, ...), pathwise in the logits."""
    logits = latents.logits
    v = _uniform(b.shape, logits)
    if latents.kind == "binary":
        s = 2 * b - 1  # (S, B, ...): the side of 0 that z~ must fall on
        return s * (F.softplus(s * logits + v.log()) - (-v).log1p())
    e = -v.log()  # (S, B, ..., K): Exp(1) draws, -log v
    e_top = (e * b).sum(-1, keepdim=True)  # (S, B, ..., 1): -log v_b
    below = -torch.logaddexp(e.log() - logits.log_softmax(-1), e_top.log())  # -log(-log v_i / pi_i - log v_b)
    return torch.where(b > 0, -e_top.log(), below)


def relax(kind: str, z: Tensor, temperature: Tensor) -> Tensor:
    """``sigma_lambda(z)``: ``sigmoid(z / lambda)`` or ``softmax(z / lambda)``."""
    return torch.sigmoid(z / temperature) if kind == "binary" else (z / temperature).softmax(-1)


def score(latents: Latents, b: Tensor) -> Tensor:
    """``d log q(b) / d logits`` in closed form, (S, B, ...); detached."""
    probs = latents.probs().detach()
    return b - probs


@register
class Rebar(Estimator):
    """REBAR: an unbiased estimator whose control variate is ``eta * f`` at the Concrete relaxation of the
    same draw, with ``eta`` and the temperature ``lambda`` learned.

    - Samples: ``z`` (logistic / Gumbel-perturbed logits), ``b = H(z)`` an exact draw of ``q``, and
      ``z~ ~ p(z | b)``; ``f`` is called on ``b`` (S, B, ...) and once on the relaxed pair
      ``sigma_lambda([z, z~])`` (2S, B, ...).
    - ``value``: ``mean_s f(b_s)``. ``surrogate``: ``mean_s f(b_s) + <sg(g), logits>``, so the logits get
      the REBAR estimate ``g`` (plus ``E[grad f(b)]`` if ``f`` depends on them directly) and parameters
      inside ``f`` get exactly ``mean_s grad f(b_s)``.
    - ``aux_loss``: ``sum g**2``, with ``g`` from ``torch.autograd.grad(..., logits, create_graph=True)``,
      so it is differentiable in ``eta``, ``lambda`` (and RELAX's network); None when the logits do not
      require grad or no estimator parameter does.
    - ``tau``, when given, replaces the learned temperature for that call (then ``lambda`` gets no gradient).

    Caller protocol::

        out = estimator(q, f, n_samples)
        loss = -out.surrogate.mean()
        loss.backward(inputs=model_params)                       # no retain_graph needed
        out.aux_loss.backward(inputs=list(estimator.parameters()))

    The two graphs share no saved tensors (the relaxed evaluations are not part of ``surrogate``), so the
    two backward calls work in either order without ``retain_graph``. Always pass ``inputs=`` to the aux
    backward: ``aux_loss`` also depends on the logits and on ``f``'s parameters, whose ``.grad`` it would
    otherwise pollute (and it would free the encoder's graph). The double-backward graph is held until
    ``aux_loss`` is backwarded or dropped.
    """

    name = "rebar"
    learns_temperature = True
    unbiased = True
    relaxed = True
    cost = "3 evaluations of f per draw (the draw and two relaxed points)"
    Options = RebarOptions

    def __init__(self, options: RebarOptions | None = None):
        super().__init__(options)
        self.eta = nn.Parameter(torch.tensor(float(self.options.eta)))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(self.options.temperature)))

    def evaluations(self, n_samples: int, kind: str, shape: tuple[int, ...]) -> int:
        """``3 n_samples``: ``f`` at each draw ``b`` and at its two relaxed points ``z`` and ``z~``."""
        return 3 * n_samples

    def temperature(self, tau: Tensor | float | None, like: Tensor) -> Tensor:
        """``tau`` if given, else the learned ``lambda``."""
        if tau is not None:
            return super().temperature(tau, like)
        return self.log_temperature.exp().to(like.dtype)

    def control(self, z: Tensor, f: Objective, temperature: Tensor, kind: str,
                context: Tensor | None) -> Tensor:
        """``c_phi(z) = eta * f(sigma_lambda(z))`` at relaxed inputs ``z`` (S', B, ...) -> (S', B)."""
        return self.eta * call_f(f, relax(kind, z, temperature))

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        logits = latents.logits
        if not (torch.is_grad_enabled() and logits.requires_grad):  # only f's parameters need a gradient
            value = call_f(f, latents.sample(n_samples)).mean(0)  # (B,)
            return Estimate(value, value.detach())
        z = perturbed(latents, n_samples)  # (S, B, ...)
        b = harden(latents.kind, z.detach())  # (S, B, ...)
        z_tilde = conditional(latents, b)  # (S, B, ...)
        f_b = call_f(f, b)  # (S, B)
        c = self.control(torch.cat([z, z_tilde]), f, self.temperature(tau, logits), latents.kind, context)
        g, learn = self.gradient(latents, b, f_b.detach(), c[:n_samples], c[n_samples:])  # (B, ...)
        value = f_b.mean(0)  # (B,)
        surrogate = value + latents.sum_event(g.detach() * (logits - logits.detach()))  # (B,)
        return Estimate(surrogate, value.detach(), g.square().sum() if learn else None)

    def gradient(self, latents: Latents, b: Tensor, f_b: Tensor, c_z: Tensor,
                 c_tilde: Tensor) -> tuple[Tensor, bool]:
        """``g = mean_s [(f(b) - c(z~)) d log q(b) + d c(z) - d c(z~)]`` w.r.t. the logits (B, ...), and
        whether it carries the graph that ``aux_loss`` needs."""
        learn = any(p.requires_grad for p in self.parameters())
        weight = (f_b - c_tilde).view(*f_b.shape, *(1,) * latents.event_dims)  # (S, B, 1...)
        g = (weight * score(latents, b)).mean(0)  # (B, ...)
        pathwise = (c_z - c_tilde).mean(0).sum()
        if pathwise.requires_grad:
            (d,) = torch.autograd.grad(pathwise, latents.logits, create_graph=learn, allow_unused=True)
            g = g if d is None else g + d
        if latents.kind == "categorical":  # the gradient w.r.t. unnormalised logits: no shift component
            g = g - g.mean(-1, keepdim=True)
        return g, learn and g.requires_grad

    def stats(self) -> dict[str, float]:
        return {"eta": self.eta.item(), "temperature": self.log_temperature.exp().item()}

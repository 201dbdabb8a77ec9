r"""``nvil``: neural variational inference and learning, REINFORCE with a learned input-dependent baseline.

Paper: Mnih, Gregor (2014), "Neural variational inference and learning in belief networks",
https://arxiv.org/abs/1402.0030 (sec. 3 and the appendix).

.. math::
    \hat\nabla = \frac1S \sum_s \frac{f(z_s) - C_\psi(x) - c}{\max(1, \sqrt v)}\,\nabla_\phi \log q_\phi(z_s)
    + \nabla f(z_s),\qquad z_s \sim q_\phi,

.. math::
    c \leftarrow \alpha c + (1 - \alpha)\,\mathrm{mean}(f - C_\psi),\quad
    v \leftarrow \alpha v + (1 - \alpha)\,\mathrm{var}(f - C_\psi),

.. math:: \mathcal{L}_\psi = \mathrm{mean}\big(f(z_s) - c - C_\psi(x)\big)^2

- :math:`C_\psi(x)`: the input-dependent baseline, a small MLP (by default one ``tanh`` hidden layer of
  100 units, the paper's) on ``context`` (the encoder's input ``x``; default the detached, flattened
  logits). Its input size is found on the first call (:class:`~torch.nn.LazyLinear`); its output layer
  starts at zero, so an untrained ``nvil`` is REINFORCE with a running-mean baseline.
- :math:`c, v`: running mean and variance of the signal after the learned baseline (decay
  :math:`\alpha = 0.8`, the paper's), buffers shared across the batch, updated after each training-mode
  call and used *before* the update, so they do not depend on the draws they multiply.
- :math:`\mathcal{L}_\psi` is ``aux_loss``: its gradient reaches only :math:`\psi` (the signal, ``c`` and the
  context are detached), so stepping it trains the baseline network and nothing else.

The baselines leave the gradient unbiased. Variance normalisation (``normalize_variance``, the paper's
:math:`\max(1, \sqrt v)`) is off by default: it divides the score term for ``q``'s logits (not the pathwise
term :math:`\nabla f`) by a positive number shared by the batch, i.e. an adaptive step size for the encoder,
and then that part of the estimate is unbiased for the gradient divided by :math:`\max(1, \sqrt v)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Estimate, Estimator, Latents, Objective, call_f, register
from .reinforce import check_decay, score_surrogate


@dataclass(frozen=True)
class NVILOptions:
    decay: float = field(default=0.8, metadata={"help": "decay alpha of the running mean and variance of the "
                                                "learning signal, in [0, 1) (the paper's 0.8)"})
    baseline_hidden: tuple[int, ...] = field(default=(100,), metadata={
        "help": "hidden widths of the baseline MLP C(x) (tanh); empty for a linear baseline"})
    normalize_variance: bool = field(default=False, metadata={
        "help": "divide the centred learning signal by max(1, sqrt(running variance)), as in the paper "
                "(rescales the logits' gradient: unbiased only up to that factor)"})

    def __post_init__(self) -> None:
        check_decay(self.decay)
        if any(w < 1 for w in self.baseline_hidden):
            raise ConfigError(f"--baseline-hidden widths must be at least 1, got {self.baseline_hidden}")


def baseline_net(hidden: tuple[int, ...]) -> nn.Sequential:
    """``context (B, D) -> (B, 1)``: a LazyLinear (``D`` is found on the first call), then tanh and linear
    layers."""
    widths = (*hidden, 1)
    layers: list[nn.Module] = [nn.LazyLinear(widths[0])]
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Tanh(), nn.Linear(w_in, w_out)]
    return nn.Sequential(*layers)


@register
class NVIL(Estimator):
    """NVIL: REINFORCE with a learned input-dependent baseline and running-mean centring.

    - Samples: exact draws ``z ~ q``; ``f`` is evaluated once on all ``S`` of them.
    - Value: ``mean_s f(z_s)``, unbiased.
    - Gradient: ``(f(z_s) - C(x) - c) grad log q(z_s)`` (divided by ``max(1, sqrt v)`` with
      ``normalize_variance``) plus ``grad f(z_s)``, averaged over samples; unbiased without normalisation.
    - ``aux_loss``: mean squared error of ``C(x) + c`` against ``f``; step it on ``estimator.parameters()``.
    - State: the baseline network and the buffers ``signal_mean``, ``signal_var``, ``steps`` (all in
      ``state_dict``). The buffers are shared by the batch and updated in training mode only.
    """

    name = "nvil"
    unbiased = True
    separable_aux = True  # the baseline sees detached inputs; the surrogate, a detached signal
    Options = NVILOptions

    def __init__(self, options: NVILOptions | None = None):
        super().__init__(options)
        self.net = baseline_net(self.options.baseline_hidden)
        self.register_buffer("signal_mean", torch.zeros(()))
        self.register_buffer("signal_var", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def learned_baseline(self, latents: Latents, context: Tensor | None) -> Tensor:
        """``C(x)`` per example (B,), differentiable in the network only."""
        x = (latents.logits if context is None else context).detach().flatten(1)  # (B, D)
        if isinstance(self.net[0].weight, nn.parameter.UninitializedParameter):
            self.materialize(x)
        elif x.shape[1] != self.net[0].weight.shape[1]:
            raise ConfigError(f"nvil's baseline takes contexts of {self.net[0].weight.shape[1]} features per "
                              f"example (fixed by its first call), got {x.shape[1]}")
        return self.net(x.to(self.net[0].weight)).squeeze(-1).to(x.dtype)  # (B,)

    @torch.no_grad()
    def materialize(self, x: Tensor) -> None:
        """First call: the network takes ``x``'s width, the estimator moves to ``x``'s device (the dtype
        stays the module's, as ``.to()`` sets it) and the output layer starts at zero."""
        self.to(device=x.device)
        self.net(x[:1].to(self.net[0].weight.dtype))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        z = latents.sample(n_samples)  # (S, B, ...)
        fz = call_f(f, z)  # (S, B)
        learned = self.learned_baseline(latents, context)  # (B,)
        mean, var = self.signal_mean.to(fz), self.signal_var.to(fz)  # before this call's update
        residual = fz.detach() - learned  # (S, B): the target of c, differentiable in the network
        signal = residual.detach() - mean  # (S, B)
        if self.options.normalize_variance:
            signal = signal / var.sqrt().clamp_min(1.0)
        surrogate = score_surrogate(fz, signal, latents.log_prob(z))  # (B,)
        aux_loss = (residual - mean).square().mean()
        if self.training:
            self.update(residual.detach())
        return Estimate(surrogate, fz.detach().mean(0), aux_loss)

    def update(self, residual: Tensor) -> None:
        """``c <- alpha c + (1 - alpha) mean``, ``v`` likewise with the variance; the first update sets
        both (a tensor condition, so that a compiled step does not branch on the buffer)."""
        with torch.no_grad():
            decay = (self.steps > 0).to(self.signal_mean) * self.options.decay
            var = residual.var() if residual.numel() > 1 else torch.zeros_like(self.signal_var)
            self.signal_mean.mul_(decay).add_((1.0 - decay) * residual.mean().to(self.signal_mean))
            self.signal_var.mul_(decay).add_((1.0 - decay) * var.to(self.signal_var))
            self.steps.add_(1)

    def stats(self) -> dict[str, float]:
        return {"baseline_mean": float(self.signal_mean), "baseline_var": float(self.signal_var)}

r"""``relax``: REBAR with a free-form learned control variate (a neural network added to the relaxation).

Paper: Grathwohl, Choi, Wu, Roeder, Duvenaud (2018), *Backpropagation through the Void: Optimizing control
variates for black-box gradient estimation*, https://arxiv.org/abs/1711.00123 (sec. 3.2; the control variate's
architecture, sec. 3.3).

.. math::
    \hat g = \big[f(b) - c_\phi(\tilde z)\big]\,\nabla_\theta \log q(b)
             + \nabla_\theta c_\phi(z) - \nabla_\theta c_\phi(\tilde z),\qquad
    c_\phi(z) = \eta\, f(\sigma_\lambda(z)) + r_\rho(z),\quad \phi = \{\eta, \lambda, \rho\}

with :math:`z`, :math:`b = H(z)`, :math:`\tilde z` and :math:`\sigma_\lambda` as in :mod:`.rebar`.
The paper writes :math:`c_\phi(z) = f(\sigma_\lambda(z)) + r_\rho(z)` (sec. 3.3); its discrete-VAE code
scales the sum, :math:`\eta\,(f(\sigma_\lambda(z)) + r_\rho(z))`. Both are this family up to a rescaling of
:math:`r_\rho`; keeping :math:`\eta` on :math:`f` alone leaves REBAR as the special case
:math:`r_\rho = 0`, which is where training starts (the network's last layer is zero-initialised).
:math:`r_\rho` is an MLP (ReLU, as in the paper's experiments) on the relaxed input :math:`z` (the
logistic / Gumbel-perturbed logits, flattened per example), concatenated with ``context`` (the
estimator's ``context`` argument, e.g. the input ``x``, detached) when one is given. Any
:math:`\phi` keeps :math:`\hat g` unbiased; ``aux_loss`` :math:`= \sum\hat g^2` trains all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..options import coerce_widths
from .base import Objective, register
from .rebar import Rebar, RebarOptions


@dataclass(frozen=True)
class RelaxOptions(RebarOptions):
    cv_hidden: tuple[int, ...] = field(default=(200, 200), metadata={"help": "hidden widths of the control "
                                                                  "variate's network r (ReLU MLP)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "cv_hidden", coerce_widths("--cv-hidden", self.cv_hidden))
        if not self.cv_hidden:
            raise ConfigError("--cv-hidden needs at least one width: relax's network r has a hidden layer")


def control_network(hidden: tuple[int, ...]) -> nn.Sequential:
    """``r_rho``: LazyLinear (input size from the first call) -> ReLU MLP -> one zero-initialised output."""
    layers: list[nn.Module] = [nn.LazyLinear(hidden[0]), nn.ReLU()]
    for width_in, width_out in zip(hidden, hidden[1:], strict=False):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    out = nn.Linear(hidden[-1], 1)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(*layers, out)


@register
class Relax(Rebar):
    """RELAX: REBAR's estimator with control variate ``eta * f(sigma_lambda(z)) + r_rho(z)``.

    Everything else (draws, ``value``, ``surrogate``, ``aux_loss`` and the caller protocol for it) is as
    in :class:`~discrete_vae.estimators.rebar.Rebar`. ``r_rho``'s first layer is lazy: its input size is
    found on the first call, so run one call before building an optimizer state that needs shapes,
    saving a checkpoint, or wrapping the estimator in DistributedDataParallel. ``r_rho`` computes in its
    parameters' dtype (``estimator.double()`` for float64).
    """

    name = "relax"
    Options = RelaxOptions

    def __init__(self, options: RelaxOptions | None = None):
        super().__init__(options)
        self.net = control_network(self.options.cv_hidden)

    def control(self, z: Tensor, f: Objective, temperature: Tensor, kind: str,
                context: Tensor | None) -> Tensor:
        """``c_phi(z) = eta * f(sigma_lambda(z)) + r_rho(z)``, relaxed inputs (S', B, ...) -> (S', B)."""
        x = z.reshape(*z.shape[:2], -1)  # (S', B, D)
        if context is not None:
            ctx = context.detach().reshape(z.shape[1], -1).to(z.dtype)  # (B, C)
            x = torch.cat([x, ctx.expand(z.shape[0], *ctx.shape)], -1)  # (S', B, D + C)
        r = self.net(x.to(self.net[-1].weight.dtype)).squeeze(-1).to(z.dtype)  # (S', B)
        return super().control(z, f, temperature, kind, context) + r
